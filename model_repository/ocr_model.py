"""The `ocr` python-backend model: OcrPipeline with its two model calls sent over BLS."""

from __future__ import annotations

from typing import Any

import numpy as np
import triton_python_backend_utils as pb_utils

from navig.model_repository import backend, contract
from navig.model_repository.ocr_pipeline import OcrInputError, OcrPipeline, OcrSettings


class TritonPythonModel:
    def initialize(self, args: dict[str, Any]) -> None:
        params = backend.parameters(backend.model_config(args))
        characters_file = backend.version_dir(args) / "characters.txt"
        characters = characters_file.read_text(encoding="utf-8").splitlines()
        self.pipeline = OcrPipeline(characters, OcrSettings.from_parameters(params))

    def execute(self, requests: list[Any]) -> list[Any]:
        responses = []
        for request in requests:
            image = pb_utils.get_input_tensor_by_name(request, contract.OCR_IMAGE).as_numpy()
            try:
                result = self.pipeline(image, _detect, _recognize)
            except OcrInputError as exc:
                responses.append(backend.error_response(str(exc), invalid_argument=True))
                continue
            except Exception as exc:
                responses.append(backend.error_response(f"ocr failed: {exc}"))
                continue
            texts = np.array([t.encode("utf-8") for t in result.texts], dtype=np.object_)
            responses.append(
                pb_utils.InferenceResponse(
                    output_tensors=[
                        pb_utils.Tensor(contract.OCR_TEXTS, texts),
                        pb_utils.Tensor(contract.OCR_BOXES, result.boxes.astype(np.float32)),
                        pb_utils.Tensor(contract.OCR_SCORES, np.asarray(result.scores, np.float32)),
                    ]
                )
            )
        return responses


def _detect(images: np.ndarray) -> np.ndarray:
    return backend.infer(contract.OCR_DET, {contract.OCR_DET_INPUT: images}, contract.OCR_DET_OUTPUT)


def _recognize(crops: np.ndarray) -> np.ndarray:
    return backend.infer(contract.OCR_REC, {contract.OCR_REC_INPUT: crops}, contract.OCR_REC_OUTPUT)
