"""Offline tokenizers for demo checkpoints: trained in milliseconds with `tokenizers`, no hub."""

from __future__ import annotations

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

# Words the pipeline's prompts and answers use, so random models still tokenise them compactly.
CORPUS = [
    "The photo shows a road sign, a building sign and a house. Vegetation, architecture, road markings,",
    "language and signs suggest the country. Where was this photo taken? Answer in JSON.",
    '{"country": "Poland", "city": "Kraków", "latitude": 50.06143, "longitude": 19.93658}',
    "Düsseldorf Zürich Łódź Gdańsk São Paulo Málaga Besançon Győr İzmir Tromsø Reykjavík km Centrum",
    "0 1 2 3 4 5 6 7 8 9 . , : ; - + ( ) [ ] { } \" ' north south east west left right driving side",
]


def byte_level_bpe(special_tokens: list[str], vocab_size: int) -> Tokenizer:
    """A GPT-2/Qwen style byte-level BPE: any text encodes, special tokens get the first ids."""
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=special_tokens,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(CORPUS * 4, trainer)
    return tokenizer
