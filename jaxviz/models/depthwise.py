"""Depthwise 2-D convolution, formulated per backend for speed.

A depthwise convolution (MobileNet, Howard et al. 2017) filters each channel with its own k x k
kernel. XLA lowers it as a grouped convolution (`feature_group_count=C`): cuDNN runs that well on
GPU, but XLA:CPU's grouped convolution is 7-50x slower than PyTorch on EfficientNet-Lite0's
shapes. The *shift-and-add* form computes the same sum as k*k shifted, strided slices of the
padded input, each multiplied by one kernel tap per channel and accumulated; XLA fuses it into a
single elementwise loop, 2-16x faster than the grouped convolution on CPU
(`benchmarks/forward.py --cases depthwise`).

`depthwise_conv` stages out both forms and lets the compiler's platform pick (shift-and-add on
CPU, grouped convolution elsewhere) with `jax.lax.platform_dependent`, so a function traced on one
machine stays fast wherever it is compiled; `impl=` forces one form (tests, benchmarks).
"""

from __future__ import annotations

import functools
from typing import Literal

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxviz.models import windows
from jaxviz.models.geometry import Padding, Pair

Impl = Literal["grouped", "shift"]


def depthwise_grouped(x: jax.Array, kernel: jax.Array, stride: Pair, padding: Padding) -> jax.Array:
    """Grouped-convolution form. x: [B, H, W, C]; kernel: [kh, kw, 1, C] (HWIO).

    Returns [B, Ho, Wo, C]."""
    return jax.lax.conv_general_dilated(
        x,
        kernel.astype(x.dtype),
        window_strides=stride,
        padding=padding,
        dimension_numbers=("NHWC", "HWIO", "NHWC"),
        feature_group_count=x.shape[-1],
    )


