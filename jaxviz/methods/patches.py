"""Maximally activating patches: a dataset-wide top-k per channel, cropped by receptive field.

For a stage L and a set of channels, every batch's top-k (image, y, x) per channel is taken on the
device with `jax.lax.top_k` over the flattened (image, y, x) axes (first per device group, then
over the groups' candidates), and merged on the host into a running top-k per channel. The result
is exact and deterministic: ranks follow (value descending, image id, y, x ascending), the same as
sorting every activation of the dataset globally. Option `per_image_max`: at most one patch per
image and channel (its strongest position, the first one in row-major order on ties), the usual
display. The patches are the units' receptive fields in the model-input image
(Zeiler & Fergus, "Visualizing and Understanding Convolutional Networks", ECCV 2014; Girshick et
al., "Rich feature hierarchies...", CVPR 2014, Fig. 4; CS231n lecture 12).

Exactness relies on the pipeline's contract that a batch's rows are in increasing source index
(padding rows last, masked): `lax.top_k` keeps the lower flat index first on ties.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, PartitionSpec
from PIL import Image

TopK = dict[str, np.ndarray]  # {"values" f32, "image" i64, "y" i32, "x" i32}, each [C, k]


def _local_top_k(
    acts: jax.Array, mask: jax.Array, k: int, per_image_max: bool
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Top-k of one device's rows: acts [B, P, C] (P positions), mask [B] ->
    values [C, k'] float32, rows and positions [C, k'] int32.

    The images are blocks of P consecutive units, so the top k units lie in the k images with
    the largest maxima (on equal maxima the lower image wins: every unit of it ranks before the
    later image's). Only those images' maps are gathered: per image, the first position of its
    maximum; for all positions, one top_k over their units, kept in image order so that ties
    still resolve by flat index. This avoids masking, sorting or argmax-ing the whole map (all
    slow on CPU); padding rows are masked on the [B, C] maxima and on the candidates.
    """
    b, p, c = acts.shape
    best = jnp.where(mask[:, None], jnp.max(acts, axis=1), -jnp.inf).T  # [C, B]
    vals, rows = jax.lax.top_k(best, min(k, b))  # [C, kb]
    if not per_image_max:
        rows = jnp.sort(rows, axis=1)  # image order
    cand = acts[rows[:, :, None], jnp.arange(p)[None, None, :], jnp.arange(c)[:, None, None]]
    cand = jnp.where(mask[rows][:, :, None], cand, -jnp.inf).astype(jnp.float32)  # [C, kb, P]
    if per_image_max:
        first = jnp.where(cand == vals[:, :, None].astype(jnp.float32), jnp.arange(p), p - 1)
        return vals.astype(jnp.float32), rows, jnp.min(first, axis=2)
    vals, j = jax.lax.top_k(jnp.reshape(cand, (c, -1)), min(k, cand.shape[1] * p))
    return vals, jnp.take_along_axis(rows, j // p, axis=1), j % p


def batch_top_k(
    acts: jax.Array,
    mask: jax.Array,
    k: int,
    *,
    per_image_max: bool = False,
    mesh: Mesh | None = None,
) -> dict[str, jax.Array]:
    """Top-k units per channel of one batch, on the device.

    acts: [B, H, W, C] activations; mask: [B] bool (False rows never win). mesh: when the batch
    axis is sharded over a 1-D mesh, each device takes the top-k of its own rows (`shard_map`)
    and only those candidates are merged: the same result as one global top-k (ties keep the
    lower flat index in both steps), without gathering the map.
    Returns {"values": [C, k'] float32, "row", "y", "x": [C, k'] int32}, k' = min(k, candidates),
    best first; rows of padding come with value -inf.
    """
    b, h, w, c = acts.shape
    acts = jnp.reshape(acts, (b, h * w, c))
    g = 1 if mesh is None else mesh.size
    if g == 1:
        vals, row, pos = _local_top_k(acts, mask, k, per_image_max)
    else:
        (axis,) = mesh.axis_names
        spec = PartitionSpec(axis)

        def local(a: jax.Array, m: jax.Array) -> tuple[jax.Array, ...]:  # -> [1, C, kl] each
            v, r, p = _local_top_k(a, m, k, per_image_max)
            return v[None], (r + jax.lax.axis_index(axis) * a.shape[0])[None], p[None]

        out = jax.shard_map(local, mesh=mesh, in_specs=(spec, spec), out_specs=(spec,) * 3)(
            acts, mask
        )
        # [C, G * kl] in device order: equal values stay in flat-index order
        vals, row, pos = (jnp.reshape(jnp.transpose(o, (1, 0, 2)), (c, -1)) for o in out)
        vals, sel = jax.lax.top_k(vals, min(k, vals.shape[1]))
        row, pos = (jnp.take_along_axis(o, sel, axis=1) for o in (row, pos))
    return {
        "values": vals,
        "row": row.astype(jnp.int32),
        "y": (pos // w).astype(jnp.int32),
        "x": (pos % w).astype(jnp.int32),
    }


def empty_top_k(channels: int, k: int) -> TopK:
    """A running top-k with no entries: values -inf, image/y/x -1."""
    return {
        "values": np.full((channels, k), -np.inf, np.float32),
        "image": np.full((channels, k), -1, np.int64),
        "y": np.full((channels, k), -1, np.int32),
        "x": np.full((channels, k), -1, np.int32),
    }


def merge_top_k(a: TopK, b: TopK, k: int) -> TopK:
    """The top-k per channel of the union of two candidate sets, [C, ka] and [C, kb] each.

    Entries with image < 0 are empty and rank last; the rest rank by value descending, then
    image id, y, x ascending, so merging is exact, associative and independent of batching.
    """
    cat = {n: np.concatenate([a[n], b[n]], axis=1) for n in ("values", "image", "y", "x")}
    valid = cat["image"] >= 0
    key_value = np.where(valid, -cat["values"].astype(np.float64), np.inf)
    order = np.lexsort((cat["x"], cat["y"], cat["image"], key_value, ~valid), axis=-1)[:, :k]
    out = {n: np.take_along_axis(v, order, axis=1) for n, v in cat.items()}
    pad = k - out["values"].shape[1]
    if pad > 0:
        fill = empty_top_k(out["values"].shape[0], pad)
        out = {n: np.concatenate([out[n], fill[n]], axis=1) for n in out}
    empty = out["image"] < 0
    out["values"] = np.where(empty, -np.inf, out["values"]).astype(np.float32)
    for n in ("y", "x"):
        out[n] = np.where(empty, -1, out[n]).astype(np.int32)
    return out


class PatchMiner:
    """Scan consumer: the running top-k units of `channels` of stage `layer` over a dataset.

    channels: indices into the stage's channels (None: all). k: patches per channel.
    per_image_max: at most one unit per image and channel. mesh: the mesh the scan shards the
    batch over (see `batch_top_k`; None: one device). `state()` / `load_state()` give the
    running top-k as a dict of [C, k] arrays so a sweep can checkpoint it; `finish()` returns it
    with the layer and channel list.
    """

    def __init__(
        self,
        layer: str,
        channels: Sequence[int] | None,
        k: int,
        *,
        per_image_max: bool = False,
        mesh: Mesh | None = None,
        name: str = "patches",
    ):
        if k < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        self.name = name
        self.layer = layer
        self.taps = (layer,)
        self.channels = None if channels is None else np.asarray(channels, np.int32)
        self.k = k
        self.per_image_max = per_image_max
        self.mesh = mesh
        self._top: TopK | None = None

    def reduce(self, taps: dict[str, jax.Array], mask: jax.Array) -> dict[str, jax.Array]:
        acts = taps[self.layer]
        if acts.ndim != 4:
            raise ValueError(
                f"stage {self.layer} has output shape {acts.shape[1:]}; patches need a "
                "spatial [H, W, C] map"
            )
        if self.channels is not None:
            acts = jnp.take(acts, jnp.asarray(self.channels), axis=3)
        return batch_top_k(acts, mask, self.k, per_image_max=self.per_image_max, mesh=self.mesh)

    def update(self, batch, result: dict[str, np.ndarray]) -> None:
        """Merge one batch's candidates; `batch.index` [B] maps rows to source ids (-1: pad)."""
        image = np.asarray(batch.index, np.int64)[np.asarray(result["row"])]
        cand = {
            "values": np.asarray(result["values"], np.float32),
            "image": image,
            "y": np.asarray(result["y"], np.int32),
            "x": np.asarray(result["x"], np.int32),
        }
        if self._top is None:
            self._top = empty_top_k(cand["values"].shape[0], self.k)
        self._top = merge_top_k(self._top, cand, self.k)

    def state(self) -> TopK | None:
        return None if self._top is None else {n: v.copy() for n, v in self._top.items()}

    def load_state(self, state: TopK | None) -> None:
        self._top = None if state is None else {n: np.asarray(v) for n, v in state.items()}

    def merge(self, state: TopK | None) -> None:
        """Add another process's running top-k (exact: `merge_top_k` is associative)."""
        if state is not None:
            self._top = state if self._top is None else merge_top_k(self._top, state, self.k)

    def finish(self) -> dict:
        """{"layer", "channels" [C] int32 (None: all), and the [C, k] top-k arrays}."""
        top = self._top if self._top is not None else empty_top_k(0, self.k)
        return {"layer": self.layer, "channels": self.channels, **top}


def crop_patch(
    image: np.ndarray, box: tuple[int, int, int, int], size: int, fill: int = 128
) -> np.ndarray:
    """The unclipped `box` of `image` [H, W, 3] uint8 as a [size, size, 3] uint8 patch.

    The part of the box outside the image is `fill` grey; the crop is resized to `size`
    (nearest neighbour when enlarging, so small fields stay crisp; bilinear when shrinking).
    """
    y0, x0, y1, x1 = box
    h, w = image.shape[:2]
    canvas = np.full((y1 - y0, x1 - x0, 3), fill, np.uint8)
    cy0, cx0, cy1, cx1 = max(y0, 0), max(x0, 0), min(y1, h), min(x1, w)
    if cy1 > cy0 and cx1 > cx0:
        canvas[cy0 - y0 : cy1 - y0, cx0 - x0 : cx1 - x0] = image[cy0:cy1, cx0:cx1]
    if canvas.shape[:2] == (size, size):
        return canvas
    method = Image.NEAREST if size >= max(canvas.shape[:2]) else Image.BILINEAR
    return np.asarray(Image.fromarray(canvas).resize((size, size), method))


def box_coverage(box: tuple[int, int, int, int], other: tuple[int, int, int, int]) -> float:
    """Fraction of `box`'s area (y0, x0, y1, x1, end exclusive) that lies inside `other`."""
    area = max(box[2] - box[0], 0) * max(box[3] - box[1], 0)
    if area == 0:
        return 0.0
    dy = min(box[2], other[2]) - max(box[0], other[0])
    dx = min(box[3], other[3]) - max(box[1], other[1])
    return max(dy, 0) * max(dx, 0) / area
