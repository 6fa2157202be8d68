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
from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, trainers
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
    # grounding-dino-tiny's proportions (Swin-T depths, FFN 8x d_model, 6+6 layers) at CPU scale
    "small": DinoPreset(48, (2, 2, 6, 2), (2, 4, 8, 16), 64, 8, 512, 6, 6, 300, 128, 4, 4),
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
    model.save_pretrained(out, safe_serialization=True)
    image_processor = GroundingDinoImageProcessorPil()  # ImageNet mean/std, as the real checkpoints
    GroundingDinoProcessor(image_processor=image_processor, tokenizer=tokenizer).save_pretrained(out)
    return sum(t.numel() for t in model.parameters())


def _bert_style_tokenizer() -> BertTokenizer:
    """WordPiece trained on the pipeline's words, with BERT's special-token ids kept."""
    # vocab_size above what the corpus yields: training runs to exhaustion, so the token set is fixed
    trainer = trainers.WordPieceTrainer(vocab_size=1000, special_tokens=list(BERT_IDS)[:5], show_progress=False)
    wordpiece = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    wordpiece.normalizer = normalizers.BertNormalizer(lowercase=True)
    wordpiece.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    wordpiece.train_from_iterator([*CORPUS, ". ".join(contract.DETECTOR_PROMPTS) + "."] * 4, trainer)
    learned = sorted(wordpiece.get_vocab())  # the trainer's ids vary between runs; the set does not
    free = (token for token in learned if token not in BERT_IDS)
    slots = {index: token for token, index in BERT_IDS.items()}
    size = max(max(BERT_IDS.values()) + 1, len(learned) + len(BERT_IDS))
    vocab = {}
    for index in range(size):
        token = slots.get(index) or next(free, None) or f"[unused{index}]"
        vocab[token] = index
    return BertTokenizer(vocab=vocab, model_max_length=256)
