"""The engine-neutral VLM interface: light to import, one chat prompt, both engines shaped like it."""

from __future__ import annotations

import inspect
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from navig.model_repository.vlm_api import VlmEngine, chat_messages, chat_prompt

FAKES = Path(__file__).parent / "fakes"  # contract fakes: Triton's python-backend module, tensorrt_llm

# The cpu engine's stack, which NVIDIA's TensorRT-LLM containers pin to their own versions.
CPU_STACK = ["torch", "transformers", "xgrammar", "onnxruntime", "onnx", "peft"]


def run_blocked(code: str) -> subprocess.CompletedProcess[str]:
    """Runs `code` in a fresh interpreter where the CPU_STACK packages cannot be imported."""
    prelude = f"import sys\nfor name in {CPU_STACK!r}:\n    sys.modules[name] = None\n"
    return subprocess.run(
        [sys.executable, "-c", prelude + textwrap.dedent(code)],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=Path(__file__).parent,
    )


def test_trtllm_model_and_api_import_without_the_cpu_engine_stack():
    """The gpu model imports neither the cpu engine's stack nor tensorrt_llm (loaded by `initialize`);
    Triton's `triton_python_backend_utils`, present in every stub, comes from tests/fakes here."""
    done = run_blocked(
        f"""
        try:
            import torch
        except ImportError:
            pass
        else:
            raise SystemExit("the prelude did not block torch")
        sys.modules["tensorrt_llm"] = None
        sys.path.insert(0, {str(FAKES)!r})
        import navig.model_repository.vlm_api
        import navig.model_repository.vlm_trtllm
        import navig.model_repository.vlm_model
        print("imported")
        """
    )
    assert done.returncode == 0 and done.stdout.strip() == "imported", done.stderr


def test_the_cpu_engine_does_not_import_so_blocked():
    """The control for the test above: the block really stops a module that needs the stack."""
    done = run_blocked("import navig.model_repository.vlm_engine")
    assert done.returncode != 0 and "None in sys.modules" in done.stderr, done.stderr


def test_vlm_api_imports_only_the_standard_library_and_numpy():
    done = run_blocked(
        """
        before = set(sys.modules)
        import navig.model_repository.vlm_api
        # packages loaded from files (numpy's C extensions also register file-less `cython_runtime`)
        loaded = [n for n in set(sys.modules) - before if getattr(sys.modules[n], "__file__", None)]
        new = {n.split(".")[0] for n in loaded}
        print(sorted(new - set(sys.stdlib_module_names) - {"numpy", "navig"}))
        """
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


# What both engines built by hand before `chat_messages` (token ids must not change).
def messages_before(prompt: str, has_image: bool) -> list[dict]:
    content: list[dict[str, str]] = [{"type": "image"}] if has_image else []
    content.append({"type": "text", "text": prompt})
    return [{"role": "user", "content": content}]


@pytest.fixture(scope="module")
def tiny_qwen2_vl(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny demo Qwen2-VL base folder alone (a fraction of a second), not the session export."""
    from navig.export.demo_checkpoints.qwen2_vl import build_qwen2_vl

    folder = tmp_path_factory.mktemp("qwen2_vl")
    build_qwen2_vl(folder / "base", folder / "adapter", "tiny")
    return folder / "base"


@pytest.mark.parametrize("has_image", [True, False])
def test_chat_prompt_is_the_prompt_both_engines_built_before(tiny_qwen2_vl: Path, has_image: bool):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_qwen2_vl, local_files_only=True)
    prompt = "Which country? Answer in JSON."
    assert chat_messages(prompt, has_image) == messages_before(prompt, has_image)
    before = tokenizer.apply_chat_template(
        messages_before(prompt, has_image), tokenize=False, add_generation_prompt=True
    )
    image = "<|vision_start|><|image_pad|><|vision_end|>" if has_image else ""
    expected = f"<|im_start|>user\n{image}{prompt}<|im_end|>\n<|im_start|>assistant\n"
    assert chat_prompt(tokenizer, prompt, has_image) == before == expected


def test_both_engines_send_the_shared_chat_prompt(tiny_qwen2_vl: Path, monkeypatch: pytest.MonkeyPatch):
    from transformers import AutoTokenizer

    from navig.model_repository.vlm_engine import VlmInputs

    monkeypatch.syspath_prepend(str(FAKES))  # the gpu model imports triton_python_backend_utils
    from navig.model_repository.vlm_trtllm import llm_inputs

    prompt = "Describe this house."
    image = np.random.default_rng(0).integers(0, 255, (56, 84, 3), dtype=np.uint8)
    tokenizer = AutoTokenizer.from_pretrained(tiny_qwen2_vl, local_files_only=True)
    expected = tokenizer.apply_chat_template(
        messages_before(prompt, True), tokenize=False, add_generation_prompt=True
    )

    request = llm_inputs(tokenizer, prompt, image)  # what the gpu model hands `generate_async`
    assert request["prompt"] == expected and len(request["multi_modal_data"]["image"]) == 1

    image_token_id = tokenizer.convert_tokens_to_ids("<|image_pad|>")
    inputs = VlmInputs(tiny_qwen2_vl, merge_size=2, image_token_id=image_token_id)(prompt, image)
    patches = int(inputs["image_grid_thw"].prod()) // 4
    expanded = expected.replace("<|image_pad|>", "<|image_pad|>" * patches, 1)
    assert inputs["input_ids"][0].tolist() == tokenizer(expanded, add_special_tokens=False)["input_ids"]


def protocol_methods() -> list[str]:
    return sorted(n for n, v in vars(VlmEngine).items() if inspect.isfunction(v) and not n.startswith("_"))


def test_the_protocol_names_what_the_triton_model_calls():
    assert protocol_methods() == ["check_adapter", "check_schema", "generate", "generate_batch", "stream"]


# the gpu profile does not implement this protocol: its model (vlm_trtllm) submits one
# `generate_async` per request and TensorRT-LLM batches in flight (tests/test_vlm_trtllm.py)
@pytest.mark.parametrize("engine_class", ["vlm_engine.TransformersVlm"])
def test_engines_have_the_protocol_signatures(engine_class: str):
    """Names, parameter kinds, defaults and (evaluated) annotations, method by method."""
    import importlib

    module, name = engine_class.split(".")
    engine = getattr(importlib.import_module(f"navig.model_repository.{module}"), name)
    for method in protocol_methods():
        expected = inspect.signature(getattr(VlmEngine, method), eval_str=True)
        assert inspect.signature(getattr(engine, method), eval_str=True) == expected, method
    assert issubclass(engine, VlmEngine)  # runtime_checkable: the methods exist
