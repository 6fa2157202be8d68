"""CLIP checkpoint -> the `clip_image` and `clip_text` ONNX models of the tensor contract.

clip_image: uint8 RGB [N, H, W, 3] of any size -> CLIP's preprocessing as tensor math (resize
the shortest side to the processor's size with an antialiased bicubic, a = -0.5 like PIL's;
centre crop; rescale; normalise) -> vision tower -> projection -> L2 normalisation. The wire
carries uint8 and the GPU profile runs the preprocessing on the device.
clip_text: input_ids + attention_mask [N, L] -> text tower (EOS pooling) -> projection -> L2
normalisation; the checkpoint's tokenizer is saved beside the graph for callers.

Each graph is checked against the same PyTorch modules with ONNX Runtime before it is kept.
"""

from __future__ import annotations

import functools
import json
import time
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch
import torch.nn.functional as F
from tokenizers import Tokenizer
from torch import nn
from transformers import AutoTokenizer, CLIPModel, PreTrainedTokenizerBase
from transformers.image_utils import PILImageResampling
from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

from navig.export.checkpoints import load_pretrained
from navig.export.errors import CheckpointError, ExportError
from navig.export.report import ArtifactReport
from navig.model_repository import contract

PARITY_TOLERANCE = 1e-4  # embeddings
# Preprocessed pixels (normalised units; 1e-3 = 0.07 of a uint8 level): ORT and PyTorch place the
# resampling taps with float32 coordinates, which on random-noise images moves values ~1e-4.
PIXEL_TOLERANCE = 1e-3
MODEL_TYPES = ("clip",)
OPSET = 20  # antialiased Resize needs >= 18
TOKENIZER_DIR = "tokenizer"  # beside the text graph: <repository>/clip_text/1/tokenizer/
# (height, width) at batch 2: downscale portrait, upscale, odd-sized landscape; plus the crop size.
PARITY_IMAGE_SIZES = ((300, 200), (45, 90), (480, 641))
PARITY_TEXTS = (
    "a photo of a road sign",
    "yellow town sign: Kraków 12 km",
    "",
    "a white house with a red tiled roof, a wooden fence and bollards beside the road",
)


class ClipPreprocess(nn.Module):
    """CLIPImageProcessor as tensor math: uint8 NHWC of any size -> normalised NCHW crops."""

    def __init__(self, shortest_edge: int, crop: tuple[int, int], scale: np.ndarray, offset: np.ndarray):
        super().__init__()
        self.shortest_edge = shortest_edge
        self.crop_height, self.crop_width = crop
        self.register_buffer("scale", torch.tensor(scale, dtype=torch.float32).view(1, 3, 1, 1))
        self.register_buffer("offset", torch.tensor(offset, dtype=torch.float32).view(1, 3, 1, 1))

    @classmethod
    def from_processor(cls, processor: CLIPImageProcessorPil) -> ClipPreprocess:
        """Only CLIP's own recipe is folded in: anything else would silently feed other pixels."""
        size, crop = processor.size, processor.crop_size
        recipe = (processor.do_resize, processor.do_center_crop, processor.do_rescale, processor.do_normalize)
        if not all(recipe) or not size.shortest_edge or not (crop.height and crop.width):
            raise ValueError(f"not CLIP's preprocessing recipe: {processor.to_dict()}")
        if processor.resample != PILImageResampling.BICUBIC:
            name = PILImageResampling(processor.resample).name
            raise ValueError(f"resample is {name}; only CLIP's BICUBIC is folded into the graph")
        if max(crop.height, crop.width) > size.shortest_edge:
            raise ValueError(f"crop {crop.height}x{crop.width} is larger than the resized side {size}")
        mean = np.asarray(processor.image_mean, np.float64)
        std = np.asarray(processor.image_std, np.float64)
        scale = processor.rescale_factor / std  # (x * rescale - mean) / std = x * scale + offset
        return cls(size.shortest_edge, (crop.height, crop.width), scale, -mean / std)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = images.permute(0, 3, 1, 2).float()
        height, width = x.shape[-2], x.shape[-1]
        # HF's shortest-edge size, int(edge * long / short), written without branches for export
        short = torch.sym_min(height, width)
        new_height, new_width = self.shortest_edge * height // short, self.shortest_edge * width // short
        x = F.interpolate(
            x, size=(new_height, new_width), mode="bicubic", antialias=True, align_corners=False
        )
        top, left = (new_height - self.crop_height) // 2, (new_width - self.crop_width) // 2
        # tell torch.export the crop stays inside, so the crop's size is static
        torch._check(top >= 0)
        torch._check(left >= 0)
        torch._check(top + self.crop_height <= new_height)
        torch._check(left + self.crop_width <= new_width)
        x = x.narrow(2, top, self.crop_height).narrow(3, left, self.crop_width)
        return x.clamp(0, 255) * self.scale + self.offset  # PIL's uint8 output is clamped too


