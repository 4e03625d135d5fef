"""The k x k taps of a sliding window as strided slices, and their inverse placement.

A window operation with kernel (kh, kw) and stride s reads, for tap (i, j), the slice
xp[:, i :: s, j :: s] of its (padded) input, one element per output position. Depthwise
convolutions, the max-pool gradient and incremental occlusion's im2col are written over these
slices, which XLA fuses into elementwise loops.
"""

from __future__ import annotations

from collections.abc import Iterator

import jax
import jax.numpy as jnp
from jax import lax

from jaxviz.models.geometry import Pair


def taps(
    xp: jax.Array, kernel_hw: Pair, stride: Pair, out_hw: Pair
) -> Iterator[tuple[int, int, jax.Array]]:
    """(i, j, the slice of xp [B, H, W, C] under tap (i, j): [B, *out_hw, C]), row-major."""
    (sh, sw), (ho, wo) = stride, out_hw
    for i in range(kernel_hw[0]):
        for j in range(kernel_hw[1]):
            end = (xp.shape[0], i + sh * (ho - 1) + 1, j + sw * (wo - 1) + 1, xp.shape[3])
            yield i, j, lax.slice(xp, (0, i, j, 0), end, (1, sh, sw, 1))


def place(v: jax.Array, tap: Pair, stride: Pair, hw: Pair) -> jax.Array:
    """The inverse of `taps` for one tap: v [B, Ho, Wo, C] scattered to the positions tap
    (i, j) reads in an [B, *hw, C] input, zeros elsewhere (one strided pad)."""
    (i, j), (sh, sw), (ho, wo) = tap, stride, v.shape[1:3]
    return lax.pad(
        v,
        jnp.zeros((), v.dtype),
        (
            (0, 0, 0),
            (i, hw[0] - i - sh * (ho - 1) - 1, sh - 1),
            (j, hw[1] - j - sw * (wo - 1) - 1, sw - 1),
            (0, 0, 0),
        ),
    )
