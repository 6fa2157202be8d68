"""NAVIG's inference loop, one photo at a time, in eager PyTorch (CPU, float32): the baseline to beat.

It makes the calls NAVIG's reference code makes (SparrowZheyuan18/Navig, `inference.py`; every rule
below is in docs/navig-reference.md with its file and line, and every value is imported from
`navig.orchestrator.navig_reference`, never retyped), on the demo checkpoints our stack serves:

1. REASONER: the Qwen2-VL base with the REASONER LoRA applied UNMERGED through peft, on its own copy
   of the base; a second copy of the base serves every other VLM call (§1.2).
2. Grounding: one full GroundingDINO pass per prompt, in PROMPT_ORDER (§4.1, §4.3). A query is kept
   iff max over text tokens of sigmoid(logit) > BOX_THRESHOLD (strict, §4.6-4.7); its box is scaled
   to the photo, cut with int() truncation and no clipping (§4.9), kept iff width >= CROP_MIN_SIDE
   or height >= CROP_MIN_SIDE (§4.10), and JPEG-encoded and decoded again as NAVIG saves crops to
   files (§1.6; a crop PIL cannot save is skipped, §4.13). Crops stay in the detector's query order
   (§4.12).
3. Guidebook: only the first crop of each category (§5.1). Every look-up loads CLIP from disk and
   reads the index from disk again (§5.3), embeds the crop, searches the top GUIDEBOOK_K (§5.5).
4. Comments: the first COMMENT_HOUSES houses and every road-sign and building-sign crop, one base-VLM
   generation each (`prompts.DESCRIBE`), per category in PROMPT_ORDER (§6).
5. Text reading: every crop of every category, houses included, one base-VLM generation each (§7.1),
   with the product's `prompts.READ_TEXT`. An answer that is empty or contains NO_TEXT is not looked
   up; any other answer, whitespace collapsed, is one map query whose first MAP_RESULTS_PER_TEXT
   places extend the results (§7.4, §7.8-7.9). As in the served `reference` mode, a NO_TEXT answer
   does not throw away the places found before it (NAVIG's reset, §7.3, is not reproduced).
6. GUESSER: the base VLM with the photo and the served `reference` mode's prompt, built by the same
   function (`orchestrator.guesser.reference_prompt`, NAVIG's assembly, §8) from what this loop found;
   free-running, read by the product's `answer.lenient_json` (NAVIG's parse_json: first `{...}` only,
   two repairs, no validation); a failure is recorded.
7. Every generation greedy with one `max_new_tokens`, MAX_NEW_TOKENS by default (§2.1).

The words (REASONER, describer, text reading, GUESSER) and the answer parsing are the product's own
(`orchestrator/prompts.py`, `guesser.py`, `answer.py`), never copied here, so the baseline and the
served `reference` mode cannot drift apart (tests/test_navig_baseline.py compares the prompts byte
for byte).

Where it departs (README.md has the reasons and the measured effect): crops per prompt are capped
(`max_crops_per_prompt`, a safety net for random weights; `counts["crops_over_cap"]` says when it
bit); the guidebook is our cosine index with a cosine threshold instead of NAVIG's L2 distances;
the map is the offline gazetteer without the 1 s sleep; the prompts are the product's (not NAVIG's
words); demo weights in float32.
"""

from __future__ import annotations

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

from navig.model_repository.vlm_engine import VlmInputs
from navig.orchestrator import prompts
from navig.orchestrator.answer import lenient_json
from navig.orchestrator.guesser import reference_prompt
from navig.orchestrator.images import jpeg_round_trip
from navig.orchestrator.navig_reference import (
    BOX_THRESHOLD,
    COMMENT_HOUSES,
    CROP_MIN_SIDE,
    GUIDEBOOK_CROPS_PER_CATEGORY,
    GUIDEBOOK_K,
    MAP_RESULTS_PER_TEXT,
    MAX_NEW_TOKENS,
    NO_TEXT,
    PROMPT_ORDER,
    READ_CATEGORIES,
)
from navig.orchestrator.searcher.search import Crop, Findings  # the served SEARCHER's records
from navig.orchestrator.settings import Settings
from navig.orchestrator.tools.base import GuideHit, Place
from navig.orchestrator.tools.gazetteer.index import GazetteerIndex
from navig.orchestrator.tools.gazetteer.search import Gazetteer
from navig.orchestrator.tools.guidebook.default import default_entries
from navig.orchestrator.tools.guidebook.entries import dump_entries, parse_entries
from navig.orchestrator.tools.guidebook.index import GuidebookIndex

