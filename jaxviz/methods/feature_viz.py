"""Feature visualization of channels: the image that maximizes the mean of a channel's map,
many channels optimized as one batch in one compiled loop.

Erhan et al. 2009 ("Visualizing Higher-Layer Features of a Deep Network") ascend a unit's
activation in input space; Olah, Mordvintsev & Schubert 2017 ("Feature Visualization", Distill)
use the mean of a channel's map as the objective, as here. The regularization is the one of
`synthesis.class_visualization`, with the same settings (`synthesis.Ascent`: jitter, periodic
blur, L2 decay, per-image normalized gradient, clipping to valid pixels; see `synthesis.ascend`),
so on a robust (adversarially trained) model such as `demo` the images show what the channel
responds to (Santurkar et al. 2019). Deviation from Olah 2017: no decorrelated Fourier
parameterization; the blur plays its part.

Row i of the batch ascends channel channels[i] of its own image; rows never interact (the
forward pass is per image, jitter shifts and the starting noise are shared by the batch), so a
batch of channels gives the same images as one call per channel with the same key.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxviz.methods.synthesis import (
    DEFAULT_ASCENT,
    Ascent,
    ascend,
    start_image,
    valid_range,
)
from jaxviz.models.stage import Model, Params, forward_fn


def channel_mean(model: Model, params: Params, x: jax.Array, layer: str, channels: jax.Array):
    """Mean over positions of channel channels[i] of `layer` at image i: x [B, H, W, 3]
    normalized, channels [B] int32 -> [B] float32."""
    a = forward_fn(model, stop=layer)(params, x).astype(jnp.float32)  # [B, h, w, C]
    # a one-hot contraction, not take_along_axis: its gradient is a product, not a scatter
    pick = jax.nn.one_hot(channels, a.shape[-1], dtype=a.dtype)  # [B, C]
    return jnp.einsum("bhwc,bc->b", a, pick) / (a.shape[1] * a.shape[2])


def channel_visualization(
    model: Model,
    params: Params,
    layer: str,
    channels: jax.Array,
    key: jax.Array,
    ascent: Ascent = DEFAULT_ASCENT,
    start: jax.Array | None = None,
) -> jax.Array:
    """Images maximizing each channel's mean activation: channels [B] int32 (channels of stage
    `layer`, a spatial [h, w, C] map) -> [B, H, W, 3] float32 normalized images.

    The loop and settings of `synthesis.class_visualization` (`Ascent`) with the objective
    `channel_mean`. start: [B, H, W, 3] normalized starting images, e.g. the mean of each
    channel's top dataset images (Nguyen, Yosinski & Clune 2016, "Multifaceted Feature
    Visualization"): a ReLU channel that is zero on the whole noise image has a zero gradient
    and never moves; None: `start_image` (N(0, ascent.init_std) noise shared by the batch).
    """
    lo, hi = valid_range(model.preprocess)
    init_key, key = jax.random.split(key)
    if start is None:
        x0 = start_image(model, channels.shape[0], init_key, ascent.init_std)
    else:
        x0 = jnp.clip(start.astype(jnp.float32), lo, hi)

    def score(z: jax.Array) -> jax.Array:
        return channel_mean(model, params, z, layer, channels)

    return ascend(score, x0, key, lo, hi, ascent)