class ImageEncoder(nn.Module):
    """What `clip_image` computes; the ONNX graph is exported from and checked against it."""

    def __init__(self, model: CLIPModel, preprocess: ClipPreprocess):
        super().__init__()
        self.preprocess = preprocess
        self.vision = model.vision_model
        self.projection = model.visual_projection

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        pooled = self.vision(pixel_values=self.preprocess(images)).pooler_output
        return F.normalize(self.projection(pooled), dim=-1)


class TextEncoder(nn.Module):
    """What `clip_text` computes."""

    def __init__(self, model: CLIPModel):
        super().__init__()
        self.text = model.text_model
        self.projection = model.text_projection

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        pooled = self.text(input_ids=input_ids, attention_mask=attention_mask).pooler_output
        return F.normalize(self.projection(pooled), dim=-1)


def export_clip(checkpoint: Path, out_dir: Path) -> list[ArtifactReport]:
    """Writes out_dir/clip_image/1/model.onnx and out_dir/clip_text/1/{model.onnx,tokenizer/}."""
    model = load_pretrained(CLIPModel, checkpoint, MODEL_TYPES)
    preprocess = load_preprocess(checkpoint)
    tokenizer = load_tokenizer(checkpoint)
    # truncation must keep callers' token ids within the graph's position table
    max_length = model.config.text_config.max_position_embeddings
    tokenizer.model_max_length = min(tokenizer.model_max_length, max_length)
    image_report = _export_image(ImageEncoder(model, preprocess), out_dir / contract.CLIP_IMAGE / "1")
    text_dir = out_dir / contract.CLIP_TEXT / "1"
    text_report = _export_text(TextEncoder(model), tokenizer, text_dir)
    tokenizer.save_pretrained(text_dir / TOKENIZER_DIR)
    return [image_report, text_report]


def load_preprocess(checkpoint: Path) -> ClipPreprocess:
    """The checkpoint's preprocessor_config.json as tensor math."""
    config = checkpoint / "preprocessor_config.json"
    if not config.is_file():
        raise CheckpointError(f"{checkpoint}: no preprocessor_config.json (CLIP's image preprocessing)")
    try:
        processor = CLIPImageProcessorPil.from_pretrained(checkpoint, local_files_only=True)
        return ClipPreprocess.from_processor(processor)
    except (OSError, ValueError, TypeError) as exc:
        raise CheckpointError(f"{config}: {exc}") from exc


def load_tokenizer(checkpoint: Path) -> PreTrainedTokenizerBase:
    try:
        return AutoTokenizer.from_pretrained(checkpoint, local_files_only=True)
    except (OSError, ValueError, TypeError, KeyError) as exc:
        raise CheckpointError(f"{checkpoint}: cannot load the CLIP tokenizer: {exc}") from exc


def tokenize(tokenizer_dir: Path, texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """`clip_text`'s inputs (int64 input_ids, attention_mask), padded to the longest text."""
    encodings = _fast_tokenizer(Path(tokenizer_dir)).encode_batch(list(texts))
    input_ids = np.array([e.ids for e in encodings], np.int64)
    attention_mask = np.array([e.attention_mask for e in encodings], np.int64)
    return input_ids, attention_mask


@functools.lru_cache(maxsize=4)
def _fast_tokenizer(tokenizer_dir: Path) -> Tokenizer:
    """The saved tokenizer.json with the checkpoint's padding and length limit; `tokenizers`
    alone, so callers (orchestrator, guidebook builder) need not import transformers."""
    config = json.loads((tokenizer_dir / "tokenizer_config.json").read_text())
    tokenizer = Tokenizer.from_file(str(tokenizer_dir / "tokenizer.json"))
    pad_token = config["pad_token"]
    tokenizer.enable_padding(pad_id=tokenizer.token_to_id(pad_token), pad_token=pad_token)
    tokenizer.enable_truncation(max_length=config["model_max_length"])
    return tokenizer


def _export_image(encoder: ImageEncoder, version_dir: Path) -> ArtifactReport:
    started = time.perf_counter()
    path = version_dir / "model.onnx"
    crop = (encoder.preprocess.crop_height, encoder.preprocess.crop_width)
    batch, height, width = (torch.export.Dim(n) for n in ("batch", "height", "width"))
    example = torch.randint(0, 256, (2, 100, 150, 3), dtype=torch.uint8)
    _export(encoder, (example,), path, {contract.CLIP_IMAGE_IMAGES: {0: batch, 1: height, 2: width}})
    rng = np.random.default_rng(0)
    sizes = (*PARITY_IMAGE_SIZES, crop)
    feeds = [
        {contract.CLIP_IMAGE_IMAGES: rng.integers(0, 256, (2, h, w, 3), dtype=np.uint8)} for h, w in sizes
    ]

    def reference(feed: dict[str, np.ndarray]) -> list[np.ndarray]:
        images = torch.from_numpy(feed[contract.CLIP_IMAGE_IMAGES])
        return [encoder(images).numpy(), encoder.preprocess(images).numpy()]

    tolerances = (PARITY_TOLERANCE, PIXEL_TOLERANCE)
    diff, pixel_diff = _check_parity(
        contract.CLIP_IMAGE, path, pixels_probe(path), feeds, reference, tolerances
    )
    check = (
        f"ORT vs PyTorch, batch 2 at {', '.join(f'{h}x{w}' for h, w in sizes)} (random pixels); "
        f"preprocessed pixels max |diff| {pixel_diff:.1e} (tolerance {PIXEL_TOLERANCE:.0e})"
    )
    return _report(contract.CLIP_IMAGE, path, diff, started, check)


def pixels_probe(path: Path) -> ort.InferenceSession:
    """The image graph with a second output, the preprocessed pixels (the patch convolution's
    input): parity then covers the folded-in preprocessing itself, to which the embeddings of a
    random-initialised model are nearly blind."""
    model = onnx.load(str(path))
    (patch_conv,) = (node for node in model.graph.node if node.op_type == "Conv")
    pixels = onnx.helper.make_tensor_value_info(patch_conv.input[0], onnx.TensorProto.FLOAT, None)
    model.graph.output.append(pixels)
    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])


