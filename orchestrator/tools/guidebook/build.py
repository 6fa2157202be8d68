"""Guidebook JSONL -> CLIP vectors -> a saved GuidebookIndex; and the cached build of the default guidebook.

Entries are embedded with the same `clip_text` / `clip_image` models the server's SEARCHER embeds
crops with, either in-process from the exported ONNX files (OnnxClipEmbedder) or through a running
Triton (TritonClipEmbedder). An entry with an example image gets the normalised mean of its text and
image vectors.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Protocol

import numpy as np
from PIL import Image, UnidentifiedImageError
from rich.progress import Progress

from navig.model_repository import contract
from navig.orchestrator.tools.cache import cache_root
from navig.orchestrator.tools.guidebook.default import default_entries
from navig.orchestrator.tools.guidebook.entries import (
    GuidebookError,
    GuideEntry,
    dump_entries,
    parse_entries,
    read_entries,
)
from navig.orchestrator.tools.guidebook.index import GuidebookIndex, normalise

BATCH_SIZE = 32  # within the served models' max_batch_size (64)
TOKENIZER_DIR = "tokenizer"  # <repository>/clip_text/1/tokenizer/, written by navig.export.clip
MODEL_FILE = "model.onnx"
DEFAULT_VERSION = "1"  # bump when default.py's wording changes in a way the content hash would miss


class ClipEmbedder(Protocol):
    """Texts and images -> L2-normalised float32 [N, D] vectors of one CLIP model."""

    def embed_texts(self, texts: list[str]) -> np.ndarray: ...

    def embed_images(self, images: list[np.ndarray]) -> np.ndarray: ...


class ClipTokenizer:
    """The tokenizer saved beside `clip_text`, with `tokenizers` only: pads to the batch's longest text
    and truncates at the tokenizer's model_max_length (CLIP: 77)."""

    def __init__(self, tokenizer_dir: Path):
        from tokenizers import Tokenizer

        config_file, tokenizer_file = (
            tokenizer_dir / "tokenizer_config.json",
            tokenizer_dir / "tokenizer.json",
        )
        if not tokenizer_file.is_file() or not config_file.is_file():
            raise GuidebookError(
                f"{tokenizer_dir}: no CLIP tokenizer (tokenizer.json, tokenizer_config.json)"
            )
        config = json.loads(config_file.read_text())
        self._tokenizer = Tokenizer.from_file(str(tokenizer_file))
        pad = config.get("pad_token") or config.get("eos_token")
        pad = pad["content"] if isinstance(pad, dict) else pad
        pad_id = self._tokenizer.token_to_id(pad) if pad else None
        self._tokenizer.enable_padding(pad_id=pad_id or 0, pad_token=pad or "")
        self.max_length = int(min(config.get("model_max_length") or 77, 10**6))
        self._tokenizer.enable_truncation(max_length=self.max_length)

    def __call__(self, texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        encodings = self._tokenizer.encode_batch(list(texts))
        input_ids = np.array([e.ids for e in encodings], np.int64)
        attention_mask = np.array([e.attention_mask for e in encodings], np.int64)
        return input_ids, attention_mask


class OnnxClipEmbedder:
    """The exported `clip_text` / `clip_image` graphs in-process with onnxruntime (CPU)."""

    def __init__(self, model_repository: Path):
        self.model_repository = Path(model_repository)
        self.text_model = self.model_repository / contract.CLIP_TEXT / "1" / MODEL_FILE
        self.image_model = self.model_repository / contract.CLIP_IMAGE / "1" / MODEL_FILE
        if not self.text_model.is_file():
            raise GuidebookError(
                f"{self.text_model}: missing; export a CLIP checkpoint first (`navig export build`)"
            )
        self.tokenizer = ClipTokenizer(self.text_model.parent / TOKENIZER_DIR)
        self._text = _session(self.text_model)
        self._image = None

    def embed_texts(self, texts: list[str]) -> np.ndarray:
        input_ids, attention_mask = self.tokenizer(texts)
        feeds = {contract.CLIP_TEXT_INPUT_IDS: input_ids, contract.CLIP_TEXT_ATTENTION_MASK: attention_mask}
        return self._text.run([contract.CLIP_EMBEDDINGS], feeds)[0]

    def embed_images(self, images: list[np.ndarray]) -> np.ndarray:
        if self._image is None:
            if not self.image_model.is_file():
                raise GuidebookError(f"{self.image_model}: missing; needed for entries with an image")
            self._image = _session(self.image_model)
        session = self._image
        return _per_shape(images, lambda batch: session.run(None, {contract.CLIP_IMAGE_IMAGES: batch})[0])

    def describe(self) -> dict[str, str]:
        return {"embedder": "onnxruntime", "model_repository": str(self.model_repository.resolve())}


class TritonClipEmbedder:
    """The same models through a running Triton (gRPC, sync); the tokenizer comes from an exported
    model repository because Triton serves token ids, not text."""

    def __init__(self, url: str, tokenizer_dir: Path):
        import tritonclient.grpc as grpcclient

        self.url = url
        self.tokenizer = ClipTokenizer(tokenizer_dir)
        self._grpc = grpcclient
        self._client = grpcclient.InferenceServerClient(url)
        try:
            for model in (contract.CLIP_TEXT,):
                if not self._client.is_model_ready(model):
                    raise GuidebookError(f"Triton at {url}: model {model} is not ready")
        except GuidebookError:
            raise
        except Exception as exc:  # tritonclient raises InferenceServerException on connection errors
            raise GuidebookError(f"Triton at {url}: {exc}") from exc

    def _infer(self, model: str, tensors: dict[str, np.ndarray]) -> np.ndarray:
        inputs = []
        for name, array in tensors.items():
            tensor = self._grpc.InferInput(
                name, list(array.shape), "INT64" if array.dtype == np.int64 else "UINT8"
            )
            tensor.set_data_from_numpy(array)
            inputs.append(tensor)
        outputs = [self._grpc.InferRequestedOutput(contract.CLIP_EMBEDDINGS)]
        try:
            result = self._client.infer(model, inputs, outputs=outputs)
        except Exception as exc:
            raise GuidebookError(f"Triton at {self.url}, {model}: {exc}") from exc
        return result.as_numpy(contract.CLIP_EMBEDDINGS)

    def embed_texts(self, texts: list[str]) -> np.ndarray:
        input_ids, attention_mask = self.tokenizer(texts)
        tensors = {contract.CLIP_TEXT_INPUT_IDS: input_ids, contract.CLIP_TEXT_ATTENTION_MASK: attention_mask}
        return self._infer(contract.CLIP_TEXT, tensors)

    def embed_images(self, images: list[np.ndarray]) -> np.ndarray:
        return _per_shape(
            images, lambda batch: self._infer(contract.CLIP_IMAGE, {contract.CLIP_IMAGE_IMAGES: batch})
        )

    def describe(self) -> dict[str, str]:
        return {"embedder": "triton", "url": self.url}


def build_guidebook(
    src_jsonl: Path, out_dir: Path, embedder: ClipEmbedder, progress: Progress | None = None
) -> GuidebookIndex:
    """Validates SRC, embeds every entry (batched), writes the index to OUT_DIR atomically."""
    entries = read_entries(Path(src_jsonl))
    book = embed_entries(entries, embedder, Path(src_jsonl).parent, progress)
    save_atomically(book, Path(out_dir))
    return book


def embed_entries(
    entries: list[GuideEntry], embedder: ClipEmbedder, image_root: Path, progress: Progress | None = None
) -> GuidebookIndex:
    """Entries -> GuidebookIndex in memory; images are read relative to image_root."""
    task = progress.add_task(f"embedding {len(entries)} entries", total=len(entries)) if progress else None
    vectors = []
    for start in range(0, len(entries), BATCH_SIZE):
        batch = entries[start : start + BATCH_SIZE]
        text_vectors = normalise(embedder.embed_texts([e.text for e in batch]))
        with_image = [i for i, e in enumerate(batch) if e.image]
        if with_image:
            images = [_read_image(image_root, batch[i]) for i in with_image]
            image_vectors = normalise(embedder.embed_images(images))
            text_vectors[with_image] = normalise(text_vectors[with_image] + image_vectors)
        vectors.append(text_vectors)
        if progress is not None and task is not None:
            progress.advance(task, len(batch))
    model = getattr(embedder, "describe", lambda: {"embedder": type(embedder).__name__})()
    return GuidebookIndex(np.concatenate(vectors), entries, model)


def save_atomically(book: GuidebookIndex, out_dir: Path, replace: bool = True) -> None:
    """Writes into a sibling temp folder and renames it over OUT_DIR: a crash never leaves half an index.
    replace=False keeps an OUT_DIR that appeared meanwhile (a concurrent build of the same cache key)."""
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))
    try:
        book.save(tmp)
        if out_dir.exists() and not replace:
            shutil.rmtree(tmp, ignore_errors=True)
        elif out_dir.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.old.", dir=out_dir.parent))
            old.rmdir()
            out_dir.rename(old)
            tmp.rename(out_dir)
            shutil.rmtree(old, ignore_errors=True)
        else:
            try:
                tmp.rename(out_dir)
            except OSError:
                if replace or not out_dir.exists():
                    raise
                shutil.rmtree(tmp, ignore_errors=True)  # lost a race to an identical build
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def ensure_default_guidebook(model_repository: Path, cache_dir: Path | None = None) -> Path:
    """The default guidebook's index for these CLIP models, built once and reused.

    Keyed by a hash of the clip_text/clip_image files (graph + tokenizer), the default entries' content
    and DEFAULT_VERSION; the cache root is cache_dir, else $NAVIG_CACHE_DIR/guidebook, else
    ~/.cache/navig/guidebook."""
    model_repository = Path(model_repository)
    rows = default_entries()
    text = dump_entries(rows)
    key = _cache_key(model_repository, text)
    root = Path(cache_dir) if cache_dir else default_cache_root()
    target = root / f"default-{key}"
    if (target / "meta.json").is_file():
        return target
    embedder = OnnxClipEmbedder(model_repository)
    entries = parse_entries(text.splitlines(), "default guidebook")
    save_atomically(embed_entries(entries, embedder, root), target, replace=False)
    return target


