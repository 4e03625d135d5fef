"""k-NN index: exactness vs brute force, IVF recall, streaming training, persistence, metrics."""

import faiss
import numpy as np
import pytest
from sklearn.neighbors import NearestNeighbors

from jaxviz.errors import UsageError
from jaxviz.index.knn import KnnIndex, choose_factory, default_nlist, default_nprobe
from jaxviz.index.placement import CpuPlacement, index_bytes, should_shard
from jaxviz.jobs.output import JobOutput
from jaxviz.methods.retrieval import (
    drop_self,
    gaussian_mixture,
    precision_at_k,
    recall_at_k,
)


def _brute(x, q, metric, k):
    """float64 numpy brute force: (distances [nq, k], positions [nq, k])."""
    x, q = x.astype(np.float64), q.astype(np.float64)
    if metric == "cosine":
        x = x / np.linalg.norm(x, axis=1, keepdims=True)
        q = q / np.linalg.norm(q, axis=1, keepdims=True)
        d = 1 - q @ x.T
    else:
        sq = (q**2).sum(1)[:, None] + (x**2).sum(1)[None, :] - 2 * q @ x.T  # exact in float64
        d = np.sqrt(np.maximum(sq, 0))
    pos = np.argsort(d, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(d, pos, 1), pos


@pytest.fixture(scope="module", autouse=True)
def one_faiss_thread():
    """FAISS's OpenMP threads spin-wait on a loaded 2-core machine (k-means 10x slower)."""
    n = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)
    yield
    faiss.omp_set_num_threads(n)


@pytest.fixture(scope="module")
def random_vectors():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((10_000, 48)).astype(np.float32)
    q = rng.standard_normal((300, 48)).astype(np.float32)
    ids = rng.permutation(10**7)[: len(x)].astype(np.int64)  # arbitrary, non-contiguous ids
    return x, q, ids


@pytest.mark.parametrize("metric", ["l2", "cosine"])
def test_flat_is_exact(random_vectors, metric):
    x, q, ids = random_vectors
    index = KnnIndex(x.shape[1], metric, "Flat")
    for s in range(0, len(x), 1234):  # streamed in uneven chunks
        index.add(x[s : s + 1234], ids[s : s + 1234])
    d, got = index.search(q, 10)
    want_d, want_pos = _brute(x, q, metric, 10)
    np.testing.assert_array_equal(got, ids[want_pos])
    np.testing.assert_allclose(d, want_d, atol=1e-4)
    nn = NearestNeighbors(
        n_neighbors=10, algorithm="brute", metric="euclidean" if metric == "l2" else "cosine"
    )
    sk_d, sk_pos = nn.fit(x).kneighbors(q)
    np.testing.assert_array_equal(got, ids[sk_pos])
    np.testing.assert_allclose(d, sk_d, atol=1e-4)


def test_ivf_default_recall_and_streamed_training():
    x, _ = gaussian_mixture(20_000, 64, components=40, seed=1)
    q = x[::100] + np.random.default_rng(2).standard_normal((200, 64)).astype(np.float32) * 0.05
    ids = np.arange(len(x), dtype=np.int64) * 3 + 7
    factory = choose_factory("IVF", len(x), 64)
    assert factory == f"IVF{default_nlist(len(x))},Flat" == "IVF512,Flat"
    streamed = KnnIndex(64, "l2", factory, train_size=12_000)
    for s in range(0, len(x), 1000):
        streamed.add(x[s : s + 1000], ids[s : s + 1000])
        # only the training sample is buffered, and it is trained on as soon as it is complete
        assert streamed.index.is_trained == (s + 1000 >= 12_000)
    assert streamed.nprobe == default_nprobe(512) and streamed.ntotal == len(x)
    flat = KnnIndex(64)
    flat.add(x, ids)
    _, exact = flat.search(q, 10)
    _, approx = streamed.search(q, 10)
    assert recall_at_k(approx, exact) >= 0.95
    # the same sample trained and added all at once gives the same index
    whole = KnnIndex(64, "l2", factory, train_size=12_000)
    whole.add(x[:12_000], ids[:12_000])
    whole.add(x[12_000:], ids[12_000:])
    np.testing.assert_array_equal(whole.search(q, 10)[1], approx)
    # more probes never lose recall; probing every cell is exact
    _, full = streamed.search(q, 10, nprobe=512)
    np.testing.assert_array_equal(full, exact)
    assert streamed.nprobe == default_nprobe(512)


@pytest.mark.parametrize("factory", ["Flat", "IVF64,Flat", "IVF32,PQ8"])
def test_save_load_roundtrip(tmp_path, factory):
    x, _ = gaussian_mixture(4_000, 32, components=10, seed=3)
    ids = np.arange(len(x), dtype=np.int64)[::-1].copy()
    index = KnnIndex(32, "cosine", factory, train_size=3_000)
    index.add(x, ids)
    out = JobOutput(tmp_path, "test", {})
    index.save(out)
    loaded = KnnIndex.load(tmp_path, gpu=False)
    assert loaded.meta() == {**index.meta(), "gpu": False}
    d0, i0 = index.search(x[:50], 5)
    d1, i1 = loaded.search(x[:50], 5)
    np.testing.assert_array_equal(i0, i1)
    np.testing.assert_allclose(d0, d1, atol=1e-6)


