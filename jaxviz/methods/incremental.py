"""Exact incremental occlusion: recompute each stage only where the patch changed its input.

Krypton (Nakandala, Kumar, Papakonstantinou, "Incremental and Approximate Inference for Faster
Occlusion-based Deep CNN Explanations", SIGMOD 2019), exact mode, vmapped over positions in JAX.

The unoccluded activations are computed once per image. For a patch at grid position (py, px),
each axis is planned statically (numpy, from the stage geometry) for every grid index:

- changed outputs [c0, c1): the units whose input window touches the changed input interval;
- the input slice [i0, i0 + L) those units need, with i0 a multiple of the stage stride (so the
  slice's output grid lines up with the map's) and one L for all positions (so they vmap);
- the stage runs on the slice (`lax.dynamic_slice` of the cached input) and its changed outputs
  replace the cached ones in the next stage's input slice (a masked select).

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
stage from the "switch" stage on, chosen to minimize the estimated FLOPs (per-stage counts from
XLA's cost analysis, scaled by the slice's share of the output map). Deviation from Krypton: no
approximate modes; recomputed regions are rectangles per stage (Krypton's too).
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
    stage_input_shapes,
)
from jaxviz.models.geometry import Pair
from jaxviz.models.layers import ConvAct, MaxPool
from jaxviz.models.stage import Model, Params, forward, init_params

METHODS = ("auto", "full", "incremental")
AUTO_MIN_SAVING = 1.1  # `auto` goes incremental when it saves at least this factor of FLOPs


@dataclass(frozen=True)
class AxisPlan:
    """One stage along one axis. Arrays are indexed by grid index along that axis.

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


