"""LoRA adapter folders as users have them: peft's, and ms-swift's (peft's files beside swift's own).

ms-swift writes a peft adapter (`adapter_config.json`, `adapter_model.safetensors`) next to its own
files (`args.json`, `configuration.json`, `additional_config.json`, `README.md`...): those are ignored.
What the adapter says about its base is read and compared with the base checkpoint, and every
disagreement is a warning (logged, and in the export report): a wrong base still merges when the shapes
fit, so only the user can tell.

Adapters trained with transformers 4 name Qwen2-VL's modules in the old layout (`model.layers.N`,
`visual.`), transformers 5 in the new one (`model.language_model.layers.N`, `model.visual.`). peft does
not map them: it reports the keys as missing and keeps freshly initialised LoRA weights, so the merge
would silently be wrong. The weights are therefore loaded here, renamed to the loaded model's layout,
and every adapter tensor must land on a LoRA parameter (and every LoRA parameter be filled), or the
export stops.
"""

from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from navig.export.checkpoints import read_json
from navig.export.errors import CheckpointError
from navig.export.pickled import pickled_error

log = logging.getLogger(__name__)
ADAPTER_WEIGHTS = "adapter_model.safetensors"
PEFT_PREFIX = "base_model.model."


@dataclass
class Adapter:
    folder: Path
    config: dict[str, Any]
    warnings: list[str] = field(default_factory=list)


def check_adapter(adapter: Path, base: Path | None = None) -> Adapter:
    """A peft LoRA folder with safetensors weights, or a CheckpointError that says what is off; with
    `base`, the warnings where the adapter's config disagrees with that base checkpoint."""
    if not adapter.is_dir():
        raise CheckpointError(f"adapter folder not found: {adapter}")
    config = read_json(
        adapter / "adapter_config.json", f"{adapter}: no adapter_config.json; not a peft adapter folder"
    )
    if config.get("peft_type") != "LORA":
        raise CheckpointError(f"{adapter}: peft_type is {config.get('peft_type')!r}, expected 'LORA'")
    if not (adapter / ADAPTER_WEIGHTS).is_file():
        raise pickled_error(adapter, ADAPTER_WEIGHTS)
    found = Adapter(adapter, config)
    if base is not None:
        found.warnings = base_disagreements(config, base)
        for warning in found.warnings:
            log.warning(warning)
    return found


def checkpoint_modules(base: Path) -> set[str]:
    """Module paths of the base checkpoint's tensors (names without .weight/.bias), from the
    safetensors headers or index: nothing is loaded."""
    from safetensors import safe_open

    index = base / "model.safetensors.index.json"
    if index.is_file():
        names = set(json.loads(index.read_text())["weight_map"])
    else:
        names = set()
        for path in base.glob("*.safetensors"):
            with safe_open(path, "pt") as f:
                names.update(f.keys())
    return {name.rsplit(".", 1)[0] for name in names}


def base_disagreements(config: dict[str, Any], base: Path) -> list[str]:
    """What adapter_config.json says that the base checkpoint contradicts."""
    warnings = []
    named = str(config.get("base_model_name_or_path") or "").rstrip("/")
    if named:
        leaf = named.rsplit("/", 1)[-1].lower()
        base_config = json.loads((base / "config.json").read_text())
        known = f"{base.resolve()} {base_config.get('_name_or_path', '')}".lower()
        if leaf not in known:
            warnings.append(
                f"adapter_config.json names base_model_name_or_path {named!r}, but the base checkpoint is "
                f"{base}: check that the adapter was trained on this base"
            )
    targets = config.get("target_modules")
    if isinstance(targets, list):
        modules = checkpoint_modules(base)
        absent = [t for t in targets if not any(m == t or m.endswith(f".{t}") for m in modules)]
        if absent:
            warnings.append(
                f"adapter_config.json target_modules {absent} name no module of the base checkpoint "
                f"{base}: peft skips them, so those layers are not adapted"
            )
    return warnings


def loaded_name(key: str) -> str:
    """A Qwen2-VL tensor or module name in transformers 4's layout (`model.layers.N`, `visual.`), as
    transformers 5 names it (`model.language_model.layers.N`, `model.visual.`); others unchanged."""
    if key.startswith("visual."):
        return "model." + key
    if key.startswith("model.") and not re.match(r"model\.(language_model|visual)\.", key):
        return "model.language_model." + key.removeprefix("model.")
    return key


def legacy_to_loaded(key: str) -> str:
    """A peft adapter key (`base_model.model.` + module path) renamed by `loaded_name`."""
    if not key.startswith(PEFT_PREFIX):
        return key
    return PEFT_PREFIX + loaded_name(key.removeprefix(PEFT_PREFIX))


def apply_adapter(model: Any, adapter: Adapter) -> tuple[Any, list[str]]:
    """`model` wrapped with the adapter's LoRA layers and weights (in place: no copy of the base);
    returns the PEFT model and the names of the adapted modules (as the merged model names them)."""
    from peft import LoraConfig, get_peft_model, set_peft_model_state_dict
    from peft.tuners.lora import LoraLayer
    from safetensors.torch import load_file

    try:
        config = LoraConfig.from_pretrained(adapter.folder)
        config.inference_mode = True
        peft_model = get_peft_model(model, config)
    except (ValueError, KeyError, TypeError, RuntimeError) as exc:
        raise CheckpointError(f"{adapter.folder}: does not fit the base model: {exc}") from exc
    state = load_file(adapter.folder / ADAPTER_WEIGHTS)
    wanted = {k for k, _ in peft_model.named_parameters() if "lora_" in k}
    renamed = {legacy_to_loaded(k): v for k, v in state.items()}
    try:
        result = set_peft_model_state_dict(peft_model, renamed)
    except (ValueError, KeyError, RuntimeError) as exc:
        raise CheckpointError(
            f"{adapter.folder / ADAPTER_WEIGHTS}: does not fit the base model: {exc}"
        ) from exc
    missing = sorted(k for k in result.missing_keys if k in wanted)
    if missing or result.unexpected_keys:
        raise CheckpointError(
            f"{adapter.folder / ADAPTER_WEIGHTS}: its tensors do not match the base model's LoRA layers "
            f"({len(missing)} LoRA weights not in the file, e.g. {missing[:2]}; "
            f"{len(result.unexpected_keys)} tensors of the file unused, e.g. {result.unexpected_keys[:2]})"
        )
    adapted = [
        name.removeprefix(PEFT_PREFIX)
        for name, module in peft_model.named_modules()
        if isinstance(module, LoraLayer) and name.startswith(PEFT_PREFIX)
    ]
    return peft_model.eval(), adapted
