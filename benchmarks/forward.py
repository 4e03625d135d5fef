"""Forward-pass throughput of jaxviz (JIT-compiled, fp32) vs a PyTorch reference on the same CPU.

One JSON line a case, measured side by side in one process (jaxviz and torch calls alternate after
warm-up; torch uses as many threads as XLA:CPU, the CPUs this process may run on), so the ratio
stays meaningful on a loaded machine. Cases (`--cases`):

- forward: images/s of the whole network (median of the timed calls), jaxviz vs torch, the ratio
  (> 1: jaxviz faster) and ratio_best (fastest call against fastest call),
  for alexnet, resnet18, vgg16 and efficientnet_lite0 (random weights; the Lite0 reference is the
  torch implementation in tests/test_efficientnet.py, the others tests/torchvision_refs.py), and
  `efficientnet_lite0[grouped]`: Lite0 with XLA's grouped conv for depthwise layers, to show
  the effect of jaxviz.models.depthwise.
- stages: per stage, the time of its own jitted apply vs the torch time of the same stage
  (between the forward hooks of consecutive stage outputs), the share of the total, and the
  stages where jaxviz loses most time to torch ("slowest").
- depthwise: Lite0's depthwise shapes: grouped conv vs shift-and-add vs torch's grouped conv2d.

    python -m benchmarks.forward [--size smoke|full] [--batch 32] [--cases forward stages]
"""

from __future__ import annotations

import os

# torch's OpenMP threads spin-wait between parallel regions by default; on a loaded (shared)
# machine a descheduled spinning thread stalls every barrier and torch becomes ~8x slower than
# with one thread. Passive waiting (set before torch loads libgomp) keeps the comparison fair.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse  # noqa: E402
import json  # noqa: E402
import statistics  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from collections.abc import Callable  # noqa: E402
from pathlib import Path  # noqa: E402

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.hardware import hardware as base_hardware  # noqa: E402
from jaxviz.models import efficientnet_lite  # noqa: E402
from jaxviz.models.depthwise import (  # noqa: E402
    depthwise_grouped,
    depthwise_shift,
    same_padding,
)
from jaxviz.models.stage import forward, forward_fn, init_params  # noqa: E402
from jaxviz.models.zoo import entry  # noqa: E402

MODELS = ("alexnet", "resnet18", "vgg16", "efficientnet_lite0", "efficientnet_lite0[grouped]")
TARGETS = {"alexnet": 1.0, "resnet18": 0.8, "vgg16": 0.8, "efficientnet_lite0": 0.5}
SIZES = {  # batch, timed repetitions, warm-up calls
    "smoke": {"batch": 2, "reps": 1, "warmup": 1},
    "full": {"batch": 32, "reps": 10, "warmup": 1},  # this VM's speed drifts 10-25% a minute
}
LITE0_TORCH_TAPS = {
    "stem": "_bn0",
    **{f"block{i}": f"_blocks.{i}" for i in range(16)},
    "head": "_bn1",
    "logits": "_fc",
}


def hardware() -> dict:
    """The shared hardware record plus torch's version and thread count."""
    return {**base_hardware(), "threads": torch.get_num_threads(), "torch": torch.__version__}


def jax_model(name: str):
    """(model, params) with random weights; 'efficientnet_lite0[grouped]' forces grouped conv."""
    if name == "efficientnet_lite0[grouped]":
        model = efficientnet_lite.build(depthwise_impl="grouped")
    else:
        model = entry(name).build()
    return model, init_params(model, jax.random.key(0))


def torch_model(name: str) -> tuple[torch.nn.Module, dict[str, str]]:
    """The PyTorch reference and {stage: module whose output is that stage's output}."""
    if name.startswith("efficientnet_lite0"):
        from tests.test_efficientnet import TorchLite0

        return TorchLite0().eval(), LITE0_TORCH_TAPS
    from tests import torchvision_refs

    return torchvision_refs.make(name), torchvision_refs.TAPS[name]


