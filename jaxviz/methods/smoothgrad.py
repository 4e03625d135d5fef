"""SmoothGrad (Smilkov et al. 2017, "SmoothGrad: removing noise by adding noise"): the input
gradient averaged over noisy copies x + N(0, sigma^2) of each image.

Noise for (image b, sample s) is drawn from `fold_in(keys[b], s)`, so it does not depend on the
batch an image lands in nor on the chunk size; samples are vmapped and run in chunks
(`targets.gradient_sum`), and the input gradient of the first convolution runs once for the
sum of all samples (`first_layer`), except for `magnitude` (|gradient| per sample).
`smoothgrad_noise` takes explicit noise instead (parity with Captum's
`NoiseTunnel(Saliency, nt_type="smoothgrad")` given the same draws).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from jaxviz.methods.first_layer import split_first_conv
from jaxviz.methods.targets import gradient_sum, resolve
from jaxviz.models.stage import Model, Params, forward_fn


def _smooth(model, params, x, target, noise_at, samples, chunk, magnitude):
    weights = jnp.full((samples,), 1.0 / samples, jnp.float32)
    split = split_first_conv(model, params, x.shape[1:])
    t = resolve(split.rest(split.head(x)), target)
    if magnitude:  # |gradient| per sample: no shared transposed first layer
        fn = functools.partial(forward_fn(model), params)
        return gradient_sum(fn, lambda s: x + noise_at(s), weights, t, chunk, jnp.abs)
    grads_z = gradient_sum(split.rest, lambda s: split.head(x + noise_at(s)), weights, t, chunk)
    return split.input_gradient(x, grads_z)


@functools.partial(jax.jit, static_argnames=("model", "samples", "chunk", "magnitude"))
def smoothgrad(
    model: Model,
    params: Params,
    x: jax.Array,
    target: jax.Array,
    keys: jax.Array,
    sigma: jax.Array | float,
    samples: int = 50,
    chunk: int = 16,
    magnitude: bool = False,
) -> jax.Array:
    """Mean gradient of the target logit over `samples` noisy copies of each image.

    x: [B, H, W, C] float32; target: [B] int32 (PRED = class predicted on the clean image);
    keys: [B] PRNG keys, one per image; sigma: noise std, scalar or [B] (Smilkov: 10-20% of the
    image's value range); magnitude: average |gradient| instead (Captum `Saliency(abs=True)`).
    Returns [B, H, W, C] float32.
    """
    sig = jnp.broadcast_to(jnp.asarray(sigma, x.dtype), x.shape[:1])[:, None, None, None]

    def noise_at(s: jax.Array) -> jax.Array:
        draw = jax.vmap(lambda k: jax.random.normal(jax.random.fold_in(k, s), x.shape[1:]))
        return sig * draw(keys)

    return _smooth(model, params, x, target, noise_at, samples, chunk, magnitude)


@functools.partial(jax.jit, static_argnames=("model", "chunk", "magnitude"))
def smoothgrad_noise(
    model: Model,
    params: Params,
    x: jax.Array,
    target: jax.Array,
    noise: jax.Array,
    chunk: int = 16,
    magnitude: bool = False,
) -> jax.Array:
    """`smoothgrad` with explicit noise [N, B, H, W, C] (already scaled) added to x."""
    return _smooth(model, params, x, target, lambda s: noise[s], noise.shape[0], chunk, magnitude)
