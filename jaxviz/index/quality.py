"""Quality of a 2-D embedding: trustworthiness (Venna & Kaski 2001; scikit-learn's implementation,
on a random sample for large N) and k-NN label accuracy in the embedding (leave-one-out majority
vote of each point's k nearest embedded neighbours, ties to the smallest label)."""

from __future__ import annotations

import numpy as np


def trustworthiness(
    features: np.ndarray, coords: np.ndarray, k: int = 10, max_n: int = 5000, seed: int = 0
) -> tuple[float, int]:
    """Trustworthiness in [0, 1] of coords [N, 2] for features [N, D] with k neighbours.

    Above max_n points it is computed on a random subset of max_n points (their neighbourhoods
    among themselves), which keeps memory O(max_n^2). Returns (value, points used).
    """
    from sklearn.manifold import trustworthiness as tw

    n = len(features)
    idx = np.arange(n)
    if n > max_n:
        idx = np.sort(np.random.default_rng(seed).choice(n, max_n, replace=False))
    value = tw(np.asarray(features)[idx], np.asarray(coords)[idx], n_neighbors=k)
    return float(value), len(idx)


def knn_accuracy(coords: np.ndarray, labels: np.ndarray, k: int = 10) -> float | None:
    """Fraction of labelled points (label >= 0) whose k nearest other labelled points in coords
    [N, 2] vote their label (majority, ties to the smallest). None when fewer than k+1 labelled."""
    from scipy.stats import mode
    from sklearn.neighbors import NearestNeighbors

    labels = np.asarray(labels)
    keep = labels >= 0
    if keep.sum() <= k:
        return None
    c, lab = np.asarray(coords, np.float64)[keep], labels[keep]
    _, idx = NearestNeighbors(n_neighbors=k + 1).fit(c).kneighbors(c)
    # drop each point itself (not necessarily first when points coincide)
    is_self = idx == np.arange(len(c))[:, None]
    is_self[~is_self.any(axis=1), -1] = True
    nbr = idx[~is_self].reshape(len(c), k)
    vote = mode(lab[nbr], axis=1, keepdims=False).mode
    return float(np.mean(vote == lab))
