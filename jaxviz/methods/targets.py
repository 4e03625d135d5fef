"""What gradient attributions differentiate: one target score per image, and its gradients.

A target is the class explained for each image: `[B] int32`, where `PRED` (-1) means "the class
the model predicts for this image". The score is the target's pre-softmax logit, as in Simonyan et
al. 2014 and Selvaraju et al. 2017 (and Captum with a model that outputs logits). Images never
interact: the gradient of sum_b score_b w.r.t. a batch is the batch of per-image gradients, so one
backward pass serves the whole batch.

Perturbation methods (integrated gradients, SmoothGrad) sum gradients at S perturbed copies of the
batch; `gradient_sum` vmaps a chunk of perturbations into one big batch and scans over chunks, so
memory grows with the chunk, not with S.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

from jaxviz.errors import UsageError
from jaxviz.models.geometry import Pair
from jaxviz.models.stage import Model, stage_shapes
from jaxviz.runtime import memory

PRED = -1

ScoreFn = Callable[[jax.Array], jax.Array]  # [N, ...] input -> [N, K] logits


def parse_target(spec: str, num_classes: int, class_names: tuple[str, ...] | None = None) -> int:
    """`--target`: 'pred' -> PRED, or a class index in [0, num_classes), or a class name."""
    if spec == "pred":
        return PRED
    names = tuple(class_names or ())
    if spec in names:
        return names.index(spec)
    try:
        k = int(spec)
    except ValueError:
        hint = f" or a class name ({', '.join(names[:5])}, ...)" if names else ""
        raise UsageError(f"--target must be 'pred', a class index{hint}; got {spec!r}") from None
    if not 0 <= k < num_classes:
        raise UsageError(f"--target {k} out of range; the model has classes 0..{num_classes - 1}")
    return k


def target_array(target: int | np.ndarray | jax.Array, batch: int) -> jax.Array:
    """A target spec (one int for all images, or [B] ints) as [B] int32."""
    t = jnp.asarray(target, jnp.int32)
    return jnp.broadcast_to(t, (batch,)) if t.ndim == 0 else t


def resolve(logits: jax.Array, target: jax.Array) -> jax.Array:
    """[B, K] logits, [B] targets (PRED allowed) -> [B] int32 class indices."""
    pred = jnp.argmax(logits, axis=-1).astype(jnp.int32)
    return jnp.where(target < 0, pred, target.astype(jnp.int32))


def selected(logits: jax.Array, target: jax.Array) -> jax.Array:
    """[B, K], [B] resolved targets -> [B] the target entries."""
    return jnp.take_along_axis(logits, target[:, None], axis=-1)[:, 0]


def score_gradients(
    fn: ScoreFn, x: jax.Array, target: jax.Array
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """d logit_target / d x for every image, in one forward and one backward pass.

    fn: [N, ...] -> [N, K] logits (any stage input: images or a stage's activations).
    target: [N] int (PRED resolves to fn's argmax on x).
    Returns (gradients shaped like x, logits [N, K], resolved targets [N] int32).
    """
    logits, vjp = jax.vjp(fn, x)
    t = resolve(logits, target)
    (g,) = vjp(jax.nn.one_hot(t, logits.shape[-1], dtype=logits.dtype))
    return g, logits, t


def gradient_sum(
    fn: ScoreFn,
    perturb: Callable[[jax.Array], jax.Array],
    weights: jax.Array,
    target: jax.Array,
    chunk: int,
    transform: Callable[[jax.Array], jax.Array] | None = None,
) -> jax.Array:
    """sum_s weights[s] * transform(d logit_target / d input at perturb(s)), s = 0..S-1.

    perturb: int32 scalar s -> the perturbed batch [B, ...] (traced; vmapped over a chunk).
    weights: [S] float32. target: [B] resolved class indices (no PRED).
    chunk: perturbations per pass (a pass runs chunk * B inputs). S is padded to a multiple of
    chunk with zero-weight copies of the last perturbation, so chunk changes only the order of
    the summation. Returns [B, ...] in the perturbed input's dtype.
    """
    s = weights.shape[0]
    chunk = max(1, min(int(chunk), s))
    n = -(-s // chunk)
    idx = jnp.minimum(jnp.arange(n * chunk, dtype=jnp.int32), s - 1).reshape(n, chunk)
    w = jnp.pad(weights.astype(jnp.float32), (0, n * chunk - s)).reshape(n, chunk)
    like = jax.eval_shape(perturb, jnp.int32(0))
    b = like.shape[0]

    def body(acc: jax.Array, step: tuple[jax.Array, jax.Array]) -> tuple[jax.Array, None]:
        i, wc = step
        xs = jax.vmap(perturb)(i)  # [chunk, B, ...]
        logits, vjp = jax.vjp(fn, xs.reshape((chunk * b,) + like.shape[1:]))
        hot = jax.nn.one_hot(jnp.tile(target, chunk), logits.shape[-1], dtype=logits.dtype)
        (g,) = vjp(hot)
        g = g.reshape(xs.shape)
        if transform is not None:
            g = transform(g)
        return acc + jnp.einsum("c,c...->...", wc, g), None

    acc, _ = jax.lax.scan(body, jnp.zeros(like.shape, like.dtype), (idx, w))
    return acc


def chunk_for_budget(
    model: Model, batch: int, input_size: Pair | None = None, budget_mb: float | None = None
) -> int:
    """Perturbations per pass from the memory plan (`runtime.memory`): a pass's activations
    (kept for the backward pass, with their gradients: ~3 float32 copies of every stage output)
    for the batch's share of one device fit in the plan's work budget, or in `budget_mb` MiB
    per device (`--memory-mb`)."""
    plan = memory.plan(budget_mb=budget_mb)
    shapes = stage_shapes(model, input_size)
    per_image = 3 * 4 * sum(math.prod(s) for s in shapes.values())
    per_device = -(-max(batch, 1) // plan.devices)
    return plan.chunk(per_image * per_device)
