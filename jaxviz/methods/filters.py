"""First-layer filters and deeper filters as pictures (the lecture's first technique)."""

from __future__ import annotations

import numpy as np
from flax.traverse_util import flatten_dict

from jaxviz.errors import UsageError
from jaxviz.models.stage import Model, Params
from jaxviz.render.grid import normalize01


def conv_kernel(model: Model, params: Params, layer: str) -> np.ndarray:
    """The convolution kernel of stage `layer` as [kh, kw, in, out] float32 (the first 4-D
    'kernel' leaf of the stage, e.g. conv1's, or a block's first conv)."""
    model.index(layer)
    for path, leaf in flatten_dict(params[layer]).items():
        if path[-1] == "kernel" and np.ndim(leaf) == 4:
            return np.asarray(leaf, np.float32)
    with_kernels = [
        s.name
        for s in model.stages
        if any(
            p[-1] == "kernel" and np.ndim(v) == 4 for p, v in flatten_dict(params[s.name]).items()
        )
    ]
    raise UsageError(
        f"layer {layer!r} has no convolution kernel; layers with one: {', '.join(with_kernels)}"
    )


def first_conv_layer(model: Model, params: Params) -> str:
    """The first stage that holds a convolution kernel."""
    for st in model.stages:
        if any(
            p[-1] == "kernel" and np.ndim(v) == 4 for p, v in flatten_dict(params[st.name]).items()
        ):
            return st.name
    raise UsageError(f"model {model.name} has no convolution layer")


def filter_tiles(kernel: np.ndarray, max_filters: int | None = None) -> tuple[np.ndarray, int]:
    """Tiles to show for a kernel [kh, kw, in, out], each normalized to [0, 1].

    RGB input (in == 3): one RGB tile per filter, [out, kh, kw, 3], ncols chosen square-ish.
    Otherwise: one grayscale tile per (filter, input channel), [out * in, kh, kw] laid out with
    one row per filter (ncols = in), normalized per filter over all its input channels.
    Returns (tiles, ncols); ncols 0 means "choose a square layout".
    """
    k = np.transpose(kernel, (3, 0, 1, 2))  # [out, kh, kw, in]
    if max_filters is not None:
        k = k[:max_filters]
    if k.shape[-1] == 3:
        return normalize01(k, axes=(1, 2, 3)), 0
    out, kh, kw, cin = k.shape
    tiles = normalize01(k, axes=(1, 2, 3)).transpose(0, 3, 1, 2).reshape(out * cin, kh, kw)
    return tiles, cin
