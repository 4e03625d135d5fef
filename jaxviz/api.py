"""The public Python API: one function per method, on preprocessed inputs (see `jaxviz`).

Every function takes a model (a zoo `Model`, or one from `from_flax` / `from_nnx`) and its
params, and x: [B, H, W, C] float32 model inputs (already normalized: `model.preprocess`).
Occlusion, saliency, integrated gradients and SmoothGrad also take a plain
`apply_fn(params, x) -> logits [B, K]` in place of the model. `target`: None (the predicted
class), one class for every image, or one per image ([B] ints).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxviz.errors import UsageError
from jaxviz.methods import gradcam as _gradcam
from jaxviz.methods import integrated_gradients as _ig
from jaxviz.methods import occlusion as _occlusion
from jaxviz.methods import patches as _patches
from jaxviz.methods import saliency as _saliency
from jaxviz.methods import smoothgrad as _smoothgrad
from jaxviz.methods.targets import PRED, target_array
from jaxviz.models.flax_adapter import from_apply_fn
from jaxviz.models.geometry import ReceptiveField
from jaxviz.models.stage import Model, Params, forward, receptive_field
from jaxviz.models.stage import receptive_fields as _receptive_fields

ModelLike = Model | Callable[[Any, jax.Array], jax.Array]


def _as_model(model: ModelLike, params: Any, x: jax.Array) -> Model:
    if isinstance(model, Model):
        return model
    if callable(model):
        return from_apply_fn(model, params, input_size=tuple(x.shape[1:3]))
    raise UsageError(f"expected a jaxviz Model or an apply_fn(params, x), got {type(model)}")


def _targets(target: int | Sequence[int] | np.ndarray | None, b: int) -> jax.Array:
    return target_array(PRED if target is None else target, b)


def _pair(v: int | tuple[int, int]) -> tuple[int, int]:
    return (v, v) if isinstance(v, int) else (int(v[0]), int(v[1]))


def occlusion(
    model: ModelLike,
    params: Any,
    x: jax.Array,
    *,
    window: int | tuple[int, int],
    stride: int | tuple[int, int],
    fill: float | str = 0.0,
    output: str = "drop",
    target: int | Sequence[int] | np.ndarray | None = None,
    method: str = "full",
    chunk: int | None = None,
) -> _occlusion.OcclusionResult:
    """Occlusion sensitivity (Zeiler & Fergus 2014): a `window` patch of `fill` (a constant in
    input units, "mean" or "blur") every `stride` pixels.

    output: "drop" (probability lost), "prob" or "logit". target: see the module doc; a [B, T]
    array explains T classes per image. method: "full" (brute force), "incremental" (exact
    incremental inference, Krypton; needs stage geometry) or "auto".
    Returns `OcclusionResult`: grid [B, gh, gw] and pixels [B, H, W] float32 (a trailing T axis
    for [B, T] targets), targets, base.
    """
    m = _as_model(model, params, x)
    x = jnp.asarray(x, jnp.float32)
    b, h, w = x.shape[:3]
    window, stride = _pair(window), _pair(stride)
    many = target is not None and np.ndim(target) == 2
    t = (
        None
        if target is None
        else np.broadcast_to(np.asarray(target), (b,) if not many else np.shape(target))
    )
    evaluator = None
    if method != "full":
        from jaxviz.methods.incremental import choose

        evaluator = choose(m, (h, w), window, stride, method).evaluator
    r = _occlusion.occlusion(
        m,
        params,
        x,
        window,
        stride,
        targets=t,
        fill=fill,
        output=output,
        chunk=chunk,
        evaluator=evaluator,
    )
    if many:
        return r
    return _occlusion.OcclusionResult(
        r.grid[..., 0], r.pixels[..., 0], r.targets[:, 0], r.base[:, 0], r.chunk
    )


def gradcam(
    model: Model,
    params: Params,
    x: jax.Array,
    *,
    layer: str | None = None,
    target: int | Sequence[int] | np.ndarray | None = None,
    relu: bool = True,
) -> jax.Array:
    """Grad-CAM (Selvaraju et al. 2017) at stage `layer` (default: the last spatial one), any
    tap of a user's module included. Returns [B, h, w] float32 at the layer's resolution
    (`jaxviz.methods.gradcam.upsample` brings it to the input's)."""
    layer = layer or _gradcam.default_layer(model)
    _gradcam.check_layer(model, layer)
    return _gradcam.gradcam(model, params, x, _targets(target, x.shape[0]), layer, relu)


def saliency(
    model: ModelLike,
    params: Any,
    x: jax.Array,
    *,
    target: int | Sequence[int] | np.ndarray | None = None,
) -> jax.Array:
    """Vanilla gradient saliency (Simonyan et al. 2014): [B, H, W] float32, the max over
    channels of |d logit_target / d x|."""
    m = _as_model(model, params, x)
    return _saliency.saliency(m, params, x, _targets(target, x.shape[0]))


def integrated_gradients(
    model: ModelLike,
    params: Any,
    x: jax.Array,
    *,
    target: int | Sequence[int] | np.ndarray | None = None,
    baseline: jax.Array | float = 0.0,
    steps: int = 50,
    method: str = _ig.DEFAULT_METHOD,
    chunk: int = 16,
) -> _ig.IGResult:
    """Integrated gradients (Sundararajan et al. 2017): IGResult with attributions
    [B, H, W, C] float32 and the completeness delta [B]."""
    m = _as_model(model, params, x)
    t = _targets(target, x.shape[0])
    return _ig.integrated_gradients(m, params, x, t, baseline, steps, method, chunk)


def smoothgrad(
    model: ModelLike,
    params: Any,
    x: jax.Array,
    *,
    target: int | Sequence[int] | np.ndarray | None = None,
    sigma: float = 0.15,
    samples: int = 50,
    seed: int = 0,
    magnitude: bool = False,
    chunk: int = 16,
) -> jax.Array:
    """SmoothGrad (Smilkov et al. 2017): the input gradient [B, H, W, C] float32 averaged over
    `samples` copies with N(0, sigma^2) noise (image b's noise from fold_in(seed, b))."""
    m = _as_model(model, params, x)
    keys = jax.vmap(lambda i: jax.random.fold_in(jax.random.key(seed), i))(jnp.arange(len(x)))
    t = _targets(target, x.shape[0])
    return _smoothgrad.smoothgrad(m, params, x, t, keys, sigma, samples, chunk, magnitude)


def activations(
    model: Model, params: Params, x: jax.Array, *, layers: Sequence[str] | None = None
) -> dict[str, jax.Array]:
    """{stage: its output [B, ...]} for `layers` (default: every stage)."""
    for n in layers or ():
        model.index(n)
    taps = jax.jit(lambda p, v: forward(model, p, v)[1])(params, x)
    return {n: taps[n] for n in (layers or model.stage_names)}


def receptive_fields(
    model: Model, layer: str | None = None
) -> ReceptiveField | None | dict[str, Any]:
    """The receptive field of `layer`'s units in input pixels (None: the whole image; a
    UsageError naming the layer if its geometry is unknown); layer=None: every stage's."""
    if layer is None:
        return _receptive_fields(model)
    return receptive_field(model, layer)


@dataclass(frozen=True)
class Patches:
    """Top-k units per channel of one layer over a batch, best first.

    values [C, k] float32; image, y, x [C, k] int (image index into the batch, unit position);
    boxes [C, k, 4] int (y0, x0, y1, x1) receptive fields in input pixels, end exclusive
    (unclipped: parts may lie outside the image); crops [C, k, size, size, 3] uint8 (outside the
    image: grey); channels [C] int.
    """

    values: np.ndarray
    image: np.ndarray
    y: np.ndarray
    x: np.ndarray
    boxes: np.ndarray
    crops: np.ndarray
    channels: np.ndarray


def top_patches(
    model: Model,
    params: Params,
    x: jax.Array,
    *,
    layer: str,
    k: int = 9,
    channels: Sequence[int] | None = None,
    per_image_max: bool = True,
    size: int = 32,
) -> Patches:
    """Maximally activating patches (Zeiler & Fergus 2014; Girshick et al. 2014) of `layer`'s
    channels over the batch x, cropped to the units' receptive fields (the layer needs known
    geometry). per_image_max: at most one patch per image and channel."""
    rf = receptive_field(model, layer, "patch crops")
    acts = activations(model, params, x, layers=[layer])[layer]
    if rf is None or acts.ndim != 4:
        raise UsageError(f"layer {layer!r} of model {model.name} has no spatial map")
    chans = np.arange(acts.shape[-1]) if channels is None else np.asarray(channels)
    top = _patches.batch_top_k(
        jnp.take(acts, jnp.asarray(chans), axis=3),
        jnp.ones(len(x), bool),
        k,
        per_image_max=per_image_max,
    )
    top = {n: np.asarray(v) for n, v in top.items()}
    images = np.asarray(model.preprocess.denormalize(x) * 255 + 0.5).astype(np.uint8)
    boxes = np.zeros((*top["values"].shape, 4), np.int64)
    crops = np.zeros((*top["values"].shape, size, size, 3), np.uint8)
    for c, j in np.ndindex(top["values"].shape):
        boxes[c, j] = rf.box(int(top["y"][c, j]), int(top["x"][c, j]))
        crops[c, j] = _patches.crop_patch(images[top["row"][c, j]], tuple(boxes[c, j]), size)
    return Patches(top["values"], top["row"], top["y"], top["x"], boxes, crops, chans)
