"""Opt-in int8 encoders (export spec `precision: int8`), kept only behind a parity gate.

ONNX Runtime dynamic quantization: weights become int8 per output channel, activations are quantized
per call from their own range, so no calibration set has to stay representative of users' photos.
The int8 graph is compared with the fp32 graph it came from (already checked against PyTorch) on the
sample photos and texts. Below the gate the export refuses with the figure (ExportError): an int8
model that answers differently is never served silently, and nothing falls back to fp32 unasked.

What is quantized, and why:
- clip_image: every MatMul/Gemm/Conv weight. Gate: min cosine of the embeddings. clip_text stays
  fp32: it embeds the guidebook's clues once, offline, in ~3 ms a batch, and its int8 graph misses
  the gate on the tiny preset (min cosine 0.9983; 0.9991 on the small one).
- detector: only the decoder's linear layers. The two-stage query selection ranks ~10^4 proposals
  and keeps the best few hundred; int8 features in the backbone or the fusion encoder reorder that
  ranking and change which queries exist at all (on the small preset 30-45% of the crops moved),
  while after selection int8 moves boxes by far less than the IoU the gate asks. Gate: agreement of
  the crops the fast pipeline cuts (`detection_agreement`).
The gpu profile refuses int8 (spec): TensorRT's int8 needs its own calibration cache or a Q/DQ
graph, which this dynamic (integer-op) graph is not.
"""

from __future__ import annotations

import ast
import dataclasses
import logging
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import onnx
import onnxruntime as ort
from PIL import Image

from navig.export.errors import ExportError
from navig.export.report import ArtifactReport
from navig.export.samples import SAMPLES_DIR, load_samples
from navig.model_repository import contract

if TYPE_CHECKING:
    from navig.export.spec import ExportSpec

PRECISIONS = ("fp32", "int8")
# Embeddings feed a nearest-neighbour search over guidebook entries: at cosine 0.999 an embedding moves
# by at most sqrt(2 * 0.001) = 0.045 of its length, well inside the gaps between distinct clues.
COSINE_REQUIRED = 0.999
# The crops the fast pipeline cuts (orchestrator settings' defaults: box_threshold, max_crops).
BOX_THRESHOLD = 0.35
MAX_CROPS = 12
IOU_REQUIRED = 0.9  # a crop differing by less moves each side by ~2-3% of the box: the same crop
# The fp32 export itself lets 6 of an image's 100 detections differ between ORT and PyTorch (near-tied
# proposals, detector.QUERIES_MAY_DIFFER_PER_PROMPT): int8 may not move the crops more than changing
# runtime already does.
AGREEMENT_REQUIRED = 0.95
BATCH = 8  # gate inputs per ORT call
CLIP_SCOPES: tuple[str, ...] = ("",)  # every layer
DETECTOR_SCOPES = ("detector.model.decoder",)
QUANTIZED_OPS = ("MatMul", "Gemm", "Conv")
SCOPES_KEY = "pkg.torch.onnx.name_scopes"  # the torch module path the dynamo exporter records per node
_KEYS = (contract.DETECTOR_BOXES, contract.DETECTOR_SCORES, contract.DETECTOR_LABELS)


@dataclass(frozen=True)
class Agreement:
    """Crops of the fp32 graph found again in the int8 graph's output (and the other way round)."""

    value: float  # min(recall, precision): the fraction the gate compares
    recall: float  # fp32 crops with an int8 counterpart
    precision: float  # int8 crops with an fp32 counterpart
    crops: int  # fp32 crops compared
    photos: int

    def figures(self) -> dict[str, float | int]:
        return {
            "box_agreement": self.value,
            "required": AGREEMENT_REQUIRED,
            "recall": self.recall,
            "precision": self.precision,
            "crops": self.crops,
            "photos": self.photos,
            "iou": IOU_REQUIRED,
            "box_threshold": BOX_THRESHOLD,
            "max_crops": MAX_CROPS,
        }


def quantized(spec: ExportSpec, reports: list[ArtifactReport]) -> list[ArtifactReport]:
    """An export step's reports, with the models the spec wants in int8 quantized and gated in place."""
    wanted = set()
    if spec.clip and spec.clip.precision == "int8":
        wanted.add(contract.CLIP_IMAGE)
    if spec.detector and spec.detector.precision == "int8":
        wanted.add(contract.DETECTOR)
    return [quantize_artifact(r) if r.model in wanted else r for r in reports]


