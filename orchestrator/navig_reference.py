"""NAVIG's inference values, in one place, each with where the reference code sets it.

Reference: SparrowZheyuan18/Navig @ 03d0302ceaec683b25fa9cbeaf137de3b294bd6f (the Python files are
unchanged since 7c5678bf). docs/navig-reference.md has every value with its line, the README/paper
disagreements, and how navig-serve differs. The `reference` pipeline mode and the benchmark's
baseline (benchmarks/navig_baseline) read these; nothing else should.
"""

from __future__ import annotations

# --- SEARCHER: grounding (inference.py:52, 234; utils.py:185-205; GroundingDINO util/inference.py:70-75)
PROMPT_ORDER = ("road sign", "house", "building sign")  # also the order of the GUESSER's sections
DETECTOR_SHORT_SIDE = 800  # T.RandomResize([800], max_size=1333): shorter side 800 (GD inference.py:39-50)
DETECTOR_LONG_SIDE_MAX = 1333  # ... unless the longer side would pass 1333
BOX_THRESHOLD = 0.65  # code default; README examples pass 0.3; a query is kept iff score > threshold
CROP_MIN_SIDE = 224  # a crop is kept iff width >= 224 or height >= 224 (utils.py:203-204)
# no cap on crops per category (utils.py:201-205); crops stay in the detector's query order

# --- SEARCHER: guidebook (inference.py:84-95, 171-180; utils.py:71-97)
GUIDEBOOK_CROPS_PER_CATEGORY = 1  # only the first crop of each category is looked up; not the photo
GUIDEBOOK_K = 5
GUIDEBOOK_RETRIEVE_DISTANCE = 40.0  # hits with distance < 40 are kept (squared L2 on raw CLIP features)
GUIDEBOOK_PROMPT_DISTANCE = 30.0  # the GUESSER keeps hits with distance <= 30, deduplicated

# --- SEARCHER: VLM comments (inference.py:111-124)
COMMENT_HOUSES = 3  # the first 3 house crops; every road-sign and building-sign crop

# --- SEARCHER: text reading and map search (inference.py:132-149; utils.py:34-61)
READ_CATEGORIES = PROMPT_ORDER  # every crop of every category is read by the VLM, houses included
MAP_RESULTS_PER_TEXT = 3  # top 3 places per text read
NO_TEXT = "None"  # an answer containing it is not looked up

# --- generation (llm.py:30-142)
MAX_NEW_TOKENS = 256  # every VLM call: REASONER, comments, text reading, GUESSER


def detector_input_size(height: int, width: int) -> tuple[int, int]:
    """(height, width) GroundingDINO's resize gives a photo: the shorter side to 800 unless the longer
    would pass 1333, then int() of the other side (GD datasets/transforms.py `get_size_with_aspect_ratio`)."""
    short, long = sorted((height, width))
    size = DETECTOR_SHORT_SIDE
    if long / short * size > DETECTOR_LONG_SIDE_MAX:
        size = round(DETECTOR_LONG_SIDE_MAX * short / long)
    if height <= width:
        return size, int(size * width / height)
    return int(size * height / width), size
