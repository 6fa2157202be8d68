"""What a VLM engine is, without any engine: the `VlmEngine` protocol, its result type and the chat prompt.

`vlm_engine.TransformersVlm` (cpu profile: transformers, torch, xgrammar) implements it, and the
batched Triton model `vlm_model.py` talks to engines through it only. The gpu profile's model
(`vlm_trtllm.py`) drives TensorRT-LLM's LLM API per request instead (in-flight batching), but shares
the result type and the chat prompt. This module imports the standard library and numpy and
nothing else, so each profile's module can import it without pulling in the other's stack
(TensorRT-LLM's containers pin their own torch/transformers/xgrammar).

The chat prompt is built here once so both profiles feed the checkpoint's own chat template the
same messages, and a checkpoint gives the same token ids whichever profile serves it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import numpy as np

# In a model's version folder, beside the weights: one peft LoRA folder per name in the `adapters` parameter.
ADAPTERS_DIR = "adapters"

# Asks whether the request a row belongs to was cancelled (the caller gave up, or its deadline passed).
IsCancelled = Callable[[], bool]


def never_cancelled() -> bool:
    return False


@dataclass(frozen=True)
class Generation:
    token_ids: list[int]
    text: str
    cancelled: bool = False  # stopped because its request was cancelled: the text is partial, nobody wants it


@runtime_checkable
class VlmEngine(Protocol):
    """One Qwen2-VL checkpoint, greedy decoding, an optional JSON-schema constraint per row.

    `image` is an RGB uint8 array [H, W, 3] or None for a text-only prompt. Results carry the
    generated token ids (the EOS included when the row stopped at it) and their decoded text.
    `adapter` names a LoRA adapter the engine serves on its base (None: the base itself).
    """

    def generate(
        self,
        prompt: str,
        image: np.ndarray | None,
        max_new_tokens: int,
        json_schema: str | None = None,
        adapter: str | None = None,
    ) -> Generation:
        """One prompt, generated to its EOS or `max_new_tokens`."""
        ...

    def generate_batch(
        self,
        prompts: list[str],
        images: list[np.ndarray | None],
        max_tokens: list[int],
        json_schemas: list[str | None],
        cancelled: Sequence[IsCancelled] | None = None,
        adapters: Sequence[str | None] | None = None,
    ) -> list[Generation]:
        """The rows of one Triton batch (columns of equal length); each row's result equals `generate`
        of that row alone. A row whose `cancelled()` turns true stops early and says `cancelled`.
        Rows of different adapters (and the base) share the batch."""
        ...

    def stream(
        self,
        prompt: str,
        image: np.ndarray | None,
        max_new_tokens: int,
        json_schema: str | None = None,
        cancelled: IsCancelled = never_cancelled,
        adapter: str | None = None,
    ) -> Iterator[Generation]:
        """The new tokens and the text they complete, piece by piece; when `cancelled()` turns true
        the generation stops and the last piece says `cancelled`."""
        ...

    def check_schema(self, json_schema: str) -> None:
        """Raises ValueError (see `unusable_schema`) for a schema the engine cannot use, before the
        row joins a batch, so that only this row fails (INVALID_ARGUMENT)."""
        ...

    def check_adapter(self, adapter: str) -> None:
        """Raises ValueError (see `unknown_adapter`) for an adapter the engine does not serve."""
        ...


def unusable_schema(reason: object) -> ValueError:
    """The error `check_schema` raises, worded the same by every engine."""
    return ValueError(f"json_schema is not a usable JSON schema: {reason}")


def unknown_adapter(adapter: str, served: Sequence[str]) -> ValueError:
    """The error `check_adapter` raises, worded the same by every engine."""
    serves = f"adapters: {', '.join(sorted(served))}" if served else "no adapters (the base only)"
    return ValueError(f"unknown adapter {adapter!r}: this model serves {serves}")


class ChatTokenizer(Protocol):
    """The part of a Hugging Face tokenizer the chat prompt needs."""

    def apply_chat_template(self, conversation: Any, **kwargs: Any) -> Any: ...


def chat_messages(prompt: str, has_image: bool) -> list[dict[str, Any]]:
    """One user turn: the image placeholder first (if any), then the prompt text.

    The checkpoint's chat template turns `{"type": "image"}` into Qwen2-VL's
    `<|vision_start|><|image_pad|><|vision_end|>`; the CPU engine then expands `<|image_pad|>` to
    one token per merged vision patch, TensorRT-LLM's input processor does the same on the gpu.
    """
    content: list[dict[str, str]] = [{"type": "image"}] if has_image else []
    content.append({"type": "text", "text": prompt})
    return [{"role": "user", "content": content}]


def chat_prompt(tokenizer: ChatTokenizer, prompt: str, has_image: bool) -> str:
    """The prompt text both engines generate from: `chat_messages` through the checkpoint's chat
    template, ending with the assistant's turn opened."""
    return tokenizer.apply_chat_template(
        chat_messages(prompt, has_image), tokenize=False, add_generation_prompt=True
    )
