"""Hostile and careless input files (issue 17, items 1, 2, 6, 8 and 10): crafted checkpoints,
`.safetensors`, params `.npz` and tampered `neighbors --index` folders each end in exit 2 with
one line on stderr, no traceback, fast, with bounded memory, nothing written outside `--out`
and no payload run; two runs on one `--out` are kept apart by its lock; and random mutations of
valid files never end in a traceback.

Most cases run in-process through `jaxviz.cli.main` (one JAX import for all); the ones whose
danger is time or memory (exponential hashing, zip and npz bombs, huge strided views, a FAISS
vector length past its file) run together in one child process that reports each case's time
and its own peak RSS.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import signal
import struct
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from jaxviz import cli
from jaxviz.errors import UsageError
from jaxviz.models.checkpoint import CheckpointError, read_state_dict
from jaxviz.runtime.lock import LOCK_FILE, OutLocked, holder, lock_out
from tests import hostile_files as hf

ROOT = Path(__file__).resolve().parents[1]
GiB = 1 << 30


@pytest.fixture(autouse=True)
def _no_cache(monkeypatch):
    monkeypatch.setenv("JAXVIZ_CACHE", "off")
    hf.register()


def _w(name: str = "conv1.weight") -> bytes:
    return hf.s(name)


# -- the crafted files: name -> writer(folder) returning (path, model spec or None) ----------


def _pth_cases() -> dict:
    """Checkpoints for `--model hostile_demo=PATH` (zip, legacy) and safetensors."""
    good = hf.tensor("0", 4704, 0, (32, 3, 7, 7), (147, 49, 7, 1))
    rec = {"0": bytes(4704 * 4)}
    z = {
        "zip_exp_hash": (hf.exp_hash_pickle(), {}),
        "zip_deep_tuple": (b"\x80\x02" + b"(" * 40 + b")" + b"t" * 40 + b".", {}),
        "zip_stride0_huge": (
            hf.state_pickle([(_w(), hf.tensor("0", 1, 0, (28000, 28000), (0, 0)))]),
            {"0": bytes(4)},
        ),
        "zip_bad_count": (hf.state_pickle([(_w(), hf.tensor("0", 9999, 0, (32,), (1,)))]), rec),
        "zip_100_dims": (
            hf.state_pickle([(_w(), hf.tensor("0", 4704, 0, (1,) * 100, (1,) * 100))]),
            rec,
        ),
        "zip_size_2_70": (
            hf.state_pickle([(_w(), hf.tensor("0", 4704, 0, (1 << 70,), (1,)))]),
            rec,
        ),
        "zip_string_sizes": (hf.state_pickle([(_w(), hf.tensor("0", 4704, 0, ("a",), (1,)))]), rec),
        "zip_negative_offset": (
            hf.state_pickle([(_w(), hf.tensor("0", 4704, -5, (4,), (1,)))]),
            rec,
        ),
        "zip_past_storage": (
            hf.state_pickle([(_w(), hf.tensor("0", 4704, 0, (32, 3, 7, 7), (147, 49, 7, 2)))]),
            rec,
        ),
        "zip_missing_record": (hf.state_pickle([(_w(), good)]), {}),
        "zip_os_system": (
            b"\x80\x02" + hf.g("os", "system") + hf.tup(hf.s("touch MARKER")) + b"R.",
            {},
        ),
        "zip_list_key": (b"\x80\x02}]Ns.", {}),
        "zip_set_opcode": (b"\x80\x04\x8f.", {}),
    }
    cases = {}
    for name, (pkl, records) in z.items():
        cases[name] = lambda d, pkl=pkl, records=records, name=name: _write(
            d, f"{name}.pth", lambda p: hf.write_zip(p, pkl, records)
        )
    cases["zip_truncated_file"] = lambda d: _write(
        d,
        "trunc.pth",
        lambda p: (
            hf.write_zip(p, hf.state_pickle([(_w(), good)]), rec),
            p.write_bytes(p.read_bytes()[:300]),
        ),
    )
    cases["legacy_exp_hash"] = lambda d: _write(
        d, "legacy_hash.pth", lambda p: hf.write_legacy(p, hf.exp_hash_pickle(), [], [])
    )
    cases["legacy_bad_count"] = lambda d: _write(
        d,
        "legacy_count.pth",
        lambda p: hf.write_legacy(
            p, hf.state_pickle([(_w(), good)]), ["0"], [(4703, bytes(4704 * 4))]
        ),
    )
    cases["legacy_huge_count"] = lambda d: _write(
        d,
        "legacy_huge.pth",
        lambda p: hf.write_legacy(
            p,
            hf.state_pickle([(_w(), hf.tensor("0", 1 << 40, 0, (4,), (1,)))]),
            ["0"],
            [(1 << 40, b"")],
        ),
    )
    cases["legacy_keys_not_list"] = lambda d: _write(
        d,
        "legacy_keys.pth",
        lambda p: p.write_bytes(
            _legacy_head() + hf.state_pickle([(_w(), good)]) + b"\x80\x02J\x05\x00\x00\x00."
        ),
    )
    st = {
        "st_header_past_file": (
            {"w": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}},
            b"",
            1 << 40,
        ),
        "st_not_json": (b"{not json", b"", None),
        "st_not_object": (b"[1, 2]", b"", None),
        "st_overlap": (
            {
                "conv1.weight": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
                "conv1.bias": {"dtype": "F32", "shape": [2], "data_offsets": [4, 12]},
            },
            bytes(12),
            None,
        ),
        "st_negative_offset": (
            {"w": {"dtype": "F32", "shape": [1], "data_offsets": [-4, 0]}},
            bytes(4),
            None,
        ),
        "st_huge_shape": (
            {"w": {"dtype": "F32", "shape": [1 << 40, 1 << 40], "data_offsets": [0, 4]}},
            bytes(4),
            None,
        ),
        "st_bad_dtype": (
            {"w": {"dtype": "X9", "shape": [1], "data_offsets": [0, 4]}},
            bytes(4),
            None,
        ),
        "st_deep_json": (b"[" * 100000 + b"]" * 100000, b"", None),
    }
    for name, (header, data, length) in st.items():
        cases[name] = lambda d, h=header, data=data, n=length, name=name: _write(
            d, f"{name}.safetensors", lambda p: hf.write_safetensors(p, h, data, n)
        )
    cases["st_too_short"] = lambda d: _write(
        d, "short.safetensors", lambda p: p.write_bytes(b"\x01")
    )
    return cases


def _legacy_head() -> bytes:
    import pickle

    return b"".join(
        pickle.dumps(x, protocol=2)
        for x in (0x1950A86A20F9469CFC6C, 1001, {"protocol_version": 1001, "little_endian": True})
    )


def _write(folder: Path, name: str, make) -> tuple[Path, str]:
    path = folder / name
    make(path)
    return path, f"hostile_demo={path}"


CHECKPOINT_CASES = _pth_cases()


def _run_cli(argv: list[str]) -> tuple[int, str, float]:
    err = io.StringIO()
    t = time.perf_counter()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        rc = cli.main(argv)
    return rc, err.getvalue(), time.perf_counter() - t


def _assert_refused(rc: int, err: str, seconds: float, what: str) -> None:
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert rc == 2, f"{what}: exit {rc}: {err[-2000:]}"
    assert len(lines) == 1 and "Traceback" not in err, f"{what}: {err[-2000:]}"
    assert lines[0].startswith("jaxviz ") and len(lines[0]) < 1000, lines[0]
    assert seconds < 20, f"{what}: {seconds:.1f} s"


def _files(folder: Path) -> set[Path]:
    return set(folder.rglob("*"))


def _assert_confined(before: set[Path], folder: Path, *outs: Path) -> None:
    new = {p for p in _files(folder) - before if not any(p == o or o in p.parents for o in outs)}
    assert not new, f"written outside --out: {sorted(map(str, new))}"


@pytest.mark.parametrize("case", sorted(CHECKPOINT_CASES))
def test_crafted_checkpoint_is_one_line(tmp_path, case):
    marker = tmp_path / "MARKER"
    inputs = tmp_path / "in"
    inputs.mkdir()
    os.chdir(tmp_path)  # a payload 'touch MARKER' would land here
    path, spec = CHECKPOINT_CASES[case](inputs)
    out = tmp_path / "out"
    before = _files(tmp_path)
    rc, err, seconds = _run_cli(["filters", "--model", spec, "--out", str(out)])
    _assert_refused(rc, err, seconds, case)
    assert str(path) in err  # the line names the file
    _assert_confined(before, tmp_path, out)
    assert not marker.exists()


def test_valid_checkpoints_still_load(tmp_path):
    """The bounded readers read what torch writes: zip, legacy, safetensors, with and without
    a DataParallel prefix, equal to the arrays saved."""
    import torch
    from safetensors.numpy import save_file

    state = hf.torch_state()
    sd = {k: torch.from_numpy(v) for k, v in state.items()}
    torch.save(sd, tmp_path / "a.pth")
    torch.save({"state_dict": {f"module.{k}": v for k, v in sd.items()}}, tmp_path / "b.pth")
    torch.save(sd, tmp_path / "c.pth", _use_new_zipfile_serialization=False)
    save_file(state, str(tmp_path / "d.safetensors"))
    for name in ("a.pth", "b.pth", "c.pth", "d.safetensors"):
        out = tmp_path / f"out_{name}"
        rc, err, _ = _run_cli(
            ["filters", "--model", f"hostile_demo={tmp_path / name}", "--out", str(out)]
        )
        assert rc == 0, err
        kernel = np.load(out / "conv1_weights.npy")
        np.testing.assert_array_equal(kernel, state["conv1.weight"].transpose(2, 3, 1, 0))


def test_reader_budget_without_model_shapes(tmp_path):
    """Without expected shapes, a tiny file still cannot make the reader allocate gigabytes."""
    path = tmp_path / "s.pth"
    hf.write_zip(
        path,
        hf.state_pickle([(_w("w"), hf.tensor("0", 1, 0, (28000, 28000), (0, 0)))]),
        {"0": bytes(4)},
    )
    with pytest.raises(CheckpointError, match="more than the .* allowed"):
        read_state_dict(path)
    ok = tmp_path / "ok.pth"
    hf.write_zip(
        ok,
        hf.state_pickle([(_w("w"), hf.tensor("0", 6, 1, (2, 2), (1, 2)))]),
        {"0": np.arange(6, dtype=np.float32).tobytes()},
    )
    want = np.array([[1, 3], [2, 4]], np.float32)  # offset 1, strides (1, 2) over 0..5
    np.testing.assert_array_equal(read_state_dict(ok)["w"], want)


# -- tampered neighbors --index folders ----------------------------------------------------


@pytest.fixture(scope="module")
def index_folder(tmp_path_factory) -> Path:
    """A small valid `jaxviz features` folder (8-D features of shapes:12, a Flat index)."""
    from jaxviz.index.feature_store import FeatureWriter
    from jaxviz.index.knn import KnnIndex
    from jaxviz.jobs.output import JobOutput

    folder = tmp_path_factory.mktemp("index")
    out = JobOutput(folder, "features", {})
    meta = {
        "source": "shapes:12:3",
        "class_names": None,
        "layer": "fc",
        "model": "demo",
        "random_init": False,
        "seed": 0,
        "compute_dtype": "float32",
        "metric": "l2",
    }
    x = np.random.default_rng(0).standard_normal((12, 8)).astype(np.float32)
    ids = np.arange(12)
    writer = FeatureWriter(out, 8, "float32", meta, shard_bytes=6 * 8 * 4)
    writer.add(x, ids, ids % 3, [f"shape{i}" for i in ids])
    writer.close()
    index = KnnIndex(8, "l2", "Flat", gpu=False)
    index.add(x, ids)
    index.save(out)
    del out
    return folder


def _json_edit(rel: str, edit):
    def tamper(d: Path):
        p = d / rel
        p.write_text(json.dumps(edit(json.loads(p.read_text()))))

    return tamper


def _bytes_edit(rel: str, edit):
    def tamper(d: Path):
        p = d / rel
        p.write_bytes(edit(p.read_bytes()))

    return tamper


def _faiss_vector_length(b: bytes) -> bytes:
    """A Flat index whose code vector claims 1 GiB (the file is 500 bytes)."""
    bb = bytearray(b)
    struct.pack_into("<Q", bb, 37, GiB)
    return bytes(bb)


def _npy(descr: str, shape: tuple[int, ...]) -> bytes:
    """An .npy header claiming `shape` with no data after it."""
    text = repr({"descr": descr, "fortran_order": False, "shape": shape}).encode()
    text += b" " * (63 - (len(text) + 10) % 64) + b"\n"
    return b"\x93NUMPY\x01\x00" + struct.pack("<H", len(text)) + text


INDEX_CASES = {
    "meta_not_json": _bytes_edit("features.json", lambda b: b"{oops"),
    "meta_no_dim": _json_edit(
        "features.json", lambda m: {k: v for k, v in m.items() if k != "dim"}
    ),
    "meta_dim_string": _json_edit("features.json", lambda m: {**m, "dim": "8"}),
    "meta_no_source": _json_edit(
        "features.json", lambda m: {k: v for k, v in m.items() if k != "source"}
    ),
    "meta_rows_lie": _json_edit(
        "features.json", lambda m: {**m, "shards": [{"rows": 1 << 39}] * 2}
    ),
    "meta_model_number": _json_edit("features.json", lambda m: {**m, "model": 5}),
    "shard_truncated": _bytes_edit("shards/index-00000.npy", lambda b: b[:90]),
    "shard_pickled": _bytes_edit(
        "shards/labels-00000.npy", lambda b: b.replace(b"'<i8'", b"'|O' ")
    ),
    "shard_huge_header": _bytes_edit("shards/index-00000.npy", lambda b: _npy("<i8", (1 << 40,))),
    "knn_not_json": _bytes_edit("knn.json", lambda b: b"\x00\x01"),
    "knn_no_metric": _json_edit(
        "knn.json", lambda m: {k: v for k, v in m.items() if k != "metric"}
    ),
    "knn_dim_mismatch": _json_edit("knn.json", lambda m: {**m, "dim": 9}),
    "faiss_junk": _bytes_edit("index.faiss", lambda b: b"hello world" * 3),
    "faiss_truncated": _bytes_edit("index.faiss", lambda b: b[:60]),
    "faiss_vector_length": _bytes_edit("index.faiss", _faiss_vector_length),
    "ids_wrong_dtype": _bytes_edit("ids.npy", lambda b: b.replace(b"'<i8'", b"'<f8'")),
    "ids_truncated": _bytes_edit("ids.npy", lambda b: b[:20]),
}


@pytest.mark.parametrize("case", sorted(INDEX_CASES))
def test_tampered_index_folder_is_one_line(tmp_path, index_folder, case):
    folder = tmp_path / "index"
    shutil.copytree(index_folder, folder)
    INDEX_CASES[case](folder)
    out = tmp_path / "out"
    before = _files(tmp_path)
    rc, err, seconds = _run_cli(
        ["neighbors", "--index", str(folder), "--query", "ids:1,2", "--out", str(out)]
    )
    _assert_refused(rc, err, seconds, case)
    _assert_confined(before, tmp_path, out)


# -- the same in a child process: time and peak memory of the dangerous ones ----------------

_CHILD = """
import contextlib, io, json, os, sys, time
os.environ["JAXVIZ_CACHE"] = "off"
from jaxviz import cli
from tests import hostile_files as hf
hf.register()
rows = []
for argv in json.loads(sys.argv[1]):
    err = io.StringIO()
    t = time.perf_counter()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        rc = cli.main(argv)
    rows.append([rc, err.getvalue(), time.perf_counter() - t])
