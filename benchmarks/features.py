"""Benchmark: streaming features and k-NN search. One JSON line a case.

Cases (`--case`, default all):

- disk_vs_memory: images/s of the features pass (jobs/scan.py + FeatureConsumer: forward, feature
  store, Flat index) reading real JPEG files (ImageNet-sized, 500x375, quality 90, made from the
  scikit-image sample photos) vs the same images already decoded and resized, in memory (.npz).
  Same model (resnet18, random init, compute-bound). Steady state: from the first batch stored to
  the last. Also the single-threaded decode + resize cost per image, which explains the gap.
- search: FAISS queries/s for Flat and the IVF default at 100k and 1M clustered 128-d vectors
  (1,000 queries, k=10), with 1 and 2 FAISS threads; IVF build time and recall@10 vs Flat.
- ivf_recall: recall@10 of the IVF default against nprobe on 100k 256-d vectors from a Gaussian
  mixture (100 components of intrinsic dimension 16: `methods.retrieval.gaussian_mixture`), and
  on an isotropic mixture (intrinsic dimension 256), the hard case.
- precision: leave-one-out precision@5 of same-label neighbours on shapes:2000:11, the trained
  demo model's features (fc) vs raw pixels.
- rss: peak RSS of `jaxviz features` (subprocess) on shapes:1000 and shapes:20000.

    python benchmarks/features.py --size smoke      # tiny versions of every case
    python benchmarks/features.py                   # the measured sizes above
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import faiss
import numpy as np
from PIL import Image

from jaxviz.data.sources import SAMPLES, open_source
from jaxviz.index.feature_store import FeatureStore, FeatureWriter
from jaxviz.index.knn import KnnIndex, choose_factory
from jaxviz.jobs.features import FeatureConsumer, self_precision
from jaxviz.jobs.output import JobOutput
from jaxviz.jobs.scan import scan
from jaxviz.methods.retrieval import gaussian_mixture, recall_at_k
from jaxviz.models.zoo import load_model

SIZES = {
    "smoke": {
        "jpegs": 24,
        "jpeg_model": "demo",
        "batch": 8,
        "search_n": [2_000, 20_000],
        "recall_n": 5_000,
        "precision_n": 200,
        "rss_n": [100, 400],
    },
    "full": {
        "jpegs": 384,
        "jpeg_model": "resnet18",
        "batch": 32,
        "search_n": [100_000, 1_000_000],
        "recall_n": 100_000,
        "precision_n": 2000,
        "rss_n": [1000, 20000],
    },
}
THREADS = faiss.omp_get_max_threads()  # FAISS's default, before any case changes it
HARDWARE = f"{platform.machine()}, {os.cpu_count()} CPU cores, loaded shared machine"


def emit(case: str, **fields) -> None:
    print(json.dumps({"case": case, **fields, "hardware": HARDWARE}), flush=True)


def write_jpegs(folder: Path, n: int) -> list[Path]:
    """n JPEGs of 500x375 (crops, flips and rescales of the sample photos), quality 90."""
    import skimage.data

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    photos = [np.asarray(getattr(skimage.data, s)()) for s in SAMPLES]
    photos = [np.repeat(p[..., None], 3, -1) if p.ndim == 2 else p[..., :3] for p in photos]
    paths = []
    for i in range(n):
        p = photos[i % len(photos)]
        h, w = p.shape[:2]
        ch, cw = int(h * rng.uniform(0.5, 1)), int(w * rng.uniform(0.5, 1))
        y, x = rng.integers(0, h - ch + 1), rng.integers(0, w - cw + 1)
        crop = p[y : y + ch, x : x + cw][:, :: rng.choice([-1, 1])]
        img = Image.fromarray(np.ascontiguousarray(crop)).resize((500, 375), Image.BILINEAR)
        paths.append(folder / f"img_{i:05d}.jpg")
        img.save(paths[-1], quality=90)
    return paths


class Timed(FeatureConsumer):
    """FeatureConsumer that records when each batch was stored."""

    def update(self, batch, result) -> None:
        super().update(batch, result)
        self.times.append((time.perf_counter(), batch.count))


def features_rate(model, params, spec: str, batch: int, folder: Path) -> float:
    """Steady-state images/s of the features pass over `spec` (first batch excluded)."""
    src = open_source(spec)
    out = JobOutput(folder, "features", {})
    layer = model.features_stage
    from jaxviz.models.stage import stage_shapes

    dim = int(np.prod(stage_shapes(model)[layer]))
    c = Timed(layer, src, FeatureWriter(out, dim, "float32", {}), KnnIndex(dim))
    c.times = []
    scan(model, params, src, [c], batch_size=batch, out=out, desc=spec)
    c.finish()
    (t0, _), rest = c.times[0], c.times[1:]
    return sum(n for _, n in rest) / (rest[-1][0] - t0)


def case_disk_vs_memory(size: dict, tmp: Path) -> None:
    model, params = load_model(size["jpeg_model"], random_init=True)
    paths = write_jpegs(tmp / "jpegs", size["jpegs"])
    pre = model.preprocess
    t0 = time.perf_counter()
    decoded = [pre.to_uint8(open_source(str(p)).load(0)) for p in paths]
    decode_ms = (time.perf_counter() - t0) / len(paths) * 1e3
    np.savez(tmp / "mem.npz", images=np.stack(decoded))
    disk = features_rate(model, params, str(tmp / "jpegs"), size["batch"], tmp / "f_disk")
    mem = features_rate(model, params, str(tmp / "mem.npz"), size["batch"], tmp / "f_mem")
    emit(
        "disk_vs_memory",
        model=f"{model.name} (random init), {model.features_stage}",
        images=len(paths),
        batch=size["batch"],
        jpeg_size="500x375 q90",
        disk_images_per_s=round(disk, 2),
        memory_images_per_s=round(mem, 2),
        ratio=round(disk / mem, 3),
        decode_resize_ms_per_image=round(decode_ms, 2),
        compute_ms_per_image=round(1e3 / mem, 1),
    )


def _queries(x: np.ndarray, n: int) -> np.ndarray:
    rng = np.random.default_rng(7)
    return x[rng.choice(len(x), n, replace=False)] + rng.standard_normal(
        (n, x.shape[1]), dtype=np.float32
    ) * np.float32(0.05)


def _qps(index: KnnIndex, q: np.ndarray, k: int = 10, nprobe: int | None = None) -> float:
    t0 = time.perf_counter()
    index.search(q, k, nprobe=nprobe)
    return len(q) / (time.perf_counter() - t0)


def case_search(size: dict, tmp: Path) -> None:
    for n in size["search_n"]:
        x, _ = gaussian_mixture(n, 128, seed=1)
        q = _queries(x, 1000)
        ids = np.arange(n, dtype=np.int64)
        flat = KnnIndex(128)
        flat.add(x, ids)
        faiss.omp_set_num_threads(1)  # k-means: OpenMP spin-waits on a loaded machine
        t0 = time.perf_counter()
        ivf = KnnIndex(128, "l2", choose_factory("IVF", n, 128))
        ivf.add(x, ids)
        ivf.train()
        build = time.perf_counter() - t0
        _, exact = flat.search(q, 10)
        recall = recall_at_k(ivf.search(q, 10)[1], exact)
        for t in sorted({1, THREADS}):
            faiss.omp_set_num_threads(t)
            emit(
                "search", index="Flat", n=n, dim=128, threads=t, queries_per_s=round(_qps(flat, q))
            )
            emit(
                "search",
                index=ivf.factory,
                nprobe=ivf.nprobe,
                n=n,
                dim=128,
                threads=t,
                queries_per_s=round(_qps(ivf, q)),
                recall_at_10=round(recall, 4),
                build_s=round(build, 1),
            )
        faiss.omp_set_num_threads(THREADS)
        del x, flat, ivf


def case_ivf_recall(size: dict, tmp: Path) -> None:
    n = size["recall_n"]
    faiss.omp_set_num_threads(1)
    for name, intrinsic in (("clustered (intrinsic dim 16)", 16), ("isotropic", 256)):
        x, _ = gaussian_mixture(n, 256, intrinsic_dim=intrinsic, seed=2)
        q = _queries(x, 1000)
        ids = np.arange(n, dtype=np.int64)
        flat = KnnIndex(256)
        flat.add(x, ids)
        _, exact = flat.search(q, 10)
        ivf = KnnIndex(256, "l2", choose_factory("IVF", n, 256))
        ivf.add(x, ids)
        ivf.train()
        curve = {
            p: round(recall_at_k(ivf.search(q, 10, nprobe=p)[1], exact), 4)
            for p in (1, 2, 4, 8, 16, 32, 64, 128)
            if p <= ivf.nlist
        }
        emit(
            "ivf_recall",
            data=f"{n} x 256 Gaussian mixture, 100 components, {name}",
            index=ivf.factory,
            default_nprobe=ivf.nprobe,
            recall_at_10_default=round(recall_at_k(ivf.search(q, 10)[1], exact), 4),
            recall_at_10_vs_nprobe=curve,
        )
    faiss.omp_set_num_threads(THREADS)


def case_precision(size: dict, tmp: Path) -> None:
    spec = f"shapes:{size['precision_n']}:11"
    try:
        model, params = load_model(size["demo"])
    except Exception as e:  # the trained checkpoint is produced by scripts/train_demo.py
        emit("precision", error=f"trained demo model unavailable: {e}")
        return
    src = open_source(spec)
    out = JobOutput(tmp / "prec_fc", "features", {})
    index = KnnIndex(128)
    c = FeatureConsumer("fc", src, FeatureWriter(out, 128, "float32", {}), index)
    scan(model, params, src, [c], batch_size=64, out=out, desc=spec)
    c.finish()
    fc = self_precision(index, FeatureStore(tmp / "prec_fc"), 5)
    pixels = np.stack([np.asarray(src.load(i)) for i in range(len(src))]).reshape(len(src), -1)
    pout = JobOutput(tmp / "prec_px", "features", {})
    pw = FeatureWriter(pout, pixels.shape[1], "float32", {})
    pindex = KnnIndex(pixels.shape[1])
    labels = np.asarray([src.info(i).label for i in range(len(src))])
    pw.add(pixels.astype(np.float32), np.arange(len(src)), labels, [str(i) for i in labels])
    pindex.add(pixels, np.arange(len(src)))
    pw.close()
    px = self_precision(pindex, FeatureStore(tmp / "prec_px"), 5)
    emit(
        "precision",
        data=spec,
        model=f"{size['demo']} (trained), fc, L2",
        precision_at_5_features=round(fc["precision_at_5"], 4),
        precision_at_5_raw_pixels=round(px["precision_at_5"], 4),
        queries=fc["queries"],
    )


RSS_CHILD = """
import resource, sys
from jaxviz.cli import main
rc = main(sys.argv[1:])
print("MAXRSS_KB", resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, file=sys.stderr)
sys.exit(rc)
"""


def case_rss(size: dict, tmp: Path) -> None:
    rss = {}
    for n in size["rss_n"]:
        argv = ["features", "--model", "demo", "--random-init", "--data", f"shapes:{n}"]
        argv += ["--out", str(tmp / f"rss_{n}"), "--batch-size", "64"]
        t0 = time.perf_counter()
        r = subprocess.run(
            [sys.executable, "-c", RSS_CHILD, *argv], capture_output=True, text=True, check=True
        )
        kb = int(next(ln for ln in r.stderr.splitlines() if ln.startswith("MAXRSS_KB")).split()[1])
        rss[n] = kb / 2**20
        emit("rss", images=n, peak_rss_gib=round(rss[n], 3), wall_s=round(time.perf_counter() - t0))
    lo, hi = size["rss_n"]
    emit("rss_growth", images=f"{lo} -> {hi}", growth_gib=round(rss[hi] - rss[lo], 3))


CASES = {
    "precision": case_precision,
    "ivf_recall": case_ivf_recall,
    "search": case_search,
    "disk_vs_memory": case_disk_vs_memory,
    "rss": case_rss,
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--size", choices=sorted(SIZES), default="full")
    ap.add_argument("--case", action="append", choices=sorted(CASES), help="(default: all)")
    ap.add_argument(
        "--demo", default="demo", help="trained demo model for `precision` (demo or demo=PATH)"
    )
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="jaxviz-bench-features-") as tmp:
        for name in args.case or list(CASES):
            (Path(tmp) / name).mkdir()
            CASES[name]({**SIZES[args.size], "demo": args.demo}, Path(tmp) / name)


if __name__ == "__main__":
    main()
