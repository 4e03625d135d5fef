"""Exact incremental occlusion: recompute each stage only where the patch changed its input.

Krypton (Nakandala, Kumar, Papakonstantinou, "Incremental and Approximate Inference for Faster
Occlusion-based Deep CNN Explanations", SIGMOD 2019), exact mode, vmapped over positions in JAX.

The unoccluded activations are computed once per image. For a patch at grid position (py, px),
each axis is planned statically (numpy, from the stage geometry) for every grid index:

- changed outputs [c0, c1): the units whose input window touches the changed input interval;
- the input slice [i0, i0 + L) those units need, with i0 a multiple of the stage stride (so the
  slice's output grid lines up with the map's);
- the stage runs on the slice (`lax.dynamic_slice` of the cached input) and its changed outputs
  replace the cached ones in the next stage's input slice (a masked select).

Tight windows: positions vmap only when they share the slice sizes, and those depend on where
the patch falls relative to each stage's stride and to the borders. Grid rows (and columns) are
put in alignment classes, those with the same slice length at every stage; classes are merged
greedily (cheapest extra FLOPs first) down to `max_classes` per axis, and each (row class,
column class) pair is a `Group` with its own slice sizes, switch stage and compiled vmapped path.
Positions run group by group and the results are scattered back (`occlusion.evaluate`).

Borders are exact. A plain conv / max-pool stage (`ConvAct`, `MaxPool`) runs *unpadded* on a
slice of its input cached with the stage's own padding (zeros, or -inf for max-pool), so it
computes exactly the units it needs. Any other stage (residual blocks, inverted bottlenecks with
depthwise convs, stems) runs as is on a slice of the unpadded input: its internal padding then
acts at the slice edges, which is right where the slice edge is the map border (slices are
clamped to the map, and L is chosen so that a slice clamped to the end still starts on the
stride grid) and elsewhere only spoils units next to the edge, which the plan leaves out (each
changed unit's whole receptive field lies in the slice or beyond a true border). Units outside
[c0, c1) keep their cached values. The plan is checked for every position before it is used.

From the first global stage on (pooling, fully connected) everything is recomputed; so is every
stage from the group's "switch" stage on, chosen to minimize the estimated FLOPs (per-stage
counts from XLA's cost analysis, scaled by the slice's share of the output map). A 3x3 (or
larger) conv on a slice with many input channels runs as one matrix product of its patches
(XLA:CPU's convolution runs 2-3x below its matmul speed on such small, wide maps). Deviation
from Krypton: no approximate modes; recomputed regions are rectangles per stage (Krypton's too).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxviz.methods.occlusion import (
    FullForward,
    activation_bytes,
    grid_size,
    occlude,
    stage_input_shapes,
)
from jaxviz.models import windows
from jaxviz.models.geometry import Pair
from jaxviz.models.layers import ConvAct, MaxPool
from jaxviz.models.stage import Model, Params, forward, init_params

METHODS = ("auto", "full", "incremental")
AUTO_MIN_SAVING = 1.1  # `auto` goes incremental when it saves at least this factor of FLOPs
# ... and, for a job of known size, at least this many FLOPs in all: compiling the incremental
# paths (one per alignment group) costs 15-130 s on a 2-core CPU, about what 5 TFLOP of forward
# passes take there, so smaller jobs finish sooner by brute force.
AUTO_MIN_SAVED_FLOPS = 5e12
MAX_CLASSES = 3  # alignment classes per axis; groups (compiled paths) = their product
MATMUL_CONV_MIN_CHANNELS = 128  # slice convs with at least this many inputs run as matmuls


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


def _unpadded_kind(module) -> tuple[bool, float]:
    """(runs unpadded on a padded cache, pad value) for a stage module."""
    if isinstance(module, ConvAct):
        return True, 0.0
    if isinstance(module, MaxPool):
        return True, -np.inf
    return False, 0.0


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


@functools.lru_cache(maxsize=16)
def stage_flops(model: Model, image_hw: Pair) -> tuple[float, ...]:
    """FLOPs of each stage for one image (XLA cost analysis of the stage on its input shape)."""
    params = _param_shapes(model, image_hw)
    x = jax.ShapeDtypeStruct((1, *image_hw, 3), jnp.float32)
    out = []
    for st in model.stages:
        lowered = jax.jit(st.apply).lower(params[st.name], x)
        cost = lowered.cost_analysis() or {}
        out.append(float(cost.get("flops", 0.0)))
        x = jax.eval_shape(st.apply, params[st.name], x)
    return tuple(out)


@functools.lru_cache(maxsize=16)
def _param_shapes(model: Model, image_hw: Pair) -> Params:
    return jax.eval_shape(lambda: init_params(model, jax.random.key(0), image_hw))


@functools.lru_cache(maxsize=4096)
def _slice_shape(model: Model, image_hw: Pair, index: int, ly: int, lx: int, c: int) -> tuple:
    """Spatial output shape of stage `index` on a [1, ly, lx, c] slice (None if it fails)."""
    st = model.stages[index]
    unpadded, _ = _unpadded_kind(st.module)
    module = st.module.clone(padding=0) if unpadded else st.module
    x = jax.ShapeDtypeStruct((1, ly, lx, c), jnp.float32)
    try:
        return jax.eval_shape(module.apply, _param_shapes(model, image_hw)[st.name], x).shape[1:3]
    except Exception:  # noqa: BLE001 - a stage that cannot run on a slice stays in full
        return None


def _axis_geos(model: Model, image_hw: Pair) -> list[tuple[_AxisGeo, _AxisGeo]]:
    """Per leading stage with a geometry, its two axes."""
    shapes = stage_input_shapes(model, image_hw)
    out = []
    for i, st in enumerate(model.stages):
        g = st.geometry
        if g is None:
            break
        unpadded, _ = _unpadded_kind(st.module)
        out.append(
            tuple(
                _AxisGeo(
                    shapes[i][ax],
                    shapes[i + 1][ax],
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


@functools.lru_cache(maxsize=32)
def make_plan(
    model: Model,
    image_hw: Pair,
    window: Pair,
    stride: Pair,
    max_switch: int | None = None,
    max_classes: int | None = MAX_CLASSES,
) -> Plan:
    """The incremental plan for occlusion of `window` every `stride` pixels of image_hw images.

    max_switch: run at most this many leading stages incrementally (default: the best by FLOPs).
    max_classes: alignment classes per axis (None: every distinct one, the tightest plan).
    """
    flops = np.asarray(stage_flops(model, image_hw))
    shapes = stage_input_shapes(model, image_hw)
    area = np.array([s[0] * s[1] if len(s) == 3 else 1 for s in shapes[1:]], float)
    geos = _axis_geos(model, image_hw)[:max_switch]
    grid = grid_size(image_hw, window, stride)
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
    n_cand = _check_shapes(model, image_hw, shapes, axis_plans, n_cand)
    width = [[c1 - c0 for c0, c1, _ in chain] for chain in chains]
    groups, total, tight = [], 0.0, 0.0
    for rows, py in zip(classes[0], axis_plans[0], strict=True):
        for cols, px in zip(classes[1], axis_plans[1], strict=True):
            share = np.array([py[k].M * px[k].M for k in range(n_cand)]) / area[:n_cand]
            costs = [flops[:k] @ share[:k] + flops[k:].sum() for k in range(n_cand + 1)]
            best = int(np.argmin(costs))
            stages = tuple(
                StagePlan(k, (py[k], px[k]), *_unpadded_kind(model.stages[k].module))
                for k in range(best)
            )
            groups.append(Group(rows, cols, stages, float(costs[best])))
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


def _check_shapes(model, image_hw, shapes, axis_plans, n_cand) -> int:
    """The first stage (< n_cand) whose module does not give the planned output on some class's
    slice (checked per axis, the other axis at its first class), or n_cand."""
    for k in range(n_cand):
        c = shapes[k][-1]
        y0, x0 = axis_plans[0][0][k], axis_plans[1][0][k]
        for py in axis_plans[0]:
            if _slice_shape(model, image_hw, k, py[k].L, x0.L, c) != (py[k].M, x0.M):
                return k
        for px in axis_plans[1]:
            if _slice_shape(model, image_hw, k, y0.L, px[k].L, c) != (y0.M, px[k].M):
                return k
    return n_cand


def _paste(out: jax.Array, u0: tuple, c: tuple, target: jax.Array, t0: tuple) -> jax.Array:
    """target [Ly', Lx', C] (map units t0 + t) with units in [c0, c1) taken from out [My, Mx, C]
    (map units u0 + j)."""
    ly, lx = target.shape[:2]
    padded = jnp.pad(out, ((ly, ly), (lx, lx), (0, 0)))
    start = (t0[0] - u0[0] + ly, t0[1] - u0[1] + lx, jnp.zeros((), jnp.int32))
    aligned = jax.lax.dynamic_slice(padded, start, target.shape)
    ry = t0[0] + jnp.arange(ly)
    rx = t0[1] + jnp.arange(lx)
    inside = ((ry >= c[0][0]) & (ry < c[0][1]))[:, None, None] & ((rx >= c[1][0]) & (rx < c[1][1]))[
        None, :, None
    ]
    return jnp.where(inside, aligned, target)


def _conv_as_matmuls(module: ConvAct, variables: dict, x: jax.Array) -> jax.Array:
    """An unpadded ConvAct on x [B, L, L', C] as one matrix product of its patches (im2col)."""
    kernel = variables["params"]["conv"]["kernel"]  # [kh, kw, C, D]
    kh, kw = kernel.shape[:2]
    s = module.stride
    my = (x.shape[1] - kh) // s + 1
    mx = (x.shape[2] - kw) // s + 1
    patches = [tap for _, _, tap in windows.taps(x, (kh, kw), (s, s), (my, mx))]
    out = jnp.einsum(
        "bhwc,cd->bhwd", jnp.concatenate(patches, axis=-1), kernel.reshape(-1, kernel.shape[-1])
    )
    out = out + variables["params"]["conv"]["bias"][None, None, None, :]
    return out if module.act is None else module.act(out)


def run_on_slice(module: Any, variables: dict, x: jax.Array, unpadded: bool) -> jax.Array:
    """A stage module on a slice x [B, L, L', C] (without its own padding when `unpadded`)."""
    if (
        unpadded
        and isinstance(module, ConvAct)
        and module.kernel > 1
        and x.shape[-1] >= MATMUL_CONV_MIN_CHANNELS
    ):
        return _conv_as_matmuls(module, variables, x)
    return (module.clone(padding=0) if unpadded else module).apply(variables, x)


@dataclass(frozen=True, eq=False)
class IncrementalForward:
    """Evaluator (see occlusion.Evaluator) running `plan` on the cached activations."""

    model: Model
    image_hw: Pair
    window: Pair
    stride: Pair
    plan: Plan

    def _pads(self, index: int) -> tuple:
        st = self.model.stages[index]
        if not _unpadded_kind(st.module)[0]:
            return ((0, 0), (0, 0))
        g = st.geometry
        return ((g.pad_lo[0], g.pad_hi[0]), (g.pad_lo[1], g.pad_hi[1]))

    def _padded(self, x: jax.Array, index: int, value: float = 0.0) -> jax.Array:
        (a, b), (c, d) = self._pads(index)
        return jnp.pad(x, ((0, 0), (a, b), (c, d), (0, 0)), constant_values=value)

    def prepare(self, params: Params, x: jax.Array, fill: jax.Array) -> Any:
        """(padded inputs of the incremental stages, unpadded inputs of the switch stages,
        fill padded like the first stage's input, x and fill as they are)."""
        stages, switch = self.model.stages, self.plan.switch
        taps = {}
        if switch:
            _, taps = forward(self.model, params, x, stop=stages[switch - 1].name)
        inputs = [x] + [taps[stages[k].name] for k in range(switch)]
        cached = tuple(
            self._padded(inputs[k], k, _unpadded_kind(stages[k].module)[1]) for k in range(switch)
        )
        maps = {g.switch: inputs[g.switch] for g in self.plan.groups if g.switch}
        return cached, maps, self._padded(fill, 0), x, fill

    def partition(self, corners: np.ndarray) -> list[tuple[int, np.ndarray]]:
        """[(group id, indices into corners)] for [n, 2] top-left corners, each group once."""
        ids = self.plan.group_ids(np.asarray(corners) // np.asarray(self.stride))
        return [(int(g), np.flatnonzero(ids == g)) for g in np.unique(ids)]

    def _one(self, params: Params, state: Any, corner: jax.Array, group: Group) -> jax.Array:
        cached, maps, fill, x_img, f_img = state
        stages = self.model.stages
        if not group.stages:
            x = occlude(x_img, f_img, corner[0], corner[1], self.window)
            return forward(self.model, params, x[None])[0][0]
        g = (corner[0] // self.stride[0], corner[1] // self.stride[1])
        first = group.stages[0]
        t0 = tuple(jnp.asarray(ap.i0)[g[k]] for k, ap in enumerate(first.axes))
        size = (first.axes[0].L, first.axes[1].L, cached[0].shape[-1])
        start = (t0[0], t0[1], jnp.zeros((), jnp.int32))
        x = jax.lax.dynamic_slice(cached[0], start, size)
        f = jax.lax.dynamic_slice(fill, start, size)
        inside = []
        for k, ap in enumerate(first.axes):
            r = t0[k] - ap.shift + jnp.arange(ap.L)
            inside.append(
                (r >= corner[k])
                & (r < corner[k] + self.window[k])
                & (r < self.image_hw[k])
                & (r >= 0)
            )
        x = jnp.where(inside[0][:, None, None] & inside[1][None, :, None], f, x)
        for j, p in enumerate(group.stages):
            st = stages[p.index]
            out = run_on_slice(st.module, params[st.name], x[None], p.unpadded)[0]
            u0 = tuple(jnp.asarray(ap.u0)[g[k]] for k, ap in enumerate(p.axes))
            c = tuple(
                (jnp.asarray(ap.c0)[g[k]], jnp.asarray(ap.c1)[g[k]]) for k, ap in enumerate(p.axes)
            )
            if j + 1 < len(group.stages):
                nxt = group.stages[j + 1]
                i0 = tuple(jnp.asarray(ap.i0)[g[k]] for k, ap in enumerate(nxt.axes))
                size = (nxt.axes[0].L, nxt.axes[1].L, out.shape[-1])
                target = jax.lax.dynamic_slice(cached[j + 1], (*i0, jnp.zeros((), jnp.int32)), size)
                t0 = tuple(i0[k] - nxt.axes[k].shift for k in range(2))
            else:
                target = maps[group.switch]
                t0 = (jnp.zeros((), jnp.int32), jnp.zeros((), jnp.int32))
            x = _paste(out, u0, c, target, t0)
        logits, _ = forward(self.model, params, x[None], start=stages[group.switch].name)
        return logits[0]

    def logits(
        self, params: Params, state: Any, corners: jax.Array, group: int | None = None
    ) -> jax.Array:
        """[b, n, K] logits at corners [n, 2], all in group `group` (see partition). group=None:
        corners must be concrete (numpy); they are partitioned here."""
        if group is None:
            corners = np.asarray(corners)
            parts = self.partition(corners)
            outs = [self.logits(params, state, jnp.asarray(corners[i]), g) for g, i in parts]
            order = np.argsort(np.concatenate([i for _, i in parts]))
            return jnp.concatenate(outs, axis=1)[:, order]
        grp = self.plan.groups[group]

        def per_image(cached, maps, fill, x, f) -> jax.Array:
            return jax.vmap(lambda c: self._one(params, (cached, maps, fill, x, f), c, grp))(
                corners
            )

        return jax.vmap(per_image)(*state)

    @property
    def bytes_per_position(self) -> int:
        shapes = stage_input_shapes(self.model, self.image_hw)
        out = 0
        for g in self.plan.groups:
            tail = activation_bytes(self.model, self.image_hw, start=g.switch)
            slices = max(
                (
                    p.axes[0].L * p.axes[1].L * shapes[p.index][-1]
                    + p.axes[0].M * p.axes[1].M * shapes[p.index + 1][-1]
                    for p in g.stages
                ),
                default=0,
            )
            out = max(out, tail + 4 * 3 * slices)
        return out


@dataclass(frozen=True)
class Choice:
    """The evaluator a `--method` resolves to, and what the plan promises."""

    evaluator: Any
    incremental: bool
    plan: Plan

    def summary(self) -> dict[str, Any]:
        return {"method": "incremental" if self.incremental else "full", **self.plan.summary()}


def choose(
    model: Model,
    image_hw: Pair,
    window: Pair,
    stride: Pair,
    method: str,
    total_positions: int | None = None,
) -> Choice:
    """Resolve method ('full', 'incremental', 'auto': incremental when its plan saves at least
    AUTO_MIN_SAVING x the FLOPs and, when the job's `total_positions` (images x grid) is
    given, at least AUTO_MIN_SAVED_FLOPS in all) to an evaluator for occlusion_fn."""
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    plan = make_plan(model, image_hw, window, stride)
    worth_it = plan.flops_full >= AUTO_MIN_SAVING * plan.flops and (
        total_positions is None
        or (plan.flops_full - plan.flops) * total_positions >= AUTO_MIN_SAVED_FLOPS
    )
    use = plan.switch > 0 and (method == "incremental" or (method == "auto" and worth_it))
    if use:
        ev = IncrementalForward(model, image_hw, window, stride, plan)
    else:
        ev = FullForward(model, image_hw, window)
    return Choice(ev, use, plan)
