"""VLM checkpoints -> `vlm` (base) and `reasoner` (base + REASONER LoRA, merged) weight folders.

Merging removes the adapter's extra matmuls at serving time and lets one engine serve the
REASONER. Real checkpoints are 7B models in bfloat16, sharded (~16.6 GB): they are exported in their
own dtype, holding at most one model in memory, whose weights stay the safetensors files' mapped pages.
The PEFT model (base + adapter) answers on image+text inputs and greedy prompts, the merge is streamed
from the base's shards into shards of the same names (`streamed_merge`), and the written files, loaded,
answer the same; within a tolerance (`merge_check`) or nothing is written.

A dtype other than the checkpoint's (`vlm.dtype` in the spec, resolved by `build.served_dtype`:
TensorRT-LLM runs Qwen2-VL in the checkpoint's dtype and its vision tower's flash-attention has no
float32) goes through float32: the merge is checked there, then the cast (`cast_check`): logits of the
float32 weights vs logits of the saved, rounded weights, within a tolerance argued beside CAST_MARGIN.
That path holds the model in float32 (2x a bfloat16 checkpoint). The `vlm` folder is a byte copy of
the base checkpoint when no cast is needed (never loaded; checked by sha256, file by file), and the
cast weights, checked like the reasoner's, when one is.
"""

from __future__ import annotations

import gc
import hashlib
import json
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from navig.export import merge_check, progress, streamed_merge
from navig.export.adapters import Adapter, apply_adapter, check_adapter
from navig.export.checkpoints import INDEX_FILE, load_pretrained, read_config, shard_limit, weight_files
from navig.export.errors import ExportError
from navig.export.fingerprint import sha256_file
from navig.export.report import ArtifactReport, folder_size
from navig.model_repository import contract
from navig.model_repository.vlm_engine import VlmInputs

QWEN2_VL_TYPES = ("qwen2_vl",)
# Files of a Hugging Face VLM folder that serving needs besides the weights.
SIDE_FILES = (
    "config.json",
    "generation_config.json",
    "preprocessor_config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "vocab.json",
    "merges.txt",
    "chat_template.json",
    "chat_template.jinja",
)
IDENTICAL_BYTES = "identical bytes (sha256)"  # the `vlm` figure: the copy is the checkpoint
TORCH_DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}
# Unit roundoff of rounding to nearest into each dtype, 2^-p with p significand bits (the implicit one
# included): bfloat16 p = 8, float16 p = 11, float32 p = 24.
UNIT_ROUNDOFF = {"bfloat16": 2.0**-8, "float16": 2.0**-11, "float32": 2.0**-24}
# Cast tolerance (`cast_check`): CAST_MARGIN x the logit change a seeded random perturbation of every
# weight by up to u of its value (uniform in [-u, u]) causes, measured around the rounded weights.
# Rounding to nearest moves each weight by at most u of its value, so that perturbation is the error
# model of the cast, and its effect on the logits calibrates the tolerance to the model's own
# sensitivity (a fixed multiple of u x max|logit| is not: the merged demo reasoner's logits move 8x
# more per u than its base's). Measured on the tiny demo checkpoints, base and merged reasoner,
# bfloat16 and float16, 3 seeds: the cast changes the logits by 0.54x to 0.92x what the perturbation
# does; the margin of 4 keeps a correct cast far from a false alarm. What the check catches is a
# broken cast: infinities (float16 overflows above 65504), NaNs, tensors left out or mixed up. Whether
# the GPU engine's own bfloat16 arithmetic keeps the answers is `navig gpu-check`'s question
# (first-token agreement), not this one's.
CAST_MARGIN = 4.0
CAST_SEED = 0
PARITY_PROMPT = "Where was this photo taken? Describe the signs, the vegetation and the architecture."


def weights_dir(repository: Path, model: str) -> Path:
    return repository / model / "1" / "weights"