# Departures, each explained in README.md.
# NAVIG has no cap; random detector weights could give up to 900 per prompt. The served `reference`
# pipeline's cap, so both sides cut the same crops.
MAX_CROPS_PER_PROMPT = int(Settings.model_fields["reference_crops_per_label"].default)
# NAVIG's guidebook thresholds are squared-L2 distances on raw CLIP image features (< 40 retrieved,
# <= 30 in the prompt); our index is cosine on unit vectors, where squared L2 = 2 - 2 cos <= 4 would
# keep every hit. The served stack's cosine threshold stands in for both.
GUIDEBOOK_MIN_COSINE = float(Settings.model_fields["guidebook_threshold"].default)
STEPS = ("reasoner", "detector", "guidebook", "describer", "vlm_ocr", "map", "guesser")  # NAVIG's order
COUNTERS = (
    "detector_passes",
    "detections",  # queries above the box threshold, every prompt
    "crops_before_cap",  # crops NAVIG would keep (threshold, 224 rule, saveable)
    "crops",  # crops kept (after the cap)
    "crops_over_cap",
    *(f"crops_{c.replace(' ', '_')}" for c in PROMPT_ORDER),
    "generations",
    "reasoner_calls",
    "vlm_calls",
    "text_reads",
    "comments",
    "unreadable_crops",  # crops the VLM's image processor refuses (aspect ratio > 200)
    "map_calls",
    "map_results",
    "guidebook_lookups",
    "clip_calls",
    "clip_loads",
    "index_loads",
    "guidebook_hits",
    "prompt_tokens",
    "generated_tokens",
    "guesser_prompt_tokens",
)


@dataclass
class BaselineResult:
    """One photo: the answer (None when the GUESSER's text does not parse), what led to it, where the
    time went (ms per step; `total` is the photo's wall time) and the work done (`counts`)."""

    answer: Any
    guesser_output: str
    answer_error: str | None
    reasoning: str
    evidence: list[str]
    timings_ms: dict[str, float]
    counts: dict[str, int] = field(default_factory=dict)
    # inside `guidebook`: clip_load, index_load, clip_embed
    detail_ms: dict[str, float] = field(default_factory=dict)
    guesser_prompt: str = ""
    crops: list[str] = field(default_factory=list)  # `Crop.where` of each, in order (the served side's form)

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
            "guesser_prompt": self.guesser_prompt,
            "crops": self.crops,
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


def select_crops(
    image: np.ndarray, label: str, scores: torch.Tensor, boxes: torch.Tensor, cap: int
) -> tuple[list[Crop], int, int]:
    """NAVIG's crop rules over one prompt's pass, in query order.

    `scores` [Q]: max over text tokens of sigmoid(logit); `boxes` [Q, 4]: cxcywh, fractions of the
    photo. Returns (the first `cap` crops NAVIG keeps, how many NAVIG keeps, queries above threshold).
    """
    height, width = image.shape[:2]
    scaled = boxes.float() * torch.tensor([width, height, width, height], dtype=torch.float32)
    corners = torch.stack(  # cxcywh -> xyxy in float32, as GroundingDINO's box_convert
        [
            scaled[:, 0] - 0.5 * scaled[:, 2],
            scaled[:, 1] - 0.5 * scaled[:, 3],
            scaled[:, 0] + 0.5 * scaled[:, 2],
            scaled[:, 1] + 0.5 * scaled[:, 3],
        ],
        dim=1,
    ).tolist()
    kept: list[Crop] = []
    above = passed = 0
    for query, score in enumerate(scores.tolist()):
        if not score > BOX_THRESHOLD:
            continue
        above += 1
        x1, y1, x2, y2 = corners[query]
        if abs(x2 - x1) < CROP_MIN_SIDE and abs(y2 - y1) < CROP_MIN_SIDE:
            continue
        box = (int(x1), int(y1), int(x2), int(y2))  # truncation; negative values slice from the end
        pixels = jpeg_round_trip(image[box[1] : box[3], box[0] : box[2]])
        if pixels is None:
            continue
        passed += 1
        if len(kept) < cap:
            kept.append(Crop(label, float(score), box, pixels))
    return kept, passed, above


