"""The probe inputs every check sends, and the reference outputs the cpu profile gave for them.

The reference is recorded once where the cpu profile runs (`navig gpu-check record`, on the export
machine) and read where the gpu profile runs, so the GPU host needs neither the export stack nor
the embedded server: only this package and the two Triton containers.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from navig.model_repository import contract
from navig.orchestrator import prompts

PROBE_VERSION = 1  # a reference recorded for other probes is refused
VLM_TOKENS = 8  # greedy tokens compared per VLM
PROMPT = prompts.DESCRIBE["road sign"]


def probe_image() -> np.ndarray:
    """A 480 x 640 picture of a yellow sign reading "KOELN 3 km", the same bytes on every machine
    (Pillow's built-in bitmap font, drawn small and enlarged without smoothing)."""
    font = getattr(ImageFont, "load_default_imagefont", ImageFont.load_default)()  # bitmap, not FreeType
    sign = Image.new("RGB", (160, 40), (250, 210, 0))
    ImageDraw.Draw(sign).text((8, 12), "KOELN 3 km", fill=(0, 0, 0), font=font)
    image = Image.new("RGB", (640, 480), (90, 140, 200))
    ImageDraw.Draw(image).rectangle((0, 320, 640, 480), fill=(70, 70, 70))
    image.paste(sign.resize((480, 120), Image.Resampling.NEAREST), (80, 80))
    return np.asarray(image)


def encoder_inputs() -> dict[str, dict[str, np.ndarray]]:
    """Model -> input tensors (batch of one), in the served contract's names and dtypes."""
    image = probe_image()
    ids = np.array([[1, 17, 42, 5, 2]], np.int64)  # small ids: any CLIP vocabulary has them
    rng = np.random.default_rng(0)
    return {
        contract.DETECTOR: {contract.DETECTOR_IMAGES: image[None]},
        contract.CLIP_IMAGE: {contract.CLIP_IMAGE_IMAGES: image[None, 64:288, 208:432]},
        contract.CLIP_TEXT: {
            contract.CLIP_TEXT_INPUT_IDS: ids,
            contract.CLIP_TEXT_ATTENTION_MASK: np.ones_like(ids),
        },
        contract.OCR_DET: {contract.OCR_DET_INPUT: np.ascontiguousarray(image[None, :, :, ::-1])},  # BGR
        contract.OCR_REC: {contract.OCR_REC_INPUT: rng.uniform(-1, 1, (1, 3, 48, 320)).astype(np.float32)},
        contract.OCR: {contract.OCR_IMAGE: image},
    }


# The outputs compared, with the largest difference accepted and why.
COMPARED = {
    contract.DETECTOR: contract.DETECTOR_SCORES,
    contract.CLIP_IMAGE: contract.CLIP_EMBEDDINGS,
    contract.CLIP_TEXT: contract.CLIP_EMBEDDINGS,
    contract.OCR_DET: contract.OCR_DET_OUTPUT,
    contract.OCR_REC: contract.OCR_REC_OUTPUT,
}
# TensorRT against the fp32 ONNX Runtime reference: in the default FP32 mode TensorRT may still use
# TF32 matmuls on Ampere and later (10 mantissa bits), and with FP16 everything keeps ~3 significant
# digits; outputs in [0, 1] (sigmoid scores, softmax probabilities, unit-length embeddings) that pass
# through a few dozen layers then stay within ~1e-2 of fp32 (the export's own fp32 parity is < 1e-4).
# 5e-2 flags real errors (a wrong input layout or a missing normalisation moves them by > 0.1).
TOLERANCE = 5e-2


@dataclass
class Reference:
    outputs: dict[str, np.ndarray] = field(default_factory=dict)  # model -> the COMPARED output
    ocr_texts: list[str] = field(default_factory=list)
    vlm_tokens: dict[str, list[int]] = field(default_factory=dict)  # model -> greedy token ids
    source: str = ""  # where it was recorded

    def save(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        meta = {"probe_version": PROBE_VERSION, "ocr_texts": self.ocr_texts, "vlm_tokens": self.vlm_tokens,
                "source": self.source}  # fmt: skip
        with path.open("wb") as f:
            np.savez(f, meta=np.array(json.dumps(meta)), **self.outputs)

    @classmethod
    def load(cls, path: Path) -> Reference:
        """Raises ValueError for a file that is not a reference of these probes."""
        try:
            with np.load(path) as data:
                meta = json.loads(str(data["meta"]))
                outputs = {name: data[name] for name in data.files if name != "meta"}
        except (OSError, KeyError, ValueError) as exc:
            raise ValueError(f"{path} is not a gpu-check reference: {exc}") from None
        if meta.get("probe_version") != PROBE_VERSION:
            raise ValueError(f"{path} was recorded for other probes: record it again with this navig")
        return cls(outputs, meta["ocr_texts"], meta["vlm_tokens"], meta.get("source", ""))
