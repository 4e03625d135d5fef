"""Is an attribution map faithful to the model?

- Deletion and insertion (Petsiuk, Das & Saenko 2018, "RISE"): pixels are removed (replaced by a
  substrate) or inserted (into the substrate) in decreasing order of attribution, `pixels_per_step`
  at a time; the curve is the target class probability after each step and the score its area
  (trapezoid rule on [0, 1], as in the RISE code). Deletion: lower is better; insertion: higher.
  Every step of every image is one input of a vmapped, chunked forward pass.
- Model-randomization sanity check (Adebayo et al. 2018, "Sanity Checks for Saliency Maps"): the
  weights are re-initialized stage by stage from the top (cascading); a method whose maps keep a
  high Spearman rank correlation with the trained model's maps is not explaining the model.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

from jaxviz.methods.targets import resolve, selected
from jaxviz.models.stage import Model, Params, forward_fn, init_params

MODES = ("deletion", "insertion")


def blur(x: jax.Array, sigma: float = 5.0, size: int = 11) -> jax.Array:
    """[B, H, W, C] Gaussian blur, separable: RISE's insertion substrate (edge-padded here;
    RISE pads with zeros, which darkens the border of a normalized image)."""
    r = size // 2
    k = jnp.exp(-0.5 * (jnp.arange(-r, r + 1, dtype=x.dtype) / sigma) ** 2)
    k = k / k.sum()
    y = jnp.pad(x, ((0, 0), (r, r), (r, r), (0, 0)), mode="edge")
    h, w = x.shape[1:3]
    y = sum(k[i] * y[:, i : i + h] for i in range(size))
    return sum(k[i] * y[:, :, i : i + w] for i in range(size))


def _ranks(maps: jax.Array) -> jax.Array:
    """[B, H, W] -> [B, H, W] int32 position of each pixel in decreasing order (stable ties)."""
    flat = maps.reshape(maps.shape[0], -1)
    order = jnp.argsort(-flat, axis=-1, stable=True)
    return jnp.argsort(order, axis=-1).astype(jnp.int32).reshape(maps.shape)


def num_steps(hw: int, pixels_per_step: int) -> int:
    """Steps until every pixel has been changed (the curve has num_steps + 1 points)."""
    return -(-hw // pixels_per_step)


@functools.partial(jax.jit, static_argnames=("model", "mode", "pixels_per_step", "chunk"))
def deletion_insertion(
    model: Model,
    params: Params,
    x: jax.Array,
    maps: jax.Array,
    target: jax.Array,
    substrate: jax.Array,
    mode: str,
    pixels_per_step: int,
    chunk: int = 8,
) -> jax.Array:
    """The deletion or insertion curve of each image.

    x: [B, H, W, C] float32 model input; maps: [B, H, W] attributions (higher = more important;
    ties keep raster order); target: [B] int32 (PRED = class predicted on x); substrate:
    broadcastable to x (deletion: e.g. zeros; insertion: e.g. `blur(x)`); chunk: steps per
    forward pass. Returns [B, n + 1] float32 probabilities of the target, n = `num_steps`.
    """
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    if maps.shape != x.shape[:3]:
        raise ValueError(f"maps {maps.shape} must be [B, H, W] of the input {x.shape}")
    fn = functools.partial(forward_fn(model), params)
    t = resolve(fn(x), target)
    substrate = jnp.broadcast_to(substrate, x.shape).astype(x.dtype)
    ranks = _ranks(maps)[..., None]
    n = num_steps(maps.shape[1] * maps.shape[2], pixels_per_step)

    def probs(k: jax.Array) -> jax.Array:
        changed = ranks < k * pixels_per_step
        if mode == "deletion":
            xk = jnp.where(changed, substrate, x)
        else:
            xk = jnp.where(changed, x, substrate)
        return selected(jax.nn.softmax(fn(xk), axis=-1), t)

    curves = jax.lax.map(probs, jnp.arange(n + 1, dtype=jnp.int32), batch_size=chunk)
    return curves.T


def auc(curves: jax.Array) -> jax.Array:
    """[B, n + 1] curves -> [B] area under each on [0, 1] (trapezoid rule)."""
    n = curves.shape[-1] - 1
    return (curves.sum(-1) - 0.5 * (curves[..., 0] + curves[..., -1])) / n


def _avg_ranks(v: jax.Array) -> jax.Array:
    """[N] -> [N] float32 ranks, ties sharing their average rank (as scipy.stats.rankdata)."""
    s = jnp.sort(v)
    lo = jnp.searchsorted(s, v, side="left")
    hi = jnp.searchsorted(s, v, side="right")
    return (lo + hi - 1).astype(jnp.float32) / 2


@jax.jit
def spearman(a: jax.Array, b: jax.Array) -> jax.Array:
    """Spearman rank correlation per row: [B, ...], [B, ...] -> [B] float32 (NaN for a
    constant row, as scipy)."""
    ra = jax.vmap(_avg_ranks)(a.reshape(a.shape[0], -1))
    rb = jax.vmap(_avg_ranks)(b.reshape(b.shape[0], -1))
    ra = ra - ra.mean(-1, keepdims=True)
    rb = rb - rb.mean(-1, keepdims=True)
    return (ra * rb).sum(-1) / jnp.sqrt((ra * ra).sum(-1) * (rb * rb).sum(-1))


def cascade(model: Model, params: Params, key: jax.Array) -> list[tuple[str, Params]]:
    """Adebayo's cascading randomization: for each stage with weights, from the top down, the
    params with that stage and every stage above it re-initialized (fresh `init_params`)."""
    fresh = init_params(model, key, model.input_size)
    out, current = [], dict(params)
    for st in reversed(model.stages):
        if not jax.tree.leaves(params[st.name]):
            continue
        current = {**current, st.name: fresh[st.name]}
        out.append((st.name, current))
    return out


def randomization_check(
    attribute: Callable[[Params], jax.Array],
    model: Model,
    params: Params,
    key: jax.Array,
    absolute: bool = True,
    reference: jax.Array | None = None,
) -> dict[str, np.ndarray]:
    """Spearman correlation between maps of the trained model and of each cascading
    randomization. attribute: params -> maps [B, ...] (the same images each call; jit it so the
    randomized params reuse one compilation). absolute: rank |maps| (Adebayo report both).
    reference: attribute(params), when the caller has it already.
    Returns {deepest randomized stage: [B] float32 correlations}, top stage first."""
    prep = jnp.abs if absolute else (lambda m: m)
    ref = prep(attribute(params) if reference is None else reference)
    return {
        name: np.asarray(spearman(ref, prep(attribute(p))))
        for name, p in cascade(model, params, key)
    }
