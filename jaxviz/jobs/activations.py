"""`jaxviz activations`: all channels of one stage for each image, as a grid PNG and raw .npy."""

from __future__ import annotations

import argparse

import jax
import numpy as np

from jaxviz.data.pipeline import Batch
from jaxviz.data.sources import Source, open_source
from jaxviz.errors import UsageError
from jaxviz.jobs.common import (
    add_data_args,
    add_model_args,
    add_out_arg,
    model_config,
    model_from_args,
)
from jaxviz.jobs.output import JobOutput
from jaxviz.jobs.scan import ScanJob
from jaxviz.models.stage import Model, receptive_fields
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
    """Scan consumer: writes each good image's [h, w, C] activations (.npy) and grid (.png)."""

    def __init__(self, layer: str, source: Source, model: Model, out: JobOutput):
        self.name, self.taps = "activations", (layer,)
        self.layer, self.source, self.model, self.out = layer, source, model, out
        self.items: list[dict] = []

    def reduce(self, taps: dict[str, jax.Array], mask: jax.Array) -> jax.Array:
        return taps[self.layer].astype(np.float32)

    def update(self, batch: Batch, result: np.ndarray) -> None:
        for row in np.flatnonzero(batch.mask):
            i = int(batch.index[row])
            stem = f"{self.layer}_{i:07d}"
            self.out.npy(f"npy/{stem}.npy", result[row])
            self.out.png(f"{stem}.png", channel_grid(result[row], batch.images[row]))
            self.items.append(
                {
                    "index": i,
                    "id": self.source.info(i).id,
                    "png": f"{stem}.png",
                    "npy": f"npy/{stem}.npy",
                }
            )

    def state(self) -> np.ndarray:
        """Source indices written so far (their files are on disk)."""
        return np.asarray([it["index"] for it in self.items], np.int64)

    def load_state(self, state: np.ndarray | None) -> None:
        self.items = [] if state is None else [self._item(int(i)) for i in state]

    def merge(self, state: np.ndarray | None) -> None:
        """Add the images another process wrote (into the same folder)."""
        if state is not None:
            self.items = sorted(
                self.items + [self._item(int(i)) for i in state], key=lambda it: it["index"]
            )

    def _item(self, i: int) -> dict:
        stem = f"{self.layer}_{i:07d}"
        return {
            "index": i,
            "id": self.source.info(i).id,
            "png": f"{stem}.png",
            "npy": f"npy/{stem}.npy",
        }

    def finish(self) -> dict:
        self.out.add_files([f for it in self.items for f in (it["npy"], it["png"])])
        self.out.json("items.json", self.items)
        return {"images": len(self.items)}


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_model_args(p)
    p.add_argument("--layer", required=True, help="stage to show (see `jaxviz models`)")
    add_data_args(p)
    add_out_arg(p, "out/activations")


def spatial_layers(model: Model) -> list[str]:
    return [k for k, rf in receptive_fields(model).items() if rf is not None]


def prepare(args: argparse.Namespace) -> ScanJob:
    """The job as one streaming pass (shareable with other scan jobs by the sweep)."""
    model, params = model_from_args(args)
    model.index(args.layer)
    if args.layer not in spatial_layers(model):
        raise UsageError(
            f"layer {args.layer!r} has no spatial map; spatial layers of "
            f"{model.name}: {', '.join(spatial_layers(model))}"
        )
    source = open_source(args.data)
    out = JobOutput(
        args.out, "activations", {**model_config(args), "layer": args.layer, "data": args.data}
    )

    def complete(results: dict) -> None:
        out.results.update(results)
        out.finish()
        print(f"{out.counts.get('images', 0)} images, {len(out.skipped)} skipped -> {args.out}")

    return ScanJob(
        model,
        params,
        source,
        out,
        [ActivationWriter(args.layer, source, model, out)],
        complete,
        args,
    )


def run(args: argparse.Namespace) -> int:
    return prepare(args).run()
