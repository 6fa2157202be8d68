"""The single-pass detector (`detector.single_pass`: NAVIG's prompts joined in one GroundingDINO caption)
against the per-prompt graph (one pass per prompt, NAVIG's way): detection agreement on the samples and
time per image.

Both graphs come from the same `--preset` checkpoint (default `small`): the per-prompt one is the shared
preset repository's `detector` (`benchmarks.presets`), the single-pass one is exported beside it into
`repository-<preset>-detector-single-pass/` (reused while its inputs are unchanged).

Agreement: the first `--samples` sample photos, as the orchestrator sends them (`downscale` to
DETECTOR_MAX_SIDE), through both graphs on ONNX Runtime. The detections kept are those the fast
pipeline keeps (score >= the orchestrator's default `box_threshold`). The per-prompt detections are
the reference. A single-pass detection matches one of them when it has the same label and IoU >=
`--iou`, each used once, greedily in score order (COCO's rule). Precision, recall and F1 are per
prompt and overall. The demo checkpoints are random-initialised, so these figures test the mechanics
(same boxes from the same checkpoint?), not what real GroundingDINO weights would agree on.

Time: median ms per call on ONNX Runtime in-process, batch 1 and 8 (8 samples of one shape, `--repeats`
calls after a warm-up): the two graphs' compute on the same inputs and threads. Served, each graph adds the
same gRPC and python-backend cost (benchmarks.encoders times the per-prompt graph served, beside it).
Writes build/bench/detector_single_pass.json (with the machine).
Run: `python -m benchmarks.detector_single_pass --preset small`.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import onnxruntime as ort
from PIL import Image
from rich.console import Console
from rich.progress import track
from rich.table import Table

import navig.export as export_package
import navig.model_repository as model_repository_package
from benchmarks.encoders import median_ms
from benchmarks.presets import prepare
from navig.client.profile.machine import machine
from navig.export.cli import quiet_transformers
from navig.export.demo_checkpoints import SPEC_FILE
from navig.export.detector import PER_PROMPT, SINGLE_PASS, VARIANT_KEY, export_detector
from navig.export.fingerprint import (
    EXPORT_LIBRARIES,
    code_version,
    content_digest,
    fingerprint,
    library_versions,
)
from navig.export.samples import SAMPLES_DIR, load_samples
from navig.export.spec import load_spec
from navig.model_repository import contract
from navig.orchestrator.images import downscale
from navig.orchestrator.settings import Settings

BATCHES = (1, 8)
HIGH_AGREEMENT_F1 = 0.9  # overall F1 at which single pass could become the default
Detections = dict[str, np.ndarray]


def per_prompt_repository(shared: Path) -> Path:
    """The shared preset repository, whose `detector` is the per-prompt graph (each session below reads
    its file once)."""
    if not (shared / contract.DETECTOR / "1" / "model.onnx").is_file():
        raise SystemExit(f"{shared}: no detector; another process is rebuilding it: run again after it")
    return shared


def single_pass_repository(checkpoints: Path, root: Path, preset: str, console: Console) -> Path:
    """The preset's detector exported with `single_pass` into its own repository under `root`."""
    spec = load_spec(checkpoints / SPEC_FILE)
    assert spec.detector, f"{checkpoints / SPEC_FILE} exports no detector"
    detector = spec.detector.model_copy(update={"single_pass": True})
    repository = root / f"repository-{preset}-detector-single-pass"
    inputs = {
        "detector": detector.model_dump(mode="json", exclude={"checkpoint"}),
        "checkpoint": content_digest(detector.checkpoint),
        "code": code_version(export_package, model_repository_package),
        "libraries": library_versions(EXPORT_LIBRARIES),
    }
    stamp, onnx_file = repository / ".inputs-sha256", repository / contract.DETECTOR / "1" / "model.onnx"
    if stamp.is_file() and stamp.read_text() == fingerprint(inputs) and onnx_file.is_file():
        return repository
    stamp.unlink(missing_ok=True)
    with console.status("exporting the single-pass detector (parity against HF's forward included)..."):
        report = export_detector(
            detector.checkpoint,
            onnx_file,
            image_size=detector.image_size,
            top_k=detector.top_k,
            single_pass=True,
        )
    console.print(f"single-pass export: {report.parity()}, {report.seconds:.0f} s")
    stamp.write_text(fingerprint(inputs))
    return repository


