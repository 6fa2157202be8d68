"""ocr: PP-OCR detection + recognition of one image, calling ocr_det and ocr_rec via BLS."""

from navig.model_repository.ocr_model import TritonPythonModel

__all__ = ["TritonPythonModel"]
