"""Bring your own model: a Flax module (Linen or NNX) or any `apply_fn` as a jaxviz `Model`.

The stages are the direct submodule calls of the module's `__call__` (or `method`), in call
order, each named by the submodule's attribute name (a submodule called twice gives `name`,
`name#2`). The module runs whole for every forward pass; a hook on those calls (Linen:
`nn.intercept_methods`; NNX: a proxy in place of each child) records every call's output as a
tap, substitutes the input of stage `start` for the previous call's output, adds `perturb`
deltas (gradients at a tap, as `Module.perturb`), and stops at `stop` (under `jit`, the code
before `start` is dead and removed).

Geometry is read off the traced code (`trace_geometry`): each tap's composed window on the
image, and each stage's own window on its input when the code between the two taps reads only
that input. A tap whose geometry cannot be derived is UNKNOWN: methods that need geometry refuse
it; a stage whose code also reads values from before its input (a skip connection written in
the parent's `__call__`) cannot start a forward pass nor run on a slice.

Parameters are `{name: {collection: subtree}}` for every top-level entry of the module's
variables (the zoo's layout: one entry per submodule), reassembled for each call; BatchNorm-style
statistics are read, never updated (`mutable=False`; NNX modules run in `eval()` mode).
"""

from __future__ import annotations

import collections
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxviz.errors import UsageError
from jaxviz.models.geometry import UNKNOWN, Geometry, Pair
from jaxviz.models.preprocess import Preprocess
from jaxviz.models.stage import Model, Params, Stage
from jaxviz.models.trace_geometry import trace

OUTPUT = "output"  # the extra stage when the module returns something other than its last call
Hook = Callable[[str, Callable[[], Any]], Any]  # (child name, computes its output) -> output


class _Stop(Exception):
    def __init__(self, value: Any):
        self.value = value


@dataclass(frozen=True, eq=False)
class Program:
    """A module run with a hook on its direct submodule calls.

    call(params, x, hook): runs the module on x [B, H, W, C]. init: (key, x) -> params, None
    when unknown. names: the taps in call order (plus OUTPUT when the module's result is not its
    last call). like: abstract params. cumulative: {tap: Geometry | None | UNKNOWN} from the
    input image.
    """

    call: Callable[[Params, jax.Array, Hook], Any]
    init: Callable[[jax.Array, jax.Array], Params] | None
    names: tuple[str, ...]
    input_shape: tuple[int, int, int]
    like: Params
    cumulative: dict = field(default_factory=dict)

    def run(
        self,
        params: Params,
        x: jax.Array,
        start: str | None = None,
        stop: str | None = None,
        perturb: dict[str, jax.Array] | None = None,
    ) -> tuple[jax.Array, dict[str, jax.Array]]:
        """`forward` for this program: x is the input of stage `start` (default: the image)."""
        i0 = 0 if start is None else self.names.index(start)
        if i0 == 0:
            return self._run(params, x, None, 0, stop, perturb)
        image = jnp.zeros((x.shape[0], *self.input_shape), x.dtype)  # dead code under jit
        return self._run(params, image, x, i0, stop, perturb)

    def _run(self, params, image, x, i0, stop, perturb):
        taps: dict[str, jax.Array] = {}
        seen: collections.Counter = collections.Counter()

        def hook(child: str, compute: Callable[[], Any]) -> Any:
            seen[child] += 1
            name = child if seen[child] == 1 else f"{child}#{seen[child]}"
            k = sum(seen.values()) - 1
            if k < i0 - 1:
                return compute()
            out = x if k == i0 - 1 else compute()
            if perturb and name in perturb:
                out = out + perturb[name]
            if k >= i0:
                taps[name] = out
            if name == stop:
                raise _Stop(out)
            return out

        try:
            out = self.call(params, image, hook)
        except _Stop as s:
            return s.value, taps
        if OUTPUT in self.names:
            if perturb and OUTPUT in perturb:
                out = out + perturb[OUTPUT]
            taps[OUTPUT] = out
        return out, taps


def _split(variables: dict) -> Params:
    """{collection: {name: v}} -> {name: {collection: v}}."""
    out: dict = {}
    for col, tree in variables.items():
        for name, v in tree.items():
            out.setdefault(name, {})[col] = v
    return out


