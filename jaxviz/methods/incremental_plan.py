"""The plan of exact incremental occlusion: which units change at each stage, per patch position.

Pure numpy, no JAX (the executor, `jaxviz.methods.incremental`, runs it). See that module for
the method (Krypton, SIGMOD 2019). Inputs per stage are what the stage declares about itself
(`StageInfo`: its geometry, whether it runs unpadded on a padded cache and with which value)
plus its input/output shapes and FLOPs; `slice_shape` asks the executor what a stage gives on a
slice, so a plan is never used unless every stage really produces the planned outputs.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from jaxviz.models.geometry import Geometry, Pair

MAX_CLASSES = 3  # alignment classes per axis; groups (compiled paths) = their product


@dataclass(frozen=True)
class StageInfo:
    """What the planner needs of one stage.

    geometry: its window (None or UNKNOWN: the stage and all after it run in full);
    sliceable: runs on a slice of its input; pad_value: not None when it runs unpadded on an
    input padded with this value; shape_in, shape_out: [H, W, C] (or [D]) without batch;
    flops: for one image.
    """

    geometry: Any
    sliceable: bool
    pad_value: float | None
    shape_in: tuple[int, ...]
    shape_out: tuple[int, ...]
    flops: float


SliceShape = Callable[[int, int, int, int], Any]  # (stage, Ly, Lx, C) -> (My, Mx) or None


@dataclass(frozen=True)
class AxisPlan:
    """One stage along one axis. Arrays are indexed by grid index along that axis (valid for the
    grid indices of the plan's class; the others hold a copy of a member's values).

    i0: slice start in the stage's (padded, for unpadded stages) input; u0: the map unit of the
    slice's output 0; c0, c1: changed output units [c0, c1). L: slice length; M: outputs it gives;
    shift: padding in front of the cached input (0 for stages run with their own padding).
    """

    i0: np.ndarray
    u0: np.ndarray
    c0: np.ndarray
    c1: np.ndarray
    L: int
    M: int
    shift: int
    n_out: int


@dataclass(frozen=True)
class StagePlan:
    """A stage run on slices: its two axis plans and, if unpadded, the padding of its cache."""

    index: int
    axes: tuple[AxisPlan, AxisPlan]
    unpadded: bool
    pad_value: float


@dataclass(frozen=True, eq=False)
class Group:
    """Positions in grid rows `rows` x columns `cols` (one alignment class per axis) with their
    own slice sizes: stages[:switch] run on slices, the rest in full. flops: per position."""

    rows: np.ndarray
    cols: np.ndarray
    stages: tuple[StagePlan, ...]
    flops: float

    @property
    def switch(self) -> int:
        return len(self.stages)


@dataclass(frozen=True, eq=False)
class Plan:
    """Groups of positions, each with its slice plan; row_class [Hp] and col_class [Wp] give
    every grid index its class, group id = row_class * n_col_classes + col_class.

    flops_full: one forward pass; flops: the plan's estimate per position (mean over the grid);
    flops_tight: if only the changed units [c0, c1) were computed, with the same switch stages
    (the ideal of exact incremental inference at stage granularity).
    """

    groups: tuple[Group, ...]
    row_class: np.ndarray
    col_class: np.ndarray
    flops_full: float
    flops: float
    flops_tight: float

    @property
    def switch(self) -> int:
        """The deepest switch stage of any group (0: nothing runs incrementally)."""
        return max(g.switch for g in self.groups)

    def group_ids(self, grid_index: np.ndarray) -> np.ndarray:
        """[n] group of each [n, 2] (row, column) grid index."""
        n_cols = int(self.col_class.max()) + 1
        return self.row_class[grid_index[:, 0]] * n_cols + self.col_class[grid_index[:, 1]]

    def summary(self) -> dict[str, Any]:
        return {
            "incremental_stages": self.switch,
            "groups": len(self.groups),
            "flops_full": self.flops_full,
            "flops_incremental": self.flops,
            "flop_ratio": self.flops_full / self.flops,
            "flop_ratio_tight": self.flops_full / self.flops_tight,
        }


def _cdiv(a: np.ndarray, b: int) -> np.ndarray:
    return -(-a // b)


@dataclass(frozen=True)
class _AxisGeo:
    """One stage along one axis: sizes, span k, stride s, padding lo/hi, unpadded or not."""

    n_in: int
    n_out: int
    k: int
    s: int
    lo: int
    hi: int
    unpadded: bool

    @property
    def n_eff(self) -> int:
        return self.n_in + (self.lo + self.hi if self.unpadded else 0)

    @property
    def pads(self) -> tuple[int, int]:
        """Padding the stage applies itself to a slice (0 when it runs on a padded cache)."""
        return (0, 0) if self.unpadded else (self.lo, self.hi)

    def changed(self, a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Output units [c0, c1) whose input window touches [a, b)."""
        c0 = np.maximum(0, (a + self.lo - self.k) // self.s + 1)
        c1 = np.minimum(self.n_out, _cdiv(b + self.lo, self.s))
        c0 = np.minimum(c0, self.n_out - 1)
        return c0, np.maximum(c1, c0 + 1)

    def need(self, c0: np.ndarray, c1: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Input [need_lo, need_hi) read by outputs [c0, c1) and the stride-aligned start."""
        lo_e = self.pads[0]
        need_lo = c0 * self.s - lo_e
        need_hi = np.minimum(self.n_eff, (c1 - 1) * self.s - lo_e + self.k)
        return need_lo, need_hi, np.maximum(0, (need_lo // self.s) * self.s)

    def length(self, c0: np.ndarray, c1: np.ndarray) -> np.ndarray:
        """Slice length per position: covers the need from the aligned start, and a slice
        clamped to the end of the map still starts on the stride grid."""
        _, need_hi, i0 = self.need(c0, c1)
        return self.n_eff - ((self.n_eff - (need_hi - i0)) // self.s) * self.s

    def outputs(self, length: np.ndarray | int) -> np.ndarray | int:
        """Outputs of the stage on a slice of `length`."""
        return (length + sum(self.pads) - self.k) // self.s + 1

    def plan(self, c0: np.ndarray, c1: np.ndarray) -> AxisPlan | None:
        """One slice length for all positions [c0, c1); None if some position has no exact plan."""
        need_lo, _, i0 = self.need(c0, c1)
        length = int(np.max(self.length(c0, c1)))
        i0 = np.minimum(i0, self.n_eff - length)
        m = int(self.outputs(length))
        u0 = i0 // self.s
        ok = (
            (c0 >= u0)
            & (c1 <= u0 + m)
            & ((i0 == 0) | (need_lo >= i0))
            & (
                (i0 + length == self.n_eff)
                | ((c1 - 1) * self.s - self.pads[0] + self.k <= i0 + length)
            )
        )
        if not ok.all():
            return None
        return AxisPlan(i0, u0, c0, c1, length, m, self.lo if self.unpadded else 0, self.n_out)


def plan_axis(
    a: np.ndarray,
    b: np.ndarray,
    n_in: int,
    n_out: int,
    k: int,
    s: int,
    lo: int,
    hi: int,
    unpadded: bool,
) -> AxisPlan | None:
    """Plan one stage along one axis for changed input intervals [a, b) (one per grid index).

    k: span (dilation * (kernel - 1) + 1), s: stride, lo/hi: padding. None if no exact plan.
    """
    geo = _AxisGeo(n_in, n_out, k, s, lo, hi, unpadded)
    return geo.plan(*geo.changed(a, b))


def _axis_geos(stages: Sequence[StageInfo]) -> list[tuple[_AxisGeo, _AxisGeo]]:
    """Per leading stage with a known geometry that runs on slices, its two axes."""
    out = []
    for st in stages:
        g = st.geometry
        if not isinstance(g, Geometry) or not st.sliceable or len(st.shape_in) != 3:
            break
        unpadded = st.pad_value is not None
        out.append(
            tuple(
                _AxisGeo(
                    st.shape_in[ax],
                    st.shape_out[ax],
                    g.span[ax],
                    g.stride[ax],
                    g.pad_lo[ax],
                    g.pad_hi[ax],
                    unpadded,
                )
                for ax in range(2)
            )
        )
    return out


def _chain(geos: list[_AxisGeo], a: np.ndarray, b: np.ndarray) -> list[tuple[np.ndarray, ...]]:
    """Per stage (while every single position has an exact plan): c0, c1 and each position's
    own slice length, for the changed input intervals [a, b) of the first stage."""
    out = []
    for geo in geos:
        c0, c1 = geo.changed(a, b)
        if any(geo.plan(c0[i : i + 1], c1[i : i + 1]) is None for i in range(len(c0))):
            break
        out.append((c0, c1, geo.length(c0, c1)))
        a, b = c0, c1
    return out


def _classes(
    lengths: np.ndarray, geos: list[_AxisGeo], weights: np.ndarray, max_classes: int | None
) -> list[np.ndarray]:
    """Grid indices grouped by their slice lengths [S, G] at every stage, merged greedily (the
    pair whose union adds the fewest weighted outputs first) down to max_classes."""
    _, inverse = np.unique(lengths.T, axis=0, return_inverse=True)
    classes = [np.flatnonzero(inverse.ravel() == k) for k in range(int(inverse.max()) + 1)]

    def cost(members: np.ndarray) -> float:
        top = lengths[:, members].max(axis=1)
        m = np.array([g.outputs(int(t)) for g, t in zip(geos, top, strict=True)])
        return len(members) * float(weights @ m)

    costs = [cost(c) for c in classes]
    while max_classes is not None and len(classes) > max_classes:
        best = None
        for i in range(len(classes)):
            for j in range(i + 1, len(classes)):
                extra = cost(np.concatenate([classes[i], classes[j]])) - costs[i] - costs[j]
                if best is None or extra < best[0]:
                    best = (extra, i, j)
        _, i, j = best
        classes[i] = np.sort(np.concatenate([classes[i], classes[j]]))
        costs[i] = cost(classes[i])
        del classes[j], costs[j]
    return classes


def _expand(plan: AxisPlan, members: np.ndarray, n: int) -> AxisPlan:
    """An axis plan made for `members` as arrays over all n grid indices."""

    def full(v: np.ndarray) -> np.ndarray:
        out = np.full(n, v[0], v.dtype)
        out[members] = v
        return out

    return AxisPlan(
        full(plan.i0),
        full(plan.u0),
        full(plan.c0),
        full(plan.c1),
        plan.L,
        plan.M,
        plan.shift,
        plan.n_out,
    )


def plan(
    stages: Sequence[StageInfo],
    image_hw: Pair,
    window: Pair,
    stride: Pair,
    grid: Pair,
    slice_shape: SliceShape,
    max_switch: int | None = None,
    max_classes: int | None = MAX_CLASSES,
) -> Plan:
    """The incremental plan for occlusion of `window` every `stride` pixels of image_hw images
    (grid: the number of window positions per axis, `occlusion.grid_size`).

    max_switch: run at most this many leading stages incrementally (default: the best by FLOPs).
    max_classes: alignment classes per axis (None: every distinct one, the tightest plan).
    """
    flops = np.array([st.flops for st in stages])
    area = np.array(
        [s.shape_out[0] * s.shape_out[1] if len(s.shape_out) == 3 else 1 for s in stages], float
    )
    geos = _axis_geos(stages)[:max_switch]
    chains = []
    for ax, (n, w, s, g) in enumerate(zip(image_hw, window, stride, grid, strict=True)):
        a = np.arange(g) * s
        chains.append(_chain([gg[ax] for gg in geos], a, np.minimum(a + w, n)))
    n_cand = min(len(c) for c in chains)
    # per-stage mean outputs along each axis with one-position slices: weights for merging
    mean_m = [
        np.array([np.mean(geos[k][ax].outputs(chains[ax][k][2])) for k in range(n_cand)])
        for ax in range(2)
    ]
    classes, axis_plans = [], []
    for ax in range(2):
        if n_cand == 0:
            classes.append([np.arange(grid[ax])])
            axis_plans.append([[]])
            continue
        weights = flops[:n_cand] / area[:n_cand] * mean_m[1 - ax]
        lengths = np.array([chains[ax][k][2] for k in range(n_cand)])
        cls = _classes(lengths, [gg[ax] for gg in geos[:n_cand]], weights, max_classes)
        per_class = []
        for members in cls:
            plans = []
            for k in range(n_cand):
                c0, c1, _ = chains[ax][k]
                p = geos[k][ax].plan(c0[members], c1[members])
                if p is None:
                    break
                plans.append(_expand(p, members, grid[ax]))
            n_cand = min(n_cand, len(plans))
            per_class.append(plans)
        classes.append(cls)
        axis_plans.append(per_class)
    n_cand = _check_shapes(stages, slice_shape, axis_plans, n_cand)
    width = [[c1 - c0 for c0, c1, _ in chain] for chain in chains]
    groups, total, tight = [], 0.0, 0.0
    for rows, py in zip(classes[0], axis_plans[0], strict=True):
        for cols, px in zip(classes[1], axis_plans[1], strict=True):
            share = np.array([py[k].M * px[k].M for k in range(n_cand)]) / area[:n_cand]
            costs = [flops[:k] @ share[:k] + flops[k:].sum() for k in range(n_cand + 1)]
            best = int(np.argmin(costs))
            plans = tuple(
                StagePlan(
                    k,
                    (py[k], px[k]),
                    stages[k].pad_value is not None,
                    0.0 if stages[k].pad_value is None else stages[k].pad_value,
                )
                for k in range(best)
            )
            groups.append(Group(rows, cols, plans, float(costs[best])))
            changed = np.array(
                [np.mean(width[0][k][rows]) * np.mean(width[1][k][cols]) for k in range(best)]
            )
            n = len(rows) * len(cols)
            total += n * costs[best]
            tight += n * (flops[:best] @ (changed / area[:best]) + flops[best:].sum())
    row_class = np.zeros(grid[0], np.int64)
    col_class = np.zeros(grid[1], np.int64)
    for k, rows in enumerate(classes[0]):
        row_class[rows] = k
    for k, cols in enumerate(classes[1]):
        col_class[cols] = k
    n_pos = grid[0] * grid[1]
    return Plan(
        tuple(groups), row_class, col_class, float(flops.sum()), total / n_pos, tight / n_pos
    )


def _check_shapes(
    stages: Sequence[StageInfo], slice_shape: SliceShape, axis_plans: list, n_cand: int
) -> int:
    """The first stage (< n_cand) that does not give the planned output on some class's slice
    (checked per axis, the other axis at its first class), or n_cand."""
    for k in range(n_cand):
        c = stages[k].shape_in[-1]
        y0, x0 = axis_plans[0][0][k], axis_plans[1][0][k]
        for py in axis_plans[0]:
            if slice_shape(k, py[k].L, x0.L, c) != (py[k].M, x0.M):
                return k
        for px in axis_plans[1]:
            if slice_shape(k, y0.L, px[k].L, c) != (y0.M, px[k].M):
                return k
    return n_cand
