"""Per-image jobs (occlusion, attribution) resume mid-job: after kill -9 at a random batch, the
rerun's outputs equal an uninterrupted run's, with no image counted twice or missed."""

import json
import random
import subprocess
import sys
import time

import pytest

# job -> (arguments, images): a batch of saliency takes milliseconds, so it gets more images to
# leave the test time to kill it after its first checkpoints.
JOBS = {
    "occlusion": (["occlusion", "--window", "16", "--stride", "8"], 24),
    "saliency": (["saliency"], 96),
}


def _cmd(job, out):
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
        "--out",
        str(out),
    ]


def _outputs(root):
    files = {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*.npy"))}
    files["items.json"] = (root / "items.json").read_bytes()
    return files


@pytest.mark.parametrize("job", sorted(JOBS))
def test_kill_9_mid_job_then_resume_equals_clean_run(tmp_path, job):
    clean, broken = tmp_path / "clean", tmp_path / "broken"
    subprocess.run(_cmd(job, clean), check=True, capture_output=True, timeout=300)
    proc = subprocess.Popen(_cmd(job, broken), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    kill_after = random.randint(1, 4)  # checkpoints saved = batches done
    ck = broken / ".item-checkpoint"
    deadline = time.time() + 240
    while time.time() < deadline and proc.poll() is None:
        steps = [int(p.name) for p in (ck.iterdir() if ck.is_dir() else []) if p.name.isdigit()]
        if steps and max(steps) >= kill_after:
            break
        time.sleep(0.01)
    proc.kill()  # SIGKILL: no handler runs
    proc.wait()
    assert not (broken / "manifest.json").exists(), "killed too late to test"
    assert ck.is_dir(), "killed before the first checkpoint"
    subprocess.run(_cmd(job, broken), check=True, capture_output=True, timeout=300)
    a, b = _outputs(clean), _outputs(broken)
    n = JOBS[job][1]
    assert a.keys() == b.keys() and len(a) > n
    assert [k for k in a if a[k] != b[k]] == []
    m = json.loads((broken / "manifest.json").read_text())
    assert m["counts"]["images"] == n
    assert m["results"]["resumed_at_index"] >= 2  # it resumed, it did not start over
    assert not ck.exists()
