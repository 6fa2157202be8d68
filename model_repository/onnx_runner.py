"""Python-backend model that runs one ONNX graph with ONNX Runtime (the cpu profile).

The gpu profile serves the same `model.onnx` on Triton's onnxruntime backend, so the tensor
names in config.pbtxt are the graph's own and both profiles share one contract.
"""

from __future__ import annotations

import itertools
from typing import Any

import numpy as np
import onnxruntime as ort
import triton_python_backend_utils as pb_utils

from navig.model_repository import backend


class TritonPythonModel:
    def initialize(self, args: dict[str, Any]) -> None:
        config = backend.model_config(args)
        params = backend.parameters(config)
        options = ort.SessionOptions()
        options.intra_op_num_threads = int(params.get("intra_op_threads", "0"))
        options.add_session_config_entry("session.intra_op.allow_spinning", params.get("allow_spinning", "1"))
        path = backend.version_dir(args) / params.get("onnx_file", "model.onnx")
        self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        self.inputs = [i["name"] for i in config["input"]]
        self.outputs = [o["name"] for o in config["output"]]

    def execute(self, requests: list[Any]) -> list[Any]:
        """Runs the dynamic batcher's requests as one ORT call (it only groups equal shapes). A request
        with an empty tensor is answered INVALID_ARGUMENT on its own (ONNX Runtime would fail the whole
        call with an INTERNAL error about a node); the others still run."""
        try:
            arrays = [
                [pb_utils.get_input_tensor_by_name(r, name).as_numpy() for name in self.inputs]
                for r in requests
            ]
        except Exception as exc:
            return [backend.error_response(f"inputs: {exc}") for _ in requests]
        responses = [self._empty(a) for a in arrays]
        live = [k for k, response in enumerate(responses) if response is None]
        if live:
            for k, response in zip(live, self._run([arrays[k] for k in live]), strict=True):
                responses[k] = response
        return responses

    def _empty(self, arrays: list[np.ndarray]) -> Any | None:
        for name, array in zip(self.inputs, arrays, strict=True):
            if 0 in array.shape:
                return backend.error_response(
                    f"{name}: an empty tensor, shape {list(array.shape)}: every dimension must be at least 1",
                    invalid_argument=True,
                )
        return None

    def _run(self, arrays: list[list[np.ndarray]]) -> list[Any]:
        try:
            feeds = {name: np.concatenate([a[k] for a in arrays]) for k, name in enumerate(self.inputs)}
            results = self.session.run(self.outputs, feeds)
        except Exception as exc:  # one bad batch must not take the model down
            return [backend.error_response(f"onnxruntime: {exc}") for _ in arrays]
        bounds = np.cumsum([0] + [a[0].shape[0] for a in arrays])
        return [
            pb_utils.InferenceResponse(
                output_tensors=[
                    pb_utils.Tensor(name, np.ascontiguousarray(result[lo:hi]))
                    for name, result in zip(self.outputs, results)
                ]
            )
            for lo, hi in itertools.pairwise(bounds)
        ]
