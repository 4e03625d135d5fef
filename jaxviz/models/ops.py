"""Activation functions that attribution methods can swap at trace time.

Guided backpropagation (Springenberg et al. 2015) changes how ReLU passes gradients back, and the
receptive-field test linearizes max-pooling. Stages call `relu`/`relu6`/`max_pool` from here
instead of `jax.nn`, and `activation_override` replaces them while a function is traced (jit
traces once, so the override is baked into that compiled function).
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Callable, Iterator

import jax
import jax.numpy as jnp

from jaxviz.models import pool

_DEFAULTS: dict[str, Callable] = {
    "relu": jax.nn.relu,
    "relu6": jax.nn.relu6,
    "max_pool": pool.max_pool,
}
_ACTIVE: contextvars.ContextVar[dict[str, Callable]] = contextvars.ContextVar(
    "jaxviz_activations", default=_DEFAULTS
)


def relu(x: jax.Array) -> jax.Array:
    """max(x, 0), or the override active at trace time."""
    return _ACTIVE.get()["relu"](x)


def relu6(x: jax.Array) -> jax.Array:
    """min(max(x, 0), 6), or the override active at trace time."""
    return _ACTIVE.get()["relu6"](x)


def max_pool(
    x: jax.Array,
    window: tuple[int, int],
    strides: tuple[int, int],
    padding: tuple[tuple[int, int], tuple[int, int]],
) -> jax.Array:
    """Max pooling padded with -inf (`pool.max_pool`: flax's `max_pool` with a faster gradient),
    or the override active at trace time."""
    return _ACTIVE.get()["max_pool"](x, window, strides, padding)


@contextlib.contextmanager
def activation_override(**fns: Callable) -> Iterator[None]:
    """Within the block, `relu`/`relu6`/`max_pool` are replaced by the given functions."""
    bad = set(fns) - set(_DEFAULTS)
    if bad:
        raise ValueError(f"cannot override {sorted(bad)}; overridable: {sorted(_DEFAULTS)}")
    token = _ACTIVE.set({**_ACTIVE.get(), **fns})
    try:
        yield
    finally:
        _ACTIVE.reset(token)


def global_avg_pool(x: jax.Array) -> jax.Array:
    """[B, H, W, C] -> [B, C] mean over the spatial axes."""
    return jnp.mean(x, axis=(1, 2))


def global_max_pool(x: jax.Array) -> jax.Array:
    """[B, H, W, C] -> [B, C] max over the spatial axes (its gradient reaches the argmax only;
    exact ties share it)."""
    return jnp.max(x, axis=(1, 2))
