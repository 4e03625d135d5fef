"""The convolution kernels of a model's stages (the lecture's first technique: filters as
pictures; render/filters.py lays them out)."""

from __future__ import annotations

import numpy as np
from flax.traverse_util import flatten_dict

from jaxviz.errors import UsageError
from jaxviz.models.stage import Model, Params


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
