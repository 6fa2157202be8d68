"""One model call over Triton's gRPC API, the way the orchestrator makes it: unary for most models, the
stream API for decoupled ones, with the batch dimension when the model batches."""

from __future__ import annotations

import queue
import time
from dataclasses import dataclass, field

import numpy as np
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException

from navig.model_repository import contract
from navig.orchestrator.triton_client import infer_inputs, vlm_inputs


@dataclass
class Generated:
    text: str = ""
    token_ids: list[int] = field(default_factory=list)
    responses: int = 0  # responses that carried text (a streaming model sends one per piece)
    seconds: float = 0.0


class Server:
    def __init__(self, url: str) -> None:
        self.url = url
        self.client = grpcclient.InferenceServerClient(url)
        self._configs: dict[str, bool] = {}

    def close(self) -> None:
        self.client.close()

    def decoupled(self, model: str) -> bool:
        """From the served config: decoupled models answer through the stream API."""
        if model not in self._configs:
            config = self.client.get_model_config(model, client_timeout=10.0).config
            self._configs[model] = config.model_transaction_policy.decoupled
        return self._configs[model]

    def infer(self, model: str, inputs: dict[str, np.ndarray], timeout_s: float) -> dict[str, np.ndarray]:
        result = self.client.infer(model, infer_inputs(inputs), client_timeout=timeout_s)
        return {output.name: result.as_numpy(output.name) for output in result.get_response().outputs}

    def generate(
        self,
        model: str,
        prompt: str,
        image: np.ndarray,
        max_tokens: int,
        json_schema: str,
        timeout_s: float,
        cancel_after_first: bool = False,
    ) -> Generated:
        """Greedy generation; raises InferenceServerException with Triton's status (DEADLINE_EXCEEDED
        past `timeout_s`). `cancel_after_first` (decoupled models): the client cancels the stream once
        the first piece arrives, and CANCELLED is raised."""
        decoupled = self.decoupled(model)
        inputs = vlm_inputs(prompt, image, max_tokens, json_schema)
        started = time.perf_counter()
        out = Generated()
        if not decoupled:
            answer = self.infer(model, inputs, timeout_s)
            _add(out, answer[contract.VLM_TEXT], answer.get(contract.VLM_TOKEN_IDS))
        else:
            self._stream(model, inputs, timeout_s, out, cancel_after_first)
        out.seconds = time.perf_counter() - started
        return out

    def _stream(
        self,
        model: str,
        inputs: dict[str, np.ndarray],
        timeout_s: float,
        out: Generated,
        cancel_after_first: bool,
    ) -> None:
        results: queue.Queue = queue.Queue()
        self.client.start_stream(lambda result, error: results.put((result, error)), stream_timeout=timeout_s)
        try:
            self.client.async_stream_infer(model, infer_inputs(inputs), enable_empty_final_response=True)
            deadline = time.monotonic() + timeout_s
            while True:
                try:
                    result, error = results.get(timeout=max(0.0, deadline - time.monotonic()))
                except queue.Empty:
                    status = "StatusCode.DEADLINE_EXCEEDED"
                    raise InferenceServerException("no final response in time", status=status) from None
                if error is not None:
                    raise error
                response = result.get_response()
                if response.outputs:
                    _add(out, result.as_numpy(contract.VLM_TEXT), result.as_numpy(contract.VLM_TOKEN_IDS))
                    if cancel_after_first:
                        raise InferenceServerException(
                            "cancelled by the client", status="StatusCode.CANCELLED"
                        )
                if response.parameters["triton_final_response"].bool_param:
                    return
        finally:
            self.client.stop_stream(cancel_requests=True)


def _add(out: Generated, text: np.ndarray | None, token_ids: np.ndarray | None) -> None:
    if text is not None and text.size:
        out.text += text.reshape(-1)[0].decode("utf-8")
        out.responses += 1
    if token_ids is not None:
        out.token_ids += [int(t) for t in token_ids.reshape(-1)]
