"""Feature store, the features consumer/job and the neighbors job: parity with a direct forward
pass, invariance to batch size and shard size, resume after an interrupt, exact neighbours."""

import json

import jax
import numpy as np
import pytest

from jaxviz.cli import main
from jaxviz.data.pipeline import stream
from jaxviz.data.sources import open_source
from jaxviz.index.feature_store import FeatureStore, FeatureWriter
from jaxviz.index.knn import KnnIndex
from jaxviz.jobs.features import PARTS, FeatureConsumer, part_folder
from jaxviz.jobs.output import JobOutput
from jaxviz.jobs.scan import ScanCheckpoint, scan
from jaxviz.models.stage import forward
from jaxviz.models.zoo import entry

SRC = "shapes:30:5"


@pytest.fixture(scope="module")
def direct(demo_random):
    """fc features [30, 128] of SRC by one direct forward pass."""
    model, params = demo_random
    src = open_source(SRC)
    imgs = np.stack([model.preprocess.to_uint8(src.load(i)) for i in range(len(src))])
    _, taps = forward(model, params, model.preprocess.normalize(imgs))
    return np.asarray(taps["fc"])


def _run(demo_random, out_dir, batch_size, shard_bytes=1 << 20, dtype="float32", **kw):
    model, params = demo_random
    src = open_source(SRC)
    out = JobOutput(out_dir, "features", {})
    writer = FeatureWriter(out, 128, dtype, {"source": SRC}, shard_bytes=shard_bytes)
    consumer = FeatureConsumer("fc", src, writer, KnnIndex(128))
    scan(model, params, src, [consumer], batch_size=batch_size, out=out, **kw)
    return consumer, FeatureStore(out_dir)


@pytest.mark.parametrize("batch_size,shard_bytes", [(4, 1 << 20), (12, 128 * 4 * 7)])
def test_store_matches_direct_forward(demo_random, direct, tmp_path, batch_size, shard_bytes):
    consumer, store = _run(demo_random, tmp_path, batch_size, shard_bytes)
    consumer.finish()
    src = open_source(SRC)
    assert len(store) == 30 and store.meta["complete"] and store.meta["source"] == SRC
    assert len(store.meta["shards"]) == (1 if shard_bytes == 1 << 20 else 5)  # 7 rows a shard
    np.testing.assert_array_equal(store.index(), np.arange(30))
    np.testing.assert_array_equal(store.labels(), [src.info(i).label for i in range(30)])
    assert store.ids().tolist() == [src.info(i).id for i in range(30)]
    np.testing.assert_allclose(store.features(), direct, rtol=1e-5, atol=1e-5)
    rows = store.rows_of(np.array([29, 3, 17]))
    np.testing.assert_allclose(store.vectors(rows), direct[[29, 3, 17]], rtol=1e-5, atol=1e-5)
    # the index saved beside the store holds the same vectors under their source positions
    index = KnnIndex.load(tmp_path)
    d, ids = index.search(direct[:5], 1)
    np.testing.assert_array_equal(ids[:, 0], np.arange(5))
    assert np.all(d < 1e-3)


def test_float16_store(demo_random, direct, tmp_path):
    consumer, store = _run(demo_random, tmp_path, 8, dtype="float16")
    consumer.finish()
    assert next(store.shards())[0].dtype == np.float16
    np.testing.assert_allclose(store.features(), direct, rtol=2e-3, atol=2e-3)


def test_interrupted_features_resume_to_identical_store(demo_random, tmp_path):
    """Killed mid-way (after storing a batch, before the scan recorded it) and resumed: same rows,
    no duplicates, same index."""
    clean, clean_store = _run(demo_random, tmp_path / "a", 4)
    clean.finish()

    class Dies(FeatureConsumer):
        def update(self, batch, result):
            super().update(batch, result)
            if self.writer.count + self.writer._fill >= 14:
                raise KeyboardInterrupt

    model, params = demo_random
    src = open_source(SRC)
    b = tmp_path / "b"

    def consumer(cls):
        out = JobOutput(b, "features", {})
        return out, cls("fc", src, FeatureWriter(out, 128, "float32", {}), KnnIndex(128))

    out, dies = consumer(Dies)
    with pytest.raises(KeyboardInterrupt):
        scan(model, params, src, [dies], batch_size=4, out=out,
             checkpoint=ScanCheckpoint(tmp_path / "ck", "s", every=2))  # fmt: skip
    out, resumed = consumer(FeatureConsumer)
    scan(model, params, src, [resumed], batch_size=4, out=out,
         checkpoint=ScanCheckpoint(tmp_path / "ck", "s", every=2))  # fmt: skip
    resumed.finish()
    store = FeatureStore(b)
    assert len(store.meta["shards"]) >= 2  # it resumed: the checkpoint flushed a first shard
    np.testing.assert_array_equal(store.index(), np.arange(30))
    np.testing.assert_array_equal(store.features(), clean_store.features())
    q = clean_store.features()[::3]
    np.testing.assert_array_equal(KnnIndex.load(b).search(q, 4)[1], clean.index.search(q, 4)[1])


