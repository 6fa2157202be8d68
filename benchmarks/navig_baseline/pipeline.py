"""NAVIG's inference loop, one image at a time, in eager PyTorch (CPU, float32): the baseline to beat.

It runs on the same demo checkpoints our stack serves (`navig export demo-checkpoints`), asks the
same prompts (`navig.orchestrator.prompts`) and looks text up in the same offline gazetteer, so the
benchmark compares the serving architecture, not the weights or the wording.

Per image, as the reference does:
1. REASONER: the Qwen2-VL base with the REASONER LoRA applied UNMERGED through peft
   (`PeftModel.from_pretrained`) writes the analysis. A second, separate copy of the base is held
   for every other VLM call, as the reference keeps base and LoRA models both in memory.
2. SEARCHER, detection: transformers' GroundingDINO runs once per prompt ("road sign",
   "building sign", "house": three full passes, backbone included), box threshold 0.35, text
   threshold 0.25, HF post-processing; crops are cut from the image.
3. Every sign crop: a VLM generation asked to read its text (the reference's OCR is the VLM); the
   text goes to the map look-up.
4. The first three house crops and every sign crop: a VLM comment (the DESCRIBE prompts).
5. Every crop: the guidebook look-up loads CLIP from disk AND reads the FAISS index from disk
   again, embeds the crop, searches top-k (the reference reloads both per call).
6. GUESSER: the base VLM with the image, the reasoning and the evidence writes the JSON answer,
   free-running (the reference has no grammar) and parsed leniently; failure is recorded.
7. One `max_new_tokens` for every generation; greedy decoding.

Where it cannot follow the reference, and why:
- Weights: demo checkpoints (random, CPU-sized) instead of Qwen2-VL-7B / GroundingDINO-T / CLIP-L;
  float32 on CPU instead of fp16 on a GPU (fp16 matmuls on CPU are slow or unsupported). Both
  sides of the comparison use the same weights and dtype.
- Map: the reference calls Nominatim and sleeps 1 s per request; here the offline gazetteer our
  stack serves, without the sleep (the comparison is about compute, not a rate limit).
- Crops: random detector weights put nearly every query above 0.35 (hundreds per prompt), which
  real weights never do; the best `max_crops_per_prompt` crops per prompt (default 4) of at least
  `min_crop_side` pixels (default 32, as our stack: Qwen2-VL needs 28) are kept, so a photo costs a
  realistic dozen crops instead of ~900.
- Guidebook: the open default entries (text only, `default_entries()`) embedded once with the same
  CLIP's text tower in PyTorch and saved to `work_dir`; the reference's guidebook has example images
  too. The per-look-up cost reproduced is loading CLIP + reading the index from disk + one embedding.
- OCR prompt: our stack reads text with PP-OCR, so there is no shared wording; `READ_TEXT` below.
- Evidence text for the GUESSER uses our stack's line format (`tool: query -> result`), all lines.
- VLM inputs are built with `VlmInputs` (the checkpoint's chat template, image tokens expanded as
  Qwen2VLProcessor does) because Qwen2VLProcessor needs torchvision, which is not installed.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml
from transformers import (
    AutoProcessor,
    AutoTokenizer,
    CLIPModel,
    GroundingDinoForObjectDetection,
    Qwen2VLForConditionalGeneration,
)
from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

from navig.model_repository.contract import DETECTOR_PROMPTS
from navig.model_repository.vlm_engine import VlmInputs
from navig.orchestrator import prompts
from navig.orchestrator.searcher.search import Crop  # the same crop record as the served SEARCHER
from navig.orchestrator.tools.gazetteer.index import GazetteerIndex
from navig.orchestrator.tools.gazetteer.search import Gazetteer
from navig.orchestrator.tools.guidebook.default import default_entries
from navig.orchestrator.tools.guidebook.entries import dump_entries, parse_entries
from navig.orchestrator.tools.guidebook.index import GuidebookIndex

BOX_THRESHOLD = 0.35  # NAVIG's GroundingDINO thresholds
TEXT_THRESHOLD = 0.25
HOUSES_DESCRIBED = 3  # NAVIG comments on the first three houses
SIGNS = ("road sign", "building sign")
READ_TEXT = "Read the text on this sign. Answer with the text only, one line of the sign per line."
GUIDEBOOK_K = 3
MAP_LIMIT = 5
COUNTERS = ("generations", "prompt_tokens", "new_tokens", "detector_passes", "clip_loads", "index_loads")
STEPS = ("reasoner", "detector", "vlm_ocr", "map", "describer", "guidebook", "guesser")


@dataclass
class BaselineResult:
    """One photo: the answer (None when the free-running GUESSER's text is not usable JSON), what led
    to it, and where the time went (ms per step; `total` is the photo's wall time)."""

    answer: dict[str, Any] | None
    guesser_output: str
    answer_error: str | None
    reasoning: str
    evidence: list[str]
    timings_ms: dict[str, float]
    counts: dict[str, int] = field(default_factory=dict)
    # inside `guidebook`: clip_load, index_load, clip_embed; inside the VLM steps: prompt tokens
    detail_ms: dict[str, float] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {
            "answer": self.answer,
            "answer_error": self.answer_error,
            "guesser_output": self.guesser_output,
            "reasoning": self.reasoning,
            "evidence": self.evidence,
            "timings_ms": self.timings_ms,
            "counts": self.counts,
            "detail_ms": self.detail_ms,
        }


def checkpoint_folders(checkpoints: Path) -> dict[str, Path]:
    """The sub-folders named by the `export.yaml` that `navig export demo-checkpoints` writes."""
    spec = yaml.safe_load((checkpoints / "export.yaml").read_text())
    return {
        "base": checkpoints / spec["vlm"]["base"],
        "adapter": checkpoints / spec["vlm"]["reasoner_adapter"],
        "detector": checkpoints / spec["detector"]["checkpoint"],
        "clip": checkpoints / spec["clip"]["checkpoint"],
    }


def parse_answer(text: str) -> tuple[dict[str, Any] | None, str | None]:
    """Lenient, as the reference: the first {...} that parses and has numeric coordinates."""
    for match in re.finditer(r"\{.*?\}", text, re.DOTALL):
        try:
            value = json.loads(match.group(0))
        except json.JSONDecodeError:
            continue
        if not isinstance(value, dict):
            continue
        try:
            value["latitude"], value["longitude"] = float(value["latitude"]), float(value["longitude"])
        except (KeyError, TypeError, ValueError):
            return None, f"JSON without numeric latitude/longitude: {match.group(0)[:80]!r}"
        return value, None
    return None, f"no JSON object in the GUESSER output: {text[:80]!r}"


class _Clock:
    """Per-step millisecond sums for one photo."""

    def __init__(self) -> None:
        self.ms = dict.fromkeys(STEPS, 0.0)
        self.detail = dict.fromkeys(("clip_load", "index_load", "clip_embed"), 0.0)

    @contextmanager
    def step(self, name: str) -> Iterator[None]:
        started = time.perf_counter()
        try:
            yield
        finally:
            self.ms[name] += (time.perf_counter() - started) * 1000


def _load_vlm(folder: Path) -> Qwen2VLForConditionalGeneration:
    return Qwen2VLForConditionalGeneration.from_pretrained(
        folder, use_safetensors=True, local_files_only=True, dtype=torch.float32
    ).eval()


class NavigBaseline:
    """All models loaded once (as the reference does at start), except CLIP and the guidebook index,
    which every look-up reloads (as the reference does)."""

    def __init__(
        self,
        checkpoints: Path,
        work_dir: Path,
        max_new_tokens: int,
        threads: int | None = None,
        *,
        gazetteer: GazetteerIndex | None = None,
        max_crops_per_prompt: int = 4,
        min_crop_side: int = 32,
    ) -> None:
        from peft import PeftModel

        if threads:
            torch.set_num_threads(threads)
        self.max_new_tokens = max_new_tokens
        self.max_crops_per_prompt = max_crops_per_prompt
        self.min_crop_side = min_crop_side
        self.folders = checkpoint_folders(Path(checkpoints))
        self.load_seconds: dict[str, float] = {}
        self.counts_total: dict[str, int] = {"clip_loads": 0, "index_loads": 0}

        with self._loading("reasoner"):  # its own copy of the base; LoRA layers stay unmerged
            base_for_lora = _load_vlm(self.folders["base"])
            self.reasoner = PeftModel.from_pretrained(
                base_for_lora, self.folders["adapter"], is_trainable=False
            ).eval()
        with self._loading("base"):
            self.base = _load_vlm(self.folders["base"])
            config = self.base.config
            self.inputs = VlmInputs(
                self.folders["base"], config.vision_config.spatial_merge_size, config.image_token_id
            )
        with self._loading("detector"):
            self.detector = GroundingDinoForObjectDetection.from_pretrained(
                self.folders["detector"], use_safetensors=True, local_files_only=True
            ).eval()
            self.detector_processor = AutoProcessor.from_pretrained(
                self.folders["detector"], local_files_only=True
            )
        with self._loading("gazetteer"):
            self.gazetteer = Gazetteer(gazetteer if gazetteer is not None else GazetteerIndex.open())
        with self._loading("guidebook_build"):
            self.guidebook_dir = Path(work_dir) / "guidebook"
            self._build_guidebook()

    @contextmanager
    def _loading(self, name: str) -> Iterator[None]:
        started = time.perf_counter()
        yield
        self.load_seconds[name] = time.perf_counter() - started

    # -- the guidebook ----------------------------------------------------------------------------

    def _load_clip(self) -> tuple[CLIPModel, CLIPImageProcessorPil]:
        model = CLIPModel.from_pretrained(
            self.folders["clip"], use_safetensors=True, local_files_only=True, dtype=torch.float32
        ).eval()
        processor = CLIPImageProcessorPil.from_pretrained(self.folders["clip"], local_files_only=True)
        return model, processor

    def _build_guidebook(self) -> None:
        """The default entries through CLIP's text tower, saved where every look-up will read them."""
        entries = parse_entries(dump_entries(default_entries()).splitlines(), "default guidebook")
        model, _ = self._load_clip()
        tokenizer = AutoTokenizer.from_pretrained(self.folders["clip"], local_files_only=True)
        vectors = []
        with torch.inference_mode():
            for start in range(0, len(entries), 64):
                texts = [e.text for e in entries[start : start + 64]]
                tokens = tokenizer(texts, padding=True, truncation=True, return_tensors="pt")
                pooled = model.text_model(**tokens).pooler_output
                vectors.append(model.text_projection(pooled).numpy())
        book = GuidebookIndex(np.concatenate(vectors), entries, {"embedder": "transformers (baseline)"})
        book.save(self.guidebook_dir)

    def _consult_guidebook(self, crop: Crop, counts: dict[str, int], clock: _Clock) -> list[str]:
        """One look-up as the reference does it: CLIP and the index come from disk every time."""
        started = time.perf_counter()
        model, processor = self._load_clip()
        loaded = time.perf_counter()
        book = GuidebookIndex.load(self.guidebook_dir)
        read = time.perf_counter()
        clock.detail["clip_load"] += (loaded - started) * 1000
        clock.detail["index_load"] += (read - loaded) * 1000
        counts["clip_loads"] += 1
        counts["index_loads"] += 1
        with torch.inference_mode():
            pixels = processor(images=[crop.pixels], return_tensors="pt")["pixel_values"]
            pooled = model.vision_model(pixel_values=pixels).pooler_output
            embedding = model.visual_projection(pooled).numpy()
        hits = book.search(embedding, GUIDEBOOK_K, threshold=-1.0)[0]
        clock.detail["clip_embed"] += (time.perf_counter() - read) * 1000
        return [f"guidebook: {crop.where} -> {hit.text}" for hit in hits]

    # -- models -----------------------------------------------------------------------------------

    def _generate(self, model: Any, prompt: str, image: np.ndarray, counts: dict[str, int]) -> str:
        """Greedy, free-running, one request at a time."""
        inputs = self.inputs(prompt, image)
        with torch.inference_mode():
            output = model.generate(**inputs, max_new_tokens=self.max_new_tokens, do_sample=False)
        counts["generations"] += 1
        counts["prompt_tokens"] += int(inputs["input_ids"].shape[1])
        counts["new_tokens"] += int(output.shape[1] - inputs["input_ids"].shape[1])
        return self.inputs.decode(output[0, inputs["input_ids"].shape[1] :].tolist()).strip()

    def _detect(self, image: np.ndarray, counts: dict[str, int]) -> list[Crop]:
        """One full GroundingDINO pass per prompt, as the reference."""
        height, width = image.shape[:2]
        crops: list[Crop] = []
        for prompt in DETECTOR_PROMPTS:
            inputs = self.detector_processor(images=image, text=f"{prompt}.", return_tensors="pt")
            with torch.inference_mode():
                outputs = self.detector(**inputs)
            counts["detector_passes"] += 1
            found = self.detector_processor.post_process_grounded_object_detection(
                outputs,
                inputs["input_ids"],
                threshold=BOX_THRESHOLD,
                text_threshold=TEXT_THRESHOLD,
                target_sizes=[(height, width)],
            )[0]
            kept: list[Crop] = []
            for index in torch.argsort(found["scores"], descending=True).tolist():
                if len(kept) >= self.max_crops_per_prompt:
                    break
                box = found["boxes"][index].round().int().tolist()
                x0, y0 = max(box[0], 0), max(box[1], 0)
                x1, y1 = min(box[2], width), min(box[3], height)
                if min(x1 - x0, y1 - y0) < self.min_crop_side:
                    continue
                pixels = np.ascontiguousarray(image[y0:y1, x0:x1])
                kept.append(Crop(prompt, float(found["scores"][index]), (x0, y0, x1, y1), pixels))
            crops.extend(kept)
        return crops

    # -- one photo --------------------------------------------------------------------------------

    def locate(self, image: np.ndarray) -> BaselineResult:
        """The reference's sequential loop over one uint8 RGB photo."""
        started = time.perf_counter()
        clock = _Clock()
        counts = dict.fromkeys(COUNTERS, 0)
        evidence: list[str] = []

        with clock.step("reasoner"):
            reasoning = self._generate(self.reasoner, prompts.REASONER, image, counts)
        with clock.step("detector"):
            crops = self._detect(image, counts)
        signs = [c for c in crops if c.label in SIGNS]
        houses = [c for c in crops if c.label == "house"]

        for crop in signs:
            with clock.step("vlm_ocr"):
                text = self._generate(self.base, READ_TEXT, crop.pixels, counts)
            lines = [line.strip() for line in text.splitlines() if line.strip()]
            if lines:
                evidence.append(f"ocr: {crop.where} -> {' | '.join(lines)}")
            with clock.step("map"):
                places = self.gazetteer.lookup(lines, MAP_LIMIT) if lines else []
            for p in places:
                where = ", ".join(part for part in (p.name, p.admin1, p.country_code) if part)
                evidence.append(f"map: {p.matched} -> {where} ({p.latitude:.4f}, {p.longitude:.4f})")

        for crop in houses[:HOUSES_DESCRIBED] + signs:
            with clock.step("describer"):
                comment = self._generate(self.base, prompts.DESCRIBE[crop.label], crop.pixels, counts)
            evidence.append(f"describer: {crop.where} -> {comment}")

        for crop in crops:
            with clock.step("guidebook"):
                evidence.extend(self._consult_guidebook(crop, counts, clock))

        with clock.step("guesser"):
            before = counts["prompt_tokens"]
            output = self._generate(self.base, prompts.guesser_prompt(reasoning, evidence), image, counts)
            counts["guesser_prompt_tokens"] = counts["prompt_tokens"] - before
        answer, error = parse_answer(output)

        timings = {**clock.ms, "total": (time.perf_counter() - started) * 1000}
        counts.update(crops=len(crops), sign_crops=len(signs), house_crops=len(houses))
        for key in ("clip_loads", "index_loads"):
            self.counts_total[key] += counts[key]
        return BaselineResult(answer, output, error, reasoning, evidence, timings, counts, clock.detail)