def sample_photos() -> list[np.ndarray]:
    """The samples as the orchestrator sends them to `detector` (its `view` of each photo)."""
    photos = []
    for sample in load_samples(SAMPLES_DIR):
        pixels = np.asarray(Image.open(SAMPLES_DIR / sample.file).convert("RGB"))
        photos.append(downscale(pixels, contract.DETECTOR_MAX_SIDE, 1))
    return photos


def batches(photos: list[np.ndarray], size: int) -> Iterator[np.ndarray]:
    """Photos of one shape together (a request's images share a shape), `size` at a time."""
    shapes = sorted({p.shape for p in photos})
    for shape in shapes:
        same = [p for p in photos if p.shape == shape]
        for start in range(0, len(same), size):
            yield np.stack(same[start : start + size])


def variant_of(session: ort.InferenceSession) -> str:
    """The graph's own record of its variant (exports before the option carry none: per prompt)."""
    return session.get_modelmeta().custom_metadata_map.get(VARIANT_KEY, PER_PROMPT)


def detect_all(session: ort.InferenceSession, photos: list[np.ndarray], description: str) -> list[Detections]:
    """Each photo's detections, in batches of up to 8 photos of one shape."""
    names = [o.name for o in session.get_outputs()]
    per_photo: list[Detections] = []
    for images in track(list(batches(photos, 8)), description=description):
        out = dict(zip(names, session.run(names, {contract.DETECTOR_IMAGES: images})))
        per_photo += [{k: v[i] for k, v in out.items()} for i in range(len(images))]
    return per_photo


def iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """[A, B] intersection over union of x0y0x1y1 boxes."""
    top_left = np.maximum(a[:, None, :2], b[None, :, :2])
    bottom_right = np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.prod(np.clip(bottom_right - top_left, 0, None), -1)
    area = lambda boxes: np.prod(np.clip(boxes[:, 2:] - boxes[:, :2], 0, None), -1)  # noqa: E731
    union = area(a)[:, None] + area(b)[None, :] - inter
    return np.where(union > 0, inter / np.maximum(union, 1e-12), 0.0)


def matches(reference: np.ndarray, candidates: np.ndarray, threshold: float) -> int:
    """Candidates (best score first) matched one-to-one to reference boxes with IoU >= threshold."""
    if not len(reference) or not len(candidates):
        return 0
    overlap = iou(candidates, reference)
    free = np.ones(len(reference), dtype=bool)
    matched = 0
    for row in overlap:
        best = int(np.argmax(np.where(free, row, -1.0)))
        if free[best] and row[best] >= threshold:
            free[best] = False
            matched += 1
    return matched


def kept(d: Detections, label: int, box_threshold: float, scale: np.ndarray) -> np.ndarray:
    """The boxes (pixels) of one prompt the fast pipeline keeps, best score first."""
    scores, labels = d[contract.DETECTOR_SCORES], d[contract.DETECTOR_LABELS]
    keep = (scores >= box_threshold) & (labels == label)
    return d[contract.DETECTOR_BOXES][keep] * scale


def agreement(
    reference: list[Detections],
    candidate: list[Detections],
    photos: list[np.ndarray],
    box_threshold: float,
    iou_threshold: float,
) -> dict[str, dict[str, float]]:
    """Precision, recall, F1 of the candidate's kept detections against the reference's, per prompt."""
    counts = {p: {"reference": 0, "candidate": 0, "matched": 0} for p in contract.DETECTOR_PROMPTS}
    for ref, cand, photo in zip(reference, candidate, photos):
        height, width = photo.shape[:2]
        scale = np.array([width, height, width, height], np.float32)
        for label, prompt in enumerate(contract.DETECTOR_PROMPTS):
            want, got = (kept(d, label, box_threshold, scale) for d in (ref, cand))
            counts[prompt]["reference"] += len(want)
            counts[prompt]["candidate"] += len(got)
            counts[prompt]["matched"] += matches(want, got, iou_threshold)
    counts["overall"] = {k: sum(c[k] for c in counts.values()) for k in ("reference", "candidate", "matched")}
    return {name: {**c, **scores(c)} for name, c in counts.items()}


def scores(c: dict[str, int]) -> dict[str, float]:
    precision = c["matched"] / c["candidate"] if c["candidate"] else float(c["reference"] == 0)
    recall = c["matched"] / c["reference"] if c["reference"] else float(c["candidate"] == 0)
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {"precision": precision, "recall": recall, "f1": f1}


