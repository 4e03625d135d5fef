"""`jaxviz filters`: a layer's filters as one tile-grid PNG, and the raw weights as .npy."""

from __future__ import annotations

from dataclasses import dataclass

from jaxviz.jobs.common import ModelOptions, OutOptions, model_config, model_from_args
from jaxviz.jobs.config import POSITIVE, option
from jaxviz.jobs.output import JobOutput
from jaxviz.methods.filters import conv_kernel, first_conv_layer
from jaxviz.render.filters import filter_tiles
from jaxviz.render.grid import tile_grid, upscale


@dataclass(kw_only=True)
class FiltersConfig(ModelOptions, OutOptions):
    layer: str | None = option(
        None,
        "stage whose filters to show (default: the first conv stage). RGB-input filters become "
        "RGB tiles; deeper ones a row of grayscale tiles each",
    )
    max_filters: int = option(
        64, "show at most this many filters of a deeper layer", check=POSITIVE
    )
    tile_px: int = option(42, "approximate tile size in pixels", check=POSITIVE)


def run(args: FiltersConfig) -> int:
    model, params = model_from_args(args)
    layer = args.layer or first_conv_layer(model, params)
    kernel = conv_kernel(model, params, layer)
    out = JobOutput(args.out, "filters", {**model_config(args), "layer": layer})
    out.npy(f"{layer}_weights.npy", kernel)
    rgb = kernel.shape[2] == 3
    tiles, ncols = filter_tiles(kernel, None if rgb else args.max_filters)
    factor = max(1, args.tile_px // kernel.shape[0])
    grid = tile_grid(
        upscale(tiles, factor, axes=(1, 2)), ncols=ncols or None, border=max(1, factor // 3)
    )
    out.png(f"{layer}_filters.png", grid)
    out.results.update({"layer": layer, "kernel_shape": list(kernel.shape)})
    out.finish()
    print(f"{layer} filters {tuple(kernel.shape)} -> {out.path(f'{layer}_filters.png')}")
    return 0
