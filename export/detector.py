"""GroundingDINO checkpoint -> `detector` ONNX with NAVIG's prompts baked in.

NAVIG runs GroundingDINO once per prompt. The exported graph keeps those semantics in one call:
the Swin backbone runs once per image, then the prompt-dependent part (fusion encoder, query
selection, decoder, heads) runs on the image features repeated once per prompt, each copy with
its own prompt's text features. The BERT text branch is not in the graph: each prompt's text
features (and its token masks and position ids) are computed at export time by the checkpoint's
own forward pass and stored as constants. Resize, normalisation, sigmoid, box conversion and
top-K are in the graph, so the wire carries uint8 pixels and final detections.

`single_pass` exports the other way GroundingDINO is used: the prompts joined in one caption
("road sign. building sign. house.", as HF's processor joins candidate labels), the prompt-dependent
part run once per image. Each query then scores every prompt (max over that phrase's tokens of
sigmoid(logit)) and is kept once, under its best prompt. Same outputs and contract; the image
features attend to all phrases at once, so detections differ from the per-prompt passes
(`benchmarks.detector_single_pass` measures by how much).
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import onnxscript.optimizer
import torch
import torch.nn.functional as F
from onnx_ir.passes import common as ir_passes
from torch import Tensor, nn
from transformers import AutoProcessor, GroundingDinoForObjectDetection, GroundingDinoProcessor

from navig.export.checkpoints import load_pretrained
from navig.export.errors import CheckpointError, ExportError
from navig.export.report import ArtifactReport
from navig.model_repository import contract

MODEL_TYPES = ("grounding-dino",)
PARITY_TOLERANCE = 1e-4
# Two-stage query selection ranks ~10^4 proposals and gives the i-th a learned query embedding;
# proposals whose logits tie within float noise can swap ranks between runtimes, which changes
# those two queries' detections. Allowed: one such swap per prompt pass and image.
QUERIES_MAY_DIFFER_PER_PROMPT = 2
DEFAULT_IMAGE_SIZE = (480, 640)  # (height, width) fixed at export: Swin windows
DEFAULT_TOP_K = 100
# Which graph a detector ONNX is: its metadata key, copied into the Triton config's parameters.
VARIANT_KEY = "variant"
PER_PROMPT, SINGLE_PASS = "per_prompt", "single_pass"
OUTPUTS = (
    contract.DETECTOR_BOXES,
    contract.DETECTOR_SCORES,
    contract.DETECTOR_LABELS,
    contract.DETECTOR_PROMPT_SCORES,
)


def load_grounding_dino(checkpoint: Path) -> tuple[GroundingDinoForObjectDetection, GroundingDinoProcessor]:
    """Model (eval, eager attention: the dynamo exporter needs it) and processor, offline."""
    model = load_pretrained(
        GroundingDinoForObjectDetection, checkpoint, MODEL_TYPES, attn_implementation="eager"
    )
    if not model.config.two_stage:
        raise CheckpointError(f"{checkpoint}: only two-stage GroundingDINO checkpoints are supported")
    try:
        processor = AutoProcessor.from_pretrained(checkpoint, local_files_only=True)
    except (OSError, ValueError, KeyError) as exc:
        raise CheckpointError(f"{checkpoint}: cannot load the tokenizer/image processor: {exc}") from exc
    return model, processor


def caption(prompt: str) -> str:
    """The text GroundingDINO sees for one prompt: lower case, ending in '.' (as NAVIG and HF do)."""
    text = prompt.strip().lower()
    return text if text.endswith(".") else f"{text}."


def joined_caption(prompts: Sequence[str]) -> str:
    """All prompts in one caption: 'road sign. building sign. house.' (HF's candidate-label join)."""
    return " ".join(caption(p) for p in prompts)


def delimiters(model: GroundingDinoForObjectDetection) -> set[int]:
    """The token ids GroundingDINO splits captions at ([CLS], [SEP], '.', '?')."""
    return set(model.model.special_tokens.tolist())


def phrase_tokens(input_ids: Sequence[int], split_at: set[int], prompts: Sequence[str]) -> Tensor:
    """[P, L] bool: which tokens of a joined caption are each prompt's words.

    A phrase owns the tokens between two delimiters: the token span GroundingDINO's positive map
    gives a category. [CLS], [SEP] and the '.' between phrases belong to none of them.
    """
    spans: list[list[int]] = [[]]
    for index, token in enumerate(input_ids):
        if token not in split_at:
            spans[-1].append(index)
        elif spans[-1]:
            spans.append([])
    spans = [s for s in spans if s]
    if len(spans) != len(prompts):
        raise ExportError(
            f"the joined caption {joined_caption(prompts)!r} splits into {len(spans)} phrases, not "
            f"{len(prompts)}: a prompt may not contain '.' or '?' (GroundingDINO's phrase delimiters)"
        )
    mask = torch.zeros(len(prompts), len(input_ids), dtype=torch.bool)
    for phrase, span in enumerate(spans):
        mask[phrase, span] = True
    return mask


def preprocess(images: Tensor, image_size: tuple[int, int], mean: Tensor, std: Tensor) -> Tensor:
    """uint8 RGB [N, H, W, 3] of any size -> normalised float [N, 3, h, w] at the export size."""
    pixels = images.permute(0, 3, 1, 2).float()
    pixels = F.interpolate(pixels, size=image_size, mode="bilinear", align_corners=False, antialias=True)
    return (pixels / 255.0 - mean.view(1, 3, 1, 1)) / std.view(1, 3, 1, 1)


def corners(boxes: Tensor) -> Tensor:
    """(cx, cy, w, h) -> (x0, y0, x1, y1), as HF's post-processing does."""
    cx, cy, w, h = boxes.unbind(-1)
    return torch.stack((cx - 0.5 * w, cy - 0.5 * h, cx + 0.5 * w, cy + 0.5 * h), dim=-1)


@dataclass(frozen=True)
class PromptText:
    """What GroundingDINO's encoder receives for one caption, captured from the model's own forward."""

    features: Tensor  # [L, d_model]: BERT output after text_projection
    padding: Tensor  # [L] bool, True = padding (none here; padding appears when prompts are stacked)
    blocked: Tensor  # [L, L] bool, True = token i may not attend to token j (phrase masks)
    position_ids: Tensor  # [L]


class _StopAfterTextBranch(Exception):
    """Ends `encode_prompt`'s forward once the text inputs are captured; the rest is not needed."""


@torch.no_grad()
def encode_prompt(model: GroundingDinoForObjectDetection, tokenizer: Any, prompt: str) -> PromptText:
    """Runs the checkpoint's forward until its encoder starts and keeps the text inputs it gets."""
    captured: dict[str, Tensor] = {}

    def grab(_module: nn.Module, _args: tuple, kwargs: dict[str, Any]) -> None:
        captured.update({k: v[0] for k, v in kwargs.items() if k.startswith("text_") and v is not None})
        raise _StopAfterTextBranch

    tokens = tokenizer(caption(prompt), return_tensors="pt")
    handle = model.model.encoder.register_forward_pre_hook(grab, with_kwargs=True)
    try:
        model(pixel_values=torch.zeros(1, 3, 128, 128), **tokens)
    except _StopAfterTextBranch:
        pass
    finally:
        handle.remove()
    return PromptText(
        features=captured["text_features"],
        padding=captured["text_attention_mask"],
        blocked=captured["text_self_attention_masks"],
        position_ids=captured["text_position_ids"],
    )


def _stack_prompts(texts: Sequence[PromptText]) -> dict[str, Tensor]:
    """Pads the prompts to one length; padded tokens attend only to themselves and are masked."""
    length = max(t.features.shape[0] for t in texts)
    stacked: dict[str, list[Tensor]] = {"features": [], "padding": [], "blocked": [], "position_ids": []}
    for t in texts:
        pad = length - t.features.shape[0]
        blocked = F.pad(t.blocked, (0, pad, 0, pad), value=True)
        stacked["features"].append(F.pad(t.features, (0, 0, 0, pad)))
        stacked["padding"].append(F.pad(t.padding, (0, pad), value=True))
        stacked["blocked"].append(blocked & ~torch.eye(length, dtype=torch.bool))
        stacked["position_ids"].append(F.pad(t.position_ids, (0, pad)))
    return {k: torch.stack(v) for k, v in stacked.items()}


class PromptedDetector(nn.Module):
    """uint8 images -> top-K detections over all prompts; the graph that is exported.

    The steps after the backbone follow `GroundingDinoModel.forward` and
    `GroundingDinoForObjectDetection.forward` (transformers 5), with the text branch replaced by
    constants and the batch laid out as image-major (image n, prompt p) -> row n * P + p.
    """

    variant = PER_PROMPT

    def __init__(
        self,
        model: GroundingDinoForObjectDetection,
        texts: Sequence[PromptText],
        image_size: tuple[int, int],
        top_k: int | None,
        mean_std: tuple[Tensor, Tensor],
    ):
        super().__init__()
        self.detector = model
        self.image_size = image_size
        self.top_k = top_k
        self.num_prompts = len(texts)
        self.passes = len(texts)  # rows of the prompt-dependent part per image
        for name, value in _stack_prompts(texts).items():
            self.register_buffer(f"text_{name}", value, persistent=False)
        self.register_buffer("mean", mean_std[0], persistent=False)
        self.register_buffer("std", mean_std[1], persistent=False)

    def forward(self, images: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        pixels = preprocess(images, self.image_size, self.mean, self.std)
        *per_image, shapes = self._image_features(pixels)
        logits, boxes = self._per_prompt(*(self._per_row(t) for t in per_image), shapes)
        return self._top_k(logits, boxes, images.shape[0])

    def _image_features(self, pixels: Tensor) -> tuple[Any, ...]:
        """Backbone, input projections, position embeddings: once per image. Last item: level shapes."""
        dino = self.detector.model
        pixel_mask = torch.ones_like(pixels[:, 0], dtype=torch.long)
        vision_features, positions = dino.backbone(pixels, pixel_mask)
        maps = [dino.input_proj_vision[level](source) for level, (source, _) in enumerate(vision_features)]
        masks = [mask for _, mask in vision_features]
        for level in range(len(maps), dino.config.num_feature_levels):
            source = dino.input_proj_vision[level](vision_features[-1][0] if level == len(maps) else maps[-1])
            mask = F.interpolate(pixel_mask[None].float(), size=source.shape[-2:]).to(torch.bool)[0]
            positions.append(dino.backbone.position_embedding(source, mask).to(source.dtype))
            maps.append(source)
            masks.append(mask)
        shapes = [tuple(m.shape[-2:]) for m in maps]
        sources = torch.cat([m.flatten(2).transpose(1, 2) for m in maps], 1)
        mask_flat = torch.cat([m.flatten(1) for m in masks], 1)
        level_positions = torch.cat(
            [
                p.flatten(2).transpose(1, 2) + dino.level_embed[level].view(1, 1, -1)
                for level, p in enumerate(positions)
            ],
            1,
        )
        valid_ratios = torch.stack([dino.get_valid_ratio(m, dtype=sources.dtype) for m in masks], 1)
        return sources, mask_flat, level_positions, valid_ratios, shapes

    def _per_row(self, per_image: Tensor) -> Tensor:
        """[N, ...] -> [N * P, ...]: each image's features once per prompt."""
        expanded = per_image.unsqueeze(1).expand(-1, self.passes, *per_image.shape[1:])
        return expanded.reshape(-1, *per_image.shape[1:])

    def _per_prompt(
        self, sources: Tensor, mask_flat: Tensor, level_positions: Tensor, valid_ratios: Tensor, shapes: list
    ) -> tuple[Tensor, Tensor]:
        """Fusion encoder, two-stage query selection, decoder and last-layer heads per (image, prompt)."""
        dino, config = self.detector.model, self.detector.config
        rows = sources.shape[0] // self.passes
        text = self.text_features.repeat(rows, 1, 1)
        padding = self.text_padding.repeat(rows, 1)
        spatial_shapes = torch.as_tensor(shapes, dtype=torch.long)
        level_start = torch.cat((spatial_shapes.new_zeros((1,)), spatial_shapes.prod(1).cumsum(0)[:-1]))
        geometry = {
            "spatial_shapes": spatial_shapes,
            "spatial_shapes_list": shapes,
            "level_start_index": level_start,
        }
        encoded = dino.encoder(
            vision_features=sources,
            vision_attention_mask=~mask_flat,
            vision_position_embedding=level_positions,
            valid_ratios=valid_ratios,
            text_features=text,
            text_attention_mask=padding,
            text_position_embedding=None,
            text_self_attention_masks=self.text_blocked.repeat(rows, 1, 1),
            text_position_ids=self.text_position_ids.repeat(rows, 1),
            return_dict=True,
            **geometry,
        )
        vision, text = encoded.last_hidden_state_vision, encoded.last_hidden_state_text
        query, proposals = dino.generate_encoder_output_proposals(vision, ~mask_flat, shapes)
        proposal_logits = _token_logits(query, text, padding)
        proposal_coords = dino.encoder_output_bbox_embed(query) + proposals
        best = torch.topk(proposal_logits.max(-1)[0], config.num_queries, dim=1)[1]
        reference = torch.gather(proposal_coords, 1, best.unsqueeze(-1).repeat(1, 1, 4)).sigmoid()
        if config.embedding_init_target:
            target = dino.query_position_embeddings.weight.unsqueeze(0).repeat(sources.shape[0], 1, 1)
        else:
            target = torch.gather(query, 1, best.unsqueeze(-1).repeat(1, 1, config.d_model))
        decoded = dino.decoder(
            inputs_embeds=target,
            vision_encoder_hidden_states=vision,
            vision_encoder_attention_mask=mask_flat,
            text_encoder_hidden_states=text,
            text_encoder_attention_mask=padding,
            reference_points=reference,
            valid_ratios=valid_ratios,
            self_attn_mask=None,
            return_dict=True,
            **geometry,
        )
        last = decoded.intermediate_hidden_states.shape[1] - 1
        start = reference if last == 0 else decoded.intermediate_reference_points[:, last - 1]
        hidden = decoded.intermediate_hidden_states[:, last]
        logits = _token_logits(hidden, text, padding)
        boxes = (self.detector.bbox_embed[last](hidden) + torch.special.logit(start, eps=1e-5)).sigmoid()
        return logits, boxes

    def _top_k(self, logits: Tensor, boxes: Tensor, batch: int) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """Per-query score = max over the prompt's tokens of sigmoid(logit); best K over all prompts,
        or (top_k None) every query in (prompt, query) order, unsorted, as NAVIG reads them."""
        queries = logits.shape[1]
        scores = logits.max(-1)[0].sigmoid().reshape(batch, self.num_prompts * queries)
        xyxy = corners(boxes).reshape(batch, self.num_prompts * queries, 4)
        if self.top_k is None:
            top_scores, top_boxes = scores, xyxy
            order = torch.arange(self.num_prompts * queries, device=scores.device)
            labels = torch.div(order, queries, rounding_mode="floor").expand(batch, -1)
        else:
            top_scores, index = torch.topk(scores, self.top_k, dim=1)
            labels = torch.div(index, queries, rounding_mode="floor")
            top_boxes = torch.gather(xyxy, 1, index.unsqueeze(-1).expand(-1, -1, 4))
        prompts = torch.arange(self.num_prompts, device=labels.device)
        prompt_scores = (labels.unsqueeze(-1) == prompts).to(top_scores.dtype) * top_scores.unsqueeze(-1)
        return top_boxes, top_scores, labels, prompt_scores


class SinglePassDetector(PromptedDetector):
    """The prompts as phrases of one caption: the prompt-dependent part runs once per image.

    Each query is kept once, under the prompt it scores best; `prompt_scores` holds its score for
    every prompt (in the per-prompt graph a detection comes from one pass, so only its own is set).
    """

    variant = SINGLE_PASS

    def __init__(
        self,
        model: GroundingDinoForObjectDetection,
        text: PromptText,
        phrases: Tensor,
        image_size: tuple[int, int],
        top_k: int,
        mean_std: tuple[Tensor, Tensor],
    ):
        super().__init__(model, [text], image_size, top_k, mean_std)
        self.num_prompts = phrases.shape[0]
        self.register_buffer("phrases", phrases, persistent=False)

    def _top_k(self, logits: Tensor, boxes: Tensor, batch: int) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """A query's score for a prompt = max over that phrase's tokens of sigmoid(logit) (sigmoid
        is monotonic: taken after the max); its score = the best prompt's; best K queries."""
        outside = ~self.phrases.view(1, 1, self.num_prompts, -1)
        per_prompt = logits.unsqueeze(2).masked_fill(outside, float("-inf")).max(-1)[0].sigmoid()
        scores, labels = per_prompt.max(-1)
        top_scores, index = torch.topk(scores, self.top_k, dim=1)
        top_boxes = torch.gather(corners(boxes), 1, index.unsqueeze(-1).expand(-1, -1, 4))
        top_labels = torch.gather(labels, 1, index)
        prompt_scores = torch.gather(per_prompt, 1, index.unsqueeze(-1).expand(-1, -1, self.num_prompts))
        return top_boxes, top_scores, top_labels, prompt_scores


def _token_logits(queries: Tensor, text: Tensor, padding: Tensor) -> Tensor:
    """`GroundingDinoContrastiveEmbedding` minus its -inf padding to max_text_len (256 columns).

    The padding never wins a max, and in ONNX it is a ScatterND over every proposal and column
    (a quarter of the small preset's run time).
    """
    return (queries @ text.transpose(-1, -2)).masked_fill(padding[:, None, :], float("-inf"))


@torch.no_grad()
def reference_single_prompt(
    model: GroundingDinoForObjectDetection,
    processor: Any,
    image: np.ndarray,
    prompt: str,
    image_size: tuple[int, int],
) -> tuple[np.ndarray, np.ndarray]:
    """NAVIG's way: one HF forward for one prompt on one uint8 RGB [H, W, 3] image.

    Same preprocessing as the graph. Returns every query's x0y0x1y1 box [Q, 4] (fractions) and
    score [Q] (max over the caption's tokens of sigmoid(logit), as HF's post-processing).
    """
    image_processor = getattr(processor, "image_processor", None)
    pixels = preprocess(torch.from_numpy(image)[None], image_size, *_mean_std(image_processor))
    tokens = getattr(processor, "tokenizer", processor)(caption(prompt), return_tensors="pt")
    outputs = model(pixel_values=pixels, **tokens)
    scores = outputs.logits.sigmoid().max(-1)[0][0]
    return corners(outputs.pred_boxes)[0].numpy(), scores.numpy()


@torch.no_grad()
def reference_single_caption(
    model: GroundingDinoForObjectDetection,
    processor: Any,
    image: np.ndarray,
    prompts: Sequence[str],
    image_size: tuple[int, int],
) -> tuple[np.ndarray, np.ndarray]:
    """One HF forward for the joined caption on one uint8 RGB [H, W, 3] image (as the graph does).

    Returns every query's x0y0x1y1 box [Q, 4] (fractions) and its score per prompt [Q, P]: max
    over that phrase's tokens of sigmoid(logit), HF's post-processing score kept to the phrase.
    """
    image_processor = getattr(processor, "image_processor", None)
    pixels = preprocess(torch.from_numpy(image)[None], image_size, *_mean_std(image_processor))
    tokens = getattr(processor, "tokenizer", processor)(joined_caption(prompts), return_tensors="pt")
    phrases = phrase_tokens(tokens["input_ids"][0].tolist(), delimiters(model), prompts)
    outputs = model(pixel_values=pixels, **tokens)
    probs = outputs.logits.sigmoid()[0, :, : phrases.shape[1]]  # the rest is padding to max_text_len
    per_prompt = torch.stack([probs[:, phrase].max(-1)[0] for phrase in phrases], -1)
    return corners(outputs.pred_boxes)[0].numpy(), per_prompt.numpy()


def reference_detections(
    model: GroundingDinoForObjectDetection,
    processor: Any,
    images: np.ndarray,
    image_size: tuple[int, int],
    top_k: int,
    prompts: Sequence[str] = contract.DETECTOR_PROMPTS,
    single_pass: bool = False,
) -> dict[str, np.ndarray]:
    """The contract's outputs from the checkpoint's own forward: the NAVIG way (one HF pass per image
    and prompt, best K of all of them), or (`single_pass`) one pass per image on the joined caption."""
    if single_pass:
        merged = [
            _best_queries(*reference_single_caption(model, processor, image, prompts, image_size), top_k)
            for image in images
        ]
    else:
        merged = [
            _merge_passes(
                [reference_single_prompt(model, processor, image, p, image_size) for p in prompts], top_k
            )
            for image in images
        ]
    return {name: np.stack([m[name] for m in merged]) for name in OUTPUTS}


def _best_queries(boxes: np.ndarray, per_prompt: np.ndarray, top_k: int) -> dict[str, np.ndarray]:
    scores = per_prompt.max(-1)
    best = np.argsort(-scores, kind="stable")[:top_k]
    return {
        contract.DETECTOR_BOXES: boxes[best],
        contract.DETECTOR_SCORES: scores[best],
        contract.DETECTOR_LABELS: per_prompt[best].argmax(-1),
        contract.DETECTOR_PROMPT_SCORES: per_prompt[best],
    }


def _merge_passes(passes: list[tuple[np.ndarray, np.ndarray]], top_k: int) -> dict[str, np.ndarray]:
    boxes = np.concatenate([b for b, _ in passes])
    scores = np.concatenate([s for _, s in passes])
    labels = np.repeat(np.arange(len(passes)), [len(s) for _, s in passes])
    best = np.argsort(-scores, kind="stable")[:top_k]
    one_hot = np.eye(len(passes), dtype=np.float32)[labels[best]]
    return {
        contract.DETECTOR_BOXES: boxes[best],
        contract.DETECTOR_SCORES: scores[best],
        contract.DETECTOR_LABELS: labels[best],
        contract.DETECTOR_PROMPT_SCORES: one_hot * scores[best, None],
    }


def _mean_std(image_processor: Any) -> tuple[Tensor, Tensor]:
    """The checkpoint's normalisation; ImageNet's (GroundingDINO's) when it has no image processor."""
    mean = getattr(image_processor, "image_mean", None) or (0.485, 0.456, 0.406)
    std = getattr(image_processor, "image_std", None) or (0.229, 0.224, 0.225)
    return torch.tensor(mean, dtype=torch.float32), torch.tensor(std, dtype=torch.float32)


def build_detector(
    checkpoint: Path,
    *,
    image_size: tuple[int, int] = DEFAULT_IMAGE_SIZE,
    top_k: int | None = DEFAULT_TOP_K,
    prompts: Sequence[str] = contract.DETECTOR_PROMPTS,
    single_pass: bool = False,
) -> PromptedDetector:
    """The PyTorch module that is exported, in eval mode. `top_k` None: every query, in order.
    `single_pass`: the prompts as phrases of one caption (`SinglePassDetector`)."""
    model, processor = load_grounding_dino(checkpoint)
    if single_pass and top_k is None:
        raise ExportError("single_pass keeps the best top_k queries: it needs a top_k")
    candidates = model.config.num_queries * (1 if single_pass else len(prompts))
    if top_k is not None and not 1 <= top_k <= candidates:
        per = "queries: one detection per query in a single pass" if single_pass else "queries x prompts"
        raise ExportError(f"top_k must be in 1..{candidates} ({per}), got {top_k}")
    if min(image_size) < 96:
        raise ExportError(f"image_size {image_size} is too small: the coarsest feature level needs 96 px")
    mean_std = _mean_std(processor.image_processor)
    if not single_pass:
        texts = [encode_prompt(model, processor.tokenizer, p) for p in prompts]
        return PromptedDetector(model, texts, image_size, top_k, mean_std).eval()
    joined = joined_caption(prompts)
    input_ids = processor.tokenizer(joined)["input_ids"]
    if len(input_ids) > model.config.max_text_len:
        raise ExportError(
            f"the joined caption is {len(input_ids)} tokens, more than the checkpoint's max_text_len "
            f"{model.config.max_text_len}: use fewer or shorter prompts, or the per-prompt graph"
        )
    phrases = phrase_tokens(input_ids, delimiters(model), prompts)
    text = encode_prompt(model, processor.tokenizer, joined)
    return SinglePassDetector(model, text, phrases, image_size, top_k, mean_std).eval()


def export_detector(
    checkpoint: Path,
    out: Path,
    *,
    image_size: tuple[int, int] = DEFAULT_IMAGE_SIZE,
    top_k: int | None = DEFAULT_TOP_K,
    prompts: Sequence[str] = contract.DETECTOR_PROMPTS,
    model: str = contract.DETECTOR,
    single_pass: bool = False,
) -> ArtifactReport:
    """Writes the detector ONNX at `out` and checks it against the PyTorch module it came from.
    `model`: the Triton model it becomes (`detector`, or `detector_reference` with `top_k` None).
    `single_pass` (`SinglePassDetector`) is checked against the checkpoint's own forward on the
    joined caption instead: the module departs from HF's code there (scores per phrase)."""
    started = time.perf_counter()
    detector = build_detector(
        checkpoint, image_size=image_size, top_k=top_k, prompts=prompts, single_pass=single_pass
    )
    out.parent.mkdir(parents=True, exist_ok=True)
    metadata = {"prompts": json.dumps(list(prompts)), "image_size": json.dumps(image_size)}
    _export_onnx(detector, out, {**metadata, VARIANT_KEY: detector.variant})
    reference = None
    if single_pass:
        processor = AutoProcessor.from_pretrained(checkpoint, local_files_only=True)
        reference = lambda images: reference_detections(  # noqa: E731
            detector.detector, processor, images, image_size, top_k, prompts, single_pass=True
        )
    try:
        onnx.checker.check_model(str(out))
        diff, differing = parity(detector, out, np.random.default_rng(0), reference)
        allowed = QUERIES_MAY_DIFFER_PER_PROMPT * detector.passes
        if differing > allowed:
            raise ExportError(
                f"{model}: {differing} detections of one image differ between ONNX and PyTorch by more "
                f"than {PARITY_TOLERANCE:g} (at most {allowed} may: near-tied proposals swapping ranks)"
            )
    except Exception:
        out.unlink(missing_ok=True)
        raise
    kept = f"{top_k}" if top_k is not None else "every query's"
    against = "HF's forward on the joined caption (single pass)" if single_pass else "PyTorch"
    return ArtifactReport.of_file(
        model,
        out,
        diff,
        PARITY_TOLERANCE,
        started,
        (
            f"ORT vs {against} detections on {parity_shapes(image_size)} (batch, H, W); max diff over "
            f"the reproduced ones; misses: the most of one image's {kept} detections without a counterpart "
            f"within tolerance (near-tied proposals swapping ranks)"
        ),
        misses=differing,
        misses_allowed=allowed,
    )


@contextlib.contextmanager
def _export_patches() -> Iterator[None]:
    """transformers' traced shape checks become `aten._is_all_true`, which has no ONNX form."""
    previous = os.environ.get("TRANSFORMERS_DISABLE_TORCH_CHECK")
    os.environ["TRANSFORMERS_DISABLE_TORCH_CHECK"] = "1"
    try:
        yield
    finally:
        if previous is None:
            os.environ.pop("TRANSFORMERS_DISABLE_TORCH_CHECK")
        else:
            os.environ["TRANSFORMERS_DISABLE_TORCH_CHECK"] = previous


def _export_onnx(detector: PromptedDetector, out: Path, metadata: dict[str, str]) -> None:
    """Dynamo export, dynamic batch and input size; constants folded, duplicates merged.

    onnxscript's full `optimize` is skipped: its pattern matcher is quadratic in graph size
    (~80 s on the small preset) and ORT applies its own fusions when it loads the model.
    """
    example = torch.randint(0, 256, (2, *detector.image_size, 3), dtype=torch.uint8)
    batch, height, width = (torch.export.Dim(n, min=1) for n in ("batch", "height", "width"))
    with _export_patches(), torch.no_grad():
        try:
            program = torch.onnx.export(
                detector,
                (example,),
                dynamo=True,
                optimize=False,
                verbose=False,
                input_names=[contract.DETECTOR_IMAGES],
                output_names=list(OUTPUTS),
                dynamic_shapes={"images": {0: batch, 1: height, 2: width}},
            )
        except Exception as exc:
            raise ExportError(f"detector: torch.onnx.export failed: {exc}") from exc
    onnxscript.optimizer.fold_constants(program.model)
    for cleanup in (
        ir_passes.DeduplicateInitializersPass(),
        ir_passes.CommonSubexpressionEliminationPass(),
        ir_passes.RemoveUnusedNodesPass(),
    ):
        cleanup(program.model)
    program.model.metadata_props.update(metadata)
    program.save(str(out))


def parity_shapes(image_size: tuple[int, int]) -> tuple[tuple[int, int, int], ...]:
    """(batch, height, width) of the parity images: the export size and an exact 2x downscale.

    ORT's and PyTorch's antialiased resize round their filter windows differently at
    non-integer scale factors (up to ~0.02 of a grey level), which a random detector amplifies
    through its top-K query selection; integer factors resize identically in both, so the check
    measures the network, not the resampler.
    """
    height, width = image_size
    return (2, height, width), (2, 2 * height, 2 * width)


def parity(
    detector: PromptedDetector,
    onnx_file: Path,
    rng: np.random.Generator,
    reference: Callable[[np.ndarray], dict[str, np.ndarray]] | None = None,
) -> tuple[float, int]:
    """`compare_detections` of ORT vs `reference` (default: the PyTorch module) on random images,
    worst case over the batches."""
    session = ort.InferenceSession(str(onnx_file), providers=["CPUExecutionProvider"])
    worst, differing = 0.0, 0
    for shape in parity_shapes(detector.image_size):
        images = rng.integers(0, 256, (*shape, 3), dtype=np.uint8)
        got = dict(zip(OUTPUTS, session.run(list(OUTPUTS), {contract.DETECTOR_IMAGES: images})))
        if reference is not None:
            want = reference(images)
        else:
            with torch.no_grad():
                want = dict(zip(OUTPUTS, (t.numpy() for t in detector(torch.from_numpy(images)))))
        diff, count = compare_detections(got, want)
        worst, differing = max(worst, diff), max(differing, count)
    return worst, differing


def compare_detections(got: dict[str, np.ndarray], want: dict[str, np.ndarray]) -> tuple[float, int]:
    """Max abs difference over reproduced detections, and the most not reproduced in one image.

    Each detection on either side is compared with the closest same-label detection on the other
    (box, score and prompt scores; ranks may differ where scores tie). It is reproduced when that
    difference is within PARITY_TOLERANCE.
    """
    worst, differing = 0.0, 0
    for side in _closest_differences(got, want):
        reproduced = side <= PARITY_TOLERANCE
        worst = max(worst, float(side[reproduced].max(initial=0.0)))
        differing = max(differing, int((~reproduced).sum(1).max()))
    return worst, differing


def _closest_differences(got: dict[str, np.ndarray], want: dict[str, np.ndarray]) -> tuple[np.ndarray, ...]:
    """[N, K] per side: max abs difference to the closest same-label detection on the other side."""
    rows = [
        np.concatenate(
            [
                d[contract.DETECTOR_BOXES],
                d[contract.DETECTOR_SCORES][..., None],
                d[contract.DETECTOR_PROMPT_SCORES],
            ],
            -1,
        )
        for d in (got, want)
    ]
    same = got[contract.DETECTOR_LABELS][:, :, None] == want[contract.DETECTOR_LABELS][:, None, :]
    pairwise = np.stack(  # one image at a time: the table is K x K x columns
        [np.abs(rows[0][n][:, None] - rows[1][n][None]).max(-1) for n in range(len(rows[0]))]
    )
    pairwise = np.where(same, pairwise, np.inf)
    return pairwise.min(2), pairwise.min(1)