def in_process(
    repository: Path, variant: str, photos: list[np.ndarray], eight: np.ndarray, threads: int, repeats: int
) -> tuple[dict, list[Detections]]:
    """ORT in-process: median ms at batch 1 and 8 (`eight`: photos of one shape), and every photo's
    detections."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    session = ort.InferenceSession(str(repository / contract.DETECTOR / "1" / "model.onnx"), options)
    if variant_of(session) != variant:
        raise SystemExit(f"{repository}: its detector is {variant_of(session)}, not {variant}")
    timing = {
        batch: median_ms(lambda b=batch: session.run(None, {contract.DETECTOR_IMAGES: eight[:b]}), repeats)
        for batch in BATCHES
    }
    return {"ort_ms": timing}, detect_all(session, photos, f"{variant}: {len(photos)} samples")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--preset", default="small", choices=["tiny", "small"])
    parser.add_argument(
        "--iou", type=float, default=0.5, help="IoU at which two boxes are the same detection"
    )
    parser.add_argument("--repeats", type=int, default=3, help="calls timed per batch size, after one")
    parser.add_argument("--samples", type=int, default=24, help="sample photos of the agreement (of 53)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--root", type=Path, default=Path("build/bench"))
    args = parser.parse_args()
    quiet_transformers()
    console = Console()
    checkpoints, shared = prepare(args.preset, args.root, console)
    repositories = {
        PER_PROMPT: per_prompt_repository(shared),
        SINGLE_PASS: single_pass_repository(checkpoints, args.root, args.preset, console),
    }
    box_threshold = Settings.model_fields["box_threshold"].default
    every = sample_photos()
    photos = every[: args.samples]
    eight = np.stack([p for p in every if p.shape == every[0].shape][:8])
    results: dict[str, dict] = {}
    detections: dict[str, list[Detections]] = {}
    for name, repository in repositories.items():
        results[name], detections[name] = in_process(
            repository, name, photos, eight, args.threads, args.repeats
        )
    agree = agreement(detections[PER_PROMPT], detections[SINGLE_PASS], photos, box_threshold, args.iou)
    overall_f1 = agree["overall"]["f1"]
    out = args.root / "detector_single_pass.json"
    record = {
        "machine": machine(),
        "preset": args.preset,
        "threads": args.threads,
        "repeats": args.repeats,
        "samples": len(photos),
        "box_threshold": box_threshold,
        "iou": args.iou,
        "reference": PER_PROMPT,
        "agreement": agree,
        "timing": results,
        "high_agreement_f1": HIGH_AGREEMENT_F1,
        "default_on": overall_f1 >= HIGH_AGREEMENT_F1,
        "note": (
            "random-initialised demo checkpoints: the agreement shows the mechanics, not how real "
            "GroundingDINO weights would agree"
        ),
    }
    out.write_text(json.dumps(record, indent=2) + "\n")
    show(console, args, results, agree, box_threshold, len(photos))
    verdict = "could become the default" if record["default_on"] else "stays off by default"
    console.print(f"overall F1 {overall_f1:.3f} (high: >= {HIGH_AGREEMENT_F1}): single pass {verdict}")
    console.print(f"-> {out}")


def show(
    console: Console, args: argparse.Namespace, results: dict, agree: dict, box_threshold: float, photos: int
) -> None:
    table = Table(
        title=f"single pass vs per prompt: {photos} samples, score >= {box_threshold}, "
        f"same label and IoU >= {args.iou}"
    )
    for column in ("prompt", "per-prompt dets", "single-pass dets", "matched", "precision", "recall", "F1"):
        table.add_column(column)
    for prompt, a in agree.items():
        table.add_row(
            prompt,
            str(a["reference"]),
            str(a["candidate"]),
            str(a["matched"]),
            f"{a['precision']:.3f}",
            f"{a['recall']:.3f}",
            f"{a['f1']:.3f}",
        )
    console.print(table)
    timing = Table(title=f"{args.preset} preset, {args.threads} threads: median ms per call")
    for column in ("variant", "batch", "ONNX Runtime"):
        timing.add_column(column)
    for name, r in results.items():
        for batch in BATCHES:
            ort_ms = r["ort_ms"][batch]
            timing.add_row(name, str(batch), f"{ort_ms:.0f}" if ort_ms else "-")
    console.print(timing)


if __name__ == "__main__":
    main()
