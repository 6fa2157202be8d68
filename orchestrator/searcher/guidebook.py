"""CLIP in one batch, then the guidebook's nearest clues (FAISS). Fast: the photo and every crop, k =
`guidebook_k`. Reference (NAVIG's RAG step): only the first crop of each label, k = GUIDEBOOK_K, not the
photo. Both keep hits above `guidebook_threshold`: a cosine similarity of normalised CLIP vectors, where
NAVIG's thresholds are L2 distances of raw ViT-B/32 features and cannot carry over."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image
from rich.console import Console

from navig.model_repository import contract
from navig.orchestrator import navig_reference
from navig.orchestrator.results import Evidence
from navig.orchestrator.searcher.search import Crop, Search
from navig.orchestrator.searcher.tool import SearchTool, ToolConfig
from navig.orchestrator.settings import Settings
from navig.orchestrator.tools.base import Guidebook

CLIP_SIDE = 224  # crops are batched for `clip_image` at one size; the graph's own resize then is a no-op


class ConsultGuidebook(SearchTool):
    name = "guidebook"
    option = "use_guidebook"
    models = (contract.CLIP_IMAGE,)
    modes = frozenset({"fast", "reference"})
    evidence_rank = 40

    def __init__(self, settings: Settings, config: ToolConfig) -> None:
        from navig.orchestrator.tools.guidebook.index import GuidebookIndex  # faiss: serving only

        super().__init__(settings, config)
        assert settings.guidebook_dir is not None
        self.index: Guidebook = GuidebookIndex.load(settings.guidebook_dir)

    @classmethod
    def create(cls, settings: Settings) -> SearchTool | None:
        return None if settings.guidebook_dir is None else super().create(settings)  # no index: off

    @classmethod
    def prepare(cls, settings: Settings, model_repository: Path | None, console: Console) -> Settings:
        """No guidebook configured: the default one, embedded once with this repository's CLIP."""
        if settings.use_guidebook and settings.guidebook_dir is None and model_repository is not None:
            from navig.orchestrator.tools.guidebook.build import ensure_default_guidebook  # needs faiss

            with console.status("embedding the default guidebook with the repository's CLIP (once)..."):
                guidebook = ensure_default_guidebook(model_repository)
            settings = settings.model_copy(update={"guidebook_dir": guidebook})
        return settings

    async def run(self, search: Search) -> None:
        if search.reference:  # the first crop of each label, in NAVIG's label order; not the photo
            first: dict[str, Crop] = {}
            for crop in search.crops:
                first.setdefault(crop.label, crop)
            chosen = [first[label] for label in navig_reference.PROMPT_ORDER if label in first]
            regions = [(crop.where, crop.pixels, crop.label) for crop in chosen]
            k = navig_reference.GUIDEBOOK_K
        else:
            regions = [(where, pixels, None) for where, pixels in search.regions(contract.DETECTOR_PROMPTS)]
            k = self.settings.guidebook_k
        if not regions:
            return
        batch = np.stack([_square(pixels, CLIP_SIDE) for _, pixels, _ in regions])
        out = await search.models.infer(
            contract.CLIP_IMAGE, {contract.CLIP_IMAGE_IMAGES: batch}, search.deadline
        )
        hits = self.index.search(out[contract.CLIP_EMBEDDINGS], k, self.settings.guidebook_threshold)
        for (where, _, label), region_hits in zip(regions, hits):
            if label is not None:  # reference: the GUESSER's sections go by label
                search.found.guide_by_label.setdefault(label, []).extend(region_hits)
            for hit in region_hits:
                search.found.guide_hits.append(hit)
                search.record(Evidence(self.name, where, hit.text, hit.source or hit.entry_id, hit.score,
                                       hit.country_code))  # fmt: skip


def _square(pixels: np.ndarray, side: int) -> np.ndarray:
    """CLIP's view: shortest side to `side`, centre crop (as its preprocessing does)."""
    image = Image.fromarray(pixels)
    scale = side / min(image.size)
    image = image.resize((max(side, round(image.width * scale)), max(side, round(image.height * scale))))
    left, top = (image.width - side) // 2, (image.height - side) // 2
    return np.asarray(image.crop((left, top, left + side, top + side)))
