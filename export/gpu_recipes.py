"""Build commands for the gpu profile, produced as text: TensorRT plans for the encoders.

TensorRT has no wheels for this machine, so the commands are written beside the repository
(`build_plans.sh`) for the pinned TensorRT container to run (`containers.TENSORRT_IMAGE`), and
tested as text here. Nothing here has been run on a GPU.

`trtexec` on TensorRT 10 and 11 (docs/gpu-stack-notes.md section 4): the precision flags (`--fp16`,
`--int8`, `--best`, ...) are deprecated since 10.12 and removed in 11 (an unknown option fails the
run); `--stronglyTyped` is opt-in on 10.x and an accepted no-op on 11.x, where strong typing is always
on. A strongly typed build runs every layer at the ONNX graph's own precision: fp32 for the ONNX
files `navig export` writes today, so the plans are fp32. fp16 plans would need fp16 ONNX files
(e.g. `python -m modelopt.onnx.autocast`), which the export does not produce.

There is no TensorRT-LLM engine recipe: TensorRT-LLM's PyTorch LLM API (what the VLM model runs)
refuses engine directories, and no LLM-API path uses a Qwen2-VL vision engine (NVIDIA deprecated the
engine-build path for this model; docs/gpu-stack-notes.md section 1, issue 14 point 6).
"""

from __future__ import annotations

import shlex
import shutil
from pathlib import Path

from navig.model_repository import contract

_PHOTOS = {  # photos come downscaled to at most DETECTOR_MAX_SIDE, as thin as 200:1
    contract.DETECTOR_IMAGES: (
        (1, 1, 1, 3),
        (1, 480, 640, 3),
        (8, contract.DETECTOR_MAX_SIDE, contract.DETECTOR_MAX_SIDE, 3),
    )
}
# Optimisation profiles (min, opt, max) per dynamic input, batch dimension first.
PLAN_SHAPES: dict[str, dict[str, tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]]] = {
    contract.OCR_DET: {contract.OCR_DET_INPUT: ((1, 32, 32, 3), (1, 736, 960, 3), (8, 1280, 1280, 3))},
    contract.OCR_REC: {contract.OCR_REC_INPUT: ((1, 3, 48, 320), (16, 3, 48, 640), (64, 3, 48, 2048))},
    **dict.fromkeys(contract.DETECTORS, _PHOTOS),
    contract.CLIP_IMAGE: {contract.CLIP_IMAGE_IMAGES: ((1, 32, 32, 3), (8, 224, 224, 3), (32, 640, 640, 3))},
    contract.CLIP_TEXT: {
        contract.CLIP_TEXT_INPUT_IDS: ((1, 1), (16, 32), (64, 77)),
        contract.CLIP_TEXT_ATTENTION_MASK: ((1, 1), (16, 32), (64, 77)),
    },
}


def shape_arg(shapes: dict[str, tuple[int, ...]]) -> str:
    """`name:d0xd1x...,name2:...`: the form trtexec and the ORT TensorRT accelerator both take."""
    return ",".join(f"{name}:{'x'.join(map(str, dims))}" for name, dims in shapes.items())


def profile_shapes(model: str, which: int) -> str:
    """The model's optimisation profile: which = 0 (min), 1 (opt), 2 (max), every dynamic input."""
    return shape_arg({name: shapes[which] for name, shapes in PLAN_SHAPES[model].items()})


def trtexec_command(model: str, repository: str, workspace_mib: int = 1024) -> list[str]:
    """trtexec turning `<repository>/<model>/1/model.onnx` into `model.plan` beside it, for
    `tensorrt_plan`. `repository` is the path the TensorRT container sees (a mount)."""
    folder = f"{repository}/{model}/1"
    return [
        "trtexec",
        f"--onnx={folder}/model.onnx",
        f"--saveEngine={folder}/model.plan",
        "--stronglyTyped",
        f"--minShapes={profile_shapes(model, 0)}",
        f"--optShapes={profile_shapes(model, 1)}",
        f"--maxShapes={profile_shapes(model, 2)}",
        f"--memPoolSize=workspace:{workspace_mib}",
        "--skipInference",
    ]


def write_script(path: Path, commands: list[list[str]], note: str) -> Path:
    lines = ["#!/usr/bin/env bash", *(f"# {line}" for line in note.splitlines()), "set -euo pipefail"]
    lines += [shlex.join(c) for c in commands]
    path.write_text("\n".join(lines) + "\n")
    path.chmod(0o755)
    return path


def gpu_stack_status() -> str | None:
    """None when a GPU is here; otherwise what is missing, in one sentence."""
    missing = [tool for tool in ("nvidia-smi", "docker") if shutil.which(tool) is None]
    if not missing:
        return None
    return (
        f"GPU stack not found on this machine ({', '.join(missing)} missing): the gpu profile's "
        "repositories, configs and launch commands are written but nothing was built or run on a GPU "
        "here; follow the README.md beside them on the GPU host"
    )