def parity_images(count: int = 2) -> list[np.ndarray]:
    """Structured pseudo-photos (gradients + blocks) of two sizes, deterministic."""
    rng = np.random.default_rng(0)
    images = []
    for k, (h, w) in enumerate([(224, 308), (280, 196)][:count]):
        y, x = np.mgrid[0:h, 0:w]
        image = np.stack([x * 255 // w, y * 255 // h, (x + y + 40 * k) % 256], axis=-1).astype(np.uint8)
        image[h // 4 : h // 2, w // 5 : w // 2] = rng.integers(0, 256, 3, dtype=np.uint8)
        images.append(image)
    return images


def checkpoint_dtype(config: dict) -> str:
    """The dtype a Hugging Face checkpoint's config.json states (`torch_dtype`, or `dtype` as
    transformers 5 writes it); float32 when it states none (from_pretrained's default)."""
    return str(config.get("torch_dtype") or config.get("dtype") or "float32")


def _weights(model: Any) -> list[torch.Tensor]:
    """The floating-point tensors save_pretrained writes (parameters, persistent buffers), once each."""
    seen: set[int] = set()
    tensors = []
    for tensor in model.state_dict().values():
        if tensor.is_floating_point() and tensor.data_ptr() not in seen:
            seen.add(tensor.data_ptr())
            tensors.append(tensor)
    return tensors


def _round(model: Any, dtype: str) -> None:
    """Each weight rounded to `dtype`, in place, kept in float32 storage."""
    for tensor in _weights(model):
        tensor.copy_(tensor.to(TORCH_DTYPES[dtype]))


def _perturb(model: Any, u: float, undo: bool = False) -> None:
    """Multiplies every weight by 1 + d, d uniform in [-u, u] (seeded); `undo` divides by the same."""
    generator = torch.Generator().manual_seed(CAST_SEED)
    for tensor in _weights(model):
        factor = 1 + u * (2 * torch.rand(tensor.shape, generator=generator) - 1)
        tensor.div_(factor) if undo else tensor.mul_(factor)


def _logits(model: Any, samples: list[dict]) -> list[torch.Tensor]:
    with torch.inference_mode():
        return [model(**s).logits for s in samples]


def _max_diff(a: list[torch.Tensor], b: list[torch.Tensor]) -> float:
    return max(float((x - y).abs().max()) for x, y in zip(a, b, strict=True))


def cast_check(
    model: Any, samples: list[dict], reference: list[torch.Tensor], dtype: str
) -> tuple[float, float]:
    """Rounds the float32 `model`'s weights to `dtype` in place (they stay rounded, in float32
    storage) and returns (max |logit difference| vs `reference`, the float32 weights' logits; its
    tolerance, argued beside CAST_MARGIN)."""
    _round(model, dtype)
    cast = _logits(model, samples)
    with torch.no_grad():
        _perturb(model, UNIT_ROUNDOFF[dtype])
    perturbed = _logits(model, samples)
    with torch.no_grad():
        _perturb(model, UNIT_ROUNDOFF[dtype], undo=True)  # within float32 roundoff of the rounded weights,
    _round(model, dtype)  # which rounding again restores exactly
    return _max_diff(reference, cast), CAST_MARGIN * _max_diff(cast, perturbed)


def save_weights(model: Any, base: Path, target: Path, dtype: str) -> None:
    """`model` in `dtype` as a Hugging Face folder with the base checkpoint's side files, sharded as the
    base is (`checkpoints.shard_limit`: shards no larger than its largest, with an index; one file
    when it is one file). config.json is the model's (stating the saved dtype), with `torch_dtype`
    beside transformers 5's `dtype`, so a transformers 4.x reader (TensorRT-LLM's) finds it too."""
    if target.exists():
        shutil.rmtree(target)
    copy_side_files(base, target)
    model.to(TORCH_DTYPES[dtype])
    total = sum(t.nbytes for t in _weights(model))
    with progress.watched(
        f"saving {target.parent.parent.name} weights", total, progress.bytes_on_disk(target)
    ):
        # safetensors >= 0.6 writes each tensor from its memory: no serialized copy of a shard
        model.save_pretrained(target, safe_serialization=True, max_shard_size=shard_limit(base))
    config_file = target / "config.json"
    config = json.loads(config_file.read_text())
    config["torch_dtype"] = config.get("dtype", dtype)
    config_file.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")


def cast_report(model: str, target: Path, diff: float, tolerance: float, started: float, dtype: str, n: int):
    return ArtifactReport(
        model=model,
        path=target,
        size_bytes=folder_size(target),
        max_abs_diff=diff,
        tolerance=tolerance,
        seconds=time.perf_counter() - started,
        check=(
            f"logits: float32 weights vs the saved {dtype} weights (computed in float32), {n} image+text "
            f"inputs; tolerance {CAST_MARGIN:g}x the change from perturbing every weight by up to "
            f"u({dtype}) = {UNIT_ROUNDOFF[dtype]:.1e} of its value (vlm.py CAST_MARGIN)"
        ),
    )


def copy_side_files(source: Path, target: Path) -> None:
    target.mkdir(parents=True, exist_ok=True)
    for name in SIDE_FILES:
        if (source / name).is_file():
            shutil.copy2(source / name, target / name)


def export_base(base: Path, repository: Path, dtype: str | None = None) -> ArtifactReport:
    """The GUESSER/describer serve the base checkpoint as it is: copied, never loaded, not re-saved,
    and the copy checked byte for byte (sha256 of every file against its source's, the source hashed
    as it is read). When `dtype` differs from the checkpoint's own, the weights are cast and saved
    instead, and the cast checked (`cast_check`)."""
    started = time.perf_counter()
    config = read_config(base, QWEN2_VL_TYPES)
    if dtype is not None and dtype != checkpoint_dtype(config):
        return _export_cast_base(base, repository, dtype, started)
    target = weights_dir(repository, contract.VLM)
    if target.exists():
        shutil.rmtree(target)
    target.mkdir(parents=True)
    files = [base / n for n in SIDE_FILES if (base / n).is_file()] + weight_files(base)
    try:
        copied = copy_verified(files, target)
    except ExportError:
        shutil.rmtree(target)
        raise
    return ArtifactReport(
        model=contract.VLM,
        path=target,
        size_bytes=folder_size(target),
        max_abs_diff=None,
        tolerance=None,
        seconds=time.perf_counter() - started,
        check=f"sha256 of each copied file ({copied}) vs its source in the base checkpoint",
        figure=IDENTICAL_BYTES,
    )


def copy_verified(files: list[Path], target: Path, chunk: int = 1 << 24) -> int:
    """Copies `files` into `target` in chunks, hashing each source as it is read, then hashes each copy
    read back; returns how many. Progress: bytes and files."""
    total = sum(f.stat().st_size for f in files)
    with progress.byte_task("vlm: copying the base checkpoint", 2 * total) as update:
        for k, source in enumerate(files, 1):
            update(shards=f"file {k}/{len(files)}: copy")
            digest = hashlib.sha256()
            with source.open("rb") as src, (target / source.name).open("wb") as dst:
                while block := src.read(chunk):
                    digest.update(block)
                    dst.write(block)
                    update(len(block))
            shutil.copystat(source, target / source.name)
            update(shards=f"file {k}/{len(files)}: sha256 of the copy")
            copy = hashlib.sha256()
            with (target / source.name).open("rb") as f:
                while block := f.read(chunk):
                    copy.update(block)
                    update(len(block))
            if copy.hexdigest() != digest.hexdigest():
                raise ExportError(
                    f"vlm: the copy of {source} differs from its source "
                    f"(sha256 {copy.hexdigest()[:12]}... vs {digest.hexdigest()[:12]}...)"
                )
    return len(files)


def _export_cast_base(base: Path, repository: Path, dtype: str, started: float) -> ArtifactReport:
    model = load_base(base, torch.float32)
    samples = parity_samples(base, model)
    diff, tolerance = cast_check(model, samples, _logits(model, samples), dtype)
    if not diff <= tolerance:
        raise ExportError(f"vlm: {dtype} weights' logits differ by {diff:.2e} > tolerance {tolerance:.1e}")
    target = weights_dir(repository, contract.VLM)
    save_weights(model, base, target, dtype)
    return cast_report(contract.VLM, target, diff, tolerance, started, dtype, len(samples))


def parity_samples(base: Path, model: Any) -> list[dict]:
    inputs_for = VlmInputs(base, model.config.vision_config.spatial_merge_size, model.config.image_token_id)
    return [inputs_for(PARITY_PROMPT, image) for image in parity_images()]


def verify_copy(source: Path, copy: Path) -> int:
    """Every file in `copy` has the sha256 of the same-named file in `source`; returns how many."""
    files = sorted(p for p in copy.iterdir() if p.is_file())
    for path in files:
        want, got = sha256_file(source / path.name), sha256_file(path)
        if got != want:
            raise ExportError(
                f"vlm: the copy of {source / path.name} differs from its source "
                f"(sha256 {got[:12]}... vs {want[:12]}...)"
            )
    return len(files)


def export_merged_reasoner(
    base: Path, adapter: Path, repository: Path, tolerance: float, dtype: str = "float32"
) -> list[ArtifactReport]:
    """The REASONER adapter merged into the base and saved in `dtype`. In the checkpoint's own dtype
    the model is loaded once, in that dtype, and merged in place, the merge checked on that one model
    (`merge_check`): one report. Otherwise (a forced dtype) the merge is checked in float32 and the
    cast too: two reports, same folder."""
    started = time.perf_counter()
    found = check_adapter(adapter, base)
    if dtype == checkpoint_dtype(read_config(base, QWEN2_VL_TYPES)):
        return [_merge_in_dtype(base, found, repository, tolerance, dtype, started)]
    return _merge_in_float32_then_cast(base, found, repository, tolerance, dtype, started)


def load_base(base: Path, dtype: torch.dtype) -> Any:
    """The base checkpoint in `dtype`, with byte progress (resident memory filled vs expected size)."""
    from transformers import Qwen2VLForConditionalGeneration

    expected = sum(f.stat().st_size for f in base.glob("*.safetensors"))
    expected = (
        expected
        * dtype.itemsize
        // TORCH_DTYPES[checkpoint_dtype(read_config(base, QWEN2_VL_TYPES))].itemsize
    )
    shards = len(list(base.glob("*.safetensors")))
    with progress.watched(
        f"loading the base ({shards} shard(s), {dtype})", expected, progress.resident_growth()
    ):
        return load_pretrained(Qwen2VLForConditionalGeneration, base, QWEN2_VL_TYPES, dtype=dtype)


def _merge_in_dtype(
    base: Path, adapter: Adapter, repository: Path, tolerance: float, dtype: str, started: float
) -> ArtifactReport:
    """PEFT (base files + adapter) answers first; the merge is streamed into the target files
    (`streamed_merge`); the written files, loaded, answer second. One model in memory at a time, its
    weights the files' mapped pages: no copy of the base, and no anonymous 16 GB for a 7B one."""
    model = load_base(base, TORCH_DTYPES[dtype])
    samples = parity_samples(base, model)
    prompts = greedy_samples(base, model)
    peft_model, adapted = apply_adapter(model, adapter)
    before, greedy_before = merge_check.logits(peft_model, samples), merge_check.greedy(peft_model, prompts)
    loras = streamed_merge.lora_weights(peft_model, adapted)
    del model, peft_model
    gc.collect()
    target = weights_dir(repository, contract.REASONER)
    if target.exists():
        shutil.rmtree(target)
    copy_side_files(base, target)
    try:
        streamed_merge.merge_files(base, target, loras, sorted(base.glob("*.safetensors")))
        streamed_merge.copy_index(base, target, INDEX_FILE)
        config_file = target / "config.json"
        config = json.loads(config_file.read_text())
        config["torch_dtype"] = config["dtype"] = dtype
        config_file.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
        diff, tolerance, greedy = _check_merged(
            target, samples, prompts, adapted, before, greedy_before, dtype, tolerance
        )
    except BaseException:
        shutil.rmtree(target)
        raise
    check = (
        f"logits: merged (the written files) vs PEFT-unmerged (base + adapter), {dtype}, one model in "
        f"memory at a time, {len(samples)} image+text inputs"
    )
    if dtype != "float32":
        check += (
            f"; tolerance {merge_check.MERGE_MARGIN:g}x the change from perturbing each merged weight by "
            f"up to u({dtype}) = {UNIT_ROUNDOFF[dtype]:.1e} of its value (merge_check.MERGE_MARGIN)"
        )
    return ArtifactReport(
        model=contract.REASONER,
        path=target,
        size_bytes=folder_size(target),
        max_abs_diff=diff,
        tolerance=tolerance,
        seconds=time.perf_counter() - started,
        check=f"{check}; {greedy.summary()} ({len(prompts)} text prompts)",
        warnings=adapter.warnings,
    )


def _check_merged(
    target: Path,
    samples: list[dict],
    prompts: list[dict],
    adapted: list[str],
    before: list[torch.Tensor],
    greedy_before: list[merge_check.Greedy],
    dtype: str,
    tolerance: float,
) -> tuple[float, float, merge_check.GreedyComparison]:
    """The merged files against the PEFT answers; the tolerance calibrated in 16-bit dtypes
    (merge_check), the spec's in float32. Raises ExportError past it."""
    merged_model = load_base(target, TORCH_DTYPES[dtype])
    after, greedy_after = merge_check.logits(merged_model, samples), merge_check.greedy(merged_model, prompts)
    diff = merge_check.max_diff(before, after)
    if dtype != "float32":
        with merge_check.perturbed(merged_model, adapted, UNIT_ROUNDOFF[dtype]):
            tolerance = merge_check.MERGE_MARGIN * merge_check.max_diff(
                after, merge_check.logits(merged_model, samples)
            )
    greedy = merge_check.compare_greedy(greedy_before, greedy_after, tolerance)
    if not diff <= tolerance:
        raise ExportError(f"reasoner: merged vs PEFT logits differ by {diff:.2e} > tolerance {tolerance:.1e}")
    if greedy.failures:
        raise ExportError(f"reasoner: merged vs PEFT greedy tokens differ: {'; '.join(greedy.failures)}")
    return diff, tolerance, greedy


def greedy_samples(base: Path, model: Any) -> list[dict]:
    inputs_for = VlmInputs(base, model.config.vision_config.spatial_merge_size, model.config.image_token_id)
    return [inputs_for(prompt, None) for prompt in merge_check.GREEDY_PROMPTS]


def _merge_in_float32_then_cast(
    base: Path, adapter: Adapter, repository: Path, tolerance: float, dtype: str, started: float
) -> list[ArtifactReport]:
    """A dtype other than the checkpoint's: float32 holds both without rounding the merge twice, at
    float32's memory (2x a bfloat16 checkpoint's)."""
    model = load_base(base, torch.float32)
    samples = parity_samples(base, model)
    peft_model, _ = apply_adapter(model, adapter)
    unmerged = _logits(peft_model, samples)
    merged_model = peft_model.merge_and_unload()
    merged = _logits(merged_model, samples)
    diff = _max_diff(unmerged, merged)
    if not diff <= tolerance:
        raise ExportError(f"reasoner: merged vs PEFT logits differ by {diff:.2e} > tolerance {tolerance:.0e}")
    cast = None
    if dtype != "float32":
        cast_started = time.perf_counter()
        cast = cast_check(merged_model, samples, merged, dtype)
        if not cast[0] <= cast[1]:
            raise ExportError(
                f"reasoner: {dtype} weights' logits differ by {cast[0]:.2e} > tolerance {cast[1]:.1e}"
            )
    target = weights_dir(repository, contract.REASONER)
    save_weights(merged_model, base, target, dtype)
    reports = [
        ArtifactReport(
            model=contract.REASONER,
            path=target,
            size_bytes=folder_size(target),
            max_abs_diff=diff,
            tolerance=tolerance,
            seconds=time.perf_counter() - started,
            check=f"logits: merged vs PEFT-unmerged, float32, {len(samples)} image+text inputs",
            warnings=adapter.warnings,
        )
    ]
    if cast is not None:
        reports.append(cast_report(contract.REASONER, target, *cast, cast_started, dtype, len(samples)))
    return reports
