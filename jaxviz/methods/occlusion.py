"""Occlusion sensitivity: slide a patch over the image and record the target score at each position.

Zeiler & Fergus, "Visualizing and Understanding Convolutional Networks" (ECCV 2014). Brute force:
one forward pass per position, positions `vmap`ped through the jitted forward in chunks sized from
a memory budget (so 50,000 positions run in bounded memory), images sharded over local devices.

Positions follow Captum's `Occlusion.attribute`: along an axis of size N with window w and stride s
there are ceil((N - w) / s) + 1 windows starting at 0, s, 2s, ...; the last one is cut at the
border when s does not divide N - w. The per-pixel map is, for each pixel, the mean of the grid
values of the windows covering it (Captum's attribution when `output="drop"` and the forward
function returns probabilities). Patches are pasted with `dynamic_update_slice` (a window-sized
update), never as dense full-image masks.

The forward pass per chunk of positions is an `Evaluator`: `FullForward` (brute force, here) or
`jaxviz.methods.incremental.IncrementalForward` (exact incremental inference, Krypton).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, PartitionSpec

from jaxviz.models.geometry import Pair
from jaxviz.models.stage import Model, Params, forward_fn, stage_shapes
from jaxviz.runtime import memory
from jaxviz.runtime.devices import local_mesh, round_up

OUTPUTS = ("drop", "prob", "logit")
Fill = float | str  # a constant (normalized input units), "mean" (per image and channel) or "blur"


def grid_size(image_hw: Pair, window: Pair, stride: Pair) -> Pair:
    """Number of window positions (Hp, Wp): ceil((N - w) / s) + 1 per axis, as Captum."""
    for n, w, s in zip(image_hw, window, stride, strict=True):
        if not 1 <= w <= n:
            raise ValueError(f"window {window} must be between 1 and the image size {image_hw}")
        if not 1 <= s <= w:
            raise ValueError(f"stride {stride} must be between 1 and the window {window}")
    return tuple(-(-(n - w) // s) + 1 for n, w, s in zip(image_hw, window, stride, strict=True))


def positions(image_hw: Pair, window: Pair, stride: Pair) -> np.ndarray:
    """[P, 2] int32 grid indices (py, px), row-major over the (Hp, Wp) grid."""
    hp, wp = grid_size(image_hw, window, stride)
    py, px = np.meshgrid(np.arange(hp), np.arange(wp), indexing="ij")
    return np.stack([py.ravel(), px.ravel()], axis=1).astype(np.int32)


def window_centre(index: Pair, image_hw: Pair, window: Pair, stride: Pair) -> Pair:
    """Pixel (y, x) at the centre of grid window `index` (py, px), its border cut included.

    Zeiler & Fergus plot occlusion against the patch centre: this is where a grid value lies.
    """
    return tuple(
        (p * s + min(p * s + w, n) - 1) // 2
        for p, n, w, s in zip(index, image_hw, window, stride, strict=True)
    )


def fill_images(x: jax.Array, fill: Fill, sigma: float) -> jax.Array:
    """What the patch shows, [B, H, W, C] float32: a constant, the image mean or a blurred copy."""
    if fill == "mean":
        return jnp.broadcast_to(jnp.mean(x, axis=(1, 2), keepdims=True), x.shape)
    if fill == "blur":
        return gaussian_blur(x, sigma)
    if isinstance(fill, str):
        raise ValueError(f"fill must be a number, 'mean' or 'blur', got {fill!r}")
    return jnp.full_like(x, fill)


def gaussian_blur(x: jax.Array, sigma: float) -> jax.Array:
    """Separable Gaussian blur of [B, H, W, C] (radius 3 sigma, edge-replicated borders)."""
    r = max(1, int(3 * sigma + 0.5))
    k = np.exp(-(np.arange(-r, r + 1) ** 2) / (2 * sigma**2))
    k = (k / k.sum()).astype(np.float32)
    for axis in (1, 2):
        pad = [(0, 0)] * 4
        pad[axis] = (r, r)
        xp = jnp.pad(x, pad, mode="edge")
        n = x.shape[axis]
        x = sum(
            float(k[i]) * jax.lax.slice_in_dim(xp, i, i + n, axis=axis) for i in range(2 * r + 1)
        )
    return x


def occlude(x: jax.Array, fill: jax.Array, y: jax.Array, x0: jax.Array, window: Pair) -> jax.Array:
    """x [H, W, C] with rows [y, y+h) and columns [x0, x0+w) (cut at the border) taken from fill.

    The update is one window-sized `dynamic_update_slice`; a window overhanging the border is
    shifted inside and the overhang keeps the image's own pixels.
    """
    h, w = window
    ys = jnp.minimum(y, x.shape[0] - h)
    xs = jnp.minimum(x0, x.shape[1] - w)
    start = (ys, xs, jnp.zeros_like(ys))
    size = (h, w, x.shape[2])
    keep = jax.lax.dynamic_slice(x, start, size)
    patch = jax.lax.dynamic_slice(fill, start, size)
    inside = ((ys + jnp.arange(h)) >= y)[:, None, None] & ((xs + jnp.arange(w)) >= x0)[
        None, :, None
    ]
    return jax.lax.dynamic_update_slice(x, jnp.where(inside, patch, keep), start)


class Evaluator(Protocol):
    """Logits of occluded images, one chunk of positions at a time.

    prepare(params, x, fill): per-image state shared by all positions (x, fill: [b, H, W, C]).
    partition(corners): [(group id, indices)] of [n, 2] numpy corners; a group's positions share
    one compiled path (incremental inference: the same slice sizes). Optional: one group.
    logits(params, state, corners, group): corners [n, 2] int32 top-left (y, x), all in `group`
    -> [b, n, K] float32.
    bytes_per_position: device memory one (image, position) pair needs, for chunk sizing.
    """

    def prepare(self, params: Params, x: jax.Array, fill: jax.Array) -> Any: ...

    def logits(self, params: Params, state: Any, corners: jax.Array, group: int) -> jax.Array: ...

    @property
    def bytes_per_position(self) -> int: ...


def stage_input_shapes(model: Model, image_hw: Pair) -> list[tuple[int, ...]]:
    """[image shape, output shape of stage 0, 1, ...] without batch: entry k is stage k's input."""
    shapes = stage_shapes(model, image_hw)
    return [(*image_hw, 3)] + [shapes[st.name] for st in model.stages]