def _feed(consumer, rows, batch_size, process_index=0, process_count=1):
    """Stream SRC's share of a process into `consumer` with `rows` [30, D] as its features (the
    forward pass is tested above; here only the bookkeeping counts)."""
    model = entry("demo").build()
    for batch in stream(open_source(SRC), model.preprocess, batch_size,
                        process_index=process_index, process_count=process_count):  # fmt: skip
        consumer.update(batch, rows[np.maximum(batch.index, 0)])


@pytest.mark.parametrize(
    "factory,dtype,shard_bytes",
    [("Flat", "float32", 128 * 4 * 8), ("IVF4,Flat", "float16", 128 * 2 * 7)],
)
def test_merged_processes_equal_one_process_bitwise(direct, tmp_path, factory, dtype, shard_bytes):
    """Three processes store their shares; process 0 merges them: every shard file, the index
    and its ids are byte for byte those of one process (IVF trained on the same first rows)."""
    rows = direct.astype(dtype)
    src = open_source(SRC)

    def consumer(folder, part_of=None):
        out = JobOutput(folder, "features", {})
        writer = FeatureWriter(out, 128, dtype, {"source": SRC}, shard_bytes=shard_bytes)
        index = KnnIndex(128, "l2", factory, train_size=10)
        part = None
        if part_of is not None:
            part = FeatureWriter(JobOutput(part_folder(out, part_of), "part", {}), 128, dtype,
                                 shard_bytes=shard_bytes)  # fmt: skip
        return FeatureConsumer("fc", src, writer, index, part=part, process_index=part_of or 0)

    one = consumer(tmp_path / "one")
    _feed(one, rows, 4)
    one.finish()
    procs = [consumer(tmp_path / "three", k) for k in range(3)]
    for k, c in enumerate(procs):
        _feed(c, rows, 3, k, 3)
    for c in procs[1:]:
        procs[0].merge(c.state())
    procs[0].finish()
    a, b = tmp_path / "one", tmp_path / "three"
    assert (b / PARTS).exists()  # kept until the scan's checkpoint is gone
    for c in procs:
        c.cleanup()
    assert not (b / PARTS).exists()
    files = sorted(p.relative_to(a) for p in a.rglob("*") if p.is_file() and p.name != ".lock")
    assert len([f for f in files if f.parts[0] == "shards"]) > 4
    assert files == sorted(
        p.relative_to(b) for p in b.rglob("*") if p.is_file() and p.name != ".lock"
    )  # the run's lock (pid, host, start time) is no output
    for f in files:
        assert (a / f).read_bytes() == (b / f).read_bytes(), f


def test_cli_features_then_neighbors(tmp_path, capsys):
    f, n = tmp_path / "f", tmp_path / "n"
    common = ["--model", "demo", "--random-init", "--batch-size", "8"]
    assert main(["features", *common, "--data", SRC, "--out", str(f), "--eval-k", "3"]) == 0
    manifest = json.loads((f / "manifest.json").read_text())
    res = manifest["results"]
    assert res["count"] == 30 and res["dim"] == 128 and res["index"]["factory"] == "Flat"
    assert 0 <= res["precision_at_3"] <= 1 and res["queries"] == 30
    store = FeatureStore(f)
    x = store.features()
    assert main(["neighbors", "--index", str(f), "--query", "ids:4,11", "--k", "3",
                 "--out", str(n)]) == 0  # fmt: skip
    got = json.loads((n / "neighbors.json").read_text())
    for rec, q in zip(got, (4, 11), strict=True):
        d = np.linalg.norm(x - x[q], axis=1)
        d[q] = np.inf  # the query is not its own neighbour
        want = np.argsort(d, kind="stable")[:3]
        assert [nb["index"] for nb in rec["neighbors"]] == want.tolist()
        np.testing.assert_allclose([nb["distance"] for nb in rec["neighbors"]], d[want], atol=1e-4)
        assert (n / rec["png"]).exists()
    # queries from a data source are embedded with the index's model: the same images come back
    # at distance ~0
    q = tmp_path / "q"
    assert main(["neighbors", "--index", str(f), "--query", "shapes:2:5", "--k", "2",
                 "--out", str(q)]) == 0  # fmt: skip
    got = json.loads((q / "neighbors.json").read_text())
    assert [r["neighbors"][0]["index"] for r in got] == [0, 1]
    assert all(r["neighbors"][0]["distance"] < 1e-3 for r in got)


def test_cli_errors(tmp_path, capsys):
    assert main(["features", "--model", "demo", "--random-init", "--data", SRC,
                 "--layer", "nope", "--out", str(tmp_path / "x")]) == 2  # fmt: skip
    assert "conv1" in capsys.readouterr().err
    assert main(["neighbors", "--index", str(tmp_path), "--query", "ids:1",
                 "--out", str(tmp_path / "y")]) == 2  # fmt: skip
    assert "no feature store" in capsys.readouterr().err


def test_uses_four_devices():
    assert len(jax.local_devices()) == 4