# VmHWM: this process's own peak. ru_maxrss is not: Linux carries the forking parent's peak
# (a pytest worker's gigabytes) across fork and exec into it.
hwm = next(l for l in open("/proc/self/status") if l.startswith("VmHWM:"))
peak = int(hwm.split()[1]) * 1024
print(json.dumps({"rows": rows, "peak_rss": peak}))
"""


def test_dangerous_inputs_bounded_in_a_child(tmp_path, index_folder):
    """Exponential hashing (zip and legacy), a 1.25 GiB zip bomb record, a 28000^2 stride-0
    view, a params .npz member inflating to 1.25 GiB and a FAISS vector length of 1 GiB: each
    exits 2 in one line within 20 s, and the child's peak RSS stays under 1 GiB."""
    os.chdir(tmp_path)
    spec = lambda p: ["--model", f"hostile_demo={p}"]  # noqa: E731
    hf.write_zip(tmp_path / "hash.pth", hf.exp_hash_pickle())
    hf.write_legacy(tmp_path / "hash_legacy.pth", hf.exp_hash_pickle(), [], [])
    bomb_bytes = 80 << 24  # 1.25 GiB: inflated whole, it alone would break the 1 GiB bound
    big = hf.tensor("0", bomb_bytes // 4, 0, (bomb_bytes // 4,), (1,))
    hf.write_zip_bomb(tmp_path / "bomb.pth", hf.state_pickle([(_w(), big)]), "0", bomb_bytes)
    strided = hf.state_pickle([(_w(), hf.tensor("0", 1, 0, (28000, 28000), (0, 0)))])
    hf.write_zip(tmp_path / "stride0.pth", strided, {"0": bytes(4)})
    head = _npy("<f4", (bomb_bytes // 4,))
    bomb, crc = hf.deflated_zeros(bomb_bytes, head)
    member = ("conv1/params/conv/kernel.npy", bomb, 8, crc, len(head) + bomb_bytes)
    hf.write_raw_zip(tmp_path / "bomb.npz", [member])
    folder = tmp_path / "index"
    shutil.copytree(index_folder, folder)
    INDEX_CASES["faiss_vector_length"](folder)
    cases = [
        ["filters", *spec(tmp_path / "hash.pth")],
        ["filters", *spec(tmp_path / "hash_legacy.pth")],
        ["filters", *spec(tmp_path / "bomb.pth")],
        ["filters", *spec(tmp_path / "stride0.pth")],
        ["filters", "--model", f"demo={tmp_path / 'bomb.npz'}"],
        ["neighbors", "--index", str(folder), "--query", "ids:1"],
    ]
    cases = [[*c, "--out", str(tmp_path / f"out{k}")] for k, c in enumerate(cases)]
    before = _files(tmp_path)
    env = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    proc = subprocess.run(
        [sys.executable, "-c", _CHILD, json.dumps(cases)],
        capture_output=True,
        text=True,
        timeout=180,
        env=env,
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    for argv, (rc, err, seconds) in zip(cases, report["rows"], strict=True):
        _assert_refused(rc, err, seconds, " ".join(argv))
    assert report["peak_rss"] < GiB, report["peak_rss"]
    _assert_confined(before, tmp_path, *(tmp_path / f"out{k}" for k in range(len(cases))))
    assert not (tmp_path / "MARKER").exists()


# -- a locked --out ------------------------------------------------------------------------

_HOLD = """
import fcntl, json, os, socket, sys, time
fd = os.open(os.path.join(sys.argv[1], ".lock"), os.O_RDWR | os.O_CREAT)
fcntl.flock(fd, fcntl.LOCK_EX)
os.pwrite(fd, json.dumps({"pid": int(sys.argv[2]) or os.getpid(), "host": socket.gethostname(),
                          "started": "then"}).encode(), 0)
print("held", flush=True)
time.sleep(120)
"""


def _holder_process(out: Path, recorded_pid: int = 0) -> subprocess.Popen:
    """A process holding out/.lock (flock) whose record names `recorded_pid` (0: itself)."""
    proc = subprocess.Popen(
        [sys.executable, "-c", _HOLD, str(out), str(recorded_pid)],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout.readline().strip() == "held"
    return proc


def test_lock_is_reentrant_exclusive_and_survives_kill_9(tmp_path):
    out = tmp_path / "out"
    a = lock_out(out)
    b = lock_out(out)  # the same process again (a sweep and its jobs): no deadlock
    assert holder(out)["pid"] == os.getpid()
    a.release()
    assert b.held and holder(out)["pid"] == os.getpid()
    b.release()
    assert (out / LOCK_FILE).read_text() == ""  # released: nothing recorded
    proc = _holder_process(out)
    try:
        with pytest.raises(OutLocked, match=rf"in use by another jaxviz run \(pid {proc.pid} on "):
            lock_out(out)
    finally:
        proc.kill()
        proc.wait()
    with lock_out(out) as c:  # the kernel dropped the dead holder's flock
        assert c.held and holder(out)["pid"] == os.getpid()
    file_out = tmp_path / "file"
    file_out.write_text("x")
    with pytest.raises(UsageError, match="cannot create the folder"):
        lock_out(file_out)


def test_stale_lock_of_a_dead_holder_is_replaced(tmp_path):
    """A flock kept alive by an orphan (say, a forked worker) of a dead run on this host."""
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    out = tmp_path / "out"
    out.mkdir()
    orphan = _holder_process(out, recorded_pid=dead.pid)
    try:
        with lock_out(out) as lock:
            assert lock.held and holder(out)["pid"] == os.getpid()
    finally:
        orphan.kill()
        orphan.wait()


def _occlusion(out: Path) -> list[str]:
    return [
        sys.executable,
        "-m",
        "jaxviz.cli",
        "occlusion",
        "--model",
        "demo",
        "--data",
        "shapes:6:5",
        "--window",
        "16",
        "--stride",
        "8",
        "--batch-size",
        "2",
        "--checkpoint-every",
        "1",
        "--out",
        str(out),
    ]


def test_second_run_on_one_out_exits_2_and_kill_9_then_resume(tmp_path):
    out = tmp_path / "out"
    first = subprocess.Popen(_occlusion(out), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    progress = out / ".progress" / "p0.json"  # its first checkpoint (jobs/resume.py)
    deadline = time.time() + 120
    while time.time() < deadline and first.poll() is None:
        if progress.is_file():
            break
        time.sleep(0.01)
    first.send_signal(signal.SIGSTOP)  # frozen mid-job, still holding its lock
    try:
        assert first.poll() is None and not (out / "manifest.json").exists(), "finished too soon"
        t = time.time()
        second = subprocess.run(_occlusion(out), capture_output=True, text=True, timeout=120)
        lines = second.stderr.strip().splitlines()
        assert second.returncode == 2 and len(lines) == 1, second.stderr[-2000:]
        assert f"pid {first.pid} on " in lines[0] and "Traceback" not in second.stderr
        assert time.time() - t < 60  # never waits on the lock; JAX's start-up is most of it
    finally:
        first.kill()  # SIGKILL: no handler runs, the lock file stays behind
        first.wait()
    third = subprocess.run(_occlusion(out), capture_output=True, text=True, timeout=300)
    assert third.returncode == 0, third.stderr[-2000:]
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["counts"]["images"] == 6
    assert manifest["results"]["resumed_at_item"] >= 2  # it resumed the killed run's work


@pytest.mark.slow
def test_fuzz_mutated_checkpoints_end_in_ok_or_one_line(tmp_path):
    """150 random mutations (byte flips, truncations, insertions, pickle and header edits) of a
    valid zip .pth, legacy .pth and .safetensors: each loads or is refused with one line, in
    under 5 s, never with another exception (scripts/fuzz_checkpoints.py runs 1,000 through
    the CLI)."""
    report = hf.fuzz(tmp_path, 150, seed=int(os.environ.get("JAXVIZ_FUZZ_SEED", "0")))
    assert report["failures"] == []
    assert report["counts"]["ok"] > 0 and report["counts"]["refused"] > 0


def test_read_stops_at_its_time_limit(tmp_path):
    files = hf.valid_files(tmp_path)
    assert set(files) == {"zip.pth", "legacy.pth", "model.safetensors"}
    for name in ("zip.pth", "legacy.pth"):
        with pytest.raises(CheckpointError, match="longer than the time limit"):
            read_state_dict(tmp_path / name, timeout_s=0)
