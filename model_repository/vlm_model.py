"""The `reasoner` and `vlm` python-backend models: one prompt (+ image) in, generated text out.

Config parameters choose the engine (`transformers` on cpu, `tensorrt_llm` on gpu), the weights
folder beside this file and the default token budget. With `decoupled: true` in the model's
transaction policy the answer streams: one response per new piece of text, then a final flag.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import triton_python_backend_utils as pb_utils

from navig.model_repository import backend, contract
from navig.model_repository.vlm_engine import Generation


class TritonPythonModel:
    def initialize(self, args: dict[str, Any]) -> None:
        config = backend.model_config(args)
        params = backend.parameters(config)
        weights = backend.version_dir(args) / params.get("weights", "weights")
        self.default_max_tokens = int(params.get("max_tokens", "128"))
        self.decoupled = pb_utils.using_decoupled_model_transaction_policy(config)
        if params.get("engine", "transformers") == "tensorrt_llm":
            from navig.model_repository.vlm_trtllm import TrtLlmVlm

            engine_dir = params.get("engine_dir")
            self.engine = TrtLlmVlm(weights, backend.version_dir(args) / engine_dir if engine_dir else None)
        else:
            from navig.model_repository.vlm_engine import TransformersVlm

            self.engine = TransformersVlm(weights, threads=int(params.get("threads", "0")))

    def execute(self, requests: list[Any]) -> list[Any] | None:
        responses = []
        for request in requests:
            try:
                prompt, image, max_tokens, json_schema = self._read(request)
            except ValueError as exc:
                responses.append(backend.error_response(str(exc), invalid_argument=True))
                if self.decoupled:
                    self._finish(request, responses.pop())
                continue
            try:
                if self.decoupled:
                    self._stream(request, prompt, image, max_tokens, json_schema)
                else:
                    responses.append(_response(self.engine.generate(prompt, image, max_tokens, json_schema)))
            except ValueError as exc:  # e.g. a schema the grammar compiler rejects
                error = backend.error_response(str(exc), invalid_argument=True)
                if self.decoupled:
                    self._finish(request, error)
                else:
                    responses.append(error)
            except Exception as exc:
                error = backend.error_response(f"generation failed: {exc}")
                if self.decoupled:
                    self._finish(request, error)
                else:
                    responses.append(error)
        return None if self.decoupled else responses

    def _read(self, request: Any) -> tuple[str, np.ndarray | None, int, str | None]:
        prompt_tensor = pb_utils.get_input_tensor_by_name(request, contract.VLM_PROMPT)
        prompt = _text(prompt_tensor.as_numpy().reshape(-1)[0])
        image_tensor = pb_utils.get_input_tensor_by_name(request, contract.VLM_IMAGE)
        image = image_tensor.as_numpy() if image_tensor is not None else None
        if image is not None and min(image.shape[:2]) < 28:
            raise ValueError(f"image of {image.shape[1]}x{image.shape[0]} is smaller than 28 px")
        budget_tensor = pb_utils.get_input_tensor_by_name(request, contract.VLM_MAX_TOKENS)
        max_tokens = (
            int(budget_tensor.as_numpy().reshape(-1)[0]) if budget_tensor else self.default_max_tokens
        )
        if not 1 <= max_tokens <= 4096:
            raise ValueError(f"max_tokens must be in 1..4096, got {max_tokens}")
        schema_tensor = pb_utils.get_input_tensor_by_name(request, contract.VLM_JSON_SCHEMA)
        json_schema = _text(schema_tensor.as_numpy().reshape(-1)[0]) if schema_tensor is not None else None
        return prompt, image, max_tokens, json_schema

    def _stream(
        self, request: Any, prompt: str, image: np.ndarray | None, max_tokens: int, json_schema: str | None
    ) -> None:
        sender = request.get_response_sender()
        for piece in self.engine.stream(prompt, image, max_tokens, json_schema):
            sender.send(_response(piece))
        sender.send(flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL)

    @staticmethod
    def _finish(request: Any, response: Any) -> None:
        request.get_response_sender().send(response, flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL)


def _text(value: Any) -> str:
    return value.decode("utf-8") if isinstance(value, bytes) else str(value)


def _response(generation: Generation) -> Any:
    return pb_utils.InferenceResponse(
        output_tensors=[
            pb_utils.Tensor(contract.VLM_TEXT, np.array([generation.text.encode("utf-8")], dtype=np.object_)),
            pb_utils.Tensor(contract.VLM_TOKEN_IDS, np.asarray(generation.token_ids, dtype=np.int32)),
        ]
    )