def quantize_artifact(
    report: ArtifactReport,
    *,
    cosine_required: float = COSINE_REQUIRED,
    agreement_required: float = AGREEMENT_REQUIRED,
) -> ArtifactReport:
    """Replaces the fp32 graph at report.path by its int8 version when that passes the gate."""
    started = time.perf_counter()
    fp32, int8 = report.path, report.path.with_suffix(".int8.onnx")
    try:
        if report.model == contract.DETECTOR:
            count = quantize_graph(fp32, int8, DETECTOR_SCOPES)
            agreement = detection_agreement(fp32, int8, sample_photos())
            gate, passed = agreement.figures(), agreement.value >= agreement_required
            gate["required"] = agreement_required
            figure = (
                f"box agreement {agreement.value:.3f} (required {agreement_required}: {agreement.crops} "
                f"crops of {agreement.photos} sample photos, score >= {BOX_THRESHOLD}, best {MAX_CROPS}, "
                f"same label, IoU >= {IOU_REQUIRED}; recall {agreement.recall:.3f}, "
                f"precision {agreement.precision:.3f})"
            )
            what = f"int8 decoder ({count} linear layers, dynamic, per-channel weights) vs the fp32 graph"
        else:
            count = quantize_graph(fp32, int8, CLIP_SCOPES)
            feeds = clip_feeds(report.model, fp32.parent)
            cosine = min_cosine(fp32, int8, feeds)
            inputs = sum(len(next(iter(f.values()))) for f in feeds)
            gate = {"min_cosine": cosine, "required": cosine_required, "inputs": inputs}
            passed = cosine >= cosine_required
            figure = f"min cosine {cosine:.5f} (required {cosine_required}) over {inputs} sample inputs"
            what = f"int8 ({count} layers, dynamic, per-channel weights) vs the fp32 graph"
        if not passed:
            raise ExportError(
                f"{report.model}: int8 fails its parity gate, {figure}; export it with precision: fp32"
            )
        os.replace(int8, fp32)
    except Exception:
        int8.unlink(missing_ok=True)
        fp32.unlink(missing_ok=True)  # no half-finished repository: the export refuses as a whole
        raise
    return dataclasses.replace(
        report,
        size_bytes=fp32.stat().st_size,
        seconds=report.seconds + time.perf_counter() - started,
        check=f"{report.check}; then {what}: {figure}",
        precision="int8",
        gate=gate,
    )


def quantize_graph(fp32: Path, int8: Path, scopes: Sequence[str]) -> int:
    """Dynamic int8 of the weighted ops under the given module scopes; returns how many were chosen."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    model = onnx.load(str(fp32), load_external_data=False)
    nodes = [
        n.name
        for n in model.graph.node
        if n.op_type in QUANTIZED_OPS and any(s.startswith(scope) for s in _scopes(n) for scope in scopes)
    ]
    if not nodes:
        raise ExportError(f"{fp32.parent.parent.name}: no layer to quantize under {', '.join(scopes)}")
    quiet = logging.getLogger().level
    logging.getLogger().setLevel(logging.ERROR)  # "consider pre-processing" chatter: it fails on these graphs
    try:
        quantize_dynamic(
            str(fp32),
            str(int8),
            weight_type=QuantType.QInt8,
            per_channel=True,
            nodes_to_quantize=nodes,
            op_types_to_quantize=list(QUANTIZED_OPS),
        )
    except Exception as exc:
        raise ExportError(f"{fp32.parent.parent.name}: int8 quantization failed: {exc}") from exc
    finally:
        logging.getLogger().setLevel(quiet)
    return len(nodes)


def _scopes(node: onnx.NodeProto) -> list[str]:
    for prop in node.metadata_props:
        if prop.key == SCOPES_KEY:
            return [s for s in ast.literal_eval(prop.value) if s] or [""]
    return [""]


def sample_photos(folder: Path = SAMPLES_DIR) -> np.ndarray:
    """The committed sample photos, uint8 RGB [N, H, W, 3] (all one canvas size)."""
    return np.stack([np.asarray(Image.open(folder / s.file).convert("RGB")) for s in load_samples(folder)])


def clip_feeds(model: str, version_dir: Path) -> list[dict[str, np.ndarray]]:
    """The gate's inputs: the sample photos and the export's random parity images (clip_image), or the
    export's parity texts and the samples' sign lines, tokenized with the saved tokenizer (clip_text)."""
    from navig.export.clip import PARITY_IMAGE_SIZES, PARITY_TEXTS, TOKENIZER_DIR, tokenize

    if model == contract.CLIP_IMAGE:
        rng = np.random.default_rng(0)
        photos = sample_photos()
        feeds = [{contract.CLIP_IMAGE_IMAGES: photos[i : i + BATCH]} for i in range(0, len(photos), BATCH)]
        feeds += [
            {contract.CLIP_IMAGE_IMAGES: rng.integers(0, 256, (2, h, w, 3), dtype=np.uint8)}
            for h, w in PARITY_IMAGE_SIZES
        ]
        return feeds
    texts = [*PARITY_TEXTS, *(" ".join(s.lines) for s in load_samples(SAMPLES_DIR))]
    feeds = []
    for i in range(0, len(texts), BATCH):
        ids, mask = tokenize(version_dir / TOKENIZER_DIR, texts[i : i + BATCH])
        feeds.append({contract.CLIP_TEXT_INPUT_IDS: ids, contract.CLIP_TEXT_ATTENTION_MASK: mask})
    return feeds


def _session(path: Path) -> ort.InferenceSession:
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def min_cosine(fp32: Path, int8: Path, feeds: list[dict[str, np.ndarray]]) -> float:
    """The worst cosine between the two graphs' embeddings of the same input."""
    reference, quantized_ = _session(fp32), _session(int8)
    worst = 1.0
    for feed in feeds:
        (want,), (got,) = reference.run(None, feed), quantized_.run(None, feed)
        cosine = (want * got).sum(-1) / (np.linalg.norm(want, axis=-1) * np.linalg.norm(got, axis=-1))
        worst = min(worst, float(cosine.min()))
    return worst


