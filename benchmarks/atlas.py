"""Benchmark: the two costs of `jaxviz atlas` against their naive alternatives.

- mining: ONE pass that mines the top-k units (PatchMiner) and statistics (ChannelStats) of every
  spatial stage, against a plain forward pass to the deepest of them (a consumer that only sums
  it), over the same pre-staged batches with the scan's pipelining, alternating in rounds
  (benchmarks/patches.py's harness). Target: overhead <= 25%.
- feature_viz: the feature visualizations of `channels` channels of a stage as one batch in one
  compiled loop, against one channel at a time (the same compiled loop at batch 1, compiled once
  and called once per channel), alternating in rounds; medians; compile times reported apart.
  Both give the same images (tests/test_atlas.py). Target: >= 5x.

The demo model (trained weights), random batches of shapes images. Prints one JSON line a case.

    python benchmarks/atlas.py --size smoke     # seconds
    python benchmarks/atlas.py                  # all demo stages, 2048 images; 64 channels
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import platform
import statistics
import time

import jax
import jax.numpy as jnp

from benchmarks.patches import SumTap, run_steps, stage_batches
from jaxviz.jobs.atlas import spatial_layers
from jaxviz.jobs.scan import make_step
from jaxviz.methods.channel_stats import ChannelStats
from jaxviz.methods.feature_viz import channel_visualization
from jaxviz.methods.patches import PatchMiner
from jaxviz.methods.synthesis import Ascent
from jaxviz.models.zoo import load_model
from jaxviz.runtime.devices import batch_sharding, local_mesh, replicated, round_up

SIZES = {
    "smoke": {"images": 128, "batch": 32, "channels": 8, "steps": 10, "layer": "conv3"},
    "full": {"images": 2048, "batch": 64, "channels": 64, "steps": 50, "layer": "conv3"},
}


class Group:
    """Several consumers as one (for `run_steps`, which feeds one)."""

    def __init__(self, name: str, consumers: list):
        self.name, self.consumers = name, consumers
        self.taps = tuple(t for c in consumers for t in c.taps)

    def reduce(self, taps, mask):
        return {c.name: c.reduce({t: taps[t] for t in c.taps}, mask) for c in self.consumers}

    def update(self, batch, result) -> None:
        for c in self.consumers:
            c.update(batch, result[c.name])


def _host() -> dict:
    return {
        "devices": [f"{d.platform}:{d.device_kind}" for d in jax.local_devices()],
        "host": f"{platform.machine()} {os.cpu_count()} cpus, loadavg {os.getloadavg()[0]:.1f}",
    }


def bench_mining(images: int, batch: int, k: int, rounds: int) -> dict:
    model, params = load_model("demo")
    layers = spatial_layers(model, "all")
    mesh = local_mesh()
    batch = round_up(batch, mesh.size)
    sharding = batch_sharding(mesh)
    params = jax.device_put(params, replicated(mesh))
    plain = SumTap(layers[-1])
    mine = Group(
        "mine",
        [PatchMiner(n, None, k, per_image_max=True, mesh=mesh, name=f"top_{n}") for n in layers]
        + [ChannelStats(n, name=f"stats_{n}") for n in layers],
    )
    steps = {
        "forward": (make_step(model, [plain]), plain),
        "mine": (make_step(model, [mine]), mine),
    }
    batches = stage_batches(model, batch, pool=4)
    for step, consumer in steps.values():  # compile and warm up
        run_steps(step, params, consumer, batches, 2, sharding, offset=0)
    n_batches = -(-images // batch)
    seconds = {"forward": 0.0, "mine": 0.0}
    done = 2
    for r in range(rounds):
        nb = n_batches // rounds + (r < n_batches % rounds)
        for key in ("forward", "mine") if r % 2 == 0 else ("mine", "forward"):
            step, consumer = steps[key]
            seconds[key] += run_steps(step, params, consumer, batches, nb, sharding, done)
        done += nb
    n = n_batches * batch
    return {
        "case": "mining/demo all spatial stages",
        "layers": layers,
        "channels": sum(
            p["values"].shape[0] for p in (c.finish() for c in mine.consumers[: len(layers)])
        ),
        "k": k,
        "images": n,
        "batch": batch,
        "forward_img_s": round(n / seconds["forward"], 1),
        "mine_img_s": round(n / seconds["mine"], 1),
        "overhead": round(seconds["mine"] / seconds["forward"] - 1, 4),
        **_host(),
    }


def bench_feature_viz(layer: str, channels: int, steps: int, rounds: int) -> dict:
    """Batched (all channels, one call) against one channel at a time (the same function at
    batch 1, compiled once and called once per channel), alternating in rounds; compile times
    apart, each side's once."""
    model, params = load_model("demo")
    fn = functools.partial(channel_visualization, model, layer=layer, ascent=Ascent(steps=steps))
    chans = jnp.arange(channels, dtype=jnp.int32)
    key = jax.random.key(0)
    compiled, compile_s = {}, {}
    for name, n in (("batched", channels), ("single", 1)):
        t = time.perf_counter()
        compiled[name] = jax.jit(fn).lower(params, channels=chans[:n], key=key).compile()
        compile_s[name] = time.perf_counter() - t

    def batched() -> None:
        jax.block_until_ready(compiled["batched"](params, channels=chans, key=key))

    def one_at_a_time() -> None:
        for c in range(channels):
            jax.block_until_ready(compiled["single"](params, channels=chans[c : c + 1], key=key))

    runs = {"batched": batched, "single": one_at_a_time}
    for run in runs.values():  # warm up
        run()
    seconds: dict[str, list[float]] = {"batched": [], "single": []}
    for r in range(rounds):
        for name in ("batched", "single") if r % 2 == 0 else ("single", "batched"):
            t = time.perf_counter()
            runs[name]()
            seconds[name].append(time.perf_counter() - t)
    med = {k: statistics.median(v) for k, v in seconds.items()}
    return {
        "case": f"feature_viz/demo {layer}",
        "channels": channels,
        "steps": steps,
        "rounds": rounds,
        "batched_s": round(med["batched"], 3),
        "single_s": round(med["single"], 3),
        "speedup": round(med["single"] / med["batched"], 2),
        "compile_batched_s": round(compile_s["batched"], 1),
        "compile_single_s": round(compile_s["single"], 1),
        **_host(),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--size", choices=sorted(SIZES), default="full")
    p.add_argument("--only", choices=("mining", "feature_viz"), default=None)
    p.add_argument("--rounds", type=int, default=4, help="alternating rounds (default: 4)")
    args = p.parse_args()
    s = SIZES[args.size]
    if args.only in (None, "mining"):
        print(json.dumps(bench_mining(s["images"], s["batch"], 9, args.rounds)), flush=True)
    if args.only in (None, "feature_viz"):
        row = bench_feature_viz(s["layer"], s["channels"], s["steps"], args.rounds)
        print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
