"""Random-initialised GroundingDINO in the Hugging Face on-disk format, built offline.

The folder loads with `GroundingDinoForObjectDetection.from_pretrained` and
`AutoProcessor.from_pretrained(local_files_only=True)`. The model hard-codes BERT's ids for
[CLS], [SEP], "." and "?" (101, 102, 1012, 1029) to split captions into phrases, so the offline
WordPiece vocabulary is laid out with those tokens at those ids, as in bert-base-uncased.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from tokenizers import normalizers, pre_tokenizers
from transformers import (
    BertConfig,
    BertTokenizer,
    GroundingDinoConfig,
    GroundingDinoForObjectDetection,
    GroundingDinoProcessor,
    SwinConfig,
)
from transformers.models.grounding_dino.image_processing_pil_grounding_dino import (
    GroundingDinoImageProcessorPil,
)

from navig.export.demo_checkpoints.tokenizers import CORPUS
from navig.model_repository import contract

# bert-base-uncased ids the GroundingDINO code relies on ([PAD] = 0 marks padding).
BERT_IDS = {"[PAD]": 0, "[UNK]": 100, "[CLS]": 101, "[SEP]": 102, "[MASK]": 103, ".": 1012, "?": 1029}


@dataclass(frozen=True)
class DinoPreset:
    swin_dim: int
    swin_depths: tuple[int, int, int, int]
    swin_heads: tuple[int, int, int, int]
    d_model: int
    heads: int
    ffn: int
    encoder_layers: int
    decoder_layers: int  # >= 2: transformers ties bbox_embed.1.. to bbox_embed.0
    queries: int
    text_hidden: int
    text_layers: int
    text_heads: int


PRESETS = {
    # seconds to build and export; for tests
    "tiny": DinoPreset(16, (1, 1, 1, 1), (1, 1, 2, 2), 32, 4, 64, 1, 2, 100, 32, 1, 2),
    # grounding-dino-tiny's shape (Swin-T depths, 8 heads, FFN 8x d_model, 4 levels, 6 decoder
    # layers) at CPU scale. Encoder cost is tokens x d_model x layers per prompt, dominated by
    # memory-bound deformable-attention ops: 2 encoder layers (not 6) keep 480x640 under ~0.5 s.
    "small": DinoPreset(32, (2, 2, 6, 2), (1, 2, 4, 8), 32, 8, 256, 2, 6, 300, 128, 4, 4),
}


def build_grounding_dino(out: Path, preset: str, seed: int = 0) -> int:
    """Writes model, tokenizer and processor files into `out`; returns the parameter count."""
    p = PRESETS[preset]
    tokenizer = _bert_style_tokenizer()
    config = GroundingDinoConfig(
        backbone_config=SwinConfig(
            embed_dim=p.swin_dim,
            depths=list(p.swin_depths),
            num_heads=list(p.swin_heads),
            window_size=7,
            out_indices=[2, 3, 4],
        ),
        text_config=BertConfig(
            vocab_size=len(tokenizer),
            hidden_size=p.text_hidden,
            num_hidden_layers=p.text_layers,
            num_attention_heads=p.text_heads,
            intermediate_size=4 * p.text_hidden,
            max_position_embeddings=256,
        ),
        d_model=p.d_model,
        encoder_attention_heads=p.heads,
        decoder_attention_heads=p.heads,
        encoder_ffn_dim=p.ffn,
        decoder_ffn_dim=p.ffn,
        encoder_layers=p.encoder_layers,
        decoder_layers=p.decoder_layers,
        num_queries=p.queries,
    )
    torch.manual_seed(seed)
    model = GroundingDinoForObjectDetection(config).eval()
    _trained_like_heads(model)
    model.save_pretrained(out, safe_serialization=True)
    image_processor = GroundingDinoImageProcessorPil()  # ImageNet mean/std, as the real checkpoints
    GroundingDinoProcessor(image_processor=image_processor, tokenizer=tokenizer).save_pretrained(out)
    return sum(t.numel() for t in model.parameters())


@torch.no_grad()
def _trained_like_heads(model: GroundingDinoForObjectDetection) -> None:
    """Make the random model's outputs look like a trained one's, so they are worth comparing.

    As initialised, box heads end in zero weights (every box is its anchor, whatever the image)
    and contrastive logits have a std of ~sqrt(d_model), so sigmoid scores saturate at 1.0 and
    tie. Small random box-head outputs and a scaled final norm give image-dependent boxes and
    scores spread over (0, 1).
    """
    scale = model.config.d_model**-0.5
    for head in (model.bbox_embed[0], model.model.encoder_output_bbox_embed):
        torch.nn.init.normal_(head.layers[-1].weight, std=0.5 * scale)
    model.model.decoder.layer_norm.weight.fill_(0.5 * scale)


def _bert_style_tokenizer() -> BertTokenizer:
    """WordPiece over the pipeline's words, with BERT's special-token ids kept.

    Whole words plus single characters (word-initial and `##` continuations), so any text in the
    corpus' alphabet tokenises. Built directly rather than trained: the WordPiece trainer breaks
    ties differently between runs and the checkpoint must be reproducible.
    """
    normalizer = normalizers.BertNormalizer(lowercase=True)
    splitter = pre_tokenizers.BertPreTokenizer()
    words = {
        word
        for text in [*CORPUS, *contract.DETECTOR_PROMPTS]
        for word, _ in splitter.pre_tokenize_str(normalizer.normalize_str(text))
    }
    characters = {c for word in words for c in word}
    others = sorted((words | characters | {f"##{c}" for c in characters}) - set(BERT_IDS))
    slots = {index: token for token, index in BERT_IDS.items()}
    free = iter(others)
    size = max(max(slots) + 1, len(slots) + len(others))
    vocab = {slots.get(index) or next(free, f"[unused{index}]"): index for index in range(size)}
    return BertTokenizer(vocab=vocab, model_max_length=256)
