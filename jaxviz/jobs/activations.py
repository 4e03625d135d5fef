"""`jaxviz activations`: all channels of one stage for each image: `activations.zarr`
[N, h, w, C] float32 (or --store-dtype), `items.parquet` (index, id, label) and for a sample
`png/LAYER_STEM.png`, the input beside every channel (`jobs.blocks` layout)."""

from __future__ import annotations

import functools
from collections import deque
from dataclasses import dataclass

import jax
import numpy as np

from jaxviz.data.pipeline import Batch
from jaxviz.data.sources import Source
from jaxviz.errors import UsageError
from jaxviz.jobs.blocks import BlockWriter, StoreOptions
from jaxviz.jobs.common import (
    DataOptions,
    ModelOptions,
    OutOptions,
    model_config,
    model_from_args,
    source_from_args,
)
from jaxviz.jobs.config import option
from jaxviz.jobs.output import JobOutput
from jaxviz.jobs.scan import ScanJob
from jaxviz.models.stage import Model, receptive_fields, stage_shapes
from jaxviz.render.grid import caption, normalize01, tile_grid, upscale


def channel_grid(act: np.ndarray, image: np.ndarray, tile_px: int = 48) -> np.ndarray:
    """[h, w, C] activations -> grid PNG: the input image first, then every channel normalized
    on its own to [0, 1] (viridis-free grayscale), each tile captioned with its channel index."""
    h, w, c = act.shape
    factor = max(1, tile_px // max(h, w))
    chans = normalize01(act, axes=(0, 1)).transpose(2, 0, 1)  # [C, h, w]
    chans = upscale((chans * 255 + 0.5).astype(np.uint8), factor, axes=(1, 2))
    from PIL import Image

    size = chans.shape[1:3]
    thumb = np.asarray(Image.fromarray(image).resize(size[::-1], Image.BILINEAR))
    tiles = [caption(thumb, "input")]
    tiles += [caption(np.repeat(t[..., None], 3, -1), str(k)) for k, t in enumerate(chans)]
    return tile_grid(np.stack(tiles), border=2)


class ActivationWriter:
    """Scan consumer: writes each good image's [h, w, C] activations into `activations.zarr`
    (row i = item i) and its table row, and a grid PNG for the sample (`jobs.blocks` layout).
    In a run of several processes each writes its own blocks; process 0 merges the tables."""

    def __init__(
        self,
        layer: str,
        source: Source,
        model: Model,
        out: JobOutput,
        n: int,
        args: StoreOptions,
    ):
        self.name, self.taps = "activations", (layer,)
        self.layer, self.model = layer, model
        shape = stage_shapes(model)[layer]
        self.writer = BlockWriter(out, source, n, {"activations": shape}, {}, args)
        self.writer.open(create=True)
        self.rows = self.writer.rows  # the scan gives each process whole blocks of these
        self._last = -1  # last source index written
        self._skips: deque[tuple[int, str, str]] = deque()  # told by the scan, not written yet

    def reduce(self, taps: dict[str, jax.Array], mask: jax.Array) -> jax.Array:
        return taps[self.layer].astype(np.float32)

    def update(self, batch: Batch, result: np.ndarray) -> None:
        for row in np.flatnonzero(batch.mask & (batch.index > self._last)):
            i = int(batch.index[row])
            self._write_skips(below=i)
            self.writer.add(i, {"activations": result[row]}, {})
            if self.writer.sample(i):
                draw = functools.partial(channel_grid, result[row].copy(), batch.images[row].copy())
                self.writer.png(f"{self.layer}_{i:07d}", draw)
            self._last = i

    def skip(self, i: int, item_id: str, reason: str) -> None:
        """Skipped input i: a table row with the reason (its store row stays 0)."""
        self._skips.append((i, item_id, reason))

    def _write_skips(self, below: float = float("inf")) -> None:
        while self._skips and self._skips[0][0] < below:
            self.writer.add_skip(*self._skips.popleft())

    def state(self) -> np.ndarray:
        """[1] int64: the last source index written (everything so far is flushed first)."""
        self._write_skips()
        self.writer.flush()
        return np.asarray([self._last], np.int64)

    def load_state(self, state: np.ndarray | None) -> None:
        """Continue after `state`: the rows of the current block come back from the store."""
        if state is None:
            return
        self._last = int(state[0])
        if (self._last + 1) % self.rows:  # inside one of this process's blocks
            self.writer.reload(self._last + 1)

    def merge(self, state: np.ndarray | None) -> None:
        """Nothing to take in: every process wrote its blocks into the shared stores."""

    def finish(self) -> dict:
        self._write_skips()
        self.writer.flush()
        table = self.writer.merge(record_skips=False)  # the scan records them in the manifest
        return {"images": table["skipped"].null_count}

    def cleanup(self) -> None:
        self.writer.close()


@dataclass(kw_only=True)
class ActivationsConfig(ModelOptions, DataOptions, StoreOptions, OutOptions):
    layer: str = option(help="stage to show (see `jaxviz models`)")


def spatial_layers(model: Model) -> list[str]:
    return [k for k, rf in receptive_fields(model).items() if rf is not None]


def prepare(args: ActivationsConfig) -> ScanJob:
    """The job as one streaming pass (shareable with other scan jobs by the sweep)."""
    model, params = model_from_args(args)
    model.index(args.layer)
    if args.layer not in spatial_layers(model):
        raise UsageError(
            f"layer {args.layer!r} has no spatial map; spatial layers of "
            f"{model.name}: {', '.join(spatial_layers(model))}"
        )
    source = source_from_args(args)
    n = len(source) if args.limit is None else min(args.limit, len(source))
    config = {**model_config(args), "layer": args.layer, "data": args.data, "limit": args.limit}
    out = JobOutput(args.out, "activations", config)

    def complete(results: dict) -> None:
        out.results.update(results)
        out.finish()
        print(f"{out.counts.get('images', 0)} images, {len(out.skipped)} skipped -> {args.out}")

    return ScanJob(
        model,
        params,
        source,
        out,
        [ActivationWriter(args.layer, source, model, out, n, args)],
        complete,
        args,
    )


def run(args: ActivationsConfig) -> int:
    return prepare(args).run()
