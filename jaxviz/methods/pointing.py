"""The pointing game: does an attribution map's maximum fall inside the object's box?

Zhang et al., "Top-down Neural Attention by Excitation Backprop" (ECCV 2016): a hit when the
map's most salient pixel lies within `tolerance` pixels of the ground-truth box; the score is the
fraction of hits. Deviation: ties go to the first maximum in row-major order (as `argmax`).
"""

from __future__ import annotations

import numpy as np

Box = tuple[int, int, int, int]  # (y0, x0, y1, x1), end exclusive, in map pixels


def argmax_2d(heat: np.ndarray) -> tuple[int, int]:
    """(y, x) of the largest finite value of [H, W] `heat` (first one on ties)."""
    h = np.where(np.isfinite(heat), heat, -np.inf)
    y, x = np.unravel_index(int(np.argmax(h)), h.shape)
    return int(y), int(x)


def pointing_hit(heat: np.ndarray, box: Box, tolerance: float = 0.0) -> bool:
    """True when the maximum of `heat` [H, W] is within `tolerance` pixels of `box`."""
    return point_in_box(argmax_2d(np.asarray(heat)), box, tolerance)


def point_in_box(point: tuple[int, int], box: Box, tolerance: float = 0.0) -> bool:
    """True when pixel (y, x) is within `tolerance` pixels of `box`."""
    y, x = point
    y0, x0, y1, x1 = box
    dy = max(y0 - y, 0, y - (y1 - 1))
    dx = max(x0 - x, 0, x - (x1 - 1))
    return bool(dy * dy + dx * dx <= tolerance * tolerance)


def pointing_game(heats: np.ndarray, boxes: list[Box], tolerance: float = 0.0) -> float:
    """Fraction of maps [N, H, W] whose maximum hits its box (NaN for N = 0)."""
    if len(boxes) != len(heats):
        raise ValueError(f"{len(heats)} maps but {len(boxes)} boxes")
    if not len(boxes):
        return float("nan")
    hits = [pointing_hit(h, b, tolerance) for h, b in zip(heats, boxes, strict=True)]
    return float(np.mean(hits))


def scale_box(box: Box, from_hw: tuple[int, int], to_hw: tuple[int, int]) -> Box:
    """A box in an image of size from_hw mapped to an image resized (not cropped) to to_hw."""
    sy, sx = to_hw[0] / from_hw[0], to_hw[1] / from_hw[1]
    y0, x0, y1, x1 = box
    return (
        int(np.floor(y0 * sy)),
        int(np.floor(x0 * sx)),
        int(np.ceil(y1 * sy)),
        int(np.ceil(x1 * sx)),
    )
