"""Occlusion throughput and memory, side by side in one process (one JSON line a case).

speed (default): positions/s of jaxviz brute force (chunked vmap), Captum `Occlusion` at its best
`perturbations_per_eval`, and a naive one-position-at-a-time jitted JAX loop, for alexnet, resnet18,
efficientnet_lite0 (random init) and vgg16 (window 16 stride 8) at 224; and the incremental column:
jaxviz exact incremental inference vs Captum and vs jaxviz brute force for vgg16, resnet18 and Lite0
(window 16 stride 4) and vgg16 (window 8 stride 4), beside the plan's theoretical FLOP ratios (the
plan with its alignment-class groups, the tight changed-units ideal, and one slice size for all
positions), the number of groups and their compile seconds, plus the largest difference from brute
force on the timed positions.

Timing uses a sample of positions spread evenly over the real grid (the full grid of a 224 image
takes too long on a CPU): jaxviz runs the sample through the same chunked evaluator as a full
job; Captum runs `Occlusion.attribute` on the real grid and is stopped after the first N
positions (its cost per position does not depend on which position it is).

memory: peak RSS of a child process running occlusion of one 224 image with Lite0 on a grid of
49,284 positions (window 3, stride 1), for several chunk sizes (`--chunks`); `--positions N`
runs only the first N positions (same chunked evaluator) when the CPU is too slow for the whole
grid: RSS depends on the chunk, not on the number of chunks.

    python benchmarks/occlusion.py [--size smoke|check|full] [--mode speed|memory] [--cases ...]

(check: the brute-force cases alexnet, resnet18 and vgg16 at 224, window 16 stride 8, short.)
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from jaxviz.methods.incremental import IncrementalForward, make_plan  # noqa: E402
from jaxviz.methods.occlusion import (  # noqa: E402
    FullForward,
    auto_chunk,
    evaluate,
    occlude,
    positions,
)
from jaxviz.models.stage import forward_fn, init_params  # noqa: E402
from jaxviz.models.zoo import entry  # noqa: E402

HARDWARE = f"{platform.machine()}, {os.cpu_count()} CPU cores, loaded shared machine"
SIZES = {
    "smoke": {
        "brute": [("alexnet", 16, 8)],
        "incremental": [("vgg16", 16, 4)],
        "sample": 16,
        "captum_sample": 16,
        "ppe": [8],
        "hw": 96,
    },
    "check": {  # brute force at 224 of the three CPU-critical models, a few minutes
        "brute": [("alexnet", 16, 8), ("resnet18", 16, 8), ("vgg16", 16, 8)],
        "incremental": [],
        "sample": 24,
        "captum_sample": 16,
        "ppe": [8, 16],
        "hw": 224,
    },
    "full": {
        "brute": [
            (m, w, s)
            for m in ("alexnet", "resnet18", "efficientnet_lite0")
            for w, s in ((16, 8), (8, 4))
        ]
        + [("vgg16", 16, 8)],
        "incremental": [
            ("vgg16", 8, 4),
            ("vgg16", 16, 4),
            ("resnet18", 16, 4),
            ("efficientnet_lite0", 16, 4),
        ],
        "sample": 100,
        "captum_sample": 64,
        "ppe": [16, 32],
        "hw": 224,
    },
}


def emit(case: str, **fields) -> None:
    print(json.dumps({"case": case, **fields, "hardware": HARDWARE}), flush=True)


def torch_model(name: str):
    """A PyTorch model of the same architecture (random weights) for Captum."""
    if name == "efficientnet_lite0":
        from tests.test_efficientnet import TorchLite0

        net = TorchLite0().eval()
        return lambda t: net(t)["logits"]
    from tests.torchvision_refs import make

    return make(name)


def sample_corners(hw: int, window: int, stride: int, n: int) -> np.ndarray:
    grid = positions((hw, hw), (window, window), (stride, stride)) * stride
    return grid[np.linspace(0, len(grid) - 1, min(n, len(grid))).astype(int)]


def run_chunks(evaluator, params, x, corners: np.ndarray, chunk: int | None = None):
    """Logits [n, K] of `evaluator` at `corners`, group by group in chunks (budget-sized by
    default) under one jit compiled ahead of time, positions/s of a second run (the first one
    allocates; Captum's timing also starts after its first forward call) and the compile
    seconds."""
    n = len(corners)
    chunk = min(n, chunk or auto_chunk(evaluator, 1, n))

    def run(p, v):
        state = evaluator.prepare(p, v, jnp.zeros_like(v))
        return evaluate(evaluator, p, state, corners, chunk)[0]

    t0 = time.perf_counter()
    compiled = jax.jit(run).lower(params, x).compile()
    compile_s = time.perf_counter() - t0
    jax.block_until_ready(compiled(params, x))
    t0 = time.perf_counter()
    out = jax.block_until_ready(compiled(params, x))
    rate = n / (time.perf_counter() - t0)
    return np.asarray(out), rate, compile_s


def jaxviz_rate(evaluator, params, x, corners: np.ndarray) -> tuple[float, np.ndarray, float]:
    """positions/s of `evaluator` on `corners` (one run, compiled ahead of time), logits and
    compile seconds."""
    out, rate, compile_s = run_chunks(evaluator, params, x, corners)
    return rate, out, compile_s


def naive_rate(model, params, x, window: int, corners: np.ndarray) -> float:
    """A Python loop, one jitted forward per position."""
    fwd = jax.jit(
        lambda p, v, y, z: forward_fn(model)(
            p, occlude(v[0], v[0] * 0, y, z, (window, window))[None]
        )
    )
    jax.block_until_ready(fwd(params, x, 0, 0))
    t0 = time.perf_counter()
    for y, z in corners:
        jax.block_until_ready(fwd(params, x, int(y), int(z)))
    return len(corners) / (time.perf_counter() - t0)


class _Enough(Exception):
    pass


def captum_rate(net, x: np.ndarray, window: int, stride: int, ppe: int, n: int) -> float:
    """Captum Occlusion positions/s over its first ~n positions at perturbations_per_eval=ppe."""
    import torch
    from captum.attr import Occlusion

    batches = max(1, round(n / ppe))
    clock = {"calls": 0, "t0": 0.0, "t1": 0.0}

    def forward(t):
        out = torch.softmax(net(t), -1)
        clock["calls"] += 1
        if clock["calls"] == 1:
            clock["t0"] = time.perf_counter()
        elif clock["calls"] == batches + 1:
            clock["t1"] = time.perf_counter()
            raise _Enough
        return out

    xt = torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2)))
    with torch.no_grad(), contextlib.suppress(_Enough):
        Occlusion(forward).attribute(
            xt,
            sliding_window_shapes=(3, window, window),
            strides=(3, stride, stride),
            baselines=0.0,
            target=0,
            perturbations_per_eval=ppe,
        )
    if not clock["t1"]:
        raise RuntimeError("Captum finished before the sample was timed; lower n")
    return batches * ppe / (clock["t1"] - clock["t0"])


def best_captum(net, x, window, stride, ppes, n) -> tuple[float, int, dict]:
    rates = {p: captum_rate(net, x, window, stride, p, max(n, p)) for p in ppes}
    best = max(rates, key=rates.get)
    return rates[best], best, rates


def setup(name: str, hw: int):
    model = entry(name).build()
    params = init_params(model, jax.random.key(0), (hw, hw))
    x = np.asarray(jax.random.normal(jax.random.key(1), (1, hw, hw, 3)), np.float32)
    return model, params, x


def case_brute(name, window, stride, size) -> None:
    hw, n = size["hw"], size["sample"]
    model, params, x = setup(name, hw)
    corners = sample_corners(hw, window, stride, n)
    full, _, _ = jaxviz_rate(FullForward(model, (hw, hw), (window, window)), params, x, corners)
    naive = naive_rate(model, params, jnp.asarray(x), window, corners[: max(8, n // 4)])
    captum, ppe, rates = best_captum(
        torch_model(name), x, window, stride, size["ppe"], size["captum_sample"]
    )
    emit(
        "brute_force",
        model=name,
        image=hw,
        window=window,
        stride=stride,
        grid_positions=len(positions((hw, hw), (window,) * 2, (stride,) * 2)),
        timed_positions=len(corners),
        jaxviz_pos_s=full,
        captum_pos_s=captum,
        captum_best_ppe=ppe,
        captum_by_ppe=rates,
        naive_jax_pos_s=naive,
        jaxviz_vs_captum=full / captum,
        jaxviz_vs_naive=full / naive,
        chunk=auto_chunk(FullForward(model, (hw, hw), (window, window)), 1, len(corners)),
    )


def case_incremental(name, window, stride, size) -> None:
    hw, n = size["hw"], size["sample"]
    model, params, x = setup(name, hw)
    corners = sample_corners(hw, window, stride, n)
    plan = make_plan(model, (hw, hw), (window, window), (stride, stride))
    one_size = make_plan(model, (hw, hw), (window, window), (stride, stride), max_classes=1)
    inc_ev = IncrementalForward(model, (hw, hw), (window, window), (stride, stride), plan)
    inc, a, compile_s = jaxviz_rate(inc_ev, params, x, corners)
    full, b, _ = jaxviz_rate(FullForward(model, (hw, hw), (window, window)), params, x, corners)
    captum, ppe, rates = best_captum(
        torch_model(name), x, window, stride, size["ppe"], size["captum_sample"]
    )
    s = plan.summary()
    emit(
        "incremental",
        model=name,
        image=hw,
        window=window,
        stride=stride,
        timed_positions=len(corners),
        incremental_stages=s["incremental_stages"],
        groups=s["groups"],
        incremental_compile_s=compile_s,
        jaxviz_incremental_pos_s=inc,
        jaxviz_full_pos_s=full,
        captum_pos_s=captum,
        captum_best_ppe=ppe,
        captum_by_ppe=rates,
        speedup_vs_captum=inc / captum,
        speedup_vs_full=inc / full,
        flop_ratio=s["flop_ratio"],
        flop_ratio_tight=s["flop_ratio_tight"],
        flop_ratio_one_slice_size=one_size.summary()["flop_ratio"],
        vs_captum_over_flop_ratio=(inc / captum) / s["flop_ratio"],
        vs_full_over_flop_ratio=(inc / full) / s["flop_ratio"],
        max_abs_logit_diff_vs_full=float(np.abs(a - b).max()),
    )


def case_memory(chunk: int, limit: int | None) -> None:
    """Child process: occlusion of one 224 image with Lite0, window 3 stride 1 (49,284
    positions), `chunk` positions per chunk; `limit`: run only the first `limit` positions."""
    from jaxviz.methods.occlusion import occlusion

    hw, window, stride = 224, 3, 1
    model, params, x = setup("efficientnet_lite0", hw)
    one = jax.sharding.Mesh(np.array(jax.devices()[:1]), ("batch",))
    t0 = time.perf_counter()
    if limit is None:
        n = len(positions((hw, hw), (window, window), (stride, stride)))
        occlusion(model, params, x, window, stride, chunk=chunk, mesh=one).grid.block_until_ready()
    else:
        corners = sample_corners(hw, window, stride, 10**9)[:limit]
        n = len(corners)
        run_chunks(FullForward(model, (hw, hw), (window, window)), params, x, corners, chunk)
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    emit(
        "memory",
        model="efficientnet_lite0",
        image=hw,
        window=window,
        stride=stride,
        positions=n,
        chunk=chunk,
        peak_rss_gib=rss,
        seconds=time.perf_counter() - t0,
    )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--size", choices=sorted(SIZES), default="full")
    p.add_argument("--mode", choices=("speed", "memory"), default="speed")
    p.add_argument(
        "--cases",
        nargs="*",
        default=None,
        help="speed: subset like brute:alexnet:16:8 incremental:vgg16:8:4",
    )
    p.add_argument("--chunks", type=int, nargs="*", default=[8, 64, 512])
    p.add_argument(
        "--positions",
        type=int,
        default=None,
        help="memory: run only the first N positions of the grid (slow CPUs)",
    )
    p.add_argument("--child-chunk", type=int, default=None, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child_chunk is not None:
        case_memory(args.child_chunk, args.positions)
        return
    if args.mode == "memory":
        for c in args.chunks:
            cmd = [sys.executable, __file__, "--child-chunk", str(c)]
            cmd += [] if args.positions is None else ["--positions", str(args.positions)]
            subprocess.run(cmd, check=True, env={**os.environ, "JAX_PLATFORMS": "cpu"})
        return
    size = SIZES[args.size]
    cases = [("brute", *c) for c in size["brute"]] + [
        ("incremental", *c) for c in size["incremental"]
    ]
    if args.cases:
        cases = [(k, m, int(w), int(s)) for k, m, w, s in (c.split(":") for c in args.cases)]
    for kind, name, window, stride in cases:
        (case_brute if kind == "brute" else case_incremental)(name, window, stride, size)


if __name__ == "__main__":
    main()
