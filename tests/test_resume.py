"""Per-item jobs (occlusion, saliency) at dataset scale: 1 process and 2 processes x 2 devices
(jax.distributed on 127.0.0.1, gloo) write byte-equal stores and equal item tables; after kill -9
at a random batch, the rerun's outputs and manifest equal an uninterrupted run's."""

import json
import os
import random
import signal
import subprocess
import sys
import time

import pyarrow.parquet as pq
import pytest

from tests.conftest import built_once
from tests.test_distributed import _env, _free_port

# job -> (arguments, items): a batch of saliency takes milliseconds, so it gets more items to
# leave the test time to kill it after its first checkpoints.
JOBS = {
    "occlusion": (["occlusion", "--window", "16", "--stride", "8", "--method", "full"], 24),
    "saliency": (["saliency"], 96),
}


def _cmd(job, out, extra=()):
    args, n = JOBS[job]
    return [
        sys.executable,
        "-m",
        "jaxviz.cli",
        *args,
        "--model",
        "demo",
        "--data",
        f"shapes:{n}:5",
        "--batch-size",
        "2",
        "--checkpoint-every",
        "1",
        "--rows-per-chunk",
        "4",
        "--png",
        "6",
        "--out",
        str(out),
        *extra,
    ]


def _launch(job, out, processes):
    """Start the job on `processes` processes of 2 CPU devices each."""
    if processes == 1:
        return [subprocess.Popen(_cmd(job, out), env=_env(2), stderr=subprocess.PIPE)]
    port = _free_port()
    return [
        subprocess.Popen(
            _cmd(job, out, ["--coordinator", f"127.0.0.1:{port}", "--num-processes"])
            + [str(processes), "--process-id", str(k)],
            env=_env(2),
            stderr=subprocess.PIPE,
        )
        for k in range(processes)
    ]


def _run(job, out, processes):
    procs = _launch(job, out, processes)
    errs = [p.communicate(timeout=300)[1].decode() for p in procs]
    assert [p.returncode for p in procs] == [0] * processes, errs


def _outputs(root):
    """Every store chunk and PNG as bytes; the table as Python rows."""
    files = {
        str(p.relative_to(root)): p.read_bytes()
        for p in sorted(root.rglob("*"))
        if p.is_file() and (".zarr" in str(p) or p.suffix == ".png")
    }
    files["items.parquet"] = pq.read_table(root / "items.parquet").to_pylist()
    return files


def _clean_runs(root):
    for job in JOBS:
        _run(job, root / job, 1)


@pytest.fixture(scope="module")
def clean(tmp_path_factory):
    """Uninterrupted one-process runs of each job (made once, shared by the xdist workers)."""
    return built_once(tmp_path_factory, "resume-clean", _clean_runs)


@pytest.mark.parametrize("job", ["saliency"])  # occlusion: in the kill test, on 2 processes
def test_two_processes_write_what_one_writes(clean, tmp_path, job):
    _run(job, tmp_path, 2)
    a, b = _outputs(clean / job), _outputs(tmp_path)
    n = JOBS[job][1]
    assert a.keys() == b.keys() and len(a["items.parquet"]) == n
    assert [k for k in a if a[k] != b[k]] == []
    ma, mb = (json.loads((r / "manifest.json").read_text()) for r in (clean / job, tmp_path))
    assert mb["files"] == ma["files"] and mb["counts"] == ma["counts"]
    assert mb["results"]["pointing_game"] == ma["results"]["pointing_game"]
    assert not (tmp_path / ".progress").exists() and not (tmp_path / ".parts").exists()


@pytest.mark.parametrize("job,processes", [("occlusion", 2), ("saliency", 1)])
def test_kill_9_mid_job_then_resume_equals_clean_run(clean, tmp_path, job, processes):
    procs = _launch(job, tmp_path, processes)
    kill_after = random.randint(1, 3)  # progress saves of process 0 = its batches done
    progress = tmp_path / ".progress" / "p0.json"
    deadline = time.time() + 240
    while time.time() < deadline and all(p.poll() is None for p in procs):
        if progress.is_file() and json.loads(progress.read_text())["position"] >= kill_after * 2:
            break
        time.sleep(0.01)
    for p in procs:
        os.kill(p.pid, signal.SIGKILL)  # no handler runs
        p.wait()
    assert not (tmp_path / "manifest.json").exists(), "killed too late to test"
    assert progress.is_file(), "killed before the first checkpoint"
    # what tensorstore leaves when killed mid-write of a chunk (KEY.__lock, renamed over KEY
    # once written): the resume deletes it
    store = next(tmp_path.glob("*.zarr"))
    (store / "c" / "0.__lock").parent.mkdir(exist_ok=True)
    (store / "c" / "0.__lock").write_bytes(b"half a chunk")
    _run(job, tmp_path, processes)
    a, b = _outputs(clean / job), _outputs(tmp_path)
    assert [k for k in a.keys() | b.keys() if a.get(k) != b.get(k)] == []
    ma, mb = (json.loads((r / "manifest.json").read_text()) for r in (clean / job, tmp_path))
    assert mb["files"] == ma["files"]  # the files written before the kill are listed too
    assert mb["counts"]["images"] == JOBS[job][1]
    assert mb["results"]["resumed_at_item"] >= 2  # it resumed, it did not start over


def test_another_job_or_older_layout_is_refused(clean, tmp_path):
    """An --out of another job or of the older layout: exit 2, nothing overwritten."""
    from jaxviz.cli import main

    before = (clean / "saliency" / "items.parquet").read_bytes()
    assert main(_cmd("occlusion", clean / "saliency")[3:]) == 2
    assert (clean / "saliency" / "items.parquet").read_bytes() == before
    old = tmp_path / "old"
    old.mkdir()
    (old / "manifest.json").write_text("{}")  # layout 1 wrote no .jaxviz marker
    assert main(_cmd("saliency", old)[3:]) == 2
    assert (old / "manifest.json").read_text() == "{}"


def test_resume_with_another_process_count_is_refused(tmp_path):
    from jaxviz.errors import UsageError
    from jaxviz.jobs.resume import ProgressRecord, signature

    ProgressRecord(tmp_path, signature({"a": 1}, process_count=2), 0).start()
    assert ProgressRecord(tmp_path, signature({"a": 1}, process_count=2), 1).resumable()
    assert not ProgressRecord(tmp_path, signature({"a": 2}, process_count=1), 0).resumable()
    with pytest.raises(UsageError, match="unfinished run of 2 process"):
        ProgressRecord(tmp_path, signature({"a": 1}, process_count=1), 0).resumable()
