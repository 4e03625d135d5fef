"""Small Linen modules that zoo stages are made of (NHWC, PyTorch-compatible semantics)."""

from __future__ import annotations

from collections.abc import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxviz.models import ops, windows
from jaxviz.models.conv import Conv
from jaxviz.models.geometry import Geometry

# unpadded 3x3 (or larger) convs with at least this many inputs run as one matmul (im2col)
MATMUL_CONV_MIN_CHANNELS = 128


class ConvAct(nn.Module):
    """Conv2D (+ optional activation). padding: symmetric per axis, like torch's Conv2d.

    Declares `pad_value` 0: `apply_unpadded` runs it on an input already zero-padded (a slice of
    a padded map, in incremental occlusion).
    """

    features: int
    kernel: int
    stride: int = 1
    padding: int = 0
    act: Callable[[jax.Array], jax.Array] | None = ops.relu
    pad_value = 0.0

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        p = self.padding
        x = Conv(
            self.features,
            (self.kernel, self.kernel),
            (self.stride, self.stride),
            padding=((p, p), (p, p)),
            name="conv",
        )(x)
        return x if self.act is None else self.act(x)

    @property
    def geometry(self) -> Geometry:
        return Geometry.window(self.kernel, self.stride, self.padding)

    def apply_unpadded(self, variables: dict, x: jax.Array) -> jax.Array:
        """The stage without padding on x [B, L, L', C] (already padded). A 3x3 (or larger)
        conv with many input channels runs as one matrix product of its patches: XLA:CPU's
        convolution runs 2-3x below its matmul speed on such small, wide maps."""
        if self.kernel == 1 or x.shape[-1] < MATMUL_CONV_MIN_CHANNELS:
            return self.clone(padding=0).apply(variables, x)
        kernel = variables["params"]["conv"]["kernel"]  # [kh, kw, C, D]
        kh, kw = kernel.shape[:2]
        s = self.stride
        my = (x.shape[1] - kh) // s + 1
        mx = (x.shape[2] - kw) // s + 1
        patches = [tap for _, _, tap in windows.taps(x, (kh, kw), (s, s), (my, mx))]
        out = jnp.einsum(
            "bhwc,cd->bhwd",
            jnp.concatenate(patches, axis=-1),
            kernel.reshape(-1, kernel.shape[-1]),
        )
        out = out + variables["params"]["conv"]["bias"][None, None, None, :]
        return out if self.act is None else self.act(out)


class MaxPool(nn.Module):
    """Max pooling, floor mode, padding with -inf like torch's MaxPool2d (`pad_value`: see
    ConvAct)."""

    window: int
    stride: int
    padding: int = 0
    pad_value = -float("inf")

    def __call__(self, x: jax.Array) -> jax.Array:
        p = self.padding
        return ops.max_pool(
            x, (self.window, self.window), (self.stride, self.stride), ((p, p), (p, p))
        )

    @property
    def geometry(self) -> Geometry:
        return Geometry.window(self.window, self.stride, self.padding)

    def apply_unpadded(self, variables: dict, x: jax.Array) -> jax.Array:
        return self.clone(padding=0).apply(variables, x)


class GlobalAvgPool(nn.Module):
    """[B, H, W, C] -> [B, C]."""

    def __call__(self, x: jax.Array) -> jax.Array:
        return ops.global_avg_pool(x)


class GlobalMaxPool(nn.Module):
    """[B, H, W, C] -> [B, C] (Oquab et al. 2015, "Is object localization for free?")."""

    def __call__(self, x: jax.Array) -> jax.Array:
        return ops.global_max_pool(x)


class Linear(nn.Module):
    """y = x W^T + b on [..., D] -> [..., features], the kernel W stored [features, D] as in
    PyTorch's nn.Linear (param names `kernel`, `bias`, as linen's nn.Dense).

    Why not nn.Dense's [D, features]: at small batch a fully connected layer is bound by reading
    its weights, and XLA:CPU contracts two operands on their last (contiguous) axes about 1.8x
    faster than x @ W[D, features] (measured on AlexNet's fc6, 32 x 9216 @ 9216 x 4096, vs
    PyTorch: 0.83x against 0.47x). cuBLAS takes either layout at the same speed.
    """

    features: int

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        init = nn.initializers.lecun_normal(in_axis=1, out_axis=0)
        w = self.param("kernel", init, (self.features, x.shape[-1]), jnp.float32)
        b = self.param("bias", nn.initializers.zeros_init(), (self.features,), jnp.float32)
        w, b = w.astype(x.dtype), b.astype(x.dtype)
        y = jax.lax.dot_general(x, w, (((x.ndim - 1,), (1,)), ((), ())))
        return y + jnp.reshape(b, (1,) * (y.ndim - 1) + (self.features,))


class Dense(nn.Module):
    """Fully connected layer on [B, D] (flattening NHWC input first), optional activation."""

    features: int
    act: Callable[[jax.Array], jax.Array] | None = None

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        x = Linear(self.features, name="dense")(jnp.reshape(x, (x.shape[0], -1)))
        return x if self.act is None else self.act(x)
