"""PP-OCR on one image, split at the two model calls so they can go to Triton.

Pre/post-processing is rapidocr's own (resize rules, DB box extraction, perspective crops,
CTC decoding); only the orchestration around the model calls lives here. The same pipeline
runs inside the `ocr` python-backend model (calls via BLS) and in-process (calls to ONNX
Runtime), which is how tests and benchmarks compare the two.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field, fields

import cv2
import numpy as np
from rapidocr.ch_ppocr_det import TextDetector
from rapidocr.ch_ppocr_det.utils import DBPostProcess, DetPreProcess
from rapidocr.ch_ppocr_rec.utils import CTCLabelDecode
from rapidocr.utils.process_img import (
    apply_vertical_padding,
    get_rotate_crop_image,
    map_boxes_to_original,
    resize_image_within_bounds,
)

REC_HEIGHT = 48
REC_MIN_WIDTH = 320  # PP-OCR's rec_img_shape width: narrower crops are padded up to it
REC_WIDTH_STEP = 64  # pad widths to a multiple so concurrent requests can share a batch

# (batch of uint8 BGR images [N, H, W, 3]) -> probability maps [N, 1, H, W]
DetectFn = Callable[[np.ndarray], np.ndarray]
# (batch of normalised crops [N, 3, 48, W]) -> per-step character probabilities [N, T, C]
RecognizeFn = Callable[[np.ndarray], np.ndarray]


class OcrInputError(ValueError):
    """The image cannot be read as text: wrong rank, channels or size."""


@dataclass(frozen=True)
class OcrSettings:
    """Defaults follow rapidocr except the det resize rule, measured best on street signs."""

    limit_side_len: int = 960
    limit_type: str = "max"
    min_side_len: int = 30
    max_side_len: int = 2000
    width_height_ratio: float = 8.0
    min_height: int = 30
    det_thresh: float = 0.3
    box_thresh: float = 0.5
    unclip_ratio: float = 1.6
    text_score: float = 0.5
    max_rec_batch: int = 64

    @classmethod
    def from_parameters(cls, params: dict[str, str]) -> OcrSettings:
        """Settings from a model config's string parameters; unknown keys are ignored."""
        types = {f.name: type(f.default) for f in fields(cls)}
        return cls(**{k: types[k](v) for k, v in params.items() if k in types})


@dataclass
class OcrResult:
    texts: list[str] = field(default_factory=list)
    boxes: np.ndarray = field(default_factory=lambda: np.zeros((0, 4, 2), np.float32))
    scores: list[float] = field(default_factory=list)


class OcrPipeline:
    def __init__(self, characters: list[str], settings: OcrSettings | None = None) -> None:
        self.settings = settings or OcrSettings()
        s = self.settings
        self._det_resize = DetPreProcess(s.limit_side_len, s.limit_type)
        self._det_post = DBPostProcess(
            thresh=s.det_thresh,
            box_thresh=s.box_thresh,
            unclip_ratio=s.unclip_ratio,
            use_dilation=True,
            score_mode="fast",
        )
        self._decode = CTCLabelDecode(character=characters)

    def __call__(self, image_rgb: np.ndarray, detect: DetectFn, recognize: RecognizeFn) -> OcrResult:
        boxes, crops = self.detect(image_rgb, detect)
        if not crops:
            return OcrResult()
        texts, scores = self.recognize(crops, recognize)
        keep = [
            i for i, (t, sc) in enumerate(zip(texts, scores)) if t.strip() and sc >= self.settings.text_score
        ]
        return OcrResult(
            texts=[texts[i] for i in keep],
            boxes=boxes[keep].astype(np.float32),
            scores=[float(scores[i]) for i in keep],
        )

    def detect(self, image_rgb: np.ndarray, detect: DetectFn) -> tuple[np.ndarray, list[np.ndarray]]:
        """Text boxes in original-image coordinates and the perspective-corrected crops."""
        validate_image(image_rgb)
        s = self.settings
        original_h, original_w = image_rgb.shape[:2]
        bgr = np.ascontiguousarray(image_rgb[:, :, ::-1])  # PP-OCR was trained on cv2 (BGR) images
        img, ratio_h, ratio_w = resize_image_within_bounds(bgr, s.min_side_len, s.max_side_len)
        record = {"preprocess": {"ratio_h": ratio_h, "ratio_w": ratio_w}}
        img, record = apply_vertical_padding(img, record, s.width_height_ratio, s.min_height)
        det_input = self._det_resize.resize(img)
        if det_input is None:
            raise OcrInputError(f"image of {original_w}x{original_h} is too small to detect text")
        prob_map = detect(det_input[np.newaxis])
        boxes, _ = self._det_post(prob_map, img.shape[:2])
        if len(boxes) == 0:
            return np.zeros((0, 4, 2), np.float32), []
        boxes = TextDetector.sorted_boxes(np.asarray(boxes, np.float32))
        crops = [get_rotate_crop_image(img, box.copy()) for box in boxes]
        boxes = map_boxes_to_original(boxes.copy(), record, original_h, original_w)
        return boxes, crops

    def recognize(self, crops: list[np.ndarray], recognize: RecognizeFn) -> tuple[list[str], list[float]]:
        """All crops in as few calls as `max_rec_batch` allows, narrowest first to limit padding."""
        order = np.argsort([c.shape[1] / c.shape[0] for c in crops], kind="stable")
        texts: list[str] = [""] * len(crops)
        scores: list[float] = [0.0] * len(crops)
        step = self.settings.max_rec_batch
        for start in range(0, len(crops), step):
            chunk = order[start : start + step]
            probs = recognize(rec_batch([crops[i] for i in chunk]))
            for i, (text, score) in zip(chunk, self._decode(probs)[0]):
                texts[i], scores[i] = text, float(score)
        return texts, scores


def validate_image(image: np.ndarray) -> None:
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise OcrInputError(f"expected a uint8 HxWx3 RGB image, got {image.dtype} {list(image.shape)}")
    if min(image.shape[:2]) < 8:
        raise OcrInputError(f"image of {image.shape[1]}x{image.shape[0]} is too small to read")


def rec_width(crops: list[np.ndarray]) -> int:
    widest = max(math.ceil(REC_HEIGHT * c.shape[1] / c.shape[0]) for c in crops)
    return max(REC_MIN_WIDTH, math.ceil(widest / REC_WIDTH_STEP) * REC_WIDTH_STEP)


def rec_batch(crops: list[np.ndarray]) -> np.ndarray:
    """Crops resized to height 48 and zero-padded (after normalisation) to one width, as PP-OCR expects."""
    width = rec_width(crops)
    batch = np.zeros((len(crops), 3, REC_HEIGHT, width), np.float32)
    for k, crop in enumerate(crops):
        w = min(width, math.ceil(REC_HEIGHT * crop.shape[1] / crop.shape[0]))
        resized = cv2.resize(crop, (w, REC_HEIGHT)).astype(np.float32)
        batch[k, :, :, :w] = (resized.transpose(2, 0, 1) / 255.0 - 0.5) / 0.5
    return batch
