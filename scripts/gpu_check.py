"""The first-GPU check: every figure that matters in one run, written to one JSON file.

Each step is a small function returning a dict (its figures) and runs even when an earlier one
failed (its error is recorded instead). Steps, sized for one H200 in under 8 minutes (`SIZES`):

- doctor: `jaxviz doctor --plan` (backends in use, shadowing, the memory plan).
- main_command: the README's main command (`jaxviz sweep`) on the GPU, seconds.
- knn: a synthetic N x D index (gaussian mixture) through our FAISS path (KnnIndex: trained on one
  device, then on the GPUs) for Flat and IVF, written as a features store, searched through
  `jaxviz neighbors`; recall@10 against exact CPU search.
- features_neighbors: `jaxviz features` (model and FAISS GPU index in one process) then
  `jaxviz neighbors` through the CLI.
- occlusion: resnet50 (random init) at 224, window 8 stride 4 (3,025 positions), fp32 and bf16,
  brute force and incremental, positions/s from the job's manifest (compile included).
- attribution: IG with 32 steps and Grad-CAM on resnet50, images/s from the manifest.
- tsne: the JAX engine (interpolated) on N x 50, seconds and trustworthiness.
- forward: images/s of every zoo model at batch B in fp32 and bf16, and on the CPU at a small
  batch beside it.

    python scripts/gpu_check.py OUT.json [--tiny] [--dry-run] [--only STEP ...]

--tiny: the same steps with small sizes (runs on a CPU in minutes); --dry-run: print each step
with its expected seconds and memory, run nothing.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

SIZES = {
    "full": {
        "knn_n": 1_000_000,
        "knn_d": 512,
        "knn_queries": 1000,
        "features_data": "shapes:20000",
        "occ_model": "resnet50",
        "occ_window": 8,
        "occ_stride": 4,
        "attr_data": "shapes:256",
        "attr_batch": 32,
        "tsne_n": 60_000,
        "fwd_batch": 256,
        "fwd_cpu_batch": 8,
        "fwd_models": None,  # every zoo model
        "sweep": True,
    },
    "tiny": {
        "knn_n": 20_000,
        "knn_d": 64,
        "knn_queries": 100,
        "features_data": "shapes:200",
        "occ_model": "demo",
        "occ_window": 16,
        "occ_stride": 16,
        "attr_data": "shapes:4",
        "attr_batch": 2,
        "tsne_n": 1_500,
        "fwd_batch": 2,
        "fwd_cpu_batch": 1,
        "fwd_models": ["demo", "alexnet"],
        "sweep": False,
    },
}
# step -> (expected seconds on one H200, expected peak device memory) for --dry-run
EXPECTED = {
    "doctor": (15, "< 1 GB"),
    "main_command": (60, "JAX 70% cap, a few GB used"),
    "knn": (70, "1M x 512 float32 = 2 GB (Flat) + 2 GB (IVF) on the GPU, 4 GB host"),
    "features_neighbors": (60, "demo model + Flat index, < 2 GB"),
    "occlusion": (80, "resnet50 chunks from the plan: up to half of JAX's free share"),
    "attribution": (60, "IG32 at batch 32: chunks from the plan"),
    "tsne": (40, "60k x 50: < 2 GB"),
    "forward": (80, "batch 256 of vgg16 fp32: ~15 GB"),
}


def jaxviz(*args: str, out: Path | None = None, timeout: int = 600) -> dict:
    """Run `jaxviz ARGS` in a subprocess; its manifest's results (when `out` is given) and time."""
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
    }
    t0 = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-m", "jaxviz.cli", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
    )
    res = {"seconds": round(time.perf_counter() - t0, 2), "rc": proc.returncode}
    if proc.returncode != 0:
        res["stderr"] = proc.stderr[-2000:]
    if out is not None and (out / "manifest.json").exists():
        res["results"] = json.loads((out / "manifest.json").read_text()).get("results")
    return res


def step_doctor(size: dict, work: Path) -> dict:
    res = jaxviz("doctor", "--plan", "--json", str(work / "doctor.json"))
    if (work / "doctor.json").exists():
        res["report"] = json.loads((work / "doctor.json").read_text())
    return res