def test_choose_factory_and_errors():
    assert choose_factory("auto", 999_999, 128, budget=16 << 30) == "Flat"
    assert choose_factory("auto", 1_000_000, 128, budget=16 << 30) == "IVF4096,Flat"
    assert choose_factory("auto", 100_000_000, 4096, budget=16 << 30) == "IVF32768,PQ64"
    assert choose_factory("IVF,PQ", 100_000, 256) == "IVF1024,PQ64"
    assert choose_factory("IVF4096, PQ64", 10, 256) == "IVF4096,PQ64"
    with pytest.raises(UsageError, match="bad FAISS index"):
        KnnIndex(16, "l2", "NoSuchIndex12")
    with pytest.raises(UsageError, match="unknown metric"):
        KnnIndex(16, "manhattan")
    small = KnnIndex(16, "l2", "IVF64,Flat")
    small.add(np.zeros((10, 16), np.float32), np.arange(10))
    with pytest.raises(UsageError, match="at least 64 vectors"):
        small.search(np.zeros((1, 16), np.float32), 1)


def test_missing_results_are_marked():
    index = KnnIndex(4)
    index.add(np.eye(4, dtype=np.float32)[:3], np.array([5, 6, 7]))
    d, ids = index.search(np.eye(4, dtype=np.float32)[:1], 5)
    np.testing.assert_array_equal(ids[0], [5, 6, 7, -1, -1])
    assert d[0, 0] == 0 and np.isinf(d[0, 3:]).all()


def test_metrics():
    assert precision_at_k(np.array([0, 1]), np.array([[0, 0, 1], [1, 2, 2]])) == pytest.approx(
        3 / 6
    )
    assert recall_at_k(np.array([[1, 2, -1]]), np.array([[2, 3, 1]])) == pytest.approx(2 / 3)
    ids, d = drop_self(
        np.array([[4, 9, 2], [1, 3, 8]]), np.array([[0, 1, 2], [0, 1, 2.0]]), [9, 7], 2
    )
    np.testing.assert_array_equal(ids, [[4, 2], [1, 3]])
    np.testing.assert_array_equal(d, [[0, 2], [0, 1]])


class RecordingPlacement(CpuPlacement):
    """CPU FAISS through the placement code path, recording what happens in which order."""

    def __init__(self):
        self.calls = []

    def train(self, index, x):
        self.calls.append(("train", index.is_trained, index.ntotal, len(x)))
        super().train(index, x)

    def distribute(self, index):
        self.calls.append(("distribute", index.is_trained, index.ntotal))
        return super().distribute(index)


def test_train_on_one_device_before_distributing(tmp_path):
    x, _ = gaussian_mixture(3_000, 16, components=8, seed=4)
    ids = np.arange(len(x), dtype=np.int64)
    rec = RecordingPlacement()
    index = KnnIndex(16, "l2", "IVF16,Flat", train_size=2_000, placement=rec)
    for s in range(0, len(x), 700):
        index.add(x[s : s + 700], ids[s : s + 700])
    # trained once, untrained and empty; distributed once, trained and still empty
    assert rec.calls == [("train", False, 0, 2_000), ("distribute", True, 0)]
    plain = KnnIndex(16, "l2", "IVF16,Flat", train_size=2_000, gpu=False)
    plain.add(x, ids)
    np.testing.assert_array_equal(index.search(x[:20], 5)[1], plain.search(x[:20], 5)[1])
    flat = RecordingPlacement()
    KnnIndex(16, "l2", "Flat", placement=flat)
    assert flat.calls == [("distribute", True, 0)]  # nothing to train: distributed at once
    index.save(JobOutput(tmp_path, "test", {}))
    loaded = RecordingPlacement()
    KnnIndex.load(tmp_path, placement=loaded)
    assert loaded.calls == [("distribute", True, len(x))]


def test_auto_chooses_by_bytes_against_the_budget():
    gib = 1 << 30
    n, d = 999_000, 9216  # 36.8 GB of float32: not Flat on a 12 GiB share, though n < 1M
    assert choose_factory("auto", n, d, budget=12 * gib) == "IVF4096,PQ64"
    assert choose_factory("auto", n, d, budget=n * d * 4) == "Flat"
    assert choose_factory("auto", n, d, budget=n * d * 4 - 1) == "IVF4096,PQ64"
    assert choose_factory("auto", 10**6, d, budget=10**6 * (d * 4 + 8)) == "IVF4096,Flat"
    assert choose_factory("auto", 10**6, d, budget=10**6 * (d * 4 + 8) - 1) == "IVF4096,PQ64"
    assert choose_factory("auto", 999_000, 512, budget=12 * gib) == "Flat"
    assert choose_factory("auto", 999_000, 512, budget=1 * gib) == "IVF4096,PQ64"
    assert choose_factory("auto", 4_000_000, 512, budget=12 * gib) == "IVF8192,Flat"


def test_replicate_small_shard_large():
    assert should_shard(10, 4, per_gpu=10) is False  # fits on one GPU: a replica on each
    assert should_shard(11, 4, per_gpu=10) is True
    assert should_shard(40, 4, per_gpu=10) is True
    assert should_shard(41, 4, per_gpu=10) is None  # does not fit even sharded: stays on CPU
    assert should_shard(11, 1, per_gpu=10) is None
    cpu = faiss.index_factory(8, "IVF4,Flat")
    cpu.train(np.random.default_rng(0).standard_normal((200, 8)).astype(np.float32))
    cpu.add(np.zeros((100, 8), np.float32))
    assert index_bytes(cpu) == 100 * (8 * 4 + 8) + 4 * 8 * 4
    assert index_bytes(faiss.IndexFlatL2(8)) == 0
