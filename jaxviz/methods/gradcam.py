"""Grad-CAM and Guided Grad-CAM (Selvaraju et al. 2017, "Grad-CAM: Visual Explanations from Deep
Networks via Gradient-based Localization").

At stage L with output A [B, h, w, K]: alpha_k = mean over (h, w) of d logit_target / d A_k, and
the map is ReLU(sum_k alpha_k A_k) at L's resolution (Captum `LayerGradCam` on L's output). The
gradient is taken w.r.t. a zero perturbation added to A (`forward(perturb=)`), so it counts every
path from A to the logits and works at any tap of a user's own module (no geometry needed).
Guided Grad-CAM multiplies guided backprop by the map upsampled bilinearly to the input.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from jaxviz.errors import unknown
from jaxviz.methods.guided_backprop import guided_gradients
from jaxviz.methods.targets import resolve
from jaxviz.models.stage import Model, Params, forward, stage_shapes


def spatial_stages(model: Model) -> tuple[str, ...]:
    """Stages Grad-CAM can explain: spatial [H, W, C] outputs, with at least one stage after."""
    shapes = stage_shapes(model)
    return tuple(s.name for s in model.stages[:-1] if len(shapes[s.name]) == 3)


def default_layer(model: Model) -> str:
    """The last spatial stage (the paper's choice: the last convolutional layer)."""
    return spatial_stages(model)[-1]


def check_layer(model: Model, layer: str) -> None:
    """A UsageError listing the valid stages if `layer` is not one Grad-CAM can use."""
    if layer not in spatial_stages(model):
        raise unknown(
            f"Grad-CAM layer of model {model.name} (spatial stages):", layer, spatial_stages(model)
        )


@functools.partial(jax.jit, static_argnames=("model", "layer", "relu"))
def gradcam(
    model: Model, params: Params, x: jax.Array, target: jax.Array, layer: str, relu: bool = True
) -> jax.Array:
    """Grad-CAM at stage `layer`. x: [B, H, W, C] float32; target: [B] int32 (PRED = predicted).

    Returns [B, h, w] float32 at the layer's resolution; relu=False keeps negative evidence
    (Captum's relu_attributions=False).
    """
    check_layer(model, layer)
    grads, acts = tap_gradients(model, params, x, target, layer)
    weights = jnp.mean(grads, axis=(1, 2))  # [B, K]
    cam = jnp.einsum("bhwk,bk->bhw", acts, weights)
    return jax.nn.relu(cam) if relu else cam


def tap_gradients(
    model: Model, params: Params, x: jax.Array, target: jax.Array, layer: str
) -> tuple[jax.Array, jax.Array]:
    """(d logit_target / d A, A) for A the output of stage `layer`, in one forward and one
    backward pass. x: [B, H, W, C]; target: [B] int32 (PRED: the predicted class)."""
    shape = jax.eval_shape(lambda v: forward(model, params, v, stop=layer)[0], x)

    def run(delta: jax.Array) -> tuple[jax.Array, jax.Array]:
        logits, taps = forward(model, params, x, perturb={layer: delta})
        return logits, taps[layer]

    logits, vjp, acts = jax.vjp(run, jnp.zeros(shape.shape, shape.dtype), has_aux=True)
    t = resolve(logits, target)
    (grads,) = vjp(jax.nn.one_hot(t, logits.shape[-1], dtype=logits.dtype))
    return grads, acts


def upsample(maps: jax.Array, size: tuple[int, int]) -> jax.Array:
    """[B, h, w] -> [B, H, W] bilinear, half-pixel centres (torch align_corners=False, cv2)."""
    return jax.image.resize(maps, (maps.shape[0], *size), "bilinear")


@functools.partial(jax.jit, static_argnames=("model", "layer"))
def guided_gradcam(
    model: Model, params: Params, x: jax.Array, target: jax.Array, layer: str
) -> jax.Array:
    """Guided backprop [B, H, W, C] times the ReLU Grad-CAM map upsampled to (H, W).

    Captum's `GuidedGradCam(interpolate_mode="bilinear")` computes the same (its default is
    nearest-neighbour upsampling; the paper uses bilinear)."""
    cam = upsample(gradcam(model, params, x, target, layer), x.shape[1:3])
    return guided_gradients(model, params, x, target) * cam[..., None]