def step_main_command(size: dict, work: Path) -> dict:
    if not size["sweep"]:
        return {"skipped": "tiny: the sweep's default study takes minutes on a CPU"}
    return jaxviz("sweep", "--out", str(work / "sweep"), out=work / "sweep")


def step_knn(size: dict, work: Path) -> dict:
    import faiss
    import numpy as np

    from jaxviz.index.feature_store import FeatureWriter
    from jaxviz.index.knn import KnnIndex, choose_factory
    from jaxviz.jobs.output import JobOutput
    from jaxviz.methods.retrieval import gaussian_mixture, recall_at_k

    n, d, nq = size["knn_n"], size["knn_d"], size["knn_queries"]
    x, labels = gaussian_mixture(n, d, components=100, seed=0)
    q = x[:: n // nq][:nq]
    exact = faiss.IndexFlatL2(d)  # the CPU reference
    exact.add(x)
    t0 = time.perf_counter()
    _, ref = exact.search(q, 10)
    out = {"n": n, "dim": d, "queries": nq, "cpu_flat_search_s": time.perf_counter() - t0}
    for spec in ("Flat", "IVF"):
        factory = choose_factory(spec, n, d)
        folder = work / f"knn_{spec}"
        job = JobOutput(folder, "features", {"synthetic": True})
        t0 = time.perf_counter()
        index = KnnIndex(d, "l2", factory)
        for s in range(0, n, 65536):
            index.add(x[s : s + 65536], np.arange(s, min(n, s + 65536)))
        index.train()
        build = time.perf_counter() - t0
        t0 = time.perf_counter()
        _, got = index.search(q, 10)
        search = time.perf_counter() - t0
        writer = FeatureWriter(
            job, d, "float32", {"source": f"shapes:{n}", "layer": "synthetic", "model": "demo"}
        )
        writer.add(x, np.arange(n), labels.astype(np.int64), [str(i) for i in range(n)])
        writer.close()
        index.save(job)
        job.finish()
        cli = jaxviz(
            "neighbors", "--index", str(folder), "--query", "ids:0,1,2", "--out",
            str(work / f"nb_{spec}"), out=work / f"nb_{spec}",
        )  # fmt: skip
        out[spec] = {
            "factory": factory,
            "gpu": index.gpu,
            "build_s": build,
            "queries_per_s": nq / search,
            "recall_at_10_vs_cpu_exact": recall_at_k(got, ref),
            "neighbors_cli": cli,
        }
    return out


def step_features_neighbors(size: dict, work: Path) -> dict:
    feats = work / "features"
    a = jaxviz("features", "--model", "demo", "--data", size["features_data"], "--out", str(feats),
               out=feats)  # fmt: skip
    b = jaxviz("neighbors", "--index", str(feats), "--query", "ids:0,5", "--out",
               str(work / "neighbors"), out=work / "neighbors")  # fmt: skip
    return {"features": a, "neighbors": b}


def step_occlusion(size: dict, work: Path) -> dict:
    out = {}
    for dtype in ("float32", "bfloat16"):
        for method in ("full", "incremental"):
            o = work / f"occ_{dtype}_{method}"
            r = jaxviz(
                "occlusion", "--model", size["occ_model"], "--random-init", "--data", "samples",
                "--limit", "2", "--batch-size", "1", "--window", str(size["occ_window"]),
                "--stride", str(size["occ_stride"]), "--dtype", dtype, "--method", method,
                "--out", str(o), out=o,
            )  # fmt: skip
            res = r.pop("results", None) or {}
            r.update({k: res.get(k) for k in ("positions_per_s", "chunk", "positions_per_image")})
            out[f"{dtype}_{method}"] = r
    return out


def step_attribution(size: dict, work: Path) -> dict:
    out = {}
    for cmd, extra in (("ig", ["--steps", "32"]), ("gradcam", [])):
        o = work / cmd
        r = jaxviz(
            cmd, "--model", size["occ_model"], "--random-init", "--data", size["attr_data"],
            "--batch-size", str(size["attr_batch"]), *extra, "--out", str(o), out=o,
        )  # fmt: skip
        res = r.pop("results", None) or {}
        r["images_per_s"] = res.get("images_per_s")
        out[cmd] = r
    return out


def step_tsne(size: dict, work: Path) -> dict:
    from jaxviz.index.quality import trustworthiness
    from jaxviz.index.tsne import tsne
    from jaxviz.methods.retrieval import gaussian_mixture

    x, _ = gaussian_mixture(size["tsne_n"], 50, components=10, seed=0)
    t0 = time.perf_counter()
    coords, info = tsne(x, backend="jax", mode="interpolated", progress=False)
    seconds = time.perf_counter() - t0
    tw, used = trustworthiness(x, coords)
    return {"n": len(x), "seconds": seconds, "trustworthiness": tw, "points_scored": used,
            "kl": info.get("kl")}  # fmt: skip


def _forward_rate(name: str, batch: int, dtype: str, device) -> float:
    import jax
    import jax.numpy as jnp

    from jaxviz.models.stage import cast_params, forward_fn, init_params
    from jaxviz.models.zoo import entry

    model = entry(name).build()
    dt = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}[dtype]
    with jax.default_device(device):
        params = cast_params(init_params(model, jax.random.key(0)), dt)
        x = jnp.zeros((batch, *model.input_size, 3), dt)
        fn = jax.jit(forward_fn(model))
        jax.block_until_ready(fn(params, x))
        times = []
        for _ in range(3):
            t0 = time.perf_counter()
            jax.block_until_ready(fn(params, x))
            times.append(time.perf_counter() - t0)
    return batch / min(times)