def _shift_add(x: jax.Array, kernel: jax.Array, stride: Pair, padding: Padding) -> jax.Array:
    kh, kw = kernel.shape[:2]
    xp = jnp.pad(x, ((0, 0), padding[0], padding[1], (0, 0)))
    out_hw = ((xp.shape[1] - kh) // stride[0] + 1, (xp.shape[2] - kw) // stride[1] + 1)
    taps = kernel.astype(x.dtype)[:, :, None, None]  # taps[i, j]: [1, 1, 1, C]
    return sum(w * taps[i, j] for i, j, w in windows.taps(xp, (kh, kw), stride, out_hw))


# Input gradients, batch 16, ms (JAX's rule / the shift-and-add rule below): 3x3 stride 1 on
# 112x112x32 3.9 / 14.6, 3x3/2 on 112x112x96 30.8 / 51.3; 5x5/2 on 56x56x144 53.6 / 19.0, 5x5 on
# 28x28x240 26.7 / 4.8. XLA fuses JAX's nine strided pads well but not twenty-five.
FUSED_GRADIENT_MIN_TAPS = 10


def depthwise_shift(x: jax.Array, kernel: jax.Array, stride: Pair, padding: Padding) -> jax.Array:
    """Shift-and-add form: sum over taps (i, j) of strided slices of the padded input times
    kernel[i, j]. Same arguments and result as `depthwise_grouped` (summation order differs, so
    results agree to float rounding). Kernels of FUSED_GRADIENT_MIN_TAPS taps or more get their
    input gradient as a shift-and-add too (`_shift_add_fused_grad`)."""
    if kernel.shape[0] * kernel.shape[1] >= FUSED_GRADIENT_MIN_TAPS:
        return _shift_add_fused_grad(x, kernel, stride, padding)
    return _shift_add(x, kernel, stride, padding)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def _shift_add_fused_grad(x, kernel, stride: Pair, padding: Padding) -> jax.Array:
    """`_shift_add` whose input gradient is the transposed convolution as one shift-and-add (the
    output gradient dilated by the stride and padded, times the flipped kernel), one fused loop;
    JAX's rule (one strided pad per tap) runs 3-6x slower on Lite0's 5x5 shapes."""
    return _shift_add(x, kernel, stride, padding)


def _shift_fwd(x, kernel, stride, padding):
    return _shift_add(x, kernel, stride, padding), (x, kernel)


def _shift_bwd(stride, padding, res, g):
    x, kernel = res
    kh, kw = kernel.shape[:2]
    dilated = jax.lax.pad(
        g,
        jnp.zeros((), g.dtype),
        ((0, 0, 0), (0, 0, stride[0] - 1), (0, 0, stride[1] - 1), (0, 0, 0)),
    )
    pads = []
    for n, k, (lo, _), m in zip(x.shape[1:3], (kh, kw), padding, dilated.shape[1:3], strict=True):
        pads.append((k - 1 - lo, n + lo - m))  # the input's size back, at stride 1
    gx = _shift_add(dilated, kernel[::-1, ::-1], (1, 1), tuple(pads))
    xp = jnp.pad(x, ((0, 0), padding[0], padding[1], (0, 0)))
    gk = jnp.zeros_like(kernel)
    for i, j, w in windows.taps(xp, (kh, kw), stride, g.shape[1:3]):
        gk = gk.at[i, j, 0].set(jnp.sum(w * g, axis=(0, 1, 2)).astype(kernel.dtype))
    return gx.astype(x.dtype), gk


_shift_add_fused_grad.defvjp(_shift_fwd, _shift_bwd)


_IMPLS = {"grouped": depthwise_grouped, "shift": depthwise_shift}


def depthwise_conv(
    x: jax.Array,
    kernel: jax.Array,
    stride: Pair = (1, 1),
    padding: Padding = ((0, 0), (0, 0)),
    impl: Impl | None = None,
) -> jax.Array:
    """Depthwise convolution, cross-correlation like torch's `Conv2d(groups=C)` and zero padding.

    x: [B, H, W, C] float; kernel: [kh, kw, 1, C] (HWIO, the layout of flax's grouped Conv);
    stride: (sh, sw); padding: ((top, bottom), (left, right)), may be asymmetric (TF "same").
    Returns [B, Ho, Wo, C] in x's dtype. impl: None picks per compile platform (shift-and-add on
    CPU, grouped convolution on GPU/TPU); "grouped" or "shift" forces one.
    """
    stride = tuple(stride)
    padding = (tuple(padding[0]), tuple(padding[1]))
    if impl is not None:
        if impl not in _IMPLS:
            raise ValueError(f"unknown depthwise impl {impl!r}; choose from {sorted(_IMPLS)}")
        return _IMPLS[impl](x, kernel, stride, padding)
    return jax.lax.platform_dependent(
        x,
        kernel,
        cpu=lambda a, k: depthwise_shift(a, k, stride, padding),
        default=lambda a, k: depthwise_grouped(a, k, stride, padding),
    )


class DepthwiseConv(nn.Module):
    """Linen depthwise convolution without bias; param `kernel` [k, k, 1, C] (HWIO).

    padding: ((top, bottom), (left, right)) zero padding, e.g. TF "same" from `same_padding`.
    """

    kernel_size: int
    stride: int = 1
    padding: Padding = ((0, 0), (0, 0))
    impl: Impl | None = None

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        k = self.kernel_size
        kernel = self.param("kernel", nn.initializers.lecun_normal(), (k, k, 1, x.shape[-1]))
        return depthwise_conv(x, kernel, (self.stride, self.stride), self.padding, self.impl)


def same_padding(size: int, kernel: int, stride: int) -> Pair:
    """TensorFlow "SAME" padding (lo, hi) of one axis of length `size`: output ceil(size/stride),
    the odd pixel of padding (if any) after the input, as in TF and lukemelas's
    `Conv2dStaticSamePadding`."""
    out = -(-size // stride)
    total = max((out - 1) * stride + kernel - size, 0)
    return (total // 2, total - total // 2)
