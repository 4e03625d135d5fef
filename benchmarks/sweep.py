"""End-to-end images/s of a shared-pass sweep (features + patches + channel statistics in ONE
forward pass) vs the same jobs run separately (one pass each), on the same data and model, in one
process; prints one JSON line a case.

    python benchmarks/sweep.py [--size smoke|full]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.hardware import hardware  # noqa: E402
from jaxviz.jobs import features, patches  # noqa: E402
from jaxviz.jobs.scan import run_scan_jobs  # noqa: E402

SIZES = {  # model, images, batch
    "smoke": ("demo", 64, 16),
    "full": ("resnet18", 512, 32),
}


def _args(module, out: Path, model: str, n: int, batch: int, **extra) -> argparse.Namespace:
    p = argparse.ArgumentParser()
    module.add_arguments(p)
    argv = [
        "--model",
        model,
        "--random-init",
        "--data",
        f"shapes:{n}:3",
        "--batch-size",
        str(batch),
        "--out",
        str(out),
    ]
    for k, v in extra.items():
        argv += [f"--{k.replace('_', '-')}", str(v)]
    return p.parse_args(argv)


def _jobs(root: Path, model: str, n: int, batch: int, layer: str) -> list:
    return [
        features.prepare(
            _args(features, root / "features", model, n, batch, index="Flat", eval_k=0)
        ),
        patches.prepare(
            _args(patches, root / "patches", model, n, batch, layer=layer, channels="all", top=9)
        ),
    ]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--size", choices=sorted(SIZES), default="full")
    args = ap.parse_args()
    model, n, batch = SIZES[args.size]
    layer = "conv2" if model == "demo" else "layer3"
    times = {"shared": [], "separate": []}
    with tempfile.TemporaryDirectory() as tmp:
        # warm-up: compile both variants once (compiles are cached per process)
        run_scan_jobs(_jobs(Path(tmp) / "w", model, batch, batch, layer))
        for j in _jobs(Path(tmp) / "w2", model, batch, batch, layer):
            run_scan_jobs([j])
        for rep in range(2):  # alternate so load changes hit both
            t = time.perf_counter()
            run_scan_jobs(_jobs(Path(tmp) / f"s{rep}", model, n, batch, layer))
            times["shared"].append(time.perf_counter() - t)
            t = time.perf_counter()
            for j in _jobs(Path(tmp) / f"p{rep}", model, n, batch, layer):
                run_scan_jobs([j])
            times["separate"].append(time.perf_counter() - t)
    shared, separate = min(times["shared"]), min(times["separate"])
    print(
        json.dumps(
            {
                "benchmark": "sweep",
                "case": f"{model} features+patches+channel_stats",
                "images": n,
                "shared_images_per_s": n / shared,
                "separate_images_per_s": n / separate,
                "ratio": separate / shared,
                "target": 1.8,
                "hardware": hardware(),
            }
        )
    )


if __name__ == "__main__":
    main()