def guesser_prompt(
    reasoning: str,
    texts: dict[str, list[str]],
    comments: dict[str, list[str]],
    hits: dict[str, list[GuideHit]],
    places: list[Place],
) -> str:
    """The GUESSER's prompt from what the loop recorded (per label, in crop order: every text-reading
    answer, every comment, the guidebook hits of its first crop; the places of every map query, in
    query order), put in the served SEARCHER's record and assembled by the served `reference` mode's
    own function: the selection (NO_TEXT and empty answers dropped, clues deduplicated, PROMPT_ORDER)
    and the words are the product's."""
    found = Findings(places=list(places), texts=texts, comments=comments, guide_by_label=hits)
    return reference_prompt(reasoning, found)


def read_answer(output: str) -> tuple[Any, str | None]:
    """The GUESSER's free text read by the product's `answer.lenient_json` (NAVIG's parse_json, §8.8:
    the first `{...}` only, two repairs, no validation); (None, why) when it reads nothing."""
    answer = lenient_json(output)
    if answer is None:
        return None, f"no JSON object read from the GUESSER output: {output[:80]!r}"
    return answer, None


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
    which every look-up reloads (as the reference does).

    `threads` 0 leaves torch's default, as the in-process side's `TransformersVlm(threads=0)`.
    """

    def __init__(
        self,
        checkpoints: Path,
        work_dir: Path,
        max_new_tokens: int = MAX_NEW_TOKENS,
        threads: int = 0,
        *,
        gazetteer: GazetteerIndex | None = None,
        max_crops_per_prompt: int = MAX_CROPS_PER_PROMPT,
    ) -> None:
        from peft import PeftModel

        if threads > 0:
            torch.set_num_threads(threads)
        self.max_new_tokens = max_new_tokens
        self.max_crops_per_prompt = max_crops_per_prompt
        self.folders = checkpoint_folders(Path(checkpoints))
        self.load_seconds: dict[str, float] = {}
        self.counts_total: dict[str, int] = dict.fromkeys(COUNTERS, 0)

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
            # eager attention, as the exported graph: transformers' default path for the BERT text
            # branch gives other text features for GroundingDINO's sub-phrase attention mask (on the
            # small preset 891 of 900 queries moved by 0.02 or more; eager agrees with the graph to 3e-6)
            self.detector = GroundingDinoForObjectDetection.from_pretrained(
                self.folders["detector"],
                use_safetensors=True,
                local_files_only=True,
                attn_implementation="eager",
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

    def _consult_guidebook(self, crop: Crop, counts: dict[str, int], clock: _Clock) -> list[GuideHit]:
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
        counts["clip_calls"] += 1
        hits = book.search(embedding, GUIDEBOOK_K, threshold=GUIDEBOOK_MIN_COSINE)[0]
        counts["guidebook_lookups"] += 1
        counts["guidebook_hits"] += len(hits)
        clock.detail["clip_embed"] += (time.perf_counter() - read) * 1000
        return hits

    # -- models -----------------------------------------------------------------------------------

    def _generate(self, model: Any, prompt: str, image: np.ndarray, counts: dict[str, int]) -> str | None:
        """Greedy, free-running, one request at a time. None when the image processor refuses the
        image (Qwen2-VL's aspect-ratio limit of 200; NAVIG's qwen-vl-utils has the same limit and
        would stop with an exception)."""
        try:
            inputs = self.inputs(prompt, image)
        except ValueError:
            counts["unreadable_crops"] += 1
            return None
        with torch.inference_mode():
            output = model.generate(**inputs, max_new_tokens=self.max_new_tokens, do_sample=False)
        counts["generations"] += 1
        counts["reasoner_calls" if model is self.reasoner else "vlm_calls"] += 1
        counts["prompt_tokens"] += int(inputs["input_ids"].shape[1])
        counts["generated_tokens"] += int(output.shape[1] - inputs["input_ids"].shape[1])
        return self.inputs.decode(output[0, inputs["input_ids"].shape[1] :].tolist()).strip()

    def _detector_pass(self, image: np.ndarray, label: str) -> tuple[torch.Tensor, torch.Tensor]:
        """One full GroundingDINO pass for one prompt: per query, the best text-token probability
        and the box (cxcywh, fractions of the photo)."""
        inputs = self.detector_processor(images=image, text=f"{label}.", return_tensors="pt")
        with torch.inference_mode():
            outputs = self.detector(**inputs)
        return outputs.logits[0].sigmoid().max(dim=-1).values, outputs.pred_boxes[0]

    def _detect(self, image: np.ndarray, counts: dict[str, int]) -> dict[str, list[Crop]]:
        """One pass per prompt, in PROMPT_ORDER (the order of every later step)."""
        crops: dict[str, list[Crop]] = {}
        for label in PROMPT_ORDER:
            scores, boxes = self._detector_pass(image, label)
            counts["detector_passes"] += 1
            crops[label], passed, above = select_crops(image, label, scores, boxes, self.max_crops_per_prompt)
            counts["detections"] += above
            counts["crops_before_cap"] += passed
            counts[f"crops_{label.replace(' ', '_')}"] = len(crops[label])
        return crops

    def _map_search(self, text: str, counts: dict[str, int]) -> list[Place]:
        """The whole answer as one query, whitespace collapsed as the served `reference` mode does
        (searcher/map.py); its first MAP_RESULTS_PER_TEXT places, without a language prior."""
        counts["map_calls"] += 1
        places = self.gazetteer.lookup([" ".join(text.split())], MAP_RESULTS_PER_TEXT)
        return places[:MAP_RESULTS_PER_TEXT]

    # -- one photo --------------------------------------------------------------------------------

    def locate(self, image: np.ndarray) -> BaselineResult:
        """The reference's sequential loop over one uint8 RGB photo."""
        started = time.perf_counter()
        clock = _Clock()
        counts = dict.fromkeys(COUNTERS, 0)
        evidence: list[str] = []

        with clock.step("reasoner"):
            reasoning = self._generate(self.reasoner, prompts.REASONER, image, counts) or ""
        with clock.step("detector"):
            crops = self._detect(image, counts)

        hits: dict[str, list[GuideHit]] = {}
        with clock.step("guidebook"):
            for label in PROMPT_ORDER:
                for crop in crops[label][:GUIDEBOOK_CROPS_PER_CATEGORY]:
                    crop_hits = self._consult_guidebook(crop, counts, clock)
                    evidence += [f"guidebook: {crop.where} -> {hit.text}" for hit in crop_hits]
                    hits.setdefault(label, []).extend(crop_hits)

        comments: dict[str, list[str]] = {}
        with clock.step("describer"):
            for label in PROMPT_ORDER:
                for crop in crops[label][:COMMENT_HOUSES] if label == "house" else crops[label]:
                    comment = self._generate(self.base, prompts.DESCRIBE[label], crop.pixels, counts)
                    if comment is None:
                        continue
                    counts["comments"] += 1
                    comments.setdefault(label, []).append(comment)
                    evidence.append(f"describer: {crop.where} -> {comment}")

        texts: dict[str, list[str]] = {}
        places: list[Place] = []
        for label in READ_CATEGORIES:
            for crop in crops[label]:
                with clock.step("vlm_ocr"):
                    text = self._generate(self.base, prompts.READ_TEXT, crop.pixels, counts)
                if text is None:
                    continue
                counts["text_reads"] += 1
                texts.setdefault(label, []).append(text)
                evidence.append(f"ocr: {crop.where} -> {text}")
                if not text or NO_TEXT in text:  # not looked up (NAVIG's substring test, §7.3)
                    continue
                with clock.step("map"):
                    found_places = self._map_search(text, counts)
                for p in found_places:
                    where = ", ".join(part for part in (p.name, p.admin1, p.country_code) if part)
                    evidence.append(f"map: {text} -> {where} ({p.latitude}, {p.longitude})")
                places += found_places
        counts["map_results"] = len(places)

        with clock.step("guesser"):
            prompt = guesser_prompt(reasoning, texts, comments, hits, places)
            before = counts["prompt_tokens"]
            output = self._generate(self.base, prompt, image, counts) or ""
            counts["guesser_prompt_tokens"] = counts["prompt_tokens"] - before
        answer, error = read_answer(output)

        timings = {**clock.ms, "total": (time.perf_counter() - started) * 1000}
        counts["crops"] = sum(len(c) for c in crops.values())
        counts["crops_over_cap"] = counts["crops_before_cap"] - counts["crops"]
        for key, value in counts.items():
            self.counts_total[key] += value
        where = [crop.where for label in PROMPT_ORDER for crop in crops[label]]
        return BaselineResult(
            answer, output, error, reasoning, evidence, timings, counts, clock.detail, prompt, where
        )
