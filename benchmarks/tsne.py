"""t-SNE backends side by side: wall time and trustworthiness, one JSON line per case.

    python benchmarks/tsne.py                   # N = 2k, 10k, 50k: jax (exact at 2k, interpolated),
                                                # openTSNE (all cores), sklearn (up to 10k)
    python benchmarks/tsne.py --size smoke      # N = 500, every backend, seconds
    python benchmarks/tsne.py --size 200k       # jax interpolated at N = 200k, peak RSS
    python benchmarks/tsne.py --size parity --features DIR   # 5k: jax exact/interpolated, openTSNE
    python benchmarks/tsne.py --features DIR    # rows of a `jaxviz features` store instead

Data (default): a Gaussian mixture in 50-D (20 clusters of random widths, sklearn make_blobs),
the same rows for every backend at a size. Every case runs 250 early-exaggeration + 500 normal
iterations (smoke: 50 + 100). Reports per case: wall_s (affinities + optimization; for jax the first
call's compile included, as a user would see it), s_per_iter and the compile-free estimate for
jax, cpu_s (user + system time of all threads: on a shared, oversubscribed CPU the fairer cost),
KL, trustworthiness (k=10, on <= 5000 sampled points) and the peak RSS of the process so far.
On a shared CPU absolute times drift; compare ratios within one run.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import sys
import time

import numpy as np

from jaxviz.index.quality import knn_accuracy, trustworthiness
from jaxviz.index.tsne import tsne

# size -> (N values, (early exaggeration, normal) iterations)
SIZES = {
    "smoke": ([500], (50, 100)),
    "full": ([2_000, 10_000, 50_000], (250, 500)),
    "200k": ([200_000], (250, 500)),
    "parity": ([5_000], (250, 500)),
}
EXACT_MAX = 2_000  # exact O(N^2) repulsion beyond this takes too long on a CPU
SKLEARN_MAX = 10_000


def mixture(n: int, dim: int = 50, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import make_blobs

    widths = np.random.default_rng(seed).uniform(0.5, 3.0, 20)
    x, y = make_blobs(n, n_features=dim, centers=20, cluster_std=widths, random_state=seed)
    return x.astype(np.float32), y


def cases(n: int, size: str) -> list[tuple[str, str]]:
    if size == "200k":
        return [("jax", "interpolated")]
    if size == "parity":
        return [("jax", "exact"), ("jax", "interpolated"), ("opentsne", "auto")]
    out = []
    if n <= EXACT_MAX:
        out.append(("jax", "exact"))
    out += [("jax", "interpolated"), ("opentsne", "auto")]
    if n <= SKLEARN_MAX:
        out.append(("sklearn", "auto"))
    return out


def cpu_seconds() -> float:
    """User + system CPU time of this process, all threads (robust to a shared, loaded CPU)."""
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--size", choices=sorted(SIZES), default="full")
    p.add_argument("--features", default=None, help="a `jaxviz features` folder (default: blobs)")
    p.add_argument("--only", default=None, help="comma list of backend:mode cases to run")
    p.add_argument("--n", default=None, help="comma list of N overriding the size's list")
    p.add_argument(
        "--iters", default=None, help="EE,normal iterations overriding the size's (e.g. 50,100)"
    )
    args = p.parse_args()
    import jax

    hardware = {
        "device": f"{jax.devices()[0].platform}:{jax.devices()[0].device_kind}",
        "cpu_count": os.cpu_count(),
        "load_avg_1m": os.getloadavg()[0],
        "machine": platform.machine(),
    }
    store = None
    if args.features:
        from jaxviz.index.feature_store import FeatureStore

        store = FeatureStore(args.features)
    sizes, (ee_iter, n_iter) = SIZES[args.size]
    if args.n:
        sizes = [int(v) for v in args.n.split(",")]
    if args.iters:
        ee_iter, n_iter = (int(v) for v in args.iters.split(","))
    for n in sizes:
        if store is not None:
            n = min(n, len(store))
            x, labels = store.features()[:n], store.labels()[:n]
        else:
            x, labels = mixture(n)
        for backend, mode in cases(n, args.size):
            if args.only and f"{backend}:{mode}" not in args.only.split(","):
                continue
            t0, c0 = time.perf_counter(), cpu_seconds()
            coords, info = tsne(
                x,
                backend=backend,
                mode=mode,
                n_iter=n_iter,
                early_exaggeration_iter=ee_iter,
                progress=True,
            )
            wall, cpu = time.perf_counter() - t0, cpu_seconds() - c0
            trust, used = trustworthiness(x, coords, k=10)
            row = {
                "case": f"{backend}:{info.get('mode', mode)}",
                "n": n,
                "iters": [ee_iter, n_iter],
                "dim": int(x.shape[1]),
                "wall_s": round(wall, 2),
                "cpu_s": round(cpu, 2),
                "kl": info.get("kl"),
                "trustworthiness_k10": round(trust, 4),
                "trust_points": used,
                "knn_label_accuracy_k10": knn_accuracy(coords, labels, k=10),
                "peak_rss_mb": round(peak_rss_mb()),
                **hardware,
            }
            if backend == "jax":
                row["s_per_iter"] = round(info["s_per_iter"], 4)
                row["s_per_iter_median"] = round(info["s_per_iter_median"], 4)
                row["affinities_s"] = round(info["affinities_s"], 2)
                row["optimize_s"] = round(info["optimize_s"], 2)
                row["n_boxes"] = info["n_boxes"]
                row["edges"] = info["edges"]
            print(json.dumps(row), flush=True)
    sys.stdout.flush()


if __name__ == "__main__":
    main()
