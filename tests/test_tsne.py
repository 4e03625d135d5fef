"""t-SNE engine: gradient vs a dense reference, FFT interpolation vs exact, bandwidth search,
determinism, tiling invariance; mosaic assignment optimality; quality metrics."""

import itertools

import jax.numpy as jnp
import numpy as np
import pytest

from jaxviz.index import mosaic, quality, tsne_affinities, tsne_fft, tsne_jax


def _dense_p(p: tsne_affinities.SparseP) -> np.ndarray:
    m = np.zeros((p.n, p.n), np.float64)
    m[p.rows, p.cols] = p.vals
    return m


def _dense_kl_gradient(y: np.ndarray, pm: np.ndarray, ex: float) -> np.ndarray:
    """dKL/dy (van der Maaten & Hinton 2008, eq. 5) with P scaled by ex, in float64."""
    d = y[:, None, :] - y[None, :, :]
    w = 1.0 / (1.0 + np.sum(d**2, -1))
    np.fill_diagonal(w, 0.0)
    q = w / w.sum()
    return 4.0 * np.sum(((ex * pm - q) * w)[:, :, None] * d, axis=1)


@pytest.fixture(scope="module")
def small():
    rng = np.random.default_rng(0)
    x = np.concatenate([rng.normal(c, 1.0, (40, 8)) for c in (0, 4, 8)]).astype(np.float32)
    p = tsne_affinities.affinities(x, perplexity=10)
    y = rng.normal(0, 3, (len(x), 2)).astype(np.float32)
    return x, p, y


def test_knn_excludes_self_and_matches_brute_force(small):
    x, _, _ = small
    dist, idx = tsne_affinities.knn(x, 7)
    d2 = np.sum((x[:, None] - x[None]) ** 2, -1)
    np.fill_diagonal(d2, np.inf)
    ref = np.argsort(d2, axis=1)[:, :7]
    assert not (idx == np.arange(len(x))[:, None]).any()
    np.testing.assert_allclose(dist, np.take_along_axis(d2, ref, 1), rtol=1e-4, atol=1e-4)


def test_approximate_knn_recalls_the_exact_graph():
    rng = np.random.default_rng(2)
    x = np.concatenate([rng.normal(c, 1.0, (600, 16)) for c in range(5)]).astype(np.float32)
    d_exact, i_exact = tsne_affinities.knn(x, 30, exact=True)
    d_ivf, i_ivf = tsne_affinities.knn(x, 30, exact=False)
    assert not (i_ivf == np.arange(len(x))[:, None]).any()
    recall = np.mean([len(np.intersect1d(a, b)) / 30 for a, b in zip(i_exact, i_ivf, strict=True)])
    assert recall > 0.95, recall
    assert np.all(d_ivf >= d_exact - 1e-3)  # never nearer than the true k-th neighbours


def test_binary_search_hits_perplexity():
    rng = np.random.default_rng(1)
    d = np.sort(rng.gamma(2.0, 3.0, (200, 90)), axis=1).astype(np.float32)
    for perp in (5.0, 30.0):
        p, beta = tsne_affinities.conditional_p(jnp.asarray(d), perp)
        p = np.asarray(p, np.float64)
        np.testing.assert_allclose(p.sum(1), 1.0, rtol=1e-5)
        h = -np.sum(p * np.log(np.where(p > 0, p, 1.0)), axis=1)
        np.testing.assert_allclose(np.exp(h), perp, rtol=1e-3)
        # P really is the Gaussian of the returned bandwidth
        w = np.exp(-np.asarray(beta, np.float64)[:, None] * (d - d[:, :1]))
        np.testing.assert_allclose(p, w / w.sum(1, keepdims=True), rtol=1e-3, atol=1e-7)


def test_joint_p_symmetric_and_normalized(small):
    _, p, _ = small
    m = _dense_p(p)
    np.testing.assert_allclose(m, m.T, atol=1e-9)
    assert abs(m.sum() - 1.0) < 1e-5
    assert np.all(np.diff(p.rows) >= 0)


