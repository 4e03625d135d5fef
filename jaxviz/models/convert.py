"""PyTorch state dicts -> stage-chain params, through one explicit name table per model family.

A family module (alexnet, vgg, resnet) writes its table: torch name -> `Rule(dest, kind)` where
dest is the flat jaxviz name 'stage/collection/module/leaf' and kind the layout change. Anything
the table does not map, anything it maps that the file lacks, and anything of the wrong shape is
refused with one message that lists them (ten of each kind at most; penzai / big_vision style).
`*.num_batches_tracked` (BatchNorm's training counter) is the only tensor ignored; a DataParallel
'module.' prefix is stripped. Only tensors the model expects, in the shape it expects, are read
from the file (`checkpoint.read_state_dict`'s `expect`), so a file's size claims cannot make
loading allocate more than the model's own size.

Converted params are cached with orbax under $JAXVIZ_CACHE/converted (default
$XDG_CACHE_HOME/jaxviz, i.e. ~/.cache/jaxviz; 'off' disables it), keyed by the checkpoint's
absolute path, size and mtime, the model name and the name table, so the second load of a file
skips unpickling, layout changes and shape inference. This is the one place jaxviz writes
outside --out (README: "Where jaxviz writes").
"""

from __future__ import annotations

import functools
import hashlib
import logging
import os
from dataclasses import dataclass

import jax
import jax.numpy as jnp
import numpy as np
from flax.traverse_util import flatten_dict

from jaxviz.models.checkpoint import CheckpointError, data_parallel_prefix, read_state_dict
from jaxviz.models.params_io import check_matches, flatten, unflatten
from jaxviz.models.stage import Model, Params, init_params

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Rule:
    """Where one torch tensor goes.

    dest: 'stage/collection/module/leaf', e.g. 'layer1/params/block0/conv1/kernel'.
    kind: 'conv' (OIHW -> HWIO), 'linear' ([out, in], as `layers.Linear` keeps it), 'linear_chw'
    (a Linear after torch's NCHW flatten of a [C, H, W] map, `chw`: its input columns reordered
    for an NHWC flatten), or 'vector' (as is).
    """

    dest: str
    kind: str = "vector"
    chw: tuple[int, int, int] | None = None

    def layout(self, a: np.ndarray) -> np.ndarray:
        """`a` in torch layout -> a C-contiguous array in jaxviz layout."""
        if self.kind == "conv":
            return np.ascontiguousarray(np.transpose(a, (2, 3, 1, 0)))
        if self.kind == "linear_chw":
            c, h, w = self.chw
            hwc_from_chw = np.arange(c * h * w).reshape(c, h, w).transpose(1, 2, 0).ravel()
            return np.ascontiguousarray(a[:, hwc_from_chw])
        return np.ascontiguousarray(a)

    def torch_shape(self, dest_shape: tuple[int, ...]) -> tuple[int, ...]:
        """The torch-side shape this rule expects, given the jaxviz shape (for error messages)."""
        if self.kind == "conv":
            h, w, i, o = dest_shape
            return (o, i, h, w)
        return tuple(dest_shape)


NameTable = dict[str, Rule]


def conv_rules(t: NameTable, src: str, stage: str, module: str, bias: bool = True) -> None:
    """Rules for torch Conv2d `src` -> linen nn.Conv `module` inside `stage`."""
    t[f"{src}.weight"] = Rule(f"{stage}/params/{module}/kernel", "conv")
    if bias:
        t[f"{src}.bias"] = Rule(f"{stage}/params/{module}/bias")


def linear_rules(
    t: NameTable, src: str, stage: str, module: str, chw: tuple[int, int, int] | None = None
) -> None:
    """Rules for torch Linear `src` -> `layers.Linear` `module` (chw: input was a flattened map)."""
    kind = "linear" if chw is None else "linear_chw"
    t[f"{src}.weight"] = Rule(f"{stage}/params/{module}/kernel", kind, chw)
    t[f"{src}.bias"] = Rule(f"{stage}/params/{module}/bias")


def bn_rules(t: NameTable, src: str, stage: str, module: str) -> None:
    """Rules for torch BatchNorm2d `src` -> linen nn.BatchNorm `module` (running stats)."""
    t[f"{src}.weight"] = Rule(f"{stage}/params/{module}/scale")
    t[f"{src}.bias"] = Rule(f"{stage}/params/{module}/bias")
    t[f"{src}.running_mean"] = Rule(f"{stage}/batch_stats/{module}/mean")
    t[f"{src}.running_var"] = Rule(f"{stage}/batch_stats/{module}/var")


@functools.lru_cache(maxsize=16)
def abstract_params(model: Model) -> Params:
    """Shapes and dtypes of `model`'s params at its input size (no FLOPs, no memory; cached per
    model: tracing the init takes a few hundred ms and a checkpoint load needs it twice)."""
    return jax.eval_shape(lambda: init_params(model, jax.random.key(0)))


