"""Random-initialised Qwen2-VL base + REASONER LoRA adapter, in the real on-disk formats.

The base folder loads with `Qwen2VLForConditionalGeneration.from_pretrained`, its tokenizer with
`AutoTokenizer` and its image processor with `Qwen2VLImageProcessorPil` (no torchvision here);
the adapter folder is what `peft` saves for NAVIG's REASONER (LoRA r=8, alpha=32).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from peft import LoraConfig, get_peft_model
from transformers import PreTrainedTokenizerFast, Qwen2VLConfig, Qwen2VLForConditionalGeneration
from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

from navig.export.demo_checkpoints.tokenizers import byte_level_bpe

SPECIAL_TOKENS = [
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|image_pad|>",
    "<|video_pad|>",
]
# Qwen2-VL's chat format, image placeholder included (what the real checkpoints ship).
CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for part in message['content'] %}"
    "{% if part['type'] == 'image' %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif part['type'] == 'text' %}{{ part['text'] }}{% endif %}{% endfor %}{% endif %}"
    "<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


@dataclass(frozen=True)
class VlmPreset:
    hidden: int
    layers: int
    heads: int
    kv_heads: int
    vision_dim: int
    vision_depth: int
    vision_heads: int
    vocab: int
    max_pixels: int


PRESETS = {
    # seconds to build and run; for tests
    "tiny": VlmPreset(64, 2, 4, 2, 32, 2, 2, 400, 224 * 224),
    # Qwen2-VL-7B's shape ratios (GQA 7:1 heads, MLP ~5.3x, ViT depth 32 -> 8) at CPU scale
    "small": VlmPreset(448, 6, 7, 1, 256, 8, 4, 2000, 448 * 448),
}


def build_qwen2_vl(base_out: Path, adapter_out: Path, preset: str, seed: int = 0) -> tuple[int, int]:
    """Writes the base model folder and the LoRA adapter folder; returns their parameter counts."""
    p = PRESETS[preset]
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=byte_level_bpe(SPECIAL_TOKENS, p.vocab),
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        additional_special_tokens=SPECIAL_TOKENS[1:],
    )
    tokenizer.chat_template = CHAT_TEMPLATE
    ids = {token: tokenizer.convert_tokens_to_ids(token) for token in SPECIAL_TOKENS}
    head_dim = p.hidden // p.heads
    half = head_dim // 2
    mrope = [half - 2 * (3 * half // 8), 3 * half // 8, 3 * half // 8]  # Qwen2-VL: [16, 24, 24] of 64
    config = Qwen2VLConfig(
        text_config={
            "vocab_size": len(tokenizer),
            "hidden_size": p.hidden,
            "intermediate_size": int(p.hidden * 5.3) // 8 * 8,
            "num_hidden_layers": p.layers,
            "num_attention_heads": p.heads,
            "num_key_value_heads": p.kv_heads,
            "max_position_embeddings": 4096,
            "rope_parameters": {"rope_type": "default", "rope_theta": 1e6, "mrope_section": mrope},
            "bos_token_id": ids["<|endoftext|>"],
            "eos_token_id": ids["<|im_end|>"],
        },
        vision_config={
            "depth": p.vision_depth,
            "embed_dim": p.vision_dim,
            "hidden_size": p.hidden,
            "num_heads": p.vision_heads,
            "patch_size": 14,
            "spatial_merge_size": 2,
            "temporal_patch_size": 2,
        },
        image_token_id=ids["<|image_pad|>"],
        video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"],
        vision_end_token_id=ids["<|vision_end|>"],
    )
    torch.manual_seed(seed)
    model = Qwen2VLForConditionalGeneration(config).eval()
    model.generation_config.eos_token_id = ids["<|im_end|>"]
    model.generation_config.pad_token_id = ids["<|endoftext|>"]
    model.save_pretrained(base_out, safe_serialization=True)
    tokenizer.save_pretrained(base_out)
    Qwen2VLImageProcessorPil(min_pixels=56 * 56, max_pixels=p.max_pixels).save_pretrained(base_out)
    base_params = sum(t.numel() for t in model.parameters())

    # NAVIG's REASONER adapter: LoRA on the language model's projections, non-zero B so the
    # merge actually changes weights (a freshly initialised adapter would be a no-op).
    lora = LoraConfig(
        r=8,
        lora_alpha=32,
        lora_dropout=0.0,
        target_modules=rf"model\.language_model\..*\.({'|'.join(LORA_TARGETS)})",
        init_lora_weights=False,
    )
    peft_model = get_peft_model(model, lora)
    peft_model.save_pretrained(adapter_out, safe_serialization=True)
    adapter_params = sum(t.numel() for n, t in peft_model.named_parameters() if "lora_" in n)
    return base_params, adapter_params
