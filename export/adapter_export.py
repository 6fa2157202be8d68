"""The REASONER as a LoRA adapter on the `vlm` base (export `vlm.reasoner: adapter`).

Instead of a second model with the LoRA merged into a second copy of the weights (`reasoner`,
export/vlm.py), the repository holds the base once and the peft adapter folder beside it, in
`vlm/1/adapters/reasoner/`, and the `vlm` model's `adapters` parameter names it. The REASONER's rows
then run on `vlm` with the `adapter` input set: they share batches, and every read of the base
weights, with the GUESSER's and the describer's rows.

The folder is copied, not re-saved, and checked byte for byte (sha256). The serving mechanism is
checked too, in float32: peft's mixed-adapter batch (`vlm_engine.with_adapters`, `adapter_names`)
over an adapter row and a base row must give the merged reasoner's logits on the adapter row and the
base's on the base row, within `vlm.merge_tolerance`.

peft applies an adapter per batch row. Qwen2-VL's vision tower sees patches, not rows, so an adapter
that changes it cannot be served this way: the export refuses it (serve it merged).
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import torch

from navig.export.checkpoints import load_pretrained
from navig.export.errors import CheckpointError, ExportError
from navig.export.report import ArtifactReport, folder_size
from navig.export.spec import ExportSpec
from navig.export.vlm import QWEN2_VL_TYPES, check_adapter, parity_samples, verify_copy
from navig.model_repository import contract
from navig.model_repository.vlm_api import ADAPTERS_DIR

ADAPTER_FILES = ("adapter_config.json", "adapter_model.safetensors")
VISION_TOWER = ".visual."  # Qwen2-VL's vision tower: `model.visual` in transformers 5


def adapter_mode(spec: ExportSpec) -> bool:
    """The spec serves its REASONER adapter on `vlm` rather than merged into `reasoner`."""
    return bool(spec.vlm and spec.vlm.reasoner_adapter and spec.vlm.reasoner == "adapter")


def adapter_dir(repository: Path, name: str = contract.REASONER_ADAPTER) -> Path:
    return repository / contract.VLM / "1" / ADAPTERS_DIR / name


def vision_tensors(adapter: Path) -> list[str]:
    """The adapter's tensors inside the vision tower, read from its safetensors header."""
    from safetensors import safe_open

    with safe_open(adapter / "adapter_model.safetensors", "pt") as weights:
        names = list(weights.keys())
    return sorted(key for key in names if VISION_TOWER in key)


def check_servable(adapter: Path) -> None:
    """A peft LoRA folder the `vlm` model can serve per row, or an error that says why not."""
    check_adapter(adapter)
    if touched := vision_tensors(adapter):
        raise CheckpointError(
            f"{adapter}: the adapter changes the vision tower ({len(touched)} tensors, e.g. {touched[0]}); "
            "peft applies adapters per batch row and the vision tower's rows are patches, so it cannot "
            "be served on the shared base: export it with vlm.reasoner: merged"
        )


def set_adapters(config: object, spec: ExportSpec) -> None:
    """The `vlm` config's `adapters` parameter: the REASONER's in adapter mode; otherwise the parameter
    is left out (no adapters, and the gpu config keeps exactly its LLM API parameters)."""
    parameters = config.parameters  # type: ignore[attr-defined]
    if adapter_mode(spec):
        parameters["adapters"].string_value = contract.REASONER_ADAPTER
    elif "adapters" in parameters:
        del parameters["adapters"]


def remove_merged(repository: Path) -> None:
    """A `reasoner` model left by a merged export would be loaded beside the adapter: gone."""
    stale = repository / contract.REASONER
    if stale.is_dir():
        shutil.rmtree(stale)


def export_adapter(base: Path, adapter: Path, repository: Path, tolerance: float) -> ArtifactReport:
    """Copies the adapter into `vlm`'s version folder (sha256-checked) and checks the mixed batch."""
    started = time.perf_counter()
    check_servable(adapter)
    target = adapter_dir(repository)
    if target.exists():
        shutil.rmtree(target)
    target.mkdir(parents=True)
    for name in ADAPTER_FILES:
        shutil.copy2(adapter / name, target / name)
    try:
        copied = verify_copy(adapter, target)
        diff = mixed_batch_diff(base, target)
    except Exception:
        shutil.rmtree(target)
        raise
    if not diff <= tolerance:
        shutil.rmtree(target)
        raise ExportError(
            f"reasoner adapter: mixed-batch logits differ from merged/base by {diff:.2e} > {tolerance:.0e}"
        )
    return ArtifactReport(
        model=contract.VLM,
        path=target,
        size_bytes=folder_size(target),
        max_abs_diff=diff,
        tolerance=tolerance,
        seconds=time.perf_counter() - started,
        check=(
            f"sha256 of each copied adapter file ({copied}); logits, float32: a peft mixed-adapter batch "
            "(adapter row + base row) vs the merged reasoner and the base, each alone"
        ),
    )


def mixed_batch_diff(base: Path, adapter: Path) -> float:
    """Max |logit difference| of a served mixed batch against what each row should be."""
    from transformers import Qwen2VLForConditionalGeneration

    from navig.model_repository.vlm_engine import BASE_ROW, VlmInputs, with_adapters

    model = load_pretrained(Qwen2VLForConditionalGeneration, base, QWEN2_VL_TYPES, dtype=torch.float32)
    samples = parity_samples(base, model)
    inputs = VlmInputs(base, model.config.vision_config.spatial_merge_size, model.config.image_token_id)
    pad = int(model.generation_config.pad_token_id or 0)
    try:
        with torch.inference_mode():
            base_logits = [model(**s).logits[0] for s in samples]
            served = with_adapters(model, {contract.REASONER_ADAPTER: adapter})
            rows = [contract.REASONER_ADAPTER, BASE_ROW]
            batch = served(**inputs.collate(samples, pad), adapter_names=rows).logits
            merged = served.merge_and_unload()
            merged_logits = merged(**samples[0]).logits[0]
    except (ValueError, KeyError, RuntimeError) as exc:
        raise CheckpointError(f"{adapter}: does not fit the base model {base}: {exc}") from exc
    width = batch.shape[1]
    wanted = [merged_logits, base_logits[1]]
    return max(float((batch[i, width - len(w) :] - w).abs().max()) for i, w in enumerate(wanted))
