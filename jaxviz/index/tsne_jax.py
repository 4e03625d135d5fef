"""The JAX t-SNE engine (van der Maaten & Hinton 2008, "Visualizing Data using t-SNE"), with the
optimizer and defaults of openTSNE 1.0 (Policar, Strazar, Zupan 2024): PCA initialization scaled
to std 1e-4, early exaggeration 12 for 250 iterations, then 500 more, momentum 0.8, gains
(+0.2 / x0.8 + 0.01), learning rate N / exaggeration (Belkina et al. 2019), steps clipped to norm 5,
the embedding re-centred after every step.

Gradients follow openTSNE's convention (the KL gradient without its factor 4, which the learning
rate absorbs): g_i = a * sum_j p_ij q_ij (y_i - y_j) - sum_j q_ij^2 (y_i - y_j) / Z with
q_ij = 1 / (1 + |y_i - y_j|^2), Z = sum_{k != l} q_kl and exaggeration a. Attraction runs over the
sparse P (segment_sum); repulsion is either exact, tiled over rows so memory is O(N x tile), or
FFT-interpolated (`tsne_fft`). The loop runs in jitted chunks of `kl_every` iterations
(lax.fori_loop); KL(P || Q) is evaluated between chunks (with the interpolated Z in that mode).
Runs are bitwise deterministic for a seed on CPU; on GPU scatter-adds are atomic, so set
XLA_FLAGS=--xla_gpu_deterministic_ops=true for bitwise reproducibility there.
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxviz.index.tsne_affinities import SparseP, affinities
from jaxviz.index.tsne_fft import grid_boxes, interpolated_repulsion


@dataclass(frozen=True)
class TSNEConfig:
    perplexity: float = 30.0  # effective number of neighbours of each point
    n_iter: int = 500  # iterations after early exaggeration
    early_exaggeration_iter: int = 250  # iterations with exaggerated attraction
    early_exaggeration: float = 12.0  # attraction factor during those
    exaggeration: float = 1.0  # attraction factor afterwards
    learning_rate: float | None = None  # None: N / exaggeration of the phase ("auto")
    momentum: float = 0.8  # both phases, as openTSNE 1.0
    max_step_norm: float = 5.0  # per-point step clip
    mode: str = "auto"  # exact | interpolated | auto (exact up to `exact_max_n` points)
    exact_max_n: int = 5000
    tile: int = 512  # rows per tile of the exact repulsion
    n_interp: int = 3  # Lagrange nodes per box and axis (interpolated)
    min_boxes: int = 50  # boxes per axis at least (interpolated)
    kl_every: int = 50  # iterations per jitted chunk; KL reported after each
    seed: int = 0  # PCA-init jitter
    progress: bool = True  # tqdm bar on stderr


@dataclass
class TSNEResult:
    coords: np.ndarray  # [N, 2] float32
    kl: list[tuple[int, float]] = field(default_factory=list)  # (iteration, KL) per chunk
    info: dict[str, Any] = field(default_factory=dict)


def pca_init(x: np.ndarray, seed: int = 0) -> np.ndarray:
    """Top-2 principal components of x [N, D], scaled so column 0 has std 1e-4, plus openTSNE's
    jitter (normal, 1% of that std, seeded). Signs fixed so each component's largest |loading| is
    positive. Returns [N, 2] float32."""
    x = np.asarray(x, np.float64)
    xc = x - x.mean(axis=0)
    _, vecs = np.linalg.eigh(xc.T @ xc)
    v = vecs[:, ::-1][:, :2]
    v = v * np.sign(v[np.abs(v).argmax(axis=0), [0, 1]])
    y = xc @ v
    y = y / (np.std(y[:, 0]) or 1.0) * 1e-4
    y += np.random.default_rng(seed).normal(0, 1e-6, y.shape)
    return y.astype(np.float32)


def attraction(y: jax.Array, rows: jax.Array, cols: jax.Array, vals: jax.Array) -> jax.Array:
    """sum_j p_ij q_ij (y_i - y_j) over the sparse P. y [N, 2]; rows/cols [E] int32 sorted by row,
    vals [E] float32. Returns [N, 2].

    Points are packed as complex numbers so each edge costs one 8-byte gather per end (about 3x
    faster on CPU than gathering [2]-rows).
    """
    z = jax.lax.complex(y[:, 0], y[:, 1])
    d = z.at[rows].get(mode="promise_in_bounds") - z.at[cols].get(mode="promise_in_bounds")
    w = vals / (1.0 + d.real * d.real + d.imag * d.imag)
    f = jax.ops.segment_sum(w * d, rows, num_segments=y.shape[0], indices_are_sorted=True)
    return jnp.stack([f.real, f.imag], axis=1)


@partial(jax.jit, static_argnames=("tile",))
def exact_repulsion(y: jax.Array, tile: int = 512) -> tuple[jax.Array, jax.Array]:
    """Exact (rep [N, 2] = sum_j q_ij^2 (y_i - y_j), Z = sum_{i != j} q_ij) for y [N, 2], one
    [tile, N] block at a time (lax.map), so memory is O(N x tile)."""
    n = y.shape[0]
    tile = min(tile, n)
    n_tiles = -(-n // tile)
    pad = n_tiles * tile - n
    yp = jnp.pad(y, ((0, pad), (0, 0)))
    starts = jnp.arange(n_tiles) * tile

    def block(start: jax.Array) -> tuple[jax.Array, jax.Array]:
        yi = jax.lax.dynamic_slice_in_dim(yp, start, tile)  # [T, 2]
        i = start + jnp.arange(tile)
        d2 = jnp.sum((yi[:, None, :] - y[None, :, :]) ** 2, axis=-1)  # [T, N]
        valid = (i[:, None] != jnp.arange(n)[None, :]) & (i[:, None] < n)
        q = jnp.where(valid, 1.0 / (1.0 + d2), 0.0)
        q2 = q * q
        rep = yi * jnp.sum(q2, axis=1, keepdims=True) - q2 @ y
        return rep, jnp.sum(q)

    rep, z = jax.lax.map(block, starts)
    return rep.reshape(-1, 2)[:n], jnp.sum(z)


def repulsion(y: jax.Array, mode: str, tile: int, n_boxes: int, n_interp: int):
    if mode == "exact":
        return exact_repulsion(y, tile=tile)
    return interpolated_repulsion(y, n_boxes=n_boxes, n_interp=n_interp)


def gradient(y, rows, cols, vals, exaggeration, mode="exact", tile=512, n_boxes=50, n_interp=3):
    """The t-SNE gradient of y [N, 2] (openTSNE convention: KL gradient / 4). Returns [N, 2]."""
    rep, z = repulsion(y, mode, tile, n_boxes, n_interp)
    return exaggeration * attraction(y, rows, cols, vals) - rep / z


@partial(jax.jit, static_argnames=("mode", "tile", "n_boxes", "n_interp"))
def kl_divergence(y, rows, cols, vals, plogp, mode="exact", tile=512, n_boxes=50, n_interp=3):
    """KL(P || Q) = sum p log p - sum p log q_ij + log Z (sum p = 1), over the sparse P."""
    _, z = repulsion(y, mode, tile, n_boxes, n_interp)
    c = jax.lax.complex(y[:, 0], y[:, 1])
    d = c[rows] - c[cols]
    log_w = -jnp.log1p(d.real * d.real + d.imag * d.imag)
    return plogp - jnp.sum(vals * log_w) + jnp.log(z)


@partial(jax.jit, static_argnames=("n_steps", "mode", "tile", "n_boxes", "n_interp"))
def run_chunk(
    state: tuple[jax.Array, jax.Array, jax.Array],
    rows: jax.Array,
    cols: jax.Array,
    vals: jax.Array,
    exaggeration: jax.Array,
    learning_rate: jax.Array,
    momentum: jax.Array,
    max_step_norm: jax.Array,
    *,
    n_steps: int,
    mode: str,
    tile: int,
    n_boxes: int,
    n_interp: int,
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """`n_steps` iterations of openTSNE's gradient descent on (y, update, gains), each [N, 2]."""

    def step(_, s):
        y, update, gains = s
        g = gradient(y, rows, cols, vals, exaggeration, mode, tile, n_boxes, n_interp)
        flipped = jnp.sign(update) != jnp.sign(g)
        gains = jnp.where(flipped, gains + 0.2, gains * 0.8 + 0.01)
        update = momentum * update - learning_rate * gains * g
        norm = jnp.sqrt(jnp.sum(update * update, axis=1, keepdims=True))
        update = jnp.where(norm > max_step_norm, update * (max_step_norm / norm), update)
        y = y + update
        return y - jnp.mean(y, axis=0, keepdims=True), update, gains

    return jax.lax.fori_loop(0, n_steps, step, state)


