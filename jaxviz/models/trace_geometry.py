"""Geometry read off a traced function: which input pixels each output unit depends on.

An abstract interpretation of a jaxpr. Every value gets a `Dep`: how it depends on the *source*
(an NHWC map, spatial axes 1 and 2) and whether it reads the *other* input (`tainted`: in the
adapter, values computed before the segment's input, i.e. a skip connection around it).

- elementwise ops keep the window of their operands (two different windows: their union, the
  rule for a residual sum); broadcasting a source-dependent value over the map makes it GLOBAL;
- `conv_general_dilated`, `reduce_window_*` and `pad` compose their window (kernel, stride,
  padding, dilation) with the operand's (`Geometry.then`);
- a reduction or contraction over a spatial axis, or a flattening reshape, makes it GLOBAL
  (every output reads the whole map);
- anything else that reads the source spatially (transposes of the spatial axes, slices,
  gathers, unknown primitives) makes it UNKNOWN. Calls (`jit`, `custom_jvp_call`,
  `custom_vjp_call`, ...) are interpreted through their inner jaxpr.

The result is conservative: UNKNOWN wherever the rules above do not say.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import jax
from jax.extend import core

from jaxviz.models.geometry import IDENTITY, UNKNOWN, Geometry, union

GLOBAL = None  # every output unit reads the whole source map


@dataclass(frozen=True)
class Dep:
    """geo: IDENTITY-like window on the source (spatial axes at 1, 2), GLOBAL (None) or
    UNKNOWN; reads: whether it reads the source at all; tainted: reads the other input."""

    geo: Any
    reads: bool
    tainted: bool


CONST = Dep(GLOBAL, False, False)

ELEMENTWISE = frozenset(
    [
        "abs",
        "acos",
        "acosh",
        "add",
        "and",
        "asin",
        "asinh",
        "atan",
        "atan2",
        "atanh",
        "cbrt",
        "ceil",
        "clamp",
        "convert_element_type",
        "copy",
        "copy_p",
        "cos",
        "cosh",
        "div",
        "eq",
        "erf",
        "erf_inv",
        "erfc",
        "exp",
        "exp2",
        "expm1",
        "floor",
        "ge",
        "gt",
        "imag",
        "integer_pow",
        "is_finite",
        "le",
        "lgamma",
        "log",
        "log1p",
        "logistic",
        "lt",
        "max",
        "min",
        "mul",
        "ne",
        "neg",
        "nextafter",
        "not",
        "or",
        "pow",
        "real",
        "reduce_precision",
        "rem",
        "round",
        "rsqrt",
        "select_n",
        "shift_left",
        "shift_right_arithmetic",
        "shift_right_logical",
        "sign",
        "sin",
        "sinh",
        "sqrt",
        "square",
        "sub",
        "tan",
        "tanh",
        "xor",
    ]
)
REDUCTIONS = frozenset(
    [
        "reduce_sum",
        "reduce_max",
        "reduce_min",
        "reduce_prod",
        "reduce_and",
        "reduce_or",
        "argmax",
        "argmin",
    ]
)
WINDOWS = frozenset(
    ["reduce_window_sum", "reduce_window_max", "reduce_window_min", "reduce_window"]
)
SPATIAL = (1, 2)


def _spatial(aval) -> tuple[int, ...] | None:
    shape = getattr(aval, "shape", ())
    return tuple(shape[1:3]) if len(shape) >= 3 else None


def _join(deps: list[Dep]) -> Dep:
    """Elementwise combination of operands: the union of their windows."""
    tainted = any(d.tainted for d in deps)
    geos = [d.geo for d in deps if d.reads]
    if not geos:
        return Dep(GLOBAL, False, tainted)
    if any(g is UNKNOWN for g in geos):
        return Dep(UNKNOWN, True, tainted)
    if any(g is GLOBAL for g in geos):
        return Dep(GLOBAL, True, tainted)
    geo = geos[0]
    for g in geos[1:]:
        geo = union(geo, g) or UNKNOWN
        if geo is UNKNOWN:
            break
    return Dep(geo, True, tainted)


def _operand(d: Dep, aval, out_aval) -> Dep:
    """A source-dependent operand broadcast over the map reads the whole map."""
    if d.reads and isinstance(d.geo, Geometry) and _spatial(aval) != _spatial(out_aval):
        return Dep(GLOBAL, True, d.tainted)
    return d


def _window(d: Dep, geo: Geometry) -> Dep:
    if not d.reads or not isinstance(d.geo, Geometry):
        return d
    return Dep(d.geo.then(geo), True, d.tainted)


def _conv(eqn, deps: list[Dep]) -> Dep:
    lhs, rhs = deps
    p = eqn.params
    dn = p["dimension_numbers"]
    ok = (
        tuple(dn.lhs_spec[2:]) == SPATIAL
        and tuple(dn.out_spec[2:]) == SPATIAL
        and all(v == 1 for v in p["lhs_dilation"])
        and all(lo >= 0 and hi >= 0 for lo, hi in p["padding"])
        and not rhs.reads
    )
    if not ok:
        return Dep(UNKNOWN, lhs.reads or rhs.reads, lhs.tainted or rhs.tainted)
    shape = eqn.invars[1].aval.shape
    kernel = tuple(shape[i] for i in dn.rhs_spec[2:])
    geo = Geometry.window(kernel, tuple(p["window_strides"]), tuple(p["padding"]))
    geo = Geometry(geo.kernel, geo.stride, geo.pad_lo, geo.pad_hi, tuple(p["rhs_dilation"]))
    return _window(Dep(lhs.geo, lhs.reads, lhs.tainted or rhs.tainted), geo)


def _reduce_window(eqn, deps: list[Dep]) -> Dep:
    p = eqn.params
    n = len(eqn.invars) // 2 if eqn.primitive.name == "reduce_window" else 1
    d = _join(deps[:n])
    dims, strides, pads = p["window_dimensions"], p["window_strides"], p["padding"]
    others = [i for i in range(len(dims)) if i not in SPATIAL]
    ok = (
        len(dims) == 4
        and all(v == 1 for v in p["base_dilation"])
        and all(dims[i] == 1 and strides[i] == 1 and pads[i] == (0, 0) for i in others)
        and all(lo >= 0 and hi >= 0 for lo, hi in pads)
    )
    if not ok:
        return Dep(UNKNOWN, d.reads, d.tainted) if d.reads else d
    geo = Geometry(
        (dims[1], dims[2]),
        (strides[1], strides[2]),
        (pads[1][0], pads[2][0]),
        (pads[1][1], pads[2][1]),
        (p["window_dilation"][1], p["window_dilation"][2]),
    )
    return _window(d, geo)


def _pad(eqn, deps: list[Dep]) -> Dep:
    d = _join(deps)
    cfg = eqn.params["padding_config"]
    if not deps[0].reads:
        return d
    if len(cfg) < 3 or any(i != 0 or lo < 0 or hi < 0 for lo, hi, i in cfg[1:3]):
        return Dep(UNKNOWN, True, d.tainted)
    return _window(
        d, Geometry((1, 1), (1, 1), (cfg[1][0], cfg[2][0]), (cfg[1][1], cfg[2][1]), (1, 1))
    )


def _keeps_spatial(in_aval, out_aval) -> bool:
    return _spatial(in_aval) is not None and _spatial(in_aval) == _spatial(out_aval)


def _structural(eqn, deps: list[Dep]) -> Dep:
    """reshape, broadcast_in_dim, squeeze, transpose, concatenate, slice, rev, dot_general and
    reductions: the window survives when the spatial axes stay at 1, 2 untouched."""
    name, p = eqn.primitive.name, eqn.params
    out = eqn.outvars[0].aval
    d = _join(deps)
    if not d.reads or not isinstance(d.geo, Geometry):
        return d
    ins = [v.aval for v in eqn.invars]
    global_ = Dep(GLOBAL, True, d.tainted)
    unknown = Dep(UNKNOWN, True, d.tainted)
    if name in REDUCTIONS:
        axes = set(p["axes"])
        if axes & set(SPATIAL):
            return global_
        return d if 0 not in axes else unknown
    if name == "dot_general":
        (lc, rc), (lb, rb) = p["dimension_numbers"]
        side = [k for k, dep in enumerate(deps) if dep.reads]
        if len(side) != 1:
            return unknown
        contract, batch = (lc, lb) if side[0] == 0 else (rc, rb)
        if set(contract) & set(SPATIAL):
            return global_
        if side[0] != 0 or batch:
            return unknown
        free = [i for i in range(len(ins[0].shape)) if i not in contract]
        return d if free[:3] == [0, 1, 2] else unknown
    if name in ("reshape", "squeeze"):
        shape_in, shape_out = ins[0].shape, out.shape
        if len(shape_out) < 3 or shape_out[:3] != shape_in[:3]:
            return global_
        return d
    if name == "broadcast_in_dim":
        dims = tuple(p["broadcast_dimensions"])
        return d if dims[:3] == (0, 1, 2) and _keeps_spatial(ins[0], out) else unknown
    if name == "transpose":
        return d if tuple(p["permutation"])[:3] == (0, 1, 2) else unknown
    if name == "concatenate":
        ok = p["dimension"] not in SPATIAL and all(_keeps_spatial(a, out) for a in ins)
        return d if ok else unknown
    if name == "rev":
        return unknown if set(p["dimensions"]) & set(SPATIAL) else d
    if name == "slice":
        return (
            d
            if _keeps_spatial(ins[0], out)
            and all((p["strides"] or (1,) * len(out.shape))[i] == 1 for i in SPATIAL)
            else unknown
        )
    return unknown


STRUCTURAL = frozenset(
    [
        "reshape",
        "squeeze",
        "broadcast_in_dim",
        "transpose",
        "concatenate",
        "rev",
        "slice",
        "dot_general",
    ]
)


def _inner(eqn) -> tuple[Any, list] | None:
    """(jaxpr, consts) of a call-like equation whose inputs are the equation's inputs."""
    for key in ("jaxpr", "call_jaxpr", "fun_jaxpr"):
        j = eqn.params.get(key)
        if j is None:
            continue
        jaxpr, consts = (j.jaxpr, j.consts) if hasattr(j, "consts") else (j, [])
        if isinstance(jaxpr, core.Jaxpr) and len(jaxpr.invars) == len(eqn.invars):
            return jaxpr, consts
    return None


