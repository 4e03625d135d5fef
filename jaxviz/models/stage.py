"""A CNN as a chain of named stages with geometry (see DESIGN.md, "The one idea").

Every zoo model is a `Model`: a tuple of `Stage`s, each a Flax Linen module applied as a pure
function of its own variables, plus the stage's spatial `Geometry` (None for stages whose output
depends on the whole input map: global pooling, fully connected layers, squeeze-excite blocks
are inside a stage and do not count; UNKNOWN where it cannot be derived). Parameters are a plain
dict {stage_name: linen variables}.

A user's own module (`flax_adapter.from_flax` / `from_nnx`) is a Model with a `program`: the
module runs whole and its submodule calls are the stages; `forward` is the one entry point for
both kinds. A stage says what it can do: run on a slice of its input map (`sliceable`), start a
forward pass (`starts`), and run without its own padding on an input padded with `pad_value`.
"""

from __future__ import annotations

import functools
import weakref
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxviz.errors import UsageError, unknown
from jaxviz.models.geometry import UNKNOWN, Geometry, Pair, ReceptiveField
from jaxviz.models.preprocess import Preprocess

Params = dict  # {stage_name: {"params": ..., maybe "batch_stats": ...}}


@dataclass(frozen=True, eq=False)
class Stage:
    """One named stage: `module.apply(variables, x) -> y`, and its geometry.

    geometry: the window this stage applies on the (H, W) axes; None when every output depends on
    the whole input (global pool, fully connected); UNKNOWN when it cannot be derived. A residual
    or inverted-bottleneck block is one stage whose geometry is the composition of its main branch.
    module: the Linen module (None for the stages of a program, run through `forward`).
    sliceable: run on a window of its input map, it gives the map's units whose whole window lies
    inside (its own padding then acts at the window's edges); incremental occlusion needs it.
    starts: a forward pass can start at this stage (nothing after its input reads values from
    before it).
    """

    name: str
    module: nn.Module | None
    geometry: Geometry | None | Any
    sliceable: bool = True
    starts: bool = True

    def apply(self, variables: dict, x: jax.Array) -> jax.Array:
        return self.module.apply(variables, x)

    @property
    def pad_value(self) -> float | None:
        """The value of the stage's own padding when it can instead run unpadded on an input
        already padded with it (`apply_unpadded`); None when it cannot (declared by the module's
        `pad_value`: 0 for a convolution, -inf for max-pooling)."""
        return getattr(self.module, "pad_value", None)

    def apply_unpadded(self, variables: dict, x: jax.Array) -> jax.Array:
        """The stage without its own padding, on x already padded with `pad_value`."""
        return self.module.apply_unpadded(variables, x)


@dataclass(frozen=True, eq=False)
class Model:
    """A zoo model: stages, input geometry and metadata.

    input_size: default (H, W); inputs are NHWC float32, normalized by `preprocess`.
    features_stage: the stage whose output is "the features" (AlexNet fc7, pooled stage elsewhere).
    """

    name: str
    stages: tuple[Stage, ...]
    input_size: Pair
    num_classes: int
    features_stage: str
    preprocess: Preprocess
    class_names: tuple[str, ...] | None = None
    extra: dict = field(default_factory=dict)
    program: Any = None  # flax_adapter.Program for a user's module; None for a chain of stages

    @property
    def stage_names(self) -> tuple[str, ...]:
        return tuple(s.name for s in self.stages)

    def index(self, name: str) -> int:
        """Position of stage `name`; a UsageError listing the stages if it does not exist."""
        names = self.stage_names
        if name not in names:
            raise unknown(f"layer of model {self.name}:", name, names)
        return names.index(name)

    def stage(self, name: str) -> Stage:
        return self.stages[self.index(name)]

    def next_stage(self, name: str) -> str | None:
        """Name of the stage after `name` (None after the last one)."""
        i = self.index(name) + 1
        return self.stages[i].name if i < len(self.stages) else None

    def class_name(self, k: int) -> str:
        if self.class_names and 0 <= k < len(self.class_names):
            return self.class_names[k]
        return str(k)


def _span(model: Model, start: str | None, stop: str | None) -> tuple[Stage, ...]:
    i0 = model.index(start) if start is not None else 0
    i1 = model.index(stop) + 1 if stop is not None else len(model.stages)
    return model.stages[i0:i1]


