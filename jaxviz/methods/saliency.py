"""Vanilla gradient saliency (Simonyan, Vedaldi & Zisserman 2014, "Deep Inside Convolutional
Networks"): the gradient of the target class score w.r.t. the input pixels; the map is the
maximum absolute gradient over colour channels."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from jaxviz.methods.targets import score_gradients
from jaxviz.models.stage import Model, Params, forward_fn


@functools.partial(jax.jit, static_argnames=("model",))
def input_gradients(model: Model, params: Params, x: jax.Array, target: jax.Array) -> jax.Array:
    """d logit_target / d x. x: [B, H, W, C] float32 (normalized model input); target: [B] int32
    (PRED = predicted class). Returns [B, H, W, C] float32 (Captum `Saliency(abs=False)`)."""
    return score_gradients(lambda v: forward_fn(model)(params, v), x, target)[0]


def channel_max(grads: jax.Array) -> jax.Array:
    """[B, H, W, C] gradients -> [B, H, W] max over channels of |gradient| (Simonyan's map)."""
    return jnp.max(jnp.abs(grads), axis=-1)


@functools.partial(jax.jit, static_argnames=("model",))
def saliency(model: Model, params: Params, x: jax.Array, target: jax.Array) -> jax.Array:
    """The saliency map [B, H, W] float32 of `input_gradients`."""
    return channel_max(input_gradients(model, params, x, target))