def _merge(params: Params) -> dict:
    out: dict = {}
    for name, cols in params.items():
        for col, v in cols.items():
            out.setdefault(col, {})[name] = v
    return out


def _linen_call(module: nn.Module, method, apply_kwargs: dict):
    def call(params: Params, x: jax.Array, hook: Hook) -> Any:
        def interceptor(fun, args, kwargs, context):
            scope = context.module.scope
            if context.method_name != "__call__" or scope is None or len(scope.path) != 1:
                return fun(*args, **kwargs)
            return hook(scope.path[0], lambda: fun(*args, **kwargs))

        with nn.intercept_methods(interceptor):
            return module.apply(_merge(params), x, method=method, mutable=False, **apply_kwargs)

    def init(key: jax.Array, x: jax.Array) -> Params:
        return _split(module.init(key, x, method=method, **apply_kwargs))

    return call, init


class _Proxy:
    """Stands in for an NNX child: its calls go through the hook."""

    def __init__(self, child: Any, name: str, hook: Hook):
        self._child, self._name, self._hook = child, name, hook

    def __call__(self, *args, **kwargs):
        return self._hook(self._name, lambda: self._child(*args, **kwargs))

    def __getattr__(self, attr: str) -> Any:
        return getattr(self._child, attr)


def _nnx_call(module: Any, method: str | None, apply_kwargs: dict):
    from flax import nnx

    graphdef, state = nnx.split(module)

    def build(params: Params) -> Any:
        st = jax.tree.map(lambda a: a, state)
        nnx.replace_by_pure_dict(st, params)
        m = nnx.merge(graphdef, st)
        m.eval()
        return m

    def call(params: Params, x: jax.Array, hook: Hook) -> Any:
        m = build(params)
        for name, child in list(vars(m).items()):
            if isinstance(child, nnx.Module):
                object.__setattr__(m, name, _Proxy(child, name, hook))
        return getattr(m, method or "__call__")(x, **apply_kwargs)

    return call, nnx.to_pure_dict(state)


def _discover(call, params: Params, x: jax.ShapeDtypeStruct) -> tuple[tuple[str, ...], bool]:
    """Tap names in call order, and whether the result is the last call's output."""
    names: list[str] = []
    seen: collections.Counter = collections.Counter()
    found: dict = {}

    def hook(child: str, compute: Callable[[], Any]) -> Any:
        seen[child] += 1
        names.append(child if seen[child] == 1 else f"{child}#{seen[child]}")
        found["last"] = compute()
        return found["last"]

    def run(v: jax.Array) -> Any:
        out = call(params, v, hook)
        found["is_last"] = out is found.get("last")
        return out

    jax.eval_shape(run, x)
    if not names:
        raise UsageError("the module calls no submodule: nothing to use as stages")
    return tuple(names), found["is_last"]


def _geometry(dep) -> Any:
    if not dep.reads or dep.geo is UNKNOWN:
        return UNKNOWN
    return dep.geo if isinstance(dep.geo, Geometry) else None


def _stages(program: Program, params: Params) -> tuple[Stage, ...]:
    """Each stage's own geometry, whether it runs on a slice and whether a pass can start there."""
    h, w, c = program.input_shape
    img = jax.ShapeDtypeStruct((1, h, w, c), jnp.float32)
    shapes = jax.eval_shape(lambda v: program.run(params, v)[1], img)
    stages = []
    for k, name in enumerate(program.names):
        if k == 0:
            tap, out = trace(lambda v, n=name: _tap_and_out(program, params, v, None, 0, n), img)
        else:
            a = shapes[program.names[k - 1]]
            tap, out = trace(
                lambda v, i, k=k, n=name: _tap_and_out(program, params, i, v, k, n), a, img
            )
        sliceable = not tap.tainted and isinstance(_geometry(tap), Geometry)
        geo = UNKNOWN if tap.tainted else _geometry(tap)
        stages.append(Stage(name, None, geo, sliceable=sliceable, starts=not out.tainted))
    return tuple(stages)


def _tap_and_out(program, params, image, x, i0, name):
    out, taps = program._run(params, image, x, i0, None, None)
    return taps[name], out


