"""Small Linen modules that zoo stages are made of (NHWC, PyTorch-compatible semantics)."""

from __future__ import annotations

from collections.abc import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxviz.models import ops
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
        x = nn.Conv(
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


class Dense(nn.Module):
    """Fully connected layer on [B, D] (flattening NHWC input first), optional activation."""

    features: int
    act: Callable[[jax.Array], jax.Array] | None = None

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        x = nn.Dense(self.features, name="dense")(jnp.reshape(x, (x.shape[0], -1)))
        return x if self.act is None else self.act(x)
