"""Images synthesized by optimizing the input of a network, batched in one compiled loop.

- Class-model visualization (Simonyan, Vedaldi & Zisserman 2014, "Deep Inside Convolutional
  Networks"): gradient ascent on the input to maximize a class's pre-softmax logit, regularized as
  in Yosinski et al. 2015 ("Understanding Neural Networks Through Deep Visualization"): L2 decay,
  jitter (a random roll before each step), a periodic Gaussian blur and clipping to valid pixels.
  Deviations: the default objective is the class log-probability (log-softmax), not the logit
  Simonyan ascends (`objective="logit"`): on the demo model the logit of "ring" also raises
  "circle" more, so the image ends up classified as a circle. The gradient is divided by its
  per-image mean |g|, so the learning rate is in
  normalized-input units per step whatever the model's logit scale. The images look like the
  class only when the model's gradients are perceptually aligned: the demo model is adversarially
  trained for that (Santurkar et al. 2019); with its plain-trained weights the same loop reached
  every class at p >= 0.999 with edge fragments no one could name.
- Feature inversion (Mahendran & Vedaldi 2015, "Understanding Deep Image Representations by
  Inverting Them"): an image whose stage-L features match a given image's, minimizing the relative
  squared feature error plus a total-variation prior (TV^beta), with Adam.
- DeepDream (Mordvintsev, Olah & Tyka 2015): gradient ascent on 0.5 ||stage-L activation||^2 of
  an image, with jitter, per-image gradient normalization and octaves (coarse-to-fine scales,
  the detail added at each octave carried to the next).

All work in the model's normalized input space ([B, H, W, 3] float32) and clip to the image of
[0, 1] under `model.preprocess`. Images never interact (jitter shifts are shared by the batch and
drawn from the key), so a batch gives the same images as one call per image with the same key.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import optax

from jaxviz.methods.faithfulness import blur
from jaxviz.models.preprocess import Preprocess
from jaxviz.models.stage import Model, Params, forward_fn


def valid_range(preprocess: Preprocess) -> tuple[jax.Array, jax.Array]:
    """Normalized values of pixel 0 and pixel 255: two [1, 1, 1, 3] float32 bounds."""
    ends = jnp.stack([jnp.zeros((1, 1, 3), jnp.float32), jnp.full((1, 1, 3), 255.0, jnp.float32)])
    lo, hi = preprocess.normalize(ends)
    return lo[None], hi[None]


def _per_image_normalize(g: jax.Array) -> jax.Array:
    """g / mean |g| per image: [B, H, W, C] -> same."""
    return g / (jnp.abs(g).mean(axis=(1, 2, 3), keepdims=True) + 1e-8)


def _jittered_grad(fn, x: jax.Array, key: jax.Array, jitter: int) -> jax.Array:
    """Gradient of sum(fn(x)) at x rolled by a random (dy, dx) in [-jitter, jitter], rolled back."""
    dy, dx = jax.random.randint(key, (2,), -jitter, jitter + 1)
    g = jax.grad(lambda z: fn(z).sum())(jnp.roll(x, (dy, dx), axis=(1, 2)))
    return jnp.roll(g, (-dy, -dx), axis=(1, 2))


@dataclasses.dataclass(frozen=True)
class Ascent:
    """Settings of regularized gradient ascent in input space (`ascend`): one set for class
    visualization (`jaxviz classviz`) and the atlas's feature visualizations. Hashable, so a
    jitted function can take it as a static argument."""

    steps: int = 200  # gradient steps
    lr: float = 0.1  # step size in normalized-input units (cosine-decayed to 0)
    l2: float = 1e-3  # L2 decay of the image per step
    jitter: int = 4  # max random roll in px before each step
    blur_every: int = 4  # a Gaussian blur every N steps ...
    blur_sigma: float = 0.5  # ... of this std in px ...
    blur_until: float = 0.75  # ... during this first fraction of the steps (the rest sharpen)
    clip_norm_pct: float = 0.0  # Yosinski's small-norm clipping quantile (0 = off)
    init_std: float = 0.1  # std of the starting noise (`start_image`)


DEFAULT_ASCENT = Ascent()


def ascend(
    score,
    x0: jax.Array,
    key: jax.Array,
    lo: jax.Array,
    hi: jax.Array,
    ascent: Ascent = DEFAULT_ASCENT,
) -> jax.Array:
    """Regularized gradient ascent of `score` ([B, H, W, 3] -> [B] or [B, 1]) from x0 [B, H, W, 3].

    Each step: x += lr_i * g / mean|g| (g: gradient of the score at the jittered image, lr_i a
    cosine decay from lr), then x *= 1 - l2, every `blur_every` steps of the first `blur_until`
    fraction a Gaussian blur of std `blur_sigma` px (the last steps sharpen the image the blur
    kept smooth), then clipping to [lo, hi]. clip_norm_pct: Yosinski's small-norm clipping: after
    each step, the pixels whose norm over channels is below this per-image quantile (0..1; 0 =
    off) are reset to the mean colour (0). Image i's score must depend on image i only: then a
    batch gives the same images as one call per image (jitter shifts are shared by the batch).
    """
    a = ascent
    size = 2 * max(1, round(2 * a.blur_sigma)) + 1

    def body(i: int, x: jax.Array) -> jax.Array:
        g = _jittered_grad(score, x, jax.random.fold_in(key, i), a.jitter)
        rate = a.lr * 0.5 * (1.0 + jnp.cos(jnp.pi * i / a.steps))
        x = (x + rate * _per_image_normalize(g)) * (1.0 - a.l2)
        blurred = ((i + 1) % a.blur_every == 0) & (i < a.blur_until * a.steps)
        x = jax.lax.cond(blurred, lambda v: blur(v, a.blur_sigma, size), lambda v: v, x)
        if a.clip_norm_pct > 0:
            norm = jnp.linalg.norm(x, axis=-1, keepdims=True)
            cut = jnp.quantile(norm, a.clip_norm_pct, (1, 2, 3), keepdims=True)
            x = jnp.where(norm < cut, 0, x)
        return jnp.clip(x, lo, hi)

    return jax.lax.fori_loop(0, a.steps, body, x0)


def start_image(model: Model, n: int, key: jax.Array, init_std: float = 0.1) -> jax.Array:
    """The starting point of ascent: one N(0, init_std) image (normalized units: the mean colour
    plus noise) shared by all n rows, clipped to valid pixels: [n, H, W, 3] float32."""
    h, w = model.input_size
    lo, hi = valid_range(model.preprocess)
    x0 = init_std * jax.random.normal(key, (1, h, w, 3), jnp.float32)
    return jnp.clip(jnp.broadcast_to(x0, (n, h, w, 3)), lo, hi)


def class_visualization(
    model: Model,
    params: Params,
    classes: jax.Array,
    key: jax.Array,
    ascent: Ascent = DEFAULT_ASCENT,
    objective: str = "logprob",
) -> jax.Array:
    """Class-model images: [B] int32 classes -> [B, H, W, 3] float32 normalized images.

    `ascend` on the class score, objective: "logprob" (log-softmax of the class) or "logit" (its
    pre-softmax score), from `start_image` (N(0, ascent.init_std) in normalized units).
    """
    lo, hi = valid_range(model.preprocess)
    init_key, key = jax.random.split(key)
    x0 = start_image(model, classes.shape[0], init_key, ascent.init_std)
    score = forward_fn(model)

    def logit(z: jax.Array) -> jax.Array:
        out = score(params, z).astype(jnp.float32)
        if objective == "logprob":
            out = jax.nn.log_softmax(out, axis=-1)
        return jnp.take_along_axis(out, classes[:, None], axis=1)

    return ascend(logit, x0, key, lo, hi, ascent)


def total_variation(x: jax.Array, beta: float = 2.0) -> jax.Array:
    """Mahendran & Vedaldi's TV^beta: [B, H, W, C] -> [B] mean over pixels of
    ((dy^2 + dx^2)^(beta / 2)), finite differences (last row/column dropped)."""
    dy = x[:, 1:, :-1] - x[:, :-1, :-1]
    dx = x[:, :-1, 1:] - x[:, :-1, :-1]
    return ((dy**2 + dx**2 + 1e-8) ** (beta / 2)).mean(axis=(1, 2, 3))


def feature_distance(model: Model, params: Params, x: jax.Array, target: jax.Array, layer: str):
    """Relative squared feature error ||phi(x) - phi0||^2 / ||phi0||^2: [B] float32."""
    f = forward_fn(model, stop=layer)(params, x)
    axes = tuple(range(1, f.ndim))
    return ((f - target) ** 2).sum(axes) / ((target**2).sum(axes) + 1e-8)


def invert(
    model: Model,
    params: Params,
    images: jax.Array,
    layer: str,
    key: jax.Array,
    steps: int = 200,
    lr: float = 0.05,
    tv_weight: float = 0.05,
    tv_beta: float = 2.0,
    init_std: float = 0.1,
) -> jax.Array:
    """Feature inversion: [B, H, W, 3] normalized images -> [B, H, W, 3] reconstructions.

    Minimizes feature_distance + tv_weight * TV^beta with Adam (lr in normalized units), from
    N(0, init_std) noise shared by the batch, clipping to valid pixels after every step.
    """
    lo, hi = valid_range(model.preprocess)
    target = jax.lax.stop_gradient(forward_fn(model, stop=layer)(params, images))
    x0 = init_std * jax.random.normal(key, (1, *images.shape[1:]), jnp.float32)
    x0 = jnp.clip(jnp.broadcast_to(x0, images.shape), lo, hi)
    opt = optax.adam(lr)

    def loss(z: jax.Array) -> jax.Array:
        d = feature_distance(model, params, z, target, layer)
        return (d + tv_weight * total_variation(z, tv_beta)).sum()

    def body(_: int, carry: tuple) -> tuple:
        x, state = carry
        updates, state = opt.update(jax.grad(loss)(x), state, x)
        return jnp.clip(optax.apply_updates(x, updates), lo, hi), state

    return jax.lax.fori_loop(0, steps, body, (x0, opt.init(x0)))[0]


def layer_energy(model: Model, params: Params, x: jax.Array, layer: str) -> jax.Array:
    """DeepDream's objective 0.5 ||stage-L activation||^2 per image: [B] float32."""
    a = forward_fn(model, stop=layer)(params, x)
    return 0.5 * (a.astype(jnp.float32) ** 2).sum(axis=tuple(range(1, a.ndim)))


