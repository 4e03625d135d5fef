"""`jaxviz filters`: a layer's filters as one tile-grid PNG, and the raw weights as .npy."""

from __future__ import annotations

import argparse

from jaxviz.jobs.common import add_model_args, add_out_arg, model_config, model_from_args
from jaxviz.jobs.output import JobOutput
from jaxviz.methods.filters import conv_kernel, filter_tiles, first_conv_layer
from jaxviz.render.grid import tile_grid, upscale


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_model_args(p)
    p.add_argument(
        "--layer",
        default=None,
        help="stage whose filters to show (default: the first conv stage). RGB-input "
        "filters become RGB tiles; deeper ones a row of grayscale tiles each",
    )
    p.add_argument(
        "--max-filters",
        type=int,
        default=64,
        help="show at most this many filters of a deeper layer (default: 64)",
    )
    p.add_argument("--tile-px", type=int, default=42, help="approximate tile size in pixels")
    add_out_arg(p, "out/filters")


def run(args: argparse.Namespace) -> int:
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
