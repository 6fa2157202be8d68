"""Calls the `ocr` model of a Triton server over gRPC."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException

from navig.model_repository import contract


@dataclass(frozen=True)
class TextLine:
    text: str
    score: float
    box: list[list[float]]  # 4 corner points (x, y) in image pixels, clockwise from top-left


class OcrClient:
    def __init__(self, url: str, timeout_s: float = 60.0) -> None:
        self.url = url
        self.timeout_s = timeout_s
        self._client = grpcclient.InferenceServerClient(url)

    def wait_ready(self) -> None:
        """Raises InferenceServerException when Triton or the `ocr` model is not ready."""
        if not self._client.is_model_ready(contract.OCR):
            raise InferenceServerException(f"model '{contract.OCR}' is not ready on {self.url}")

    def read(self, image_rgb: np.ndarray) -> list[TextLine]:
        tensor = grpcclient.InferInput(contract.OCR_IMAGE, list(image_rgb.shape), "UINT8")
        tensor.set_data_from_numpy(np.ascontiguousarray(image_rgb, dtype=np.uint8))
        result = self._client.infer(contract.OCR, [tensor], client_timeout=self.timeout_s)
        texts = result.as_numpy(contract.OCR_TEXTS)
        boxes = result.as_numpy(contract.OCR_BOXES)
        scores = result.as_numpy(contract.OCR_SCORES)
        return [
            TextLine(text=t.decode("utf-8"), score=float(s), box=b.tolist())
            for t, b, s in zip(texts, boxes, scores)
        ]

    def close(self) -> None:
        self._client.close()
