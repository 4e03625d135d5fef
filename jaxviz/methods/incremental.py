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

This module executes the plan of `incremental_plan` (pure numpy: which units change per stage,
alignment classes, FLOP counts), from what each stage declares about itself.

Borders are exact. A stage that declares a `pad_value` (a plain conv: 0; max-pool: -inf) runs
*unpadded* on a slice of its input cached with that padding, so it computes exactly the units it
needs. Any other `sliceable` stage (residual blocks, inverted bottlenecks with
depthwise convs, stems) runs as is on a slice of the unpadded input: its internal padding then
acts at the slice edges, which is right where the slice edge is the map border (slices are
clamped to the map, and L is chosen so that a slice clamped to the end still starts on the
stride grid) and elsewhere only spoils units next to the edge, which the plan leaves out (each
changed unit's whole receptive field lies in the slice or beyond a true border). Units outside
[c0, c1) keep their cached values. The plan is checked for every position before it is used.

From the first global stage on (pooling, fully connected) everything is recomputed; so is every
stage from the group's "switch" stage on, chosen to minimize the estimated FLOPs (per-stage
counts from XLA's cost analysis, scaled by the slice's share of the output map). Stages of
unknown geometry, or that cannot run on a slice, and all after them run in full. Deviation
from Krypton: no approximate modes; recomputed regions are rectangles per stage (Krypton's too).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxviz.errors import UsageError
from jaxviz.methods.incremental_plan import (
    MAX_CLASSES,
    AxisPlan,
    Group,
    Plan,
    StageInfo,
    StagePlan,
    plan,
    plan_axis,
)
from jaxviz.methods.occlusion import (
    FullForward,
    activation_bytes,
    grid_size,
    occlude,
    stage_input_shapes,
)
from jaxviz.models.geometry import Geometry, Pair
from jaxviz.models.stage import Model, Params, abstract_params, forward, stage_apply

__all__ = ["AxisPlan", "Choice", "Group", "IncrementalForward", "Plan", "StagePlan", "choose"]
__all__ += ["make_plan", "plan_axis", "stage_flops"]

METHODS = ("auto", "full", "incremental")
AUTO_MIN_SAVING = 1.1  # `auto` goes incremental when it saves at least this factor of FLOPs
# ... and, for a job of known size, at least this many FLOPs in all: compiling the incremental
# paths (one per alignment group) costs 15-130 s on a 2-core CPU, about what 5 TFLOP of forward
# passes take there, so smaller jobs finish sooner by brute force.
AUTO_MIN_SAVED_FLOPS = 5e12


@functools.lru_cache(maxsize=16)
def stage_flops(model: Model, image_hw: Pair) -> tuple[float, ...]:
    """FLOPs of each stage for one image (XLA cost analysis of the stage on its input shape)."""
    params = abstract_params(model, image_hw)
    out = []
    for st, shape in zip(model.stages, stage_input_shapes(model, image_hw), strict=False):
        x = jax.ShapeDtypeStruct((1, *shape), jnp.float32)
        lowered = jax.jit(functools.partial(stage_apply, model, name=st.name)).lower(params, x=x)
        cost = lowered.cost_analysis() or {}
        out.append(float(cost.get("flops", 0.0)))
    return tuple(out)


def _run_on_slice(model: Model, params: Params, index: int, x: jax.Array, unpadded: bool):
    """Stage `index` on a slice x [B, L, L', C] (without its own padding when `unpadded`)."""
    st = model.stages[index]
    if unpadded:
        return st.apply_unpadded(params[st.name], x)
    return stage_apply(model, params, st.name, x)


@functools.lru_cache(maxsize=4096)
def _slice_shape(model: Model, image_hw: Pair, index: int, ly: int, lx: int, c: int) -> tuple:
    """Spatial output shape of stage `index` on a [1, ly, lx, c] slice (None if it fails)."""
    unpadded = model.stages[index].pad_value is not None
    x = jax.ShapeDtypeStruct((1, ly, lx, c), jnp.float32)
    params = abstract_params(model, image_hw)
    try:
        return jax.eval_shape(
            lambda p, v: _run_on_slice(model, p, index, v, unpadded), params, x
        ).shape[1:3]
    except Exception:  # noqa: BLE001 - a stage that cannot run on a slice stays in full
        return None


def stage_infos(model: Model, image_hw: Pair) -> tuple[StageInfo, ...]:
    """What the planner needs of every stage, from the stages' own declarations."""
    shapes = stage_input_shapes(model, image_hw)
    flops = stage_flops(model, image_hw)
    return tuple(
        StageInfo(st.geometry, st.sliceable, st.pad_value, shapes[i], shapes[i + 1], flops[i])
        for i, st in enumerate(model.stages)
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
    """The incremental plan (`incremental_plan.plan`) for occlusion of `window` every `stride`
    pixels of image_hw images on `model`."""
    return plan(
        stage_infos(model, image_hw),
        image_hw,
        window,
        stride,
        grid_size(image_hw, window, stride),
        functools.partial(_slice_shape, model, image_hw),
        max_switch,
        max_classes,
    )


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

    def _pads(self, index: int) -> tuple:
        st = self.model.stages[index]
        if st.pad_value is None:
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
            self._padded(inputs[k], k, stages[k].pad_value or 0.0) for k in range(switch)
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
            out = _run_on_slice(self.model, params, p.index, x[None], p.unpadded)[0]
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
    first = model.stages[0]
    if method == "incremental" and not (isinstance(first.geometry, Geometry) and first.sliceable):
        raise UsageError(
            f"incremental occlusion needs the geometry of stage {first.name!r} of model "
            f"{model.name}, which is not known; use the full method"
        )
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
