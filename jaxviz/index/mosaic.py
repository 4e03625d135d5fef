"""Snap a 2-D embedding to a square image grid (Karpathy's t-SNE "CNN codes" mosaic): each grid
cell gets one point, minimizing the total squared distance from points to cell centres by linear
assignment (Jonker-Volgenant via scipy's `linear_sum_assignment`). Problems larger than `block`
points or cells are split recursively (halve the cell rectangle along its longer side, give each
half the points whose coordinate along that axis ranks first, in proportion to its cells), so the
assignment is optimal within each block; the split costs O(N log N).
"""

from __future__ import annotations

import numpy as np
from scipy.optimize import linear_sum_assignment


def normalize_coords(coords: np.ndarray) -> np.ndarray:
    """[N, 2] -> [N, 2] in [0, 1]^2 as (column, row) fractions: x left to right, y top (max) to
    bottom, each axis min-max scaled independently (the grid is filled edge to edge)."""
    c = np.asarray(coords, np.float64)
    lo, hi = c.min(axis=0), c.max(axis=0)
    u = (c - lo) / np.where(hi > lo, hi - lo, 1.0)
    return np.stack([u[:, 0], 1.0 - u[:, 1]], axis=1)


def grid_assignment(coords: np.ndarray, rows: int, cols: int, block: int = 2048) -> np.ndarray:
    """Point index shown in each cell of a rows x cols grid, row-major: [rows * cols] int64.

    coords: [N, 2] embedding. With N >= rows * cols every cell gets a distinct point; with fewer
    points every point gets a distinct cell and the other cells hold -1. Optimal (least total
    squared distance to cell centres) when max(N, rows * cols) <= block, blockwise optimal above.
    """
    if rows < 1 or cols < 1:
        raise ValueError(f"grid must be at least 1 x 1, got {rows} x {cols}")
    u = normalize_coords(coords)
    out = np.full(rows * cols, -1, np.int64)
    _solve(u, np.arange(len(u)), (0, rows, 0, cols), rows, cols, block, out)
    return out


def _solve(u, points, rect, rows, cols, block, out) -> None:
    r0, r1, c0, c1 = rect
    n_cells = (r1 - r0) * (c1 - c0)
    if len(points) == 0:
        return
    if max(len(points), n_cells) <= block:
        rr, cc = np.meshgrid(np.arange(r0, r1), np.arange(c0, c1), indexing="ij")
        centres = np.stack([(cc.ravel() + 0.5) / cols, (rr.ravel() + 0.5) / rows], axis=1)
        cost = np.sum((u[points][:, None, :] - centres[None, :, :]) ** 2, axis=-1)
        pi, ci = linear_sum_assignment(cost)
        out[(rr.ravel() * cols + cc.ravel())[ci]] = points[pi]
        return
    if (c1 - c0) >= (r1 - r0):
        mid = (c0 + c1) // 2
        halves, axis = ((r0, r1, c0, mid), (r0, r1, mid, c1)), 0
        first = (r1 - r0) * (mid - c0)
    else:
        mid = (r0 + r1) // 2
        halves, axis = ((r0, mid, c0, c1), (mid, r1, c0, c1)), 1
        first = (mid - r0) * (c1 - c0)
    order = points[np.argsort(u[points, axis], kind="stable")]
    k = int(round(len(points) * first / n_cells))
    _solve(u, order[:k], halves[0], rows, cols, block, out)
    _solve(u, order[k:], halves[1], rows, cols, block, out)


def assignment_cost(coords: np.ndarray, point_of_cell: np.ndarray, rows: int, cols: int) -> float:
    """Total squared distance (normalized frame) from each shown point to its cell centre."""
    u = normalize_coords(coords)
    cells = np.flatnonzero(point_of_cell >= 0)
    centres = np.stack([(cells % cols + 0.5) / cols, (cells // cols + 0.5) / rows], axis=1)
    return float(np.sum((u[point_of_cell[cells]] - centres) ** 2))
