"""Random-initialised CLIP in the Hugging Face on-disk format, built offline.

The folder loads with `CLIPModel.from_pretrained`, `CLIPTokenizer(Fast).from_pretrained` and
`CLIPImageProcessor.from_pretrained(local_files_only=True)`, like openai/clip-vit-base-patch32.
CLIP's tokenizer is a lower-casing byte-level BPE whose word-final pieces end in `</w>`; its
vocabulary is laid out as CLIP's: 256 byte symbols, the same with `</w>`, one token per merge,
then <|startoftext|> and <|endoftext|> (also the pad token) last.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
from tokenizers import Tokenizer, models, pre_tokenizers, trainers
from transformers import CLIPConfig, CLIPModel, CLIPTokenizer
from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

from navig.export.demo_checkpoints.tokenizers import CORPUS

END_OF_WORD = "</w>"
BOS, EOS = "<|startoftext|>", "<|endoftext|>"
MAX_VOCAB = 1000  # a cap: the in-code corpus yields ~280 merges, ~790 tokens in all
# Guidebook-style clues (what NAVIG embeds with CLIP), so they tokenise compactly.
CLIP_CORPUS = [
    "a photo of a road sign, a building sign, a house, a bollard, a street in a town",
    "yellow town sign with black letters; white sign with a red border; blue motorway sign",
    "a house with a red tiled roof; a wooden house; a concrete apartment block; a church",
    "the country drives on the left side of the road; yellow centre line; white dashed lines",
]


@dataclass(frozen=True)
class ClipPreset:
    image_size: int
    patch: int
    vision_width: int
    vision_layers: int
    vision_heads: int
    text_width: int
    text_layers: int
    text_heads: int
    projection: int


PRESETS = {
    # seconds to build and export; for tests
    "tiny": ClipPreset(64, 16, 32, 2, 2, 32, 2, 2, 16),
    # ViT-B/32's layout (224 px, patch 32, MLP 4x, 64-wide heads, 77 tokens) at half width, half depth
    "small": ClipPreset(224, 32, 384, 6, 6, 256, 6, 4, 256),
}


def build_clip(out: Path, preset: str, seed: int = 0) -> int:
    """Writes model, tokenizer and image processor files into `out`; returns the parameter count."""
    p = PRESETS[preset]
    tokenizer = clip_tokenizer()
    config = CLIPConfig(
        text_config={
            "vocab_size": len(tokenizer),
            "hidden_size": p.text_width,
            "intermediate_size": 4 * p.text_width,
            "num_hidden_layers": p.text_layers,
            "num_attention_heads": p.text_heads,
            "max_position_embeddings": 77,
            "bos_token_id": tokenizer.bos_token_id,
            "eos_token_id": tokenizer.eos_token_id,
            "pad_token_id": tokenizer.pad_token_id,
        },
        vision_config={
            "image_size": p.image_size,
            "patch_size": p.patch,
            "hidden_size": p.vision_width,
            "intermediate_size": 4 * p.vision_width,
            "num_hidden_layers": p.vision_layers,
            "num_attention_heads": p.vision_heads,
        },
        projection_dim=p.projection,
    )
    torch.manual_seed(seed)
    model = CLIPModel(config).eval()
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    _write_slow_tokenizer_files(tokenizer, out)
    edge = {"shortest_edge": p.image_size}
    crop = {"height": p.image_size, "width": p.image_size}
    CLIPImageProcessorPil(size=edge, crop_size=crop).save_pretrained(out)
    return sum(t.numel() for t in model.parameters())


def clip_tokenizer() -> CLIPTokenizer:
    """CLIP's tokenizer with merges trained on the in-code corpus (CLIP's own normaliser and splitter)."""
    template = CLIPTokenizer()  # an empty vocabulary, but CLIP's normaliser and pre-tokeniser
    bpe = Tokenizer(models.BPE(continuing_subword_prefix="", end_of_word_suffix=END_OF_WORD))
    bpe.normalizer = template.backend_tokenizer.normalizer
    bpe.pre_tokenizer = template.backend_tokenizer.pre_tokenizer
    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    trainer = trainers.BpeTrainer(
        vocab_size=MAX_VOCAB,
        initial_alphabet=alphabet,
        end_of_word_suffix=END_OF_WORD,
        show_progress=False,
    )
    bpe.train_from_iterator((CORPUS + CLIP_CORPUS) * 4, trainer)
    merges = [tuple(m) for m in json.loads(bpe.to_str())["model"]["merges"]]
    # Every byte also as a word-final symbol, so any text encodes without <unk>.
    tokens = [*alphabet, *(a + END_OF_WORD for a in alphabet), *("".join(m) for m in merges), BOS, EOS]
    vocab = {token: i for i, token in enumerate(tokens)}
    return CLIPTokenizer(vocab=vocab, merges=merges, model_max_length=77)


def _write_slow_tokenizer_files(tokenizer: CLIPTokenizer, out: Path) -> None:
    """vocab.json + merges.txt, as CLIP checkpoints ship them: older transformers read these."""
    model = json.loads(tokenizer.backend_tokenizer.to_str())["model"]
    (out / "vocab.json").write_text(json.dumps(model["vocab"], ensure_ascii=False), encoding="utf-8")
    lines = ["#version: 0.2", *(" ".join(m) for m in model["merges"])]
    (out / "merges.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