@dataclass(frozen=True)
class Plan:
    """Stages 0..switch-1 run incrementally (`stages`), switch.. in full on the patched map.

    flops_full: one forward pass; flops: the plan's estimate per position; flops_tight: if only
    the changed units [c0, c1) were computed (the ideal of exact incremental inference).
    """

    stages: tuple[StagePlan, ...]
    switch: int
    flops_full: float
    flops: float
    flops_tight: float

    def summary(self) -> dict[str, Any]:
        return {
            "incremental_stages": len(self.stages),
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
    c0 = np.maximum(0, (a + lo - k) // s + 1)
    c1 = np.minimum(n_out, _cdiv(b + lo, s))
    c0 = np.minimum(c0, n_out - 1)
    c1 = np.maximum(c1, c0 + 1)
    shift = lo if unpadded else 0
    n_eff = n_in + (lo + hi if unpadded else 0)
    lo_e, hi_e = (0, 0) if unpadded else (lo, hi)
    need_lo = c0 * s - lo_e
    need_hi = np.minimum(n_eff, (c1 - 1) * s - lo_e + k)
    i0 = np.maximum(0, (need_lo // s) * s)
    length = int(np.max(need_hi - i0))
    length = n_eff - ((n_eff - length) // s) * s
    i0 = np.minimum(i0, n_eff - length)
    m = (length + lo_e + hi_e - k) // s + 1
    u0 = i0 // s
    ok = (
        (c0 >= u0)
        & (c1 <= u0 + m)
        & ((i0 == 0) | (need_lo >= i0))
        & ((i0 + length == n_eff) | ((c1 - 1) * s - lo_e + k <= i0 + length))
    )
    if not ok.all():
        return None
    return AxisPlan(i0, u0, c0, c1, length, int(m), shift, n_out)


@functools.lru_cache(maxsize=16)
def stage_flops(model: Model, image_hw: Pair) -> tuple[float, ...]:
    """FLOPs of each stage for one image (XLA cost analysis of the stage on its input shape)."""
    params = jax.eval_shape(lambda: init_params(model, jax.random.key(0), image_hw))
    x = jax.ShapeDtypeStruct((1, *image_hw, 3), jnp.float32)
    out = []
    for st in model.stages:
        lowered = jax.jit(st.apply).lower(params[st.name], x)
        cost = lowered.cost_analysis() or {}
        out.append(float(cost.get("flops", 0.0)))
        x = jax.eval_shape(st.apply, params[st.name], x)
    return tuple(out)


def _slice_ok(
    model: Model, index: int, shape_in: tuple, axes: tuple[AxisPlan, AxisPlan], unpadded: bool
) -> bool:
    """The stage module on a [1, Ly, Lx, C] slice gives [1, My, Mx, C'] (shape check, no FLOPs)."""
    st = model.stages[index]
    module = st.module.clone(padding=0) if unpadded else st.module
    params = jax.eval_shape(lambda: init_params(model, jax.random.key(0)))[st.name]
    x = jax.ShapeDtypeStruct((1, axes[0].L, axes[1].L, shape_in[-1]), jnp.float32)
    try:
        y = jax.eval_shape(module.apply, params, x)
    except Exception:  # noqa: BLE001 - a stage that cannot run on a slice stays in full
        return False
    return y.shape[1:3] == (axes[0].M, axes[1].M)


@functools.lru_cache(maxsize=32)
def make_plan(
    model: Model, image_hw: Pair, window: Pair, stride: Pair, max_switch: int | None = None
) -> Plan:
    """The incremental plan for occlusion of `window` every `stride` pixels of image_hw images.

    max_switch: run at most this many leading stages incrementally (default: the best by FLOPs).
    """
    flops = stage_flops(model, image_hw)
    shapes = stage_input_shapes(model, image_hw)
    hp, wp = grid_size(image_hw, window, stride)
    ivals = []
    for n, w, s, g in zip(image_hw, window, stride, (hp, wp), strict=True):
        a = np.arange(g) * s
        ivals.append((a, np.minimum(a + w, n)))
    candidates: list[StagePlan] = []
    tight: list[float] = []
    for i, st in enumerate(model.stages[: max_switch if max_switch is not None else None]):
        geo = st.geometry
        if geo is None:
            break
        unpadded, value = _unpadded_kind(st.module)
        axes = []
        for ax in range(2):
            a, b = ivals[ax]
            axes.append(
                plan_axis(
                    a,
                    b,
                    shapes[i][ax],
                    shapes[i + 1][ax],
                    geo.span[ax],
                    geo.stride[ax],
                    geo.pad_lo[ax],
                    geo.pad_hi[ax],
                    unpadded,
                )
            )
        if None in axes or not _slice_ok(model, i, shapes[i], tuple(axes), unpadded):
            break
        candidates.append(StagePlan(i, (axes[0], axes[1]), unpadded, value))
        ivals = [(p.c0, p.c1) for p in axes]
        area = shapes[i + 1][0] * shapes[i + 1][1]
        tight.append(
            float(np.mean(np.multiply.outer(axes[0].c1 - axes[0].c0, axes[1].c1 - axes[1].c0)))
            / area
        )
    share = [
        p.axes[0].M * p.axes[1].M / (shapes[p.index + 1][0] * shapes[p.index + 1][1])
        for p in candidates
    ]
    costs = [
        sum(f * r for f, r in zip(flops, share[:k], strict=False)) + sum(flops[k:])
        for k in range(len(candidates) + 1)
    ]
    best = int(np.argmin(costs))
    tight_cost = sum(f * r for f, r in zip(flops, tight[:best], strict=False)) + sum(flops[best:])
    return Plan(tuple(candidates[:best]), best, sum(flops), costs[best], tight_cost)


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


@dataclass(frozen=True, eq=False)
class IncrementalForward:
    """Evaluator (see occlusion.Evaluator) running `plan` on the cached activations."""

    model: Model
    image_hw: Pair
    window: Pair
    stride: Pair
    plan: Plan

    def _pads(self, p: StagePlan) -> tuple:
        if not p.unpadded:
            return ((0, 0), (0, 0))
        g = self.model.stages[p.index].geometry
        return ((g.pad_lo[0], g.pad_hi[0]), (g.pad_lo[1], g.pad_hi[1]))

    def prepare(self, params: Params, x: jax.Array, fill: jax.Array) -> Any:
        plan, stages = self.plan, self.model.stages
        taps = {}
        if plan.switch:
            _, taps = forward(self.model, params, x, stop=stages[plan.switch - 1].name)
        inputs = [x] + [taps[stages[k].name] for k in range(plan.switch)]
        cached = []
        for p in plan.stages:
            (a, b), (c, d) = self._pads(p)
            cached.append(
                jnp.pad(
                    inputs[p.index], ((0, 0), (a, b), (c, d), (0, 0)), constant_values=p.pad_value
                )
            )
        cached.append(inputs[plan.switch])
        (a, b), (c, d) = self._pads(plan.stages[0])
        fill = jnp.pad(fill, ((0, 0), (a, b), (c, d), (0, 0)))
        return tuple(cached), fill

    def _one(self, params: Params, cached: tuple, fill: jax.Array, corner: jax.Array) -> jax.Array:
        plan, stages = self.plan, self.model.stages
        gy, gx = corner[0] // self.stride[0], corner[1] // self.stride[1]
        g = (gy, gx)
        first = plan.stages[0]
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
        for j, p in enumerate(plan.stages):
            st = stages[p.index]
            module = st.module.clone(padding=0) if p.unpadded else st.module
            out = module.apply(params[st.name], x[None])[0]
            u0 = tuple(jnp.asarray(ap.u0)[g[k]] for k, ap in enumerate(p.axes))
            c = tuple(
                (jnp.asarray(ap.c0)[g[k]], jnp.asarray(ap.c1)[g[k]]) for k, ap in enumerate(p.axes)
            )
            if j + 1 < len(plan.stages):
                nxt = plan.stages[j + 1]
                i0 = tuple(jnp.asarray(ap.i0)[g[k]] for k, ap in enumerate(nxt.axes))
                size = (nxt.axes[0].L, nxt.axes[1].L, out.shape[-1])
                target = jax.lax.dynamic_slice(cached[j + 1], (*i0, jnp.zeros((), jnp.int32)), size)
                t0 = tuple(i0[k] - nxt.axes[k].shift for k in range(2))
            else:
                target = cached[j + 1]
                t0 = (jnp.zeros((), jnp.int32), jnp.zeros((), jnp.int32))
            x = _paste(out, u0, c, target, t0)
        logits, _ = forward(self.model, params, x[None], start=stages[plan.switch].name)
        return logits[0]

    def logits(self, params: Params, state: Any, corners: jax.Array) -> jax.Array:
        cached, fill = state

        def per_image(cached_i: tuple, fill_i: jax.Array) -> jax.Array:
            return jax.vmap(lambda c: self._one(params, cached_i, fill_i, c))(corners)

        return jax.vmap(per_image)(cached, fill)

    @property
    def bytes_per_position(self) -> int:
        tail = activation_bytes(self.model, self.image_hw, start=self.plan.switch)
        shapes = stage_input_shapes(self.model, self.image_hw)
        slices = max(
            p.axes[0].L * p.axes[1].L * shapes[p.index][-1]
            + p.axes[0].M * p.axes[1].M * shapes[p.index + 1][-1]
            for p in self.plan.stages
        )
        return tail + 4 * 3 * slices


@dataclass(frozen=True)
class Choice:
    """The evaluator a `--method` resolves to, and what the plan promises."""

    evaluator: Any
    incremental: bool
    plan: Plan

    def summary(self) -> dict[str, Any]:
        return {"method": "incremental" if self.incremental else "full", **self.plan.summary()}


def choose(model: Model, image_hw: Pair, window: Pair, stride: Pair, method: str) -> Choice:
    """Resolve method ('full', 'incremental', 'auto': incremental when its plan saves at least
    AUTO_MIN_SAVING x the FLOPs) to an evaluator for occlusion_fn."""
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    plan = make_plan(model, image_hw, window, stride)
    use = plan.switch > 0 and (
        method == "incremental"
        or (method == "auto" and plan.flops_full >= AUTO_MIN_SAVING * plan.flops)
    )
    if use:
        ev = IncrementalForward(model, image_hw, window, stride, plan)
    else:
        ev = FullForward(model, image_hw, window)
    return Choice(ev, use, plan)