@pytest.mark.parametrize("ex", [1.0, 12.0])
def test_exact_gradient_equals_dense_reference(small, ex):
    _, p, y = small
    g = tsne_jax.gradient(jnp.asarray(y), p.rows, p.cols, p.vals, ex, mode="exact", tile=32)
    ref = _dense_kl_gradient(y.astype(np.float64), _dense_p(p), ex) / 4.0  # openTSNE convention
    np.testing.assert_allclose(np.asarray(g), ref, rtol=1e-4, atol=1e-4 * np.abs(ref).max())


def test_exact_repulsion_invariant_to_tile(small):
    _, _, y = small
    a = tsne_jax.exact_repulsion(jnp.asarray(y), tile=7)
    b = tsne_jax.exact_repulsion(jnp.asarray(y), tile=1000)
    np.testing.assert_allclose(np.asarray(a[0]), np.asarray(b[0]), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(float(a[1]), float(b[1]), rtol=1e-5)


def test_interpolated_repulsion_approximates_exact(spread=20.0):
    """FIt-SNE's defaults (3 nodes, ~1 box per unit) are accurate to a few percent of the mean
    force; a finer grid (5 nodes, twice the boxes) converges to the exact forces."""
    rng = np.random.default_rng(2)
    y = np.concatenate([rng.normal(c, spread / 4, (300, 2)) for c in (-spread, 0, spread)])
    y = jnp.asarray(y, jnp.float32)
    rep, z = tsne_jax.exact_repulsion(y)
    f = np.asarray(rep / z)
    nb = tsne_fft.grid_boxes(float(jnp.max(y) - jnp.min(y)))
    for boxes, nodes, tol_z, tol_mean, tol_max in (
        (nb, 3, 3e-3, 3e-2, 0.15),
        (2 * nb, 5, 1e-4, 1e-3, 5e-3),
    ):
        rep_i, z_i = tsne_fft.interpolated_repulsion(y, n_boxes=boxes, n_interp=nodes)
        assert abs(float(z_i) / float(z) - 1) < tol_z
        err = np.linalg.norm(f - np.asarray(rep_i / z_i), axis=1) / np.linalg.norm(f, axis=1).mean()
        assert err.mean() < tol_mean and err.max() < tol_max, (boxes, nodes, err.mean(), err.max())


def _short(mode: str, seed: int = 0) -> tsne_jax.TSNEConfig:
    return tsne_jax.TSNEConfig(
        perplexity=10,
        n_iter=60,
        early_exaggeration_iter=40,
        kl_every=20,
        mode=mode,
        min_boxes=25,
        seed=seed,
        progress=False,
    )


def test_deterministic_for_a_seed(small):
    x, _, _ = small
    a = tsne_jax.tsne_jax(x, _short("interpolated"))
    b = tsne_jax.tsne_jax(x, _short("interpolated"))
    c = tsne_jax.tsne_jax(x, _short("interpolated", seed=1))
    np.testing.assert_array_equal(a.coords, b.coords)
    assert not np.array_equal(a.coords, c.coords)
    assert [k for k, _ in a.kl] == [20, 40, 60, 80, 100]


def test_modes_agree_and_separate_clusters(small):
    x, _, _ = small
    labels = np.repeat(np.arange(3), 40)
    ex = tsne_jax.tsne_jax(x, _short("exact"))
    it = tsne_jax.tsne_jax(x, _short("interpolated"))
    assert abs(ex.kl[-1][1] - it.kl[-1][1]) < 0.05
    for r in (ex, it):
        assert r.kl[-1][1] < r.kl[1][1]  # KL falls
        assert quality.knn_accuracy(r.coords, labels, k=5) == 1.0


def _brute_force_cost(coords, rows, cols):
    u = mosaic.normalize_coords(coords)
    cells = np.arange(rows * cols)
    centres = np.stack([(cells % cols + 0.5) / cols, (cells // cols + 0.5) / rows], 1)
    n = len(coords)
    best = np.inf
    for perm in itertools.permutations(range(rows * cols), n):  # point i -> cell perm[i]
        best = min(best, float(np.sum((u - centres[list(perm)]) ** 2)))
    return best


@pytest.mark.parametrize("n", [5, 6])
def test_mosaic_assignment_optimal_bijection(n):
    rng = np.random.default_rng(n)
    coords = rng.normal(size=(n, 2))
    cell = mosaic.grid_assignment(coords, 2, 3)
    shown = cell[cell >= 0]
    assert len(shown) == n and len(set(shown.tolist())) == n
    cost = mosaic.assignment_cost(coords, cell, 2, 3)
    assert cost == pytest.approx(_brute_force_cost(coords, 2, 3), rel=1e-9)


def test_mosaic_blocks_fill_every_cell_once():
    coords = np.random.default_rng(3).normal(size=(1000, 2))
    cell = mosaic.grid_assignment(coords, 12, 15, block=40)
    assert (cell >= 0).all() and len(np.unique(cell)) == 180
    exact = mosaic.grid_assignment(coords[:150], 12, 15)
    assert np.sum(exact >= 0) == 150 and len(np.unique(exact[exact >= 0])) == 150


def test_quality_metrics():
    rng = np.random.default_rng(4)
    x = rng.normal(size=(300, 5))
    assert quality.trustworthiness(x, x[:, :2] * 0 + x[:, :2], k=5)[0] < 1.0
    t, used = quality.trustworthiness(x, x, k=5, max_n=100)
    assert t == pytest.approx(1.0) and used == 100
    labels = (x[:, 0] > 0).astype(int)
    assert quality.knn_accuracy(x[:, :2], labels, k=5) > 0.9
    assert quality.knn_accuracy(x[:, 1:3], labels, k=5) < 0.75


def test_backends_front_door():
    from jaxviz.errors import UsageError
    from jaxviz.index.tsne import tsne

    x = np.random.default_rng(5).normal(size=(120, 6)).astype(np.float32)
    with pytest.raises(UsageError, match="choose from"):
        tsne(x, backend="nope")
    with pytest.raises(UsageError, match="N > 3 x perplexity"):
        tsne(x[:60], perplexity=30)
    for backend, n_iter in (("opentsne", 20), ("sklearn", 240)):  # sklearn wants >= 250 in all
        coords, info = tsne(
            x, backend=backend, perplexity=10, n_iter=n_iter, early_exaggeration_iter=10, n_jobs=1
        )
        assert coords.shape == (120, 2) and coords.dtype == np.float32 and np.isfinite(coords).all()
        assert info["backend"] == backend and np.isfinite(info["kl"])


def test_cli_tsne_on_a_feature_store(tmp_path):
    import json

    from jaxviz.cli import main
    from jaxviz.data.sources import open_source
    from jaxviz.index.feature_store import FeatureWriter
    from jaxviz.jobs.output import JobOutput

    spec, n = "shapes:150:3", 150
    source = open_source(spec)
    labels = np.array([source.info(i).label for i in range(n)])
    x = np.eye(10, 16)[labels] * 6 + np.random.default_rng(6).normal(size=(n, 16))
    store = JobOutput(tmp_path / "feat", "features", {})
    writer = FeatureWriter(store, 16, meta={"source": spec, "class_names": source.class_names},
                           shard_bytes=100 * 16 * 4)  # fmt: skip
    writer.add(x, np.arange(n), labels, [source.info(i).id for i in range(n)])
    writer.close()
    out = tmp_path / "tsne"
    argv = ["tsne", "--features", str(tmp_path / "feat"), "--backend", "jax", "--perplexity", "10"]
    argv += ["--n-iter", "60", "--early-exaggeration-iter", "40", "--mosaic-grid", "8"]
    assert main(argv + ["--thumb", "8", "--out", str(out)]) == 0
    m = json.loads((out / "manifest.json").read_text())["results"]
    assert m["n"] == n and m["tsne"]["backend"] == "jax"
    assert m["knn_label_accuracy_k10"] > 0.9 and m["trustworthiness_k10"] > 0.9
    assert np.load(out / "coords.npy").shape == (n, 2)
    cells = np.load(out / "mosaic_cells.npy")
    assert len(cells) == 64 and len(np.unique(cells)) == 64 and cells.min() >= 0
    from PIL import Image

    assert Image.open(out / "mosaic.png").size == (64, 64)
    assert Image.open(out / "scatter.png").size[0] > 100
