"""VLM checkpoints -> `vlm` (base) and `reasoner` (base + REASONER LoRA, merged) weight folders.

Merging removes the adapter's extra matmuls at serving time and lets one engine serve the
REASONER. The merge is checked: merged and PEFT logits on the same image+text inputs must agree
within the stated tolerance, or nothing is written. The `vlm` copy is checked by sha256, file by file.
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import numpy as np
import torch

from navig.export.checkpoints import load_pretrained, read_config
from navig.export.errors import CheckpointError, ExportError
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
PARITY_PROMPT = "Where was this photo taken? Describe the signs, the vegetation and the architecture."


def weights_dir(repository: Path, model: str) -> Path:
    return repository / model / "1" / "weights"


def check_adapter(adapter: Path) -> dict:
    """A peft LoRA folder with safetensors weights, or a CheckpointError that says what is off."""
    if not adapter.is_dir():
        raise CheckpointError(f"adapter folder not found: {adapter}")
    config_file = adapter / "adapter_config.json"
    if not config_file.is_file():
        raise CheckpointError(f"{adapter}: no adapter_config.json; not a peft adapter folder")
    config = json.loads(config_file.read_text())
    if config.get("peft_type") != "LORA":
        raise CheckpointError(f"{adapter}: peft_type is {config.get('peft_type')!r}, expected 'LORA'")
    if not (adapter / "adapter_model.safetensors").is_file():
        raise CheckpointError(f"{adapter}: no adapter_model.safetensors (pickled adapters are not loaded)")
    return config


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


def copy_side_files(source: Path, target: Path) -> None:
    target.mkdir(parents=True, exist_ok=True)
    for name in SIDE_FILES:
        if (source / name).is_file():
            shutil.copy2(source / name, target / name)


def export_base(base: Path, repository: Path) -> ArtifactReport:
    """The GUESSER/describer serve the base checkpoint as it is: copied, not re-saved, and the copy
    checked byte for byte (sha256 of every file against its source)."""
    started = time.perf_counter()
    read_config(base, QWEN2_VL_TYPES)
    target = weights_dir(repository, contract.VLM)
    if target.exists():
        shutil.rmtree(target)
    copy_side_files(base, target)
    for weights in [*base.glob("*.safetensors"), *base.glob("model.safetensors.index.json")]:
        shutil.copy2(weights, target / weights.name)
    try:
        copied = verify_copy(base, target)
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


def export_merged_reasoner(base: Path, adapter: Path, repository: Path, tolerance: float) -> ArtifactReport:
    from peft import PeftModel
    from transformers import Qwen2VLForConditionalGeneration

    started = time.perf_counter()
    check_adapter(adapter)
    model = load_pretrained(Qwen2VLForConditionalGeneration, base, QWEN2_VL_TYPES, dtype=torch.float32)
    inputs_for = VlmInputs(base, model.config.vision_config.spatial_merge_size, model.config.image_token_id)
    samples = [inputs_for(PARITY_PROMPT, image) for image in parity_images()]
    try:
        peft_model = PeftModel.from_pretrained(model, adapter, is_trainable=False).eval()
    except (ValueError, KeyError, RuntimeError) as exc:
        raise CheckpointError(f"{adapter}: does not fit the base model {base}: {exc}") from exc
    with torch.inference_mode():
        unmerged = [peft_model(**s).logits for s in samples]
        merged_model = peft_model.merge_and_unload()
        merged = [merged_model(**s).logits for s in samples]
    diff = max(float((a - b).abs().max()) for a, b in zip(unmerged, merged))
    if not diff <= tolerance:
        raise ExportError(f"reasoner: merged vs PEFT logits differ by {diff:.2e} > tolerance {tolerance:.0e}")
    target = weights_dir(repository, contract.REASONER)
    if target.exists():
        shutil.rmtree(target)
    merged_model.save_pretrained(target, safe_serialization=True)
    copy_side_files(base, target)
    return ArtifactReport(
        model=contract.REASONER,
        path=target,
        size_bytes=folder_size(target),
        max_abs_diff=diff,
        tolerance=tolerance,
        seconds=time.perf_counter() - started,
        check=f"logits: merged vs PEFT-unmerged, {len(samples)} image+text inputs",
    )
