"""End-to-end images/s of a shared-pass sweep (features + patches + channel statistics in ONE
forward pass) vs the same three jobs run separately (one pass each), on the same data and model,
in one process; prints one JSON line a case.

End to end means what `jaxviz sweep` does for a unit: prepare the jobs (model load: once for the
shared group, once per job when separate), compile the pass, stream the data, write every output
(patch crops and grids, the index, the plots). Runs alternate shared/separate so load changes
hit both; the load average (`os.getloadavg`) before and after is in the JSON line.

    python benchmarks/sweep.py [--size smoke|full]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.hardware import hardware  # noqa: E402
from jaxviz.jobs import channels, features, patches  # noqa: E402
from jaxviz.jobs.common import shared_models  # noqa: E402
from jaxviz.jobs.registry import job  # noqa: E402
from jaxviz.jobs.scan import run_scan_jobs  # noqa: E402

SIZES = {  # model, images, batch
    "smoke": ("demo", 64, 16),
    "full": ("resnet18", 512, 32),
}


def _args(module, out: Path, model: str, n: int, batch: int, **extra):
    """The job's config, as `jaxviz JOB --model MODEL --random-init ...` builds it."""
    values = {"model": model, "random_init": True, "data": f"shapes:{n}:3", "batch_size": batch}
    return job(module.__name__.rsplit(".", 1)[1]).from_values(
        {**values, "out": str(out), **extra}, "benchmark"
    )


def _specs(root: Path, model: str, n: int, batch: int, layer: str) -> list:
    """(job module, config) of features + patches + channel statistics."""
    return [
        (features, _args(features, root / "features", model, n, batch, index="Flat", eval_k=0)),
        (
            patches,
            _args(patches, root / "patches", model, n, batch, layer=layer, channels="all", top=9),
        ),
        (channels, _args(channels, root / "channels", model, n, batch, layer=layer)),
    ]


def shared(root: Path, model: str, n: int, batch: int, layer: str) -> None:
    """The three jobs as a sweep runs them: one model load, one pass."""
    with shared_models():
        jobs = [m.prepare(a) for m, a in _specs(root, model, n, batch, layer)]
    run_scan_jobs(jobs)


def separate(root: Path, model: str, n: int, batch: int, layer: str) -> None:
    """The three jobs one after the other, each as `jaxviz JOB` runs it: its own load and pass."""
    for m, a in _specs(root, model, n, batch, layer):
        m.prepare(a).run()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--size", choices=sorted(SIZES), default="full")
    args = ap.parse_args()
    model, n, batch = SIZES[args.size]
    layer = "conv2" if model == "demo" else "layer3"
    times = {"shared": [], "separate": []}
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory() as tmp:
        # warm-up on one batch: imports, model init, XLA's thread pools (each pass still
        # compiles its own step, as every separate job would)
        shared(Path(tmp) / "w", model, batch, batch, layer)
        separate(Path(tmp) / "w2", model, batch, batch, layer)
        for rep in range(2):  # alternate so load changes hit both
            for name, fn in (("shared", shared), ("separate", separate)):
                t = time.perf_counter()
                fn(Path(tmp) / f"{name}{rep}", model, n, batch, layer)
                times[name].append(time.perf_counter() - t)
    t_shared, t_separate = min(times["shared"]), min(times["separate"])
    print(
        json.dumps(
            {
                "benchmark": "sweep",
                "case": f"{model} features+patches+channel_stats",
                "images": n,
                "shared_images_per_s": n / t_shared,
                "separate_images_per_s": n / t_separate,
                "ratio": t_separate / t_shared,
                # each repetition's separate / shared (adjacent in time: less load drift)
                "paired_ratios": [
                    round(b / a, 3) for a, b in zip(times["shared"], times["separate"], strict=True)
                ],
                "target": 1.8,
                "seconds": times,
                "loadavg_1_5_15_before": [round(v, 2) for v in load_before],
                "loadavg_1_5_15_after": [round(v, 2) for v in os.getloadavg()],
                "hardware": hardware(),
            }
        )
    )


if __name__ == "__main__":
    main()