def default_cache_root() -> Path:
    return cache_root() / "guidebook"


def _cache_key(model_repository: Path, entries_text: str) -> str:
    digest = hashlib.sha256(f"navig-guidebook-default-{DEFAULT_VERSION}\n".encode())
    digest.update(hashlib.sha256(entries_text.encode()).digest())
    for model in (contract.CLIP_TEXT, contract.CLIP_IMAGE):
        folder = model_repository / model / "1"
        files = [folder / MODEL_FILE, *sorted((folder / TOKENIZER_DIR).glob("*"))]
        for path in files:
            if path.is_file():
                digest.update(path.relative_to(model_repository).as_posix().encode())
                digest.update(_file_digest(path))
    return digest.hexdigest()[:16]


def _file_digest(path: Path) -> bytes:
    digest = hashlib.sha256()
    with path.open("rb") as stream:
        for chunk in iter(lambda: stream.read(1 << 20), b""):
            digest.update(chunk)
    return digest.digest()


def _read_image(root: Path, entry: GuideEntry) -> np.ndarray:
    path = root / str(entry.image)
    try:
        with Image.open(path) as image:
            return np.asarray(image.convert("RGB"), dtype=np.uint8)
    except (OSError, UnidentifiedImageError) as exc:
        raise GuidebookError(f"entry {entry.id!r}: cannot read image {path}: {exc}") from exc


def _per_shape(images: list[np.ndarray], run) -> np.ndarray:
    """Batches images of equal size together (the contract takes [N, H, W, 3]); keeps the input order."""
    out: list[np.ndarray | None] = [None] * len(images)
    groups: dict[tuple[int, ...], list[int]] = {}
    for i, image in enumerate(images):
        groups.setdefault(image.shape, []).append(i)
    for indices in groups.values():
        result = run(np.stack([images[i] for i in indices]).astype(np.uint8))
        for i, vector in zip(indices, result):
            out[i] = vector
    return np.stack(out).astype(np.float32)


def _session(path: Path):
    import onnxruntime as ort

    try:
        return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime raises its own Fail/InvalidGraph types
        raise GuidebookError(f"{path}: cannot load the ONNX model: {exc}") from exc