def forward(
    model: Model,
    params: Params,
    x: jax.Array,
    start: str | None = None,
    stop: str | None = None,
    perturb: dict[str, jax.Array] | None = None,
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """Run stages `start..stop` (inclusive; default: all) on `x`, the input of stage `start`.

    Returns (output of `stop`, {stage_name: output} for every stage run). Under `jit`, taps that
    nobody uses are removed by the compiler. x: [B, H, W, C] float32 (or bf16) for the first stage.
    perturb: {stage: delta} added to those stages' outputs (d/d delta at 0 is the gradient at the
    tap, whatever reads it later).
    """
    if start is not None and not model.stage(start).starts:
        raise UsageError(
            f"a forward pass of model {model.name} cannot start at stage {start!r}: code after "
            "its input reads values from before it (a skip connection around it)"
        )
    if model.program is not None:
        model.index(stop) if stop is not None else None
        return model.program.run(params, x, start, stop, perturb)
    taps = {}
    for st in _span(model, start, stop):
        x = st.apply(params[st.name], x)
        if perturb and st.name in perturb:
            x = x + perturb[st.name]
        taps[st.name] = x
    return x, taps


def stage_apply(model: Model, params: Params, name: str, x: jax.Array) -> jax.Array:
    """Stage `name` alone on x (its input): [B, H, W, C] -> its output."""
    return forward(model, params, x, start=name, stop=name)[0]


def forward_fn(
    model: Model, start: str | None = None, stop: str | None = None
) -> Callable[[Params, jax.Array], jax.Array]:
    """A pure `(params, x) -> output of stop` for stages start..stop, for jit/vmap/grad."""

    def run(params: Params, x: jax.Array) -> jax.Array:
        return forward(model, params, x, start, stop)[0]

    return run


def init_params(
    model: Model, key: jax.Array, input_size: Pair | None = None, stop: str | None = None
) -> Params:
    """Random parameters for stages up to `stop` (default: all), chaining shapes from a
    [1, H, W, 3] input. Stopping early skips e.g. VGG's 100M fully connected weights."""
    h, w = input_size or model.input_size
    x = jnp.zeros((1, h, w, 3), jnp.float32)
    if model.program is not None:
        if model.program.init is None:
            raise UsageError(f"model {model.name} has no initializer: pass its parameters")
        return model.program.init(key, x)
    params = {}
    keys = jax.random.split(key, len(model.stages))
    for st, k in zip(_span(model, None, stop), keys, strict=False):
        params[st.name] = st.module.init(k, x)
        x = st.apply(params[st.name], x)
    return params


def cast_params(params: Params, dtype) -> Params:
    """Floating-point leaves cast to `dtype` (e.g. jnp.bfloat16 for fast forward passes)."""
    return jax.tree.map(
        lambda a: a.astype(dtype) if jnp.issubdtype(a.dtype, jnp.floating) else a, params
    )


_SHAPES: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # model -> {(h, w): shapes}


def stage_shapes(model: Model, input_size: Pair | None = None) -> dict[str, tuple[int, ...]]:
    """Output shape (without batch) of every stage for one input of `input_size`; no FLOPs run.

    Traced once per model object and input size (~1 s for a ResNet), then remembered.
    """
    h, w = input_size or model.input_size
    known = _SHAPES.setdefault(model, {})
    if (h, w) not in known:
        params = abstract_params(model, (h, w))
        x = jax.ShapeDtypeStruct((1, h, w, 3), jnp.float32)
        _, taps = jax.eval_shape(lambda p, v: forward(model, p, v), params, x)
        known[(h, w)] = {k: tuple(v.shape[1:]) for k, v in taps.items()}
    return dict(known[(h, w)])


def abstract_params(model: Model, input_size: Pair | None = None) -> Params:
    """Shapes and dtypes of the params (jax.ShapeDtypeStruct leaves); nothing is computed."""
    if model.program is not None:
        return model.program.like
    return _abstract_params(model, tuple(input_size or model.input_size))


@functools.lru_cache(maxsize=64)
def _abstract_params(model: Model, hw: Pair) -> Params:
    # cached: tracing a whole model's init takes seconds, and planners ask once per stage
    return jax.eval_shape(lambda: init_params(model, jax.random.key(0), hw))


def cumulative_geometry(model: Model) -> dict[str, Geometry | None | Any]:
    """For every stage, the composed geometry from the input image to that stage's output.

    None from the first global stage on: those units see the whole image. UNKNOWN where it
    cannot be derived (a program's tap, or a chain after a stage of UNKNOWN geometry).
    """
    if model.program is not None:
        return dict(model.program.cumulative)
    out: dict[str, Geometry | None | Any] = {}
    acc: Geometry | None | Any = Geometry()
    for st in model.stages:
        if acc is None or st.geometry is None:
            acc = None
        elif acc is UNKNOWN or st.geometry is UNKNOWN:
            acc = UNKNOWN
        else:
            acc = acc.then(st.geometry)
        out[st.name] = acc
    return out


def receptive_fields(model: Model) -> dict[str, ReceptiveField | None | Any]:
    """For every stage, its units' receptive field in input pixels (None: the whole image;
    UNKNOWN: geometry not known, see `receptive_field`)."""
    return {
        k: g if g is None or g is UNKNOWN else ReceptiveField.of(g)
        for k, g in cumulative_geometry(model).items()
    }


def receptive_field(
    model: Model, layer: str, purpose: str = "receptive fields"
) -> ReceptiveField | None:
    """The receptive field of stage `layer` (None: the whole image); a one-line UsageError
    naming the stage when its geometry is unknown."""
    model.index(layer)
    rf = receptive_fields(model)[layer]
    if rf is UNKNOWN:
        raise UsageError(
            f"stage {layer!r} of model {model.name} has no known geometry, which {purpose} need; "
            f"stages with geometry: {', '.join(known_geometry(model)) or 'none'}"
        )
    return rf


def known_geometry(model: Model) -> tuple[str, ...]:
    """Stages whose units have a known, spatial receptive field."""
    return tuple(k for k, g in cumulative_geometry(model).items() if isinstance(g, Geometry))
