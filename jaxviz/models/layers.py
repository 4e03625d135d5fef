"""Small Linen modules that zoo stages are made of (NHWC, PyTorch-compatible semantics)."""

from __future__ import annotations

from collections.abc import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxviz.models import ops
from jaxviz.models.conv import Conv
from jaxviz.models.geometry import Geometry


class ConvAct(nn.Module):
    """Conv2D (+ optional activation). padding: symmetric per axis, like torch's Conv2d."""

    features: int
    kernel: int
    stride: int = 1
    padding: int = 0
    act: Callable[[jax.Array], jax.Array] | None = ops.relu

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


class MaxPool(nn.Module):
    """Max pooling, floor mode, padding with -inf like torch's MaxPool2d."""

    window: int
    stride: int
    padding: int = 0

    def __call__(self, x: jax.Array) -> jax.Array:
        p = self.padding
        return ops.max_pool(
            x, (self.window, self.window), (self.stride, self.stride), ((p, p), (p, p))
        )

    @property
    def geometry(self) -> Geometry:
        return Geometry.window(self.window, self.stride, self.padding)


class GlobalAvgPool(nn.Module):
    """[B, H, W, C] -> [B, C]."""

    def __call__(self, x: jax.Array) -> jax.Array:
        return ops.global_avg_pool(x)


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