def _build(
    name: str,
    call,
    init,
    params: Params,
    input_size: Pair,
    preprocess: Preprocess | None,
    class_names: Sequence[str] | None,
) -> tuple[Model, Params]:
    h, w = input_size
    img = jax.ShapeDtypeStruct((1, h, w, 3), jnp.float32)
    names, last_is_output = _discover(call, params, img)
    names = names if last_is_output else (*names, OUTPUT)
    like = jax.eval_shape(lambda: params)
    program = Program(call, init, names, (h, w, 3), like)
    taps = trace(lambda v: program.run(params, v)[1], img)
    program = replace(program, cumulative={k: _geometry(d) for k, d in taps.items()})
    stages = _stages(program, params)
    shapes = jax.eval_shape(lambda v: program.run(params, v)[1], img)
    flat = [n for n in names[:-1] if len(shapes[n].shape) == 2]
    model = Model(
        name=name,
        stages=stages,
        input_size=(h, w),
        num_classes=int(shapes[names[-1]].shape[-1]),
        features_stage=flat[-1] if flat else names[-2] if len(names) > 1 else names[-1],
        preprocess=preprocess or Preprocess((h, w), None, (0.0, 0.0, 0.0), (1.0, 1.0, 1.0)),
        class_names=tuple(class_names) if class_names is not None else None,
        program=program,
    )
    return model, params


def _size(input_size: int | Pair) -> Pair:
    return (input_size, input_size) if isinstance(input_size, int) else tuple(input_size)


def from_flax(
    module: nn.Module,
    variables: dict,
    *,
    input_size: int | Pair,
    preprocess: Preprocess | None = None,
    class_names: Sequence[str] | None = None,
    method: str | Callable | None = None,
    apply_kwargs: dict | None = None,
) -> tuple[Model, Params]:
    """A Flax Linen module and its variables as (Model, params) for every jaxviz method.

    variables: `module.init(...)` output ({"params": ..., "batch_stats": ...}). input_size:
    (H, W) (or one int) of the NHWC float32 inputs. preprocess: how images become inputs
    (default: RGB scaled to [0, 1]). method: the module method to run (default `__call__`).
    apply_kwargs: extra keyword arguments of every call, e.g. {"train": False}.
    """
    call, init = _linen_call(module, method, dict(apply_kwargs or {}))
    return _build(
        type(module).__name__,
        call,
        init,
        _split(variables),
        _size(input_size),
        preprocess,
        class_names,
    )


def from_nnx(
    module: Any,
    *,
    input_size: int | Pair,
    preprocess: Preprocess | None = None,
    class_names: Sequence[str] | None = None,
    method: str | None = None,
    apply_kwargs: dict | None = None,
) -> tuple[Model, Params]:
    """A Flax NNX module (its state taken as the params) as (Model, params); see `from_flax`.
    The module runs in `eval()` mode on a copy: batch statistics are read, never updated."""
    call, params = _nnx_call(module, method, dict(apply_kwargs or {}))
    return _build(
        type(module).__name__, call, None, params, _size(input_size), preprocess, class_names
    )


def from_apply_fn(
    apply_fn: Callable[[Any, jax.Array], jax.Array],
    params: Any,
    *,
    input_size: Pair,
    name: str = "apply_fn",
) -> Model:
    """A plain `apply_fn(params, x [B, H, W, C]) -> logits [B, K]` as a one-stage Model
    (stage "logits", no taps inside, params as they are)."""

    def call(p: Any, x: jax.Array, hook: Hook) -> Any:
        return hook("logits", lambda: apply_fn(p, x))

    h, w = input_size
    like = jax.eval_shape(lambda: params)
    program = Program(call, None, ("logits",), (h, w, 3), like, {"logits": None})
    out = jax.eval_shape(
        lambda v: apply_fn(params, v), jax.ShapeDtypeStruct((1, h, w, 3), jnp.float32)
    )
    return Model(
        name=name,
        stages=(Stage("logits", None, None, sliceable=False, starts=True),),
        input_size=(h, w),
        num_classes=int(out.shape[-1]),
        features_stage="logits",
        preprocess=Preprocess((h, w), None, (0.0, 0.0, 0.0), (1.0, 1.0, 1.0)),
        program=program,
    )
