"""Build commands for the gpu profile, produced as text: TensorRT plans and TensorRT-LLM engines.

TensorRT and TensorRT-LLM have no wheels for this machine, so the commands are written into the
repository (`gpu_build.sh`) for the NGC container to run, and tested as text here.
"""

from __future__ import annotations

import shlex
import shutil
from pathlib import Path

from navig.model_repository import contract

# Optimisation profiles (min, opt, max) per dynamic input, batch dimension first.
PLAN_SHAPES: dict[str, dict[str, tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]]] = {
    contract.OCR_DET: {contract.OCR_DET_INPUT: ((1, 32, 32, 3), (1, 736, 960, 3), (8, 1280, 1280, 3))},
    contract.OCR_REC: {contract.OCR_REC_INPUT: ((1, 3, 48, 320), (16, 3, 48, 640), (64, 3, 48, 2048))},
    contract.DETECTOR: {contract.DETECTOR_IMAGES: ((1, 64, 64, 3), (1, 480, 640, 3), (8, 1280, 1280, 3))},
    contract.CLIP_IMAGE: {contract.CLIP_IMAGE_IMAGES: ((1, 32, 32, 3), (8, 224, 224, 3), (32, 640, 640, 3))},
    contract.CLIP_TEXT: {
        contract.CLIP_TEXT_INPUT_IDS: ((1, 1), (16, 32), (64, 77)),
        contract.CLIP_TEXT_ATTENTION_MASK: ((1, 1), (16, 32), (64, 77)),
    },
}


def _shape_arg(shapes: dict[str, tuple[int, ...]]) -> str:
    return ",".join(f"{name}:{'x'.join(map(str, dims))}" for name, dims in shapes.items())


def trtexec_command(model: str, repository: Path, fp16: bool = True) -> list[str]:
    """trtexec turning `<model>/1/model.onnx` into `<model>/1/model.plan` for `tensorrt_plan`."""
    folder = repository / model / "1"
    profile = PLAN_SHAPES[model]
    command = [
        "trtexec",
        f"--onnx={folder / 'model.onnx'}",
        f"--saveEngine={folder / 'model.plan'}",
        f"--minShapes={_shape_arg({k: v[0] for k, v in profile.items()})}",
        f"--optShapes={_shape_arg({k: v[1] for k, v in profile.items()})}",
        f"--maxShapes={_shape_arg({k: v[2] for k, v in profile.items()})}",
    ]
    return [*command, "--fp16"] if fp16 else command


def trtllm_engine_commands(model: str, repository: Path, max_batch_size: int = 8) -> list[list[str]]:
    """The engine-build path (deprecated upstream after TensorRT-LLM 1.2, kept as an option):
    Qwen2 checkpoint conversion, the LLM engine, and the vision encoder engine."""
    weights = repository / model / "1" / "weights"
    engines = repository / model / "1" / "engines"
    return [
        ["python3", "examples/models/core/qwen/convert_checkpoint.py", f"--model_dir={weights}",
         f"--output_dir={engines / 'checkpoint'}", "--dtype=float16"],
        ["trtllm-build", f"--checkpoint_dir={engines / 'checkpoint'}", f"--output_dir={engines / 'llm'}",
         "--gemm_plugin=float16", "--gpt_attention_plugin=float16", f"--max_batch_size={max_batch_size}",
         "--max_input_len=2048", "--max_seq_len=3072", "--max_multimodal_len=1296"],
        ["python3", "examples/models/core/multimodal/build_multimodal_engine.py", "--model_type=qwen2_vl",
         f"--model_path={weights}", f"--output_dir={engines / 'vision'}"],
    ]  # fmt: skip


def write_script(path: Path, commands: list[list[str]], note: str) -> Path:
    lines = ["#!/usr/bin/env bash", f"# {note}", "set -euo pipefail", *(shlex.join(c) for c in commands)]
    path.write_text("\n".join(lines) + "\n")
    path.chmod(0o755)
    return path


def gpu_stack_status(script_written: bool) -> str | None:
    """None when the GPU build tools are here; otherwise what is missing, in one sentence."""
    missing = [tool for tool in ("trtexec", "trtllm-build", "nvidia-smi") if shutil.which(tool) is None]
    if not missing:
        return None
    then = "run gpu_build.sh there, then serve" if script_written else "serve"
    return (
        f"GPU stack not found on this machine ({', '.join(missing)} missing): the gpu profile's "
        f"configs are written but nothing was built or run on a GPU here; {then} the repository "
        "with the NGC Triton TensorRT-LLM container"
    )