def optimize(p: SparseP, init: np.ndarray, config: TSNEConfig) -> TSNEResult:
    """Run both phases from init [N, 2] float32 on P. Returns coords, the KL trace and timings."""
    n = p.n
    mode = config.mode
    if mode == "auto":
        mode = "exact" if n <= config.exact_max_n else "interpolated"
    if mode not in ("exact", "interpolated"):
        raise ValueError(f"mode must be exact, interpolated or auto, got {mode!r}")
    rows, cols, vals = (jnp.asarray(a) for a in (p.rows, p.cols, p.vals))
    pos = p.vals[p.vals > 0].astype(np.float64)
    plogp = jnp.float32(np.sum(pos * np.log(pos)))
    y = jnp.asarray(init, jnp.float32)
    state = (y, jnp.zeros_like(y), jnp.ones_like(y))
    phases = [
        (config.early_exaggeration_iter, config.early_exaggeration),
        (config.n_iter, config.exaggeration),
    ]
    total = sum(k for k, _ in phases)
    bar = _progress(total, config.progress)
    kl: list[tuple[int, float]] = []
    boxes_used: set[int] = set()
    done = 0
    per_iter: list[float] = []  # seconds per iteration of each chunk (compiles included)
    t0 = t_chunk = time.perf_counter()
    for n_phase, ex in phases:
        lr = config.learning_rate or n / ex
        left = n_phase
        while left > 0:
            steps = min(config.kl_every, left)
            nb = _boxes(state[0], config) if mode == "interpolated" else 0
            boxes_used.add(nb)
            kw = dict(mode=mode, tile=config.tile, n_boxes=nb, n_interp=config.n_interp)
            state = run_chunk(
                state,
                rows,
                cols,
                vals,
                jnp.float32(ex),
                jnp.float32(lr),
                jnp.float32(config.momentum),
                jnp.float32(config.max_step_norm),
                n_steps=steps,
                **kw,
            )
            left -= steps
            done += steps
            value = float(kl_divergence(state[0], rows, cols, vals, plogp, **kw))
            kl.append((done, value))
            now = time.perf_counter()
            per_iter.append((now - t_chunk) / steps)
            t_chunk = now
            if bar is not None:
                bar.set_postfix(KL=f"{value:.4f}", refresh=False)
                bar.update(steps)
    coords = np.asarray(state[0])
    seconds = time.perf_counter() - t0
    if bar is not None:
        bar.close()
    info = {
        "mode": mode,
        "n_iter_total": total,
        "optimize_s": seconds,
        "s_per_iter": seconds / max(total, 1),
        # median over chunks: the steady-state cost, without the compiles of new grid sizes
        "s_per_iter_median": float(np.median(per_iter)) if per_iter else None,
        "kl": kl[-1][1] if kl else None,
        "n_boxes": sorted(b for b in boxes_used if b),
        "edges": int(p.vals.size),
    }
    return TSNEResult(coords=coords, kl=kl, info=info)


def _boxes(y: jax.Array, config: TSNEConfig) -> int:
    extent = float(jnp.max(y) - jnp.min(y))
    return grid_boxes(extent, config.min_boxes)


def _progress(total: int, enabled: bool):
    if not enabled:
        return None
    from tqdm import tqdm

    return tqdm(total=total, desc="t-SNE", unit="it", file=sys.stderr, leave=False)


def tsne_jax(x: np.ndarray, config: TSNEConfig = TSNEConfig()) -> TSNEResult:
    """t-SNE of features x [N, D] float32 with the JAX engine: kNN affinities, PCA init, optimize.

    Returns TSNEResult(coords [N, 2] float32, kl trace, info with timings per stage).
    """
    x = np.asarray(x, np.float32)
    t0 = time.perf_counter()
    p = affinities(x, config.perplexity)
    t1 = time.perf_counter()
    init = pca_init(x, config.seed)
    result = optimize(p, init, config)
    result.info["affinities_s"] = t1 - t0
    return result