def _resize(x: jax.Array, hw: tuple[int, int]) -> jax.Array:
    return jax.image.resize(x, (x.shape[0], *hw, x.shape[3]), "linear")


def dream(
    model: Model,
    params: Params,
    images: jax.Array,
    layer: str,
    key: jax.Array,
    steps: int = 20,
    lr: float = 0.02,
    octaves: int = 3,
    octave_scale: float = 1.4,
    jitter: int = 4,
) -> jax.Array:
    """DeepDream: [B, H, W, 3] normalized images -> [B, H, W, 3] dreamed images.

    Octave k (coarsest first) works at size round(H / scale^k); at each, `steps` of
    x += lr * g / mean|g| with jittered gradients of `layer_energy`, then clipping. The detail
    (dreamed minus base) is upsampled into the next octave's base.
    """
    lo, hi = valid_range(model.preprocess)
    h, w = images.shape[1:3]
    sizes = [
        (max(1, round(h / octave_scale**k)), max(1, round(w / octave_scale**k)))
        for k in reversed(range(octaves))
    ]
    detail = jnp.zeros((images.shape[0], *sizes[0], 3), images.dtype)
    x = images
    for k, hw in enumerate(sizes):
        base = _resize(images, hw)
        x = jnp.clip(base + _resize(detail, hw), lo, hi)
        octave_key = jax.random.fold_in(key, k)

        def body(i: int, x: jax.Array, octave_key: jax.Array = octave_key) -> jax.Array:
            energy = lambda z: layer_energy(model, params, z, layer)  # noqa: E731
            g = _jittered_grad(energy, x, jax.random.fold_in(octave_key, i), jitter)
            return jnp.clip(x + lr * _per_image_normalize(g), lo, hi)

        x = jax.lax.fori_loop(0, steps, body, x)
        detail = x - base
    return x
