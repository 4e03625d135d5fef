"""`jaxviz channels`: per-channel activation statistics of a layer over a whole dataset.

One streaming pass (jobs/scan.py; the sweep shares it with features, patches and activations)
accumulates every channel's sum, sum of squares, maximum and positive count
(methods/channel_stats.py) over all images and positions of `--layer`.

Writes into --out: channel_mean.npy, channel_std.npy, channel_max.npy,
channel_frac_positive.npy ([C] float32), channels.json (the same per channel, and the dead
channels: never positive on this data), channels.png (a plot of them).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np

from jaxviz.errors import UsageError
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
from jaxviz.methods.channel_stats import ChannelStats
from jaxviz.models.stage import stage_shapes

STATS = ("mean", "std", "max", "frac_positive")


@dataclass(kw_only=True)
class ChannelsConfig(ModelOptions, DataOptions, OutOptions):
    layer: str = option(help="stage whose channels to measure (e.g. conv5)")


def write_stats(out: JobOutput, st: dict) -> None:
    """channel_{mean,std,max,frac_positive}.npy [C] float32 from ChannelStats.finish()."""
    for name in STATS:
        out.npy(f"channel_{name}.npy", st[name])


def prepare(args: ChannelsConfig) -> ScanJob:
    """The job as one streaming pass (shareable with other scan jobs by the sweep)."""
    model, params = model_from_args(args)
    model.index(args.layer)
    shape = stage_shapes(model)[args.layer]
    source = source_from_args(args)
    config = {
        **model_config(args),
        "layer": args.layer,
        "data": args.data,
        "batch_size": args.batch_size,
        "limit": args.limit,
    }
    out = JobOutput(args.out, "channels", config)
    tag = hashlib.sha1(str(out.out.resolve()).encode()).hexdigest()[:8]  # unique in a sweep
    stats = ChannelStats(args.layer, name=f"channels_{tag}")

    def complete(results: dict) -> None:
        st = results[stats.name]
        if st["units"] == 0:
            out.finish()  # the manifest still lists every skipped input and why
            raise UsageError(
                f"--data {args.data}: no usable images (see {out.path('manifest.json')})"
            )
        from jaxviz.render.channels import channel_plot

        write_stats(out, st)
        dead = np.flatnonzero(st["frac_positive"] <= 0)
        out.json(
            "channels.json",
            {
                "model": model.name,
                "layer": args.layer,
                "units": st["units"],
                "dead": dead.tolist(),
                "channels": [
                    {"channel": c, **{k: float(st[k][c]) for k in STATS}}
                    for c in range(len(st["mean"]))
                ],
            },
        )
        title = f"{model.name} {args.layer}: {len(st['mean'])} channels, {len(dead)} dead"
        out.png("channels.png", channel_plot(st, title))
        out.count("channels", len(st["mean"]))
        out.results.update(
            {
                "layer": args.layer,
                "shape": list(shape),
                "channels": len(st["mean"]),
                "dead_channels": len(dead),
                "units_scanned": st["units"],
            }
        )
        out.finish()
        print(f"{len(st['mean'])} channels of {args.layer}, {len(dead)} dead -> {args.out}")

    return ScanJob(model, params, source, out, [stats], complete, args)


def run(args: ChannelsConfig) -> int:
    return prepare(args).run()