def from_state_dict(
    model: Model, state: dict[str, np.ndarray], table: NameTable, source: str
) -> Params:
    """Params for `model` from a torch state dict (numpy arrays, torch layouts) via `table`.

    Floating tensors become float32. Raises CheckpointError listing every missing, unexpected
    and mis-shaped tensor (by torch name).
    """
    prefix = data_parallel_prefix(state)
    state = {k[len(prefix) :]: v for k, v in state.items()}
    like = abstract_params(model)
    want = {"/".join(k): v.shape for k, v in flatten_dict(like).items()}
    unmapped = sorted(k for k in state if k not in table and not k.endswith(".num_batches_tracked"))
    missing = sorted(k for k in table if k not in state)
    flat, misshaped = {}, []
    for name, rule in table.items():
        if name not in state:
            continue
        a = np.asarray(state[name])
        expect = want.get(rule.dest)
        if expect is None:
            raise AssertionError(f"name table of {model.name}: {rule.dest} is not a parameter")
        if tuple(a.shape) != rule.torch_shape(expect):  # before any copy: a may be a placeholder
            misshaped.append(f"{name}: {tuple(a.shape)} != expected {rule.torch_shape(expect)}")
            continue
        a = a.astype(np.float32, copy=False) if jnp.issubdtype(a.dtype, jnp.floating) else a
        flat[rule.dest] = rule.layout(a)
    if unmapped or missing or misshaped:
        parts = [
            f"{what} {_some(names)}"
            for what, names in (
                ("missing", missing),
                ("unexpected", unmapped),
                ("mis-shaped", misshaped),
            )
            if names
        ]
        raise CheckpointError(f"{source} does not match model {model.name}: " + "; ".join(parts))
    check_matches(like, flat, f"name table of {model.name}")
    return _with_empty_stages(model, unflatten(flat))


def _some(names: list[str], n: int = 10) -> str:
    """The first n names (each cut to 80 characters) and how many more."""
    shown = [k if len(k) <= 80 else k[:77] + "..." for k in names[:n]]
    return f"{shown}" + (f" and {len(names) - n} more" if len(names) > n else "")


def expected_shapes(model: Model, table: NameTable) -> dict[str, tuple[int, ...]]:
    """{torch name: torch-layout shape} of every tensor `table` maps for `model`."""
    want = {"/".join(k): v.shape for k, v in flatten_dict(abstract_params(model)).items()}
    return {n: r.torch_shape(want[r.dest]) for n, r in table.items() if r.dest in want}


def _with_empty_stages(model: Model, params: Params) -> Params:
    """Parameter-free stages (pools) get their empty variables back (flat formats drop them)."""
    return {st.name: params.get(st.name, {}) for st in model.stages}


FORMAT = 2  # bump when a layout change alters converted arrays, to invalidate cache entries


def cache_dir() -> str | None:
    """$JAXVIZ_CACHE, default $XDG_CACHE_HOME/jaxviz (~/.cache/jaxviz); None (no caching) when
    it is 'off'."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    d = os.environ.get("JAXVIZ_CACHE") or os.path.join(base, "jaxviz")
    return None if d == "off" else d


def _cache_path(model: Model, path: str, table: NameTable) -> str | None:
    """Cache entry of `path` converted for `model`: keyed by the file's absolute path, size and
    mtime, the model name and the name table (so a changed table never reads a stale entry)."""
    if cache_dir() is None:
        return None
    st = os.stat(path)
    ident = repr(
        (
            os.path.abspath(path),
            st.st_size,
            st.st_mtime_ns,
            model.name,
            FORMAT,
            sorted(table.items()),
        )
    )
    key = hashlib.sha256(ident.encode()).hexdigest()[:32]
    return os.path.join(cache_dir(), "converted", f"{model.name}-{key}")


def load_converted(model: Model, path: str, table: NameTable, cache: bool = True) -> Params:
    """Params for `model` from a `.pth`/`.safetensors` file, via `table`; cached with orbax.

    The first load reads and converts the file (no torch) and saves the result; later loads of
    the same unchanged file restore the cached params (checked to hold exactly the table's
    names). An unreadable cache entry is reconverted; a failed cache write only logs a warning.
    """
    import orbax.checkpoint as ocp

    target = _cache_path(model, path, table) if cache else None
    if target is not None and os.path.isdir(target):
        try:
            restored = ocp.PyTreeCheckpointer().restore(target)
            names = set(flatten(restored))
            if names != {r.dest for r in table.values()}:
                raise ValueError(f"holds {len(names)} arrays, not the table's {len(table)}")
            return _with_empty_stages(model, restored)
        except Exception as e:  # noqa: BLE001 - any broken cache entry is rebuilt
            log.warning("ignoring unreadable cache entry %s (%s)", target, e)
    params = from_state_dict(
        model, read_state_dict(path, expected_shapes(model, table)), table, path
    )
    if target is not None:
        try:
            os.makedirs(os.path.dirname(target), exist_ok=True)
            ocp.PyTreeCheckpointer().save(target, params, force=True)
        except Exception as e:  # noqa: BLE001 - caching is an optimization, never fatal
            log.warning("could not cache converted params at %s (%s)", target, e)
    return params
