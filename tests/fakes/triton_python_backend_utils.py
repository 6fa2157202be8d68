"""A small fake of Triton's `triton_python_backend_utils` (tests only; see tests/fakes/README.md).

The real module exists only inside Triton's python-backend stub. This fake has the part our models
use, with the real names and call forms (python_backend README @ r26.07):
- `Tensor(name, array)` with `.name()` and `.as_numpy()`;
- `InferenceResponse(output_tensors=..., error=...)`;
- `TritonError(message, code)` and its codes;
- a request's `inputs()`, `get_response_sender()`, `is_cancelled()` and `request_id()`;
- `ResponseSender.send(response=None, flags=0)`: a send after the FINAL flag raises, as in the
  real backend;
- `Logger.log_info/log_warn/log_error/log_verbose`;
- the helper functions, and `TRITONSERVER_RESPONSE_COMPLETE_FINAL`.

Test-only extras: `InferenceRequest.cancel()` flips `is_cancelled()`; `ResponseSender.responses`
records every send; `Logger.lines` records every log line.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

TRITONSERVER_RESPONSE_COMPLETE_FINAL = 1


class TritonModelException(Exception):
    pass


class TritonError:
    UNKNOWN = 0
    INTERNAL = 1
    NOT_FOUND = 2
    INVALID_ARG = 3
    UNAVAILABLE = 4
    UNSUPPORTED = 5
    ALREADY_EXISTS = 6
    CANCELLED = 7

    def __init__(self, message: str, code: int = INTERNAL) -> None:
        self._message, self._code = message, code

    def message(self) -> str:
        return self._message

    def code(self) -> int:
        return self._code

    def __repr__(self) -> str:
        return f"TritonError({self._message!r}, {self._code})"


class Tensor:
    def __init__(self, name: str, array: np.ndarray) -> None:
        self._name, self._array = name, np.asarray(array)

    def name(self) -> str:
        return self._name

    def as_numpy(self) -> np.ndarray:
        return self._array


class InferenceResponse:
    def __init__(self, output_tensors: list[Tensor] | None = None, error: TritonError | None = None) -> None:
        self._tensors, self._error = list(output_tensors or []), error

    def output_tensors(self) -> list[Tensor]:
        return self._tensors

    def has_error(self) -> bool:
        return self._error is not None

    def error(self) -> TritonError | None:
        return self._error


@dataclass(frozen=True)
class Sent:
    """One `send` as the client would see it (`response` None: a flag-only final)."""

    response: InferenceResponse | None
    flags: int

    @property
    def final(self) -> bool:
        return bool(self.flags & TRITONSERVER_RESPONSE_COMPLETE_FINAL)


class ResponseSender:
    def __init__(self, request: InferenceRequest) -> None:
        self._request = request
        self._lock = threading.Lock()
        self.responses: list[Sent] = []
        self.closed = threading.Event()  # set by the FINAL send

    def send(self, response: InferenceResponse | None = None, flags: int = 0) -> None:
        with self._lock:
            if self.closed.is_set():
                raise TritonModelException("Unable to send response. Response sender has been closed.")
            self.responses.append(Sent(response, flags))
            if flags & TRITONSERVER_RESPONSE_COMPLETE_FINAL:
                self.closed.set()

    def is_cancelled(self) -> bool:
        return self._request.is_cancelled()


class InferenceRequest:
    _ids: ClassVar[int] = 0

    def __init__(
        self, model_name: str = "", inputs: list[Tensor] | None = None, requested_output_names: Any = None
    ) -> None:
        InferenceRequest._ids += 1
        self._id = str(InferenceRequest._ids)
        self._inputs = list(inputs or [])
        self._cancelled = threading.Event()
        self._sender = ResponseSender(self)

    def inputs(self) -> list[Tensor]:
        return self._inputs

    def request_id(self) -> str:
        return self._id

    def get_response_sender(self) -> ResponseSender:
        return self._sender

    def is_cancelled(self) -> bool:
        return self._cancelled.is_set()

    def cancel(self) -> None:
        """Test-only: the client gives up (Triton then reports `is_cancelled()`)."""
        self._cancelled.set()


class Logger:
    lines: ClassVar[list[tuple[str, str]]] = []

    @classmethod
    def log(cls, message: str, level: str = "INFO") -> None:
        cls.lines.append((level, message))

    @classmethod
    def log_info(cls, message: str) -> None:
        cls.log(message, "INFO")

    @classmethod
    def log_warn(cls, message: str) -> None:
        cls.log(message, "WARN")

    @classmethod
    def log_error(cls, message: str) -> None:
        cls.log(message, "ERROR")

    @classmethod
    def log_verbose(cls, message: str) -> None:
        cls.log(message, "VERBOSE")


def get_input_tensor_by_name(inference_request: InferenceRequest, name: str) -> Tensor | None:
    for tensor in inference_request.inputs():
        if tensor.name() == name:
            return tensor
    return None


def get_output_tensor_by_name(inference_response: InferenceResponse, name: str) -> Tensor | None:
    for tensor in inference_response.output_tensors():
        if tensor.name() == name:
            return tensor
    return None


def using_decoupled_model_transaction_policy(model_config: dict[str, Any]) -> bool:
    if "model_transaction_policy" in model_config:
        return model_config["model_transaction_policy"]["decoupled"]
    return False