def _median_time(fn: Callable[[], object], reps: int) -> float:
    times = []
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def bench_forward(name: str, batch: int, reps: int, warmup: int) -> dict:
    model, params = jax_model(name)
    net, _ = torch_model(name)
    h, w = model.input_size
    x = np.random.default_rng(0).standard_normal((batch, h, w, 3), np.float32)
    xj = jax.device_put(x)
    xt = torch.from_numpy(x.transpose(0, 3, 1, 2).copy())
    f = jax.jit(forward_fn(model))
    run_jax = lambda: f(params, xj).block_until_ready()

    def run_torch():
        with torch.no_grad():
            return net(xt)

    t0 = time.perf_counter()
    run_jax()
    compile_s = time.perf_counter() - t0
    for _ in range(warmup):
        run_jax(), run_torch()
    tj, tt = [], []
    for _ in range(reps):  # alternate, so both see the same machine load
        tj.append(_median_time(run_jax, 1))
        tt.append(_median_time(run_torch, 1))
    jax_ips, torch_ips = batch / statistics.median(tj), batch / statistics.median(tt)
    base = name.split("[")[0]
    return {
        "case": "forward",
        "model": name,
        "batch": batch,
        "input": [h, w],
        "jaxviz_img_s": round(jax_ips, 2),
        "torch_img_s": round(torch_ips, 2),
        "ratio": round(jax_ips / torch_ips, 3),
        "ratio_best": round(min(tt) / min(tj), 3),
        "target": TARGETS.get(base) if base == name else None,
        "compile_s": round(compile_s, 2),
        "hardware": hardware(),
    }


def _torch_stage_times(net, taps: dict[str, str], x: torch.Tensor) -> dict[str, float]:
    """Seconds between consecutive stage outputs in one torch forward (forward hooks)."""
    modules = dict(net.named_modules())
    stamps: dict[str, float] = {}
    hooks = [
        modules[m].register_forward_hook(
            lambda *_a, stage=stage: stamps.__setitem__(stage, time.perf_counter())
        )
        for stage, m in taps.items()
    ]
    try:
        t0 = time.perf_counter()
        with torch.no_grad():
            net(x)
    finally:
        for hk in hooks:
            hk.remove()
    out, prev = {}, t0
    for stage in taps:
        out[stage] = stamps[stage] - prev
        prev = stamps[stage]
    return out


def bench_stages(name: str, batch: int, reps: int, warmup: int) -> dict:
    model, params = jax_model(name)
    net, taps = torch_model(name)
    h, w = model.input_size
    x = np.random.default_rng(0).standard_normal((batch, h, w, 3), np.float32)
    _, outs = jax.jit(lambda p, v: forward(model, p, v))(params, jnp.asarray(x))
    inputs, prev = {}, jnp.asarray(x)
    for st in model.stages:
        inputs[st.name], prev = prev, outs[st.name]
    applies = {st.name: jax.jit(st.apply) for st in model.stages}
    run = {n: (lambda n=n: applies[n](params[n], inputs[n]).block_until_ready()) for n in applies}
    xt = torch.from_numpy(x.transpose(0, 3, 1, 2).copy())
    for _ in range(warmup):
        for fn in run.values():
            fn()
        _torch_stage_times(net, taps, xt)
    jt = {n: [] for n in run}
    tt = {n: [] for n in taps}
    for _ in range(reps):
        for n, fn in run.items():
            jt[n].append(_median_time(fn, 1))
        for n, s in _torch_stage_times(net, taps, xt).items():
            tt[n].append(s)
    total = sum(statistics.median(v) for v in jt.values())
    rows = []
    for n, v in jt.items():
        j = statistics.median(v)
        t = statistics.median(tt[n]) if n in tt else None
        rows.append(
            {
                "stage": n,
                "jax_ms": round(j * 1e3, 2),
                "torch_ms": None if t is None else round(t * 1e3, 2),
                "ratio": None if t is None else round(t / j, 2),
                "share": round(j / total, 3),
                "excess_ms": None if t is None else (j - t) * 1e3,
            }
        )
    slow = sorted((r for r in rows if r["excess_ms"] is not None), key=lambda r: -r["excess_ms"])
    for r in rows:
        r.pop("excess_ms")
    return {
        "case": "stages",
        "model": name,
        "batch": batch,
        "stages": rows,
        "slowest": [r["stage"] for r in slow[:3] if r["ratio"] < 1.0],
        "hardware": hardware(),
    }


