"""Benchmark: the cost of mining top patches on top of the plain forward pass.

For each case (model, stage, channels, k) two steps are built with `jobs.scan.make_step`, the
jitted function a scan runs: `forward` (a consumer that only sums the tapped stage, so the forward
pass is kept and nothing else is added) and `mine` (PatchMiner: per-device top-k on the device and
the exact host merge). Both run the same pre-staged uint8 batches with the scan's pipelining
(batch k+1 dispatched before batch k is merged on the host), alternating in rounds so that load
changes on a shared machine hit both alike; then the fastest of several single batches of each
(`batch_ms_min`, `overhead_min`: the least load-sensitive figure). Image decoding is left out:
it is the same for both and would only dilute the overhead. Models are random-init and truncated
after the stage (a scan runs only that far anyway). Prints one JSON line a case: images/s of
each, and the overhead.

    python benchmarks/patches.py --size smoke     # seconds
    python benchmarks/patches.py                  # alexnet conv5, all 256 channels, top-9, 10k
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import time

import jax
import jax.numpy as jnp
import numpy as np
from PIL import Image

from jaxviz.data.shapes import ShapesSet
from jaxviz.jobs.scan import make_step
from jaxviz.methods.patches import PatchMiner
from jaxviz.models.stage import init_params
from jaxviz.models.zoo import entry
from jaxviz.runtime.devices import batch_sharding, local_mesh, replicated, round_up

# size -> [(model, stage, images, batch, per_image_max)]
SIZES = {
    "smoke": [("demo", "conv2", 64, 16, False), ("alexnet", "conv5", 16, 8, False)],
    "full": [
        ("demo", "conv2", 4096, 64, False),
        ("alexnet", "conv5", 10_000, 32, False),
        ("alexnet", "conv5", 10_000, 32, True),
    ],
}


class SumTap:
    """The plain forward: reduces the stage to one number (keeps it from being compiled away)."""

    def __init__(self, layer: str):
        self.name, self.taps, self.layer = "forward", (layer,), layer

    def reduce(self, taps, mask):
        return jnp.sum(jnp.where(mask[:, None, None, None], taps[self.layer], 0.0))

    def update(self, batch, result) -> None:
        pass

    def finish(self) -> dict:
        return {}


@dataclasses.dataclass
class Staged:
    images: np.ndarray  # [B, H, W, 3] uint8
    mask: np.ndarray
    index: np.ndarray


def stage_batches(model, batch: int, pool: int) -> list[Staged]:
    """`pool` distinct batches of shapes images at the model's input size (cycled in the run)."""
    shapes = ShapesSet(batch * pool, seed=7)
    out = []
    for b in range(pool):
        imgs = [
            model.preprocess.to_uint8(Image.fromarray(shapes.sample(b * batch + i)[0]))
            for i in range(batch)
        ]
        out.append(Staged(np.stack(imgs), np.ones(batch, bool), np.arange(batch) + b * batch))
    return out


def run_steps(step, params, consumer, batches, n_batches, sharding, offset) -> float:
    """Seconds to push n_batches through `step` + `consumer.update`, pipelined like scan."""
    t0 = time.perf_counter()
    pending = None
    for j in range(n_batches):
        b = batches[j % len(batches)]
        b = dataclasses.replace(b, index=b.index + (offset + j) * len(b.index))
        result = step(params, jax.device_put(b.images, sharding), jax.device_put(b.mask, sharding))
        if pending is not None:
            consumer.update(pending[0], jax.tree.map(np.asarray, pending[1])[consumer.name])
        pending = (b, result)
    consumer.update(pending[0], jax.tree.map(np.asarray, pending[1])[consumer.name])
    return time.perf_counter() - t0


def bench(name, layer, images, batch, per_image_max, k, rounds) -> dict:
    full = entry(name).build()
    model = dataclasses.replace(full, stages=full.stages[: full.index(layer) + 1])
    mesh = local_mesh()
    batch = round_up(batch, mesh.size)
    sharding = batch_sharding(mesh)
    params = jax.device_put(init_params(model, jax.random.key(0)), replicated(mesh))
    plain = SumTap(layer)
    miner = PatchMiner(layer, None, k, per_image_max=per_image_max, mesh=mesh)
    steps = {
        "forward": (make_step(model, [plain]), plain),
        "mine": (make_step(model, [miner]), miner),
    }
    batches = stage_batches(model, batch, pool=4)
    for step, consumer in steps.values():  # compile and warm up
        run_steps(step, params, consumer, batches, 2, sharding, offset=0)
    n_batches = -(-images // batch)
    per_round = [n_batches // rounds + (r < n_batches % rounds) for r in range(rounds)]
    seconds = {"forward": 0.0, "mine": 0.0}
    done = 0
    for r, nb in enumerate(per_round):
        for key in ("forward", "mine") if r % 2 == 0 else ("mine", "forward"):
            step, consumer = steps[key]
            seconds[key] += run_steps(step, params, consumer, batches, nb, sharding, done + 2)
        done += nb
    # min over repeats of one blocking batch each: robust to the load of a shared machine
    best = {"forward": np.inf, "mine": np.inf}
    for _ in range(rounds):
        for key, (step, consumer) in steps.items():
            t = run_steps(step, params, consumer, batches, 1, sharding, done + 2)
            best[key] = min(best[key], t)
            done += 1
    n = n_batches * batch
    channels = miner.finish()["values"].shape[0]
    return {
        "case": f"{name}/{layer}",
        "channels": channels,
        "k": k,
        "per_image_max": per_image_max,
        "images": n,
        "batch": batch,
        "forward_img_s": round(n / seconds["forward"], 2),
        "mine_img_s": round(n / seconds["mine"], 2),
        "overhead": round(seconds["mine"] / seconds["forward"] - 1, 4),
        "batch_ms_min": {k: round(v * 1000, 1) for k, v in best.items()},
        "overhead_min": round(best["mine"] / best["forward"] - 1, 4),
        "devices": [f"{d.platform}:{d.device_kind}" for d in mesh.devices.flat],
        "host": f"{platform.machine()} {os.cpu_count()} cpus, loadavg {os.getloadavg()[0]:.1f}",
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--size", choices=sorted(SIZES), default="full")
    p.add_argument("--images", type=int, default=None, help="override images per case")
    p.add_argument("--only", default=None, help="run only cases whose name contains this")
    p.add_argument("--top", type=int, default=9, help="k (default: 9)")
    p.add_argument("--rounds", type=int, default=6, help="alternating rounds (default: 6)")
    args = p.parse_args()
    for name, layer, images, batch, pim in SIZES[args.size]:
        if args.only and args.only not in f"{name}/{layer}":
            continue
        n = args.images or images
        rounds = max(1, min(args.rounds, n // batch))
        print(json.dumps(bench(name, layer, n, batch, pim, args.top, rounds)), flush=True)


if __name__ == "__main__":
    main()