def activation_bytes(model: Model, image_hw: Pair, start: int = 0) -> int:
    """Rough peak bytes of one forward pass from stage `start` on (float32, workspace included)."""
    sizes = [int(np.prod(s)) for s in stage_input_shapes(model, image_hw)]
    sizes = sizes[start:]
    peak = max(a + b for a, b in zip(sizes[:-1], sizes[1:], strict=True)) if len(sizes) > 1 else 1
    return 4 * (3 * peak + sizes[0])


@dataclass(frozen=True, eq=False)
class FullForward:
    """Brute force: the whole forward pass on each occluded image."""

    model: Model
    image_hw: Pair
    window: Pair

    def prepare(self, params: Params, x: jax.Array, fill: jax.Array) -> Any:
        return x, fill

    def logits(
        self, params: Params, state: Any, corners: jax.Array, group: int | None = 0
    ) -> jax.Array:
        x, fill = state

        def per_image(xi: jax.Array, fi: jax.Array) -> jax.Array:
            return jax.vmap(lambda c: occlude(xi, fi, c[0], c[1], self.window))(corners)

        occluded = jax.vmap(per_image)(x, fill)  # [b, n, H, W, C]
        b, n = occluded.shape[:2]
        out = forward_fn(self.model)(params, occluded.reshape((b * n, *occluded.shape[2:])))
        return out.reshape(b, n, -1)

    @property
    def bytes_per_position(self) -> int:
        return activation_bytes(self.model, self.image_hw)


def default_budget() -> int:
    """Bytes for occlusion chunks per device: the memory plan's work budget."""
    return memory.plan().work_bytes


def auto_chunk(
    evaluator: Evaluator, images_per_device: int, n_positions: int, budget: int | None = None
) -> int:
    """Positions per chunk from the memory plan (`runtime.memory`): images_per_device * chunk
    positions fit in `budget` bytes (default: the plan's work budget); on a CPU the plan also
    keeps the chunk's activations cache-sized (`Plan.chunk(cpu_bounded=True)`)."""
    plan = memory.plan(budget_mb=None if budget is None else budget / 2**20)
    return plan.chunk(
        evaluator.bytes_per_position * images_per_device, n_positions, cpu_bounded=True
    )