def lite0_depthwise_shapes(size: int = 224) -> list[tuple[int, int, int, int]]:
    """(input side, channels, kernel, stride) of every depthwise conv of Lite0 (deduplicated)."""
    out, side = [], -(-size // 2)
    for a in efficientnet_lite.block_args():
        c = a.cin * a.expand
        if (side, c, a.kernel, a.stride) not in out:
            out.append((side, c, a.kernel, a.stride))
        side = -(-side // a.stride)
    return out


def _depthwise_case(batch: int, side: int, c: int, k: int, s: int, reps: int, warmup: int) -> dict:
    pad = same_padding(side, k, s)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((batch, side, side, c), np.float32)
    wk = rng.standard_normal((k, k, 1, c), np.float32)
    xj, wj = jnp.asarray(x), jnp.asarray(wk)
    fg = jax.jit(lambda a, b: depthwise_grouped(a, b, (s, s), (pad, pad)))
    fs = jax.jit(lambda a, b: depthwise_shift(a, b, (s, s), (pad, pad)))
    xt = torch.nn.functional.pad(torch.from_numpy(x.transpose(0, 3, 1, 2).copy()), (*pad, *pad))
    wt = torch.from_numpy(wk.transpose(3, 2, 0, 1).copy())

    def run_torch():
        with torch.no_grad():
            return torch.nn.functional.conv2d(xt, wt, stride=s, groups=c)

    cases = {
        "grouped": lambda: fg(xj, wj).block_until_ready(),
        "shift": lambda: fs(xj, wj).block_until_ready(),
        "torch": run_torch,
    }
    times = {n: [] for n in cases}
    for _ in range(warmup + 1):
        for fn in cases.values():
            fn()
    for _ in range(reps):
        for n, fn in cases.items():
            times[n].append(_median_time(fn, 1))
    med = {n: statistics.median(v) for n, v in times.items()}
    return {
        "case": "depthwise",
        "shape": [batch, side, side, c],
        "kernel": k,
        "stride": s,
        "grouped_ms": round(med["grouped"] * 1e3, 3),
        "shift_ms": round(med["shift"] * 1e3, 3),
        "torch_ms": round(med["torch"] * 1e3, 3),
        "shift_speedup_vs_grouped": round(med["grouped"] / med["shift"], 2),
        "shift_vs_torch_ratio": round(med["torch"] / med["shift"], 2),
        "max_abs_diff": float(jnp.max(jnp.abs(fg(xj, wj) - fs(xj, wj)))),
    }


def bench_depthwise(batch: int, reps: int, warmup: int) -> list[dict]:
    """One row per depthwise shape of Lite0 at 224 (times in ms, ratios > 1: shift faster)."""
    return [
        _depthwise_case(batch, side, c, k, s, reps, warmup)
        for side, c, k, s in lite0_depthwise_shapes()
    ]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--size", choices=sorted(SIZES), default="full")
    p.add_argument("--batch", type=int, default=None, help="override the size's batch")
    p.add_argument("--models", nargs="+", default=list(MODELS), choices=MODELS)
    p.add_argument(
        "--cases",
        nargs="+",
        default=["forward", "stages", "depthwise"],
        choices=["forward", "stages", "depthwise"],
    )
    args = p.parse_args(argv)
    cfg = dict(SIZES[args.size])
    batch = args.batch or cfg["batch"]
    torch.set_num_threads(len(os.sched_getaffinity(0)))
    if "depthwise" in args.cases:
        for row in bench_depthwise(batch, cfg["reps"], cfg["warmup"]):
            print(json.dumps(row), flush=True)
    for name in args.models:
        if "forward" in args.cases:
            print(json.dumps(bench_forward(name, batch, cfg["reps"], cfg["warmup"])), flush=True)
        if "stages" in args.cases and not name.endswith("]"):
            print(json.dumps(bench_stages(name, batch, cfg["reps"], cfg["warmup"])), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
