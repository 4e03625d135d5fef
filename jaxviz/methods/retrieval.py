"""Retrieval metrics for nearest-neighbour search, and clustered vectors to measure them on.

precision@k (the lecture's last-layer analysis, Krizhevsky et al. 2012, fig. 4: neighbours in fc7
space share the query's class): the fraction of a query's k nearest neighbours whose label equals
the query's. recall@k of an approximate index (Jegou et al., "Product quantization for nearest
neighbor search", TPAMI 2011, use recall@R of the true nearest neighbour; we use the common
intersection form): |approximate top-k  exact top-k| / k, averaged over queries.
"""

from __future__ import annotations

import numpy as np


def precision_at_k(query_labels: np.ndarray, neighbor_labels: np.ndarray) -> float:
    """Mean fraction of neighbours sharing the query's label.

    query_labels: [N] int; neighbor_labels: [N, k] int (the labels of each query's k neighbours,
    the query itself already removed). Returns a float in [0, 1].
    """
    q = np.asarray(query_labels).reshape(-1, 1)
    nb = np.asarray(neighbor_labels)
    if nb.ndim != 2 or nb.shape[0] != q.shape[0]:
        raise ValueError(f"neighbor_labels must be [N, k] with N={q.shape[0]}, got {nb.shape}")
    return float(np.mean(nb == q))


def recall_at_k(approx_ids: np.ndarray, exact_ids: np.ndarray) -> float:
    """Mean |approx  exact| / k over queries.

    approx_ids, exact_ids: [N, k] int (ids of the k nearest neighbours; -1 marks a missing
    result and never counts as found).
    """
    a, e = np.asarray(approx_ids), np.asarray(exact_ids)
    if a.shape != e.shape or a.ndim != 2:
        raise ValueError(f"approx_ids and exact_ids must both be [N, k], got {a.shape}, {e.shape}")
    found = (a[:, :, None] == e[:, None, :]) & (a[:, :, None] >= 0)
    return float(found.any(axis=2).sum() / e.size)


def drop_self(
    ids: np.ndarray, distances: np.ndarray, query_ids: np.ndarray, k: int
) -> tuple[np.ndarray, np.ndarray]:
    """Remove each query's own id from its result list and keep the first k.

    ids, distances: [N, k + 1] results of searching for the queries themselves;
    query_ids: [N]. Returns ([N, k] ids, [N, k] distances). When the query is not among its
    results (ties, approximate indexes), the last result is dropped instead.
    """
    ids, distances = np.asarray(ids), np.asarray(distances)
    is_self = ids == np.asarray(query_ids).reshape(-1, 1)
    # keep the first k entries that are not the query (a stable sort puts them first)
    order = np.argsort(is_self, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(ids, order, 1), np.take_along_axis(distances, order, 1)


def gaussian_mixture(
    n: int,
    dim: int,
    components: int = 100,
    intrinsic_dim: int = 16,
    spread: float = 1.0,
    noise: float = 0.05,
    seed: int = 0,
) -> tuple[np.ndarray, np.ndarray]:
    """Clustered vectors like a CNN's features: a mixture of low-dimensional Gaussians.

    Component c has a centre ~ N(0, I_dim) and spreads along `intrinsic_dim` random orthonormal
    directions with standard deviation `spread`, plus isotropic N(0, noise^2) in every dimension.
    Returns ([n, dim] float32 vectors, [n] int64 component labels).
    """
    rng = np.random.default_rng(seed)
    centers = rng.standard_normal((components, dim)).astype(np.float32)
    labels = rng.integers(0, components, n)
    x = np.empty((n, dim), np.float32)
    for c in range(components):
        rows = np.flatnonzero(labels == c)
        basis, _ = np.linalg.qr(rng.standard_normal((dim, intrinsic_dim)))
        z = rng.standard_normal((rows.size, intrinsic_dim)) * spread
        x[rows] = centers[c] + z @ basis.T.astype(np.float32)
    x += rng.standard_normal((n, dim), dtype=np.float32) * np.float32(noise)
    return x, labels.astype(np.int64)