def detection_agreement(fp32: Path, int8: Path, photos: np.ndarray) -> Agreement:
    """The crops each graph's detections give the fast pipeline, compared photo by photo.

    A photo's crops: its detections with score >= BOX_THRESHOLD, best MAX_CROPS. A crop has a
    counterpart when the other graph has a detection of the same prompt with IoU >= IOU_REQUIRED
    and score >= BOX_THRESHOLD anywhere in its top-K (not only its best MAX_CROPS: near-tied scores
    may swap ranks across the cut, which changes no box), matched one to one. Both directions count:
    int8 may neither lose fp32's crops (recall) nor add its own (precision).
    """
    want, got = _detections(fp32, photos), _detections(int8, photos)
    found = [_counterparts(want, got, n) for n in range(len(photos))]
    back = [_counterparts(got, want, n) for n in range(len(photos))]
    crops = sum(total for _, total in found)
    if crops == 0:
        raise ExportError(
            f"detector: no detection scores >= {BOX_THRESHOLD} on the {len(photos)} sample photos: "
            "the int8 gate has nothing to compare"
        )
    recall = sum(m for m, _ in found) / crops
    precision = sum(m for m, _ in back) / max(1, sum(total for _, total in back))
    return Agreement(min(recall, precision), recall, precision, crops, len(photos))


def _detections(path: Path, photos: np.ndarray) -> dict[str, np.ndarray]:
    session = _session(path)
    names = (contract.DETECTOR_BOXES, contract.DETECTOR_SCORES, contract.DETECTOR_LABELS)
    runs = [
        session.run(list(names), {contract.DETECTOR_IMAGES: photos[i : i + BATCH]})
        for i in range(0, len(photos), BATCH)
    ]
    return {name: np.concatenate(parts) for name, parts in zip(names, zip(*runs))}


def _counterparts(side: dict[str, np.ndarray], other: dict[str, np.ndarray], n: int) -> tuple[int, int]:
    """(crops of `side` in photo n with a counterpart in `other`, crops of `side` in photo n)."""
    boxes, scores, labels = (side[k][n] for k in _KEYS)
    kept = np.flatnonzero(scores >= BOX_THRESHOLD)[np.argsort(-scores[scores >= BOX_THRESHOLD])][:MAX_CROPS]
    o_boxes, o_scores, o_labels = (other[k][n] for k in _KEYS)
    candidates = np.flatnonzero(o_scores >= BOX_THRESHOLD)
    overlap = iou(boxes[kept], o_boxes[candidates])
    overlap[labels[kept][:, None] != o_labels[candidates][None, :]] = 0.0
    matched, used = 0, set()
    for row in np.argsort(-overlap.max(1, initial=0.0)):  # surest pairs first, one to one
        for col in np.argsort(-overlap[row]):
            if overlap[row, col] < IOU_REQUIRED:
                break
            if col not in used:
                used.add(col)
                matched += 1
                break
    return matched, len(kept)


def iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """[A, B] intersection over union of x0y0x1y1 boxes."""
    lo = np.maximum(a[:, None, :2], b[None, :, :2])
    hi = np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.clip(hi - lo, 0, None).prod(-1)
    area = lambda boxes: np.clip(boxes[:, 2:] - boxes[:, :2], 0, None).prod(-1)  # noqa: E731
    return inter / np.maximum(area(a)[:, None] + area(b)[None, :] - inter, 1e-12)
