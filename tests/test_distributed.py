"""Results identical for 1 device, 4 devices and 2 processes x 2 devices (jax.distributed on
127.0.0.1 with gloo CPU collectives): patch mining, channel statistics, activation stores, the
feature store and its k-NN index, saliency and occlusion stores and tables (every process works
on those jobs)."""

import json
import os
import socket
import subprocess
import sys
import time

import faiss
import numpy as np

from jaxviz import results
from jaxviz.index.feature_store import FeatureStore

STUDY = """
[[part]]
name = "m"
model = "demo"
random_init = true
data = "shapes:30:9"
batch_size = 4

[part.patches]
layer = "conv2"
channels = "0-7"
top = 3
[part.activations]
layer = "conv3"
rows_per_chunk = 4
[part.features]
index = "Flat"
[part.channels]
layer = "conv3"
[part.saliency]
png = "2"
rows_per_chunk = 4
[part.occlusion]
limit = 6
window = 32
stride = 32
method = "full"
png = "0"
rows_per_chunk = 2
"""

EXACT = (
    "top_values.npy",
    "top_image.npy",
    "top_y.npy",
    "top_x.npy",
    "top_boxes.npy",
    "channel_max.npy",
)
CLOSE = ("channel_mean.npy", "channel_std.npy", "channel_frac_positive.npy")


def _env(devices: int) -> dict:
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    env.update(XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}", JAX_PLATFORMS="cpu")
    return env


def _sweep(study, out, extra=()):
    return [sys.executable, "-m", "jaxviz.cli", "sweep", str(study), "--out", str(out), *extra]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_one_device_four_devices_and_two_processes_agree(tmp_path):
    study = tmp_path / "s.toml"
    study.write_text(STUDY)
    for devices in (1, 4):
        subprocess.run(
            _sweep(study, tmp_path / f"d{devices}"),
            env=_env(devices),
            check=True,
            capture_output=True,
            timeout=600,
        )
    port = _free_port()
    procs = [
        subprocess.Popen(
            _sweep(
                study,
                tmp_path / "p2",
                [
                    "--coordinator",
                    f"127.0.0.1:{port}",
                    "--num-processes",
                    "2",
                    "--process-id",
                    str(i),
                ],
            ),
            env=_env(2),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
        for i in range(2)
    ]
    outs = [p.communicate(timeout=600)[0].decode() for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    ref = tmp_path / "d1" / "m"
    for other in (tmp_path / "d4" / "m", tmp_path / "p2" / "m"):
        for name in EXACT:
            np.testing.assert_array_equal(
                np.load(other / "patches" / name), np.load(ref / "patches" / name), err_msg=name
            )
        for name in CLOSE:
            np.testing.assert_allclose(
                np.load(other / "patches" / name),
                np.load(ref / "patches" / name),
                rtol=1e-5,
                atol=1e-6,
            )
        got, want = results.open(other / "activations"), results.open(ref / "activations")
        assert got.table["index"].to_pylist() == list(range(30))
        assert got.table == want.table
        np.testing.assert_allclose(
            got.read("activations", range(30)),
            want.read("activations", range(30)),
            rtol=1e-5,
            atol=1e-5,
        )
        m = json.loads((other / "patches" / "manifest.json").read_text())
        assert m["counts"]["images"] == 30
        _same_features(other / "features", ref / "features")
        for name in ("channel_max.npy", *CLOSE):
            np.testing.assert_allclose(
                np.load(other / "channels" / name),
                np.load(ref / "channels" / name),
                rtol=1e-5,
                atol=1e-6,
            )
        for job in ("saliency", "occlusion"):
            got, want = results.open(other / job), results.open(ref / job)
            for column in ("index", "target", "skipped"):
                assert got.table[column] == want.table[column]
            for store, array in want.arrays.items():
                rows = range(array.shape[0])
                np.testing.assert_allclose(
                    got.read(store, rows), want.read(store, rows), rtol=1e-4, atol=1e-6
                )
    assert not (tmp_path / "p2" / "m" / "features" / ".parts").exists()
    events = [json.loads(ln) for ln in (tmp_path / "p2" / "events.jsonl").read_text().splitlines()]
    for job in ("m/saliency", "m/occlusion"):  # every process works on every per-item job
        starts = [e["process"] for e in events if e["event"] == "job_start" and job in e["jobs"]]
        assert sorted(starts) == [0, 1]


def _same_features(got, ref):
    """Same rows in source order (ids, labels, shard layout), same vectors; the index holds
    exactly the store's rows under their source positions."""
    a, b = FeatureStore(got), FeatureStore(ref)
    assert a.meta["shards"] == b.meta["shards"] and a.meta["complete"]
    np.testing.assert_array_equal(a.index(), np.arange(30))
    np.testing.assert_array_equal(a.labels(), b.labels())
    assert a.ids().tolist() == b.ids().tolist()
    np.testing.assert_allclose(a.features(), b.features(), rtol=1e-5, atol=1e-6)
    index = faiss.read_index(str(got / "index.faiss"))
    np.testing.assert_array_equal(index.reconstruct_n(0, index.ntotal), a.features())
    np.testing.assert_array_equal(np.load(got / "ids.npy"), np.arange(30))


KILL_STUDY = """
[[part]]
name = "m"
model = "demo"
random_init = true
data = "shapes:240:2"
batch_size = 2

[part.features]
index = "Flat"
workers = {workers}
[part.patches]
workers = {workers}
layer = "conv2"
channels = "0-7"
top = 3
"""


def _files(root):
    skip = {"manifest.json", "index.html"}  # timings differ between runs
    return {
        p.relative_to(root): p.read_bytes()
        for p in sorted(root.rglob("*"))
        if p.is_file() and p.name not in skip and not p.name.startswith(".")
    }


def test_kill_9_with_two_workers_resumes_byte_equal(tmp_path):
    """features + patches in one pass with 2 decoding processes, killed with SIGKILL after a
    checkpoint, then rerun: every output file equals a clean run's (with no workers)."""
    from jaxviz.cli import main

    for w in (0, 2):
        (tmp_path / f"s{w}.toml").write_text(KILL_STUDY.format(workers=w))
    assert main(["sweep", str(tmp_path / "s0.toml"), "--out", str(tmp_path / "clean")]) == 0
    out = tmp_path / "killed"
    cmd = _sweep(tmp_path / "s2.toml", out, ["--checkpoint-every", "3"])
    proc = subprocess.Popen(cmd, env=_env(1), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    ckpt = out / "m" / "features" / ".scan-checkpoint"
    deadline = time.monotonic() + 300
    while not any(ckpt.glob("*/_CHECKPOINT_METADATA")) and time.monotonic() < deadline:
        assert proc.poll() is None, proc.stderr.read().decode()
        time.sleep(0.02)
    proc.kill()
    proc.wait()
    assert not (out / "m" / "features" / "manifest.json").exists()  # killed mid-way
    assert main(["sweep", str(tmp_path / "s2.toml"), "--out", str(out)]) == 0
    for job in ("features", "patches"):
        clean, resumed = _files(tmp_path / "clean" / "m" / job), _files(out / "m" / job)
        assert clean.keys() == resumed.keys() and len(clean) > 3, job
        for name, data in clean.items():
            assert resumed[name] == data, f"{job}/{name}"