def step_forward(size: dict, work: Path) -> dict:
    import jax

    from jaxviz.models.zoo import names

    out = {}
    cpu = jax.devices("cpu")[0]
    accel = jax.devices()[0]
    for name in size["fwd_models"] or [n for n in names()]:
        row = {}
        for dtype in ("float32", "bfloat16"):
            row[f"{dtype}_img_s"] = _forward_rate(name, size["fwd_batch"], dtype, accel)
        if accel.platform != "cpu":
            row["cpu_float32_img_s"] = _forward_rate(name, size["fwd_cpu_batch"], "float32", cpu)
        out[name] = row
    return {"device": str(accel), "batch": size["fwd_batch"], "models": out}


STEPS = {
    "doctor": step_doctor,
    "main_command": step_main_command,
    "knn": step_knn,
    "features_neighbors": step_features_neighbors,
    "occlusion": step_occlusion,
    "attribution": step_attribution,
    "tsne": step_tsne,
    "forward": step_forward,
}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("out", nargs="?", default="gpu-check.json", help="the JSON file written")
    p.add_argument("--tiny", action="store_true", help="small sizes (a CPU run in minutes)")
    p.add_argument("--dry-run", action="store_true", help="print the steps, run nothing")
    p.add_argument("--only", nargs="*", choices=sorted(STEPS), help="run only these steps")
    args = p.parse_args(argv)
    size = SIZES["tiny" if args.tiny else "full"]
    steps = [s for s in STEPS if not args.only or s in args.only]
    if args.dry_run:
        total = 0
        for s in steps:
            secs, mem = EXPECTED[s]
            total += secs
            doc = STEPS[s].__name__
            print(f"{s:20s} ~{secs:4d} s on one H200   memory: {mem}   ({doc})")
        print(f"{'total':20s} ~{total:4d} s (budget: 480 s)")
        print(json.dumps({"sizes": size}, indent=1))
        return 0
    report = {"tiny": args.tiny, "sizes": size, "steps": {}}
    t_all = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="gpu-check-") as tmp:
        for s in steps:
            t0 = time.perf_counter()
            print(f"gpu_check: {s} ...", file=sys.stderr, flush=True)
            try:
                res = STEPS[s](size, Path(tmp))
            except Exception as e:  # record and go on: one broken step must not hide the rest
                res = {"error": f"{type(e).__name__}: {e}", "traceback": traceback.format_exc()}
            res["step_s"] = round(time.perf_counter() - t0, 2)
            report["steps"][s] = res
            Path(args.out).write_text(json.dumps(report, indent=1, default=str))
    report["total_s"] = round(time.perf_counter() - t_all, 2)
    Path(args.out).write_text(json.dumps(report, indent=1, default=str))
    failed = [s for s, r in report["steps"].items() if "error" in r or r.get("rc", 0)]
    print(f"gpu_check: {report['total_s']} s, failed: {failed or 'none'} -> {args.out}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