def _export_text(
    encoder: TextEncoder, tokenizer: PreTrainedTokenizerBase, version_dir: Path
) -> ArtifactReport:
    started = time.perf_counter()
    path = version_dir / "model.onnx"
    max_length = encoder.text.config.max_position_embeddings
    batch, length = torch.export.Dim("batch"), torch.export.Dim("length", max=max_length)
    example = tokenizer(list(PARITY_TEXTS[:2]), padding=True, return_tensors="pt")
    axes = {0: batch, 1: length}
    _export(
        encoder,
        (example["input_ids"], example["attention_mask"]),
        path,
        {contract.CLIP_TEXT_INPUT_IDS: axes, contract.CLIP_TEXT_ATTENTION_MASK: axes},
    )
    feeds = [_text_feeds(tokenizer, PARITY_TEXTS), _text_feeds(tokenizer, PARITY_TEXTS[1:2])]

    def reference(feed: dict[str, np.ndarray]) -> list[np.ndarray]:
        return [encoder(*(torch.from_numpy(a) for a in feed.values())).numpy()]

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (diff,) = _check_parity(contract.CLIP_TEXT, path, session, feeds, reference, (PARITY_TOLERANCE,))
    check = f"ORT vs PyTorch, {len(PARITY_TEXTS)} texts padded together + 1 alone"
    return _report(contract.CLIP_TEXT, path, diff, started, check)


def _text_feeds(tokenizer: PreTrainedTokenizerBase, texts: Sequence[str]) -> dict[str, np.ndarray]:
    encoded = tokenizer(list(texts), padding=True, truncation=True, return_tensors="np")
    return {
        contract.CLIP_TEXT_INPUT_IDS: encoded["input_ids"].astype(np.int64),
        contract.CLIP_TEXT_ATTENTION_MASK: encoded["attention_mask"].astype(np.int64),
    }


def _export(
    module: nn.Module,
    args: tuple[torch.Tensor, ...],
    path: Path,
    dynamic: dict[str, dict[int, torch.export.Dim]],
) -> None:
    """torch.onnx.export (dynamo: it lowers the antialiased bicubic to ONNX Resize) + checker."""
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")  # exporter chatter (axis renames, pytree deprecations)
            torch.onnx.export(
                module,
                args,
                str(path),
                input_names=list(dynamic),
                output_names=[contract.CLIP_EMBEDDINGS],
                dynamic_shapes=dynamic,
                opset_version=OPSET,
                dynamo=True,
                external_data=False,
                verbose=False,
            )
        onnx.checker.check_model(str(path), full_check=True)
    except Exception as exc:
        path.unlink(missing_ok=True)
        raise ExportError(f"{path.parent.parent.name}: ONNX export failed: {exc}") from exc


def _check_parity(
    name: str,
    path: Path,
    session: ort.InferenceSession,
    feeds: list[dict[str, np.ndarray]],
    reference: Callable[[dict[str, np.ndarray]], list[np.ndarray]],
    tolerances: tuple[float, ...],
) -> list[float]:
    """Max |ORT - PyTorch| per output over all feeds; the artifact is removed above a tolerance."""
    diffs = [0.0] * len(tolerances)
    with torch.no_grad():
        for feed in feeds:
            for k, (exported, expected) in enumerate(zip(session.run(None, feed), reference(feed))):
                diffs[k] = max(diffs[k], float(np.max(np.abs(exported - expected))))
    if not all(d <= t for d, t in zip(diffs, tolerances)):
        path.unlink()
        found = ", ".join(f"{d:.2e} (tolerance {t:.0e})" for d, t in zip(diffs, tolerances))
        raise ExportError(f"{name}: ONNX differs from PyTorch by {found}")
    return diffs


def _report(name: str, path: Path, diff: float, started: float, check: str) -> ArtifactReport:
    return ArtifactReport.of_file(name, path, diff, PARITY_TOLERANCE, started, check)
