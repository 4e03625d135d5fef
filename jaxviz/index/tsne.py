"""t-SNE backends behind one function: the JAX engine (any accelerator JAX supports), openTSNE
(FFT-accelerated, CPU, the quality reference), tsnecuda (only when it imports and runs) and
scikit-learn (Barnes-Hut, small N). `auto` picks jax on an accelerator and openTSNE on CPU.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from jaxviz.errors import UsageError, unknown

BACKENDS = ("auto", "jax", "opentsne", "tsnecuda", "sklearn")
MODES = ("auto", "exact", "interpolated")
# up to this many points openTSNE runs on one thread by default: its per-iteration work is then
# small next to the synchronization of its threads, which on a busy 2-core machine cost several
# times the CPU of the work itself (the atlas's 2000 points, and the 40 of its test)
ONE_THREAD_MAX_POINTS = 2000


def tsne(
    features: np.ndarray,
    *,
    backend: str = "auto",
    perplexity: float = 30.0,
    n_iter: int = 500,
    early_exaggeration_iter: int = 250,
    seed: int = 0,
    mode: str = "auto",
    progress: bool = True,
    n_jobs: int | None = None,
    **engine: Any,
) -> tuple[np.ndarray, dict[str, Any]]:
    """Embed features [N, D] float32 in 2-D. Returns (coords [N, 2] float32, info).

    n_iter counts iterations after the `early_exaggeration_iter` exaggerated ones (openTSNE's
    convention; 250 + 500 by default). mode (jax only): exact (tiled O(N^2)), interpolated (FIt-SNE,
    O(N)) or auto. n_jobs: CPU threads of openTSNE / scikit-learn (default: all; one up to
    ONE_THREAD_MAX_POINTS points). `engine` passes further TSNEConfig fields to the JAX engine.
    info holds the backend used, KL divergence, timings and, for jax, the KL trace and seconds
    per iteration.
    """
    if backend not in BACKENDS:
        raise unknown("t-SNE backend", backend, BACKENDS)
    if mode not in MODES:
        raise unknown("t-SNE mode", mode, MODES)
    x = np.ascontiguousarray(features, dtype=np.float32)
    if x.ndim != 2 or x.shape[0] <= 3 * perplexity:
        raise UsageError(
            f"t-SNE needs features [N, D] with N > 3 x perplexity ({3 * perplexity:g}); "
            f"got shape {x.shape}"
        )
    if backend == "auto":
        backend = "jax" if _accelerator() else "opentsne"
    run: Callable[..., tuple[np.ndarray, dict[str, Any]]] = _RUNNERS[backend]
    n_jobs = n_jobs or (1 if len(x) <= ONE_THREAD_MAX_POINTS else os.cpu_count() or 1)
    t0 = time.perf_counter()
    coords, info = run(
        x,
        perplexity=perplexity,
        n_iter=n_iter,
        ee_iter=early_exaggeration_iter,
        seed=seed,
        mode=mode,
        progress=progress,
        n_jobs=n_jobs,
        **engine,
    )
    info = {"backend": backend, "perplexity": perplexity, **info}
    info["total_s"] = time.perf_counter() - t0
    return np.asarray(coords, np.float32), info


def _accelerator() -> bool:
    import jax

    return jax.default_backend() != "cpu"


def _jax(x, *, perplexity, n_iter, ee_iter, seed, mode, progress, n_jobs, **engine):
    from jaxviz.index.tsne_jax import TSNEConfig, tsne_jax
    from jaxviz.runtime import memory

    # exact repulsion: ~6 float32 per (row, point) pair of a [tile, N] block
    engine.setdefault("tile", memory.plan().chunk(24 * len(x), len(x), cpu_bounded=True))
    config = TSNEConfig(
        perplexity=perplexity,
        n_iter=n_iter,
        early_exaggeration_iter=ee_iter,
        seed=seed,
        mode=mode,
        progress=progress,
        **engine,
    )
    result = tsne_jax(x, config)
    return result.coords, {**result.info, "kl_trace": result.kl}


def _opentsne(x, *, perplexity, n_iter, ee_iter, seed, mode, progress, n_jobs, **engine):
    import openTSNE

    if engine:
        raise UsageError(f"options {sorted(engine)} apply to the jax backend only")
    method = {"auto": "auto", "exact": "bh", "interpolated": "fft"}[mode]
    t0 = time.perf_counter()
    emb = openTSNE.TSNE(
        perplexity=perplexity,
        n_iter=n_iter,
        early_exaggeration_iter=ee_iter,
        random_state=seed,
        negative_gradient_method=method,
        neighbors="exact" if x.shape[0] <= 1000 else "auto",
        n_jobs=n_jobs,
        verbose=False,
    ).fit(x)
    seconds = time.perf_counter() - t0
    return np.asarray(emb), {"kl": float(emb.kl_divergence), "fit_s": seconds, "mode": method}


def _sklearn(x, *, perplexity, n_iter, ee_iter, seed, mode, progress, n_jobs, **engine):
    from sklearn.manifold import TSNE

    if engine:
        raise UsageError(f"options {sorted(engine)} apply to the jax backend only")
    method = "exact" if mode == "exact" else "barnes_hut"
    t0 = time.perf_counter()
    model = TSNE(
        perplexity=perplexity,
        init="pca",
        learning_rate="auto",
        random_state=seed,
        method=method,
        n_jobs=n_jobs,
        max_iter=n_iter + ee_iter,
    )
    coords = model.fit_transform(x)
    seconds = time.perf_counter() - t0
    return coords, {"kl": float(model.kl_divergence_), "fit_s": seconds, "mode": method}


def _tsnecuda(x, *, perplexity, n_iter, ee_iter, seed, mode, progress, n_jobs, **engine):
    try:
        from tsnecuda import TSNE
    except Exception as e:  # ImportError, or a CUDA library that fails to load
        raise UsageError(f"backend tsnecuda is not usable here: {e}") from None
    t0 = time.perf_counter()
    try:
        coords = TSNE(
            perplexity=perplexity,
            n_iter=n_iter + ee_iter,
            force_magnify_iters=ee_iter,
            random_seed=seed,
        ).fit_transform(x)
    except Exception as e:
        raise UsageError(f"backend tsnecuda failed to run: {e}") from None
    return coords, {"kl": None, "fit_s": time.perf_counter() - t0}


_RUNNERS = {"jax": _jax, "opentsne": _opentsne, "sklearn": _sklearn, "tsnecuda": _tsnecuda}
