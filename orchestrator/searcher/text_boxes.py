"""Which detector crop a text line read on the whole photo belongs to.

The photo is read once; a line is a crop's text when most of its box lies inside the crop's box.
The share is taken of the text box's own area (not intersection over union): a line is small and a
sign crop is large, so IoU would stay low for a line well inside its sign.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

MIN_INSIDE = 0.5  # a line at least half inside a crop is that crop's


def inside_fractions(text_boxes: np.ndarray, crop_boxes: np.ndarray) -> np.ndarray:
    """[N, M]: the share of each text box's area (its axis-aligned bounds, text boxes are nearly
    upright quadrilaterals [N, 4, 2]) that lies inside each crop box [M, 4] (x0, y0, x1, y1), all in
    one pixel frame. A text box of no area is inside no crop."""
    quads = np.asarray(text_boxes, np.float64).reshape(-1, 4, 2)
    crops = np.asarray(crop_boxes, np.float64).reshape(-1, 4)
    lo, hi = quads.min(axis=1), quads.max(axis=1)  # [N, 2] each
    size = np.maximum(hi - lo, 1e-9)
    overlap_lo = np.maximum(lo[:, None, :], crops[None, :, :2])
    overlap_hi = np.minimum(hi[:, None, :], crops[None, :, 2:])
    overlap = np.clip(overlap_hi - overlap_lo, 0, None)
    return (overlap / size[:, None, :]).prod(axis=2)


def assign(
    text_boxes: np.ndarray, crop_boxes: Sequence[Sequence[float]] | np.ndarray, min_inside: float = MIN_INSIDE
) -> list[int | None]:
    """For each text box, the index of the crop holding at least `min_inside` of its area, or None
    (the line stays the photo's). Overlapping crops: the one holding most of it, then the smaller crop
    (the more specific region, a sign on a facade), then the earlier one (the detector's better score)."""
    crops = np.asarray(crop_boxes, np.float64).reshape(-1, 4)
    if len(crops) == 0:
        return [None] * len(np.asarray(text_boxes).reshape(-1, 4, 2))
    fractions = inside_fractions(text_boxes, crops)
    areas = (crops[:, 2] - crops[:, 0]) * (crops[:, 3] - crops[:, 1])
    owners: list[int | None] = []
    for row in fractions:
        candidates = [j for j in range(len(crops)) if row[j] >= min_inside]
        best = min(candidates, key=lambda j: (-round(row[j], 6), areas[j], j), default=None)
        owners.append(best)
    return owners
