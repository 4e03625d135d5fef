"""Convolution kernels as picture tiles (the lecture's first technique)."""

from __future__ import annotations

import numpy as np

from jaxviz.render.grid import normalize01


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