def partition(evaluator: Evaluator, corners: np.ndarray) -> list[tuple[int, np.ndarray]]:
    """The evaluator's groups of corners [n, 2] (one group if it has no `partition`)."""
    part = getattr(evaluator, "partition", None)
    return part(corners) if part is not None else [(0, np.arange(len(corners)))]


def evaluate(
    evaluator: Evaluator,
    params: Params,
    state: Any,
    corners: np.ndarray,
    chunk: int,
    fn: Callable[[jax.Array], jax.Array] = lambda logits: logits,
) -> jax.Array:
    """fn(logits) at every corner [n, 2] (numpy), [b, n, ...]: each group of the evaluator's
    partition runs in chunks of at most `chunk` positions (`lax.map`, chunks balanced so the
    last one is nearly full) and the results are scattered back into corner order."""
    outs, order = [], []
    for group, idx in partition(evaluator, corners):
        n = len(idx)
        k = -(-n // chunk)
        size = -(-n // k)
        sel = np.concatenate([idx, np.repeat(idx[-1:], k * size - n)])
        cs = jnp.asarray(corners[sel].reshape(k, size, 2).astype(np.int32))
        r = jax.lax.map(lambda c, g=group: fn(evaluator.logits(params, state, c, g)), cs)
        r = jnp.moveaxis(r, 1, 0)  # [b, k, size, ...]
        outs.append(r.reshape(r.shape[0], k * size, *r.shape[3:])[:, :n])
        order.append(idx)
    if len(outs) == 1 and np.array_equal(order[0], np.arange(len(corners))):
        return outs[0]
    return jnp.concatenate(outs, axis=1)[:, np.argsort(np.concatenate(order))]


def coverage(n: int, window: int, stride: int) -> np.ndarray:
    """[n, n_windows] float32: 1 where pixel i lies in window p (cut at the border)."""
    starts = np.arange(-(-(n - window) // stride) + 1) * stride
    i = np.arange(n)[:, None]
    return ((i >= starts[None, :]) & (i < starts[None, :] + window)).astype(np.float32)


def pixel_map(grid: jax.Array, image_hw: Pair, window: Pair, stride: Pair) -> jax.Array:
    """Per-pixel map [B, H, W, T]: each pixel the mean of grid [B, Hp, Wp, T] over its windows."""
    ay = jnp.asarray(coverage(image_hw[0], window[0], stride[0]))
    ax = jnp.asarray(coverage(image_hw[1], window[1], stride[1]))
    total = jnp.einsum("ip,bpqt,jq->bijt", ay, grid, ax, precision=jax.lax.Precision.HIGHEST)
    count = jnp.sum(ay, axis=1)[:, None] * jnp.sum(ax, axis=1)[None, :]
    return total / count[None, :, :, None]


def _scores(logits: jax.Array, targets: jax.Array, output: str, base: jax.Array) -> jax.Array:
    """logits [b, n, K], targets [b, T], base probabilities [b, T] -> scores [b, n, T]."""
    idx = jnp.broadcast_to(targets[:, None, :], (*logits.shape[:2], targets.shape[1]))
    if output == "logit":
        return jnp.take_along_axis(logits, idx, axis=2)
    prob = jnp.take_along_axis(jax.nn.softmax(logits, axis=-1), idx, axis=2)
    return base[:, None, :] - prob if output == "drop" else prob


@dataclass(frozen=True)
class OcclusionResult:
    """grid [B, Hp, Wp, T] and pixels [B, H, W, T] float32 scores; targets [B, T] int32;
    base [B, T] float32 probability (logit for output="logit") of the unoccluded image; chunk:
    positions per chunk used."""

    grid: jax.Array
    pixels: jax.Array
    targets: jax.Array
    base: jax.Array
    chunk: int


@functools.lru_cache(maxsize=32)
def occlusion_fn(
    model: Model,
    image_hw: Pair,
    window: Pair,
    stride: Pair,
    *,
    n_targets: int | None = 1,
    fill: Fill = 0.0,
    output: str = "drop",
    blur_sigma: float | None = None,
    images_per_device: int = 1,
    chunk: int | None = None,
    budget: int | None = None,
    mesh: Mesh | None = None,
    evaluator: Evaluator | None = None,
) -> tuple[Callable[..., tuple[jax.Array, jax.Array, jax.Array]], int]:
    """A jitted `(params, x [B, H, W, C], targets [B, T] int32 | None) -> (grid [B, P, T],
    targets [B, T], base [B, T])` for batches of B = images_per_device * devices images, and the
    chunk size it uses. n_targets=None: targets are the predicted classes (T = 1)."""
    if output not in OUTPUTS:
        raise ValueError(f"output must be one of {OUTPUTS}, got {output!r}")
    mesh = mesh or local_mesh()
    evaluator = evaluator or FullForward(model, image_hw, window)
    corners = positions(image_hw, window, stride) * np.asarray(stride, np.int32)
    n_pos = corners.shape[0]
    chunk = chunk or auto_chunk(evaluator, images_per_device, n_pos, budget)
    chunk = min(chunk, n_pos)
    sigma = blur_sigma if blur_sigma is not None else max(window) / 4

    def local(params: Params, x: jax.Array, targets: jax.Array) -> tuple[jax.Array, ...]:
        base_logits = forward_fn(model)(params, x)
        if n_targets is None:
            targets = jnp.argmax(base_logits, axis=-1).astype(jnp.int32)[:, None]
        if output == "logit":
            base = jnp.take_along_axis(base_logits, targets, axis=1)
        else:
            base = jnp.take_along_axis(jax.nn.softmax(base_logits, axis=-1), targets, axis=1)
        state = evaluator.prepare(params, x, fill_images(x, fill, sigma))

        scores = evaluate(
            evaluator,
            params,
            state,
            corners,
            chunk,
            lambda logits: _scores(logits, targets, output, base),
        )
        return scores, targets, base

    batch = PartitionSpec("batch")
    sharded = jax.shard_map(
        local,
        mesh=mesh,
        in_specs=(PartitionSpec(), batch, batch),
        out_specs=(batch, batch, batch),
        check_vma=False,
    )
    return jax.jit(sharded), chunk


def occlusion(
    model: Model,
    params: Params,
    images: jax.Array,
    window: int | Pair,
    stride: int | Pair,
    *,
    targets: np.ndarray | None = None,
    fill: Fill = 0.0,
    output: str = "drop",
    blur_sigma: float | None = None,
    chunk: int | None = None,
    budget: int | None = None,
    mesh: Mesh | None = None,
    evaluator: Evaluator | None = None,
) -> OcclusionResult:
    """Occlusion maps of a batch of normalized images.

    images: [B, H, W, C] float32 model inputs. window, stride: (h, w) or one int.
    targets: None (the predicted class), [B] or [B, T] int class ids (T classes in the same passes).
    fill: a constant in normalized input units, "mean" or "blur" (sigma: blur_sigma, default
    max(window) / 4). output: "drop" (unoccluded probability minus occluded: Captum with a softmax
    forward), "prob" or "logit". chunk: positions per chunk (default: from `budget` bytes per
    device, default the memory plan's, `runtime.memory`). The batch is padded to a multiple of
    the mesh size.
    """
    window = (window, window) if isinstance(window, int) else tuple(window)
    stride = (stride, stride) if isinstance(stride, int) else tuple(stride)
    mesh = mesh or local_mesh()
    b, h, w = images.shape[:3]
    n_dev = mesh.devices.size
    bp = round_up(b, n_dev)
    t = None if targets is None else np.asarray(targets, np.int32).reshape(b, -1)
    fn, used = occlusion_fn(
        model,
        (h, w),
        window,
        stride,
        n_targets=None if t is None else t.shape[1],
        fill=fill,
        output=output,
        blur_sigma=blur_sigma,
        images_per_device=bp // n_dev,
        chunk=chunk,
        budget=budget,
        mesh=mesh,
        evaluator=evaluator,
    )
    x = jnp.pad(jnp.asarray(images, jnp.float32), ((0, bp - b), (0, 0), (0, 0), (0, 0)))
    t_in = np.zeros((bp, 1 if t is None else t.shape[1]), np.int32)
    if t is not None:
        t_in[:b] = t
    scores, tgt, base = fn(params, x, jnp.asarray(t_in))
    hp, wp = grid_size((h, w), window, stride)
    grid = scores[:b].reshape(b, hp, wp, -1)
    return OcclusionResult(grid, pixel_map(grid, (h, w), window, stride), tgt[:b], base[:b], used)
