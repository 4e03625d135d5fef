"""Guided backpropagation (Springenberg et al. 2015, "Striving for Simplicity: The All
Convolutional Net"): the input gradient with every ReLU passing back only positive gradients
through positive inputs. Swapped in at trace time via `ops.activation_override`, so any zoo model
works unchanged. ReLU6 gets the same rule restricted to 0 < x < 6 (Captum hooks only nn.ReLU, so
on ReLU6 models Captum's result is ordinary backpropagation there)."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from jaxviz.methods.targets import score_gradients
from jaxviz.models import ops
from jaxviz.models.stage import Model, Params, forward_fn


@jax.custom_vjp
def guided_relu(x: jax.Array) -> jax.Array:
    """max(x, 0) whose backward pass is g * (x > 0) * (g > 0)."""
    return jax.nn.relu(x)


def _relu_fwd(x: jax.Array) -> tuple[jax.Array, jax.Array]:
    return jax.nn.relu(x), x


def _relu_bwd(x: jax.Array, g: jax.Array) -> tuple[jax.Array]:
    return (jnp.where((x > 0) & (g > 0), g, jnp.zeros_like(g)),)


guided_relu.defvjp(_relu_fwd, _relu_bwd)


@jax.custom_vjp
def guided_relu6(x: jax.Array) -> jax.Array:
    """min(max(x, 0), 6) whose backward pass is g * (0 < x < 6) * (g > 0)."""
    return jax.nn.relu6(x)


def _relu6_fwd(x: jax.Array) -> tuple[jax.Array, jax.Array]:
    return jax.nn.relu6(x), x


def _relu6_bwd(x: jax.Array, g: jax.Array) -> tuple[jax.Array]:
    return (jnp.where((x > 0) & (x < 6) & (g > 0), g, jnp.zeros_like(g)),)


guided_relu6.defvjp(_relu6_fwd, _relu6_bwd)


@functools.partial(jax.jit, static_argnames=("model",))
def guided_gradients(model: Model, params: Params, x: jax.Array, target: jax.Array) -> jax.Array:
    """Guided backprop of the target logit. x: [B, H, W, C] float32; target: [B] int32 (PRED =
    predicted class). Returns [B, H, W, C] float32 (Captum `GuidedBackprop`)."""
    with ops.activation_override(relu=guided_relu, relu6=guided_relu6):
        return score_gradients(lambda v: forward_fn(model)(params, v), x, target)[0]