def interpret(jaxpr, invars: list[Dep]) -> list[Dep]:
    """The Dep of every output of `jaxpr` (a jax.extend.core.Jaxpr) given its inputs'."""
    env: dict = {}

    def read(v) -> Dep:
        return CONST if isinstance(v, core.Literal) else env.get(v, CONST)

    for v, d in zip(jaxpr.invars, invars, strict=True):
        env[v] = d
    for eqn in jaxpr.eqns:
        deps = [read(v) for v in eqn.invars]
        name = eqn.primitive.name
        if not any(d.reads or d.tainted for d in deps):
            outs = [CONST] * len(eqn.outvars)
        elif (inner := _inner(eqn)) is not None:
            outs = interpret(inner[0], deps)
        elif name in ELEMENTWISE:
            out = eqn.outvars[0].aval
            ops = [_operand(d, v.aval, out) for d, v in zip(deps, eqn.invars, strict=True)]
            outs = [_join(ops)]
        elif name == "conv_general_dilated":
            outs = [_conv(eqn, deps)]
        elif name in WINDOWS:
            outs = [_reduce_window(eqn, deps)] * len(eqn.outvars)
        elif name == "pad":
            outs = [_pad(eqn, deps)]
        elif name in STRUCTURAL or name in REDUCTIONS:
            outs = [_structural(eqn, deps)] * len(eqn.outvars)
        else:
            d = _join(deps)
            outs = [Dep(UNKNOWN if d.reads else GLOBAL, d.reads, d.tainted)] * len(eqn.outvars)
        for v, d in zip(eqn.outvars, outs, strict=True):
            env[v] = d
    return [read(v) for v in jaxpr.outvars]


def trace(fn: Callable, source: Any, other: Any = None) -> Any:
    """Deps of the outputs of `fn(source)` or `fn(source, other)` (same pytree structure as
    its result); source: an NHWC array or ShapeDtypeStruct, other: any pytree of them."""
    args = (source,) if other is None else (source, other)
    closed, out_shape = jax.make_jaxpr(fn, return_shape=True)(*args)
    n_other = 0 if other is None else len(jax.tree.leaves(other))
    ins = [Dep(IDENTITY, True, False)] + [Dep(GLOBAL, False, True)] * n_other
    outs = interpret(closed.jaxpr, ins)
    return jax.tree.unflatten(jax.tree.structure(out_shape), outs)
