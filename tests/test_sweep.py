"""Sweeps: up-front validation, shared passes, resume, refusal of a changed study, the report."""

import json
import os
import random
import subprocess
import sys
import time

import numpy as np
import pytest

from jaxviz import results
from jaxviz.cli import main
from jaxviz.errors import UsageError
from jaxviz.jobs.study import load_study

STUDY = """
[study]
name = "tiny"

[[part]]
name = "d"
model = "demo"
random_init = true
data = "shapes:12:4"
batch_size = 4

[part.filters]
[part.activations]
layer = "conv1"
limit = 3
[part.patches]
layer = "conv2"
channels = "0-3"
top = 2
limit = 3
"""


def _events(out):
    return [json.loads(ln) for ln in (out / "events.jsonl").read_text().splitlines()]


def test_sweep_runs_shares_a_pass_and_resumes(tmp_path):
    study = tmp_path / "s.toml"
    study.write_text(STUDY)
    out = tmp_path / "out"
    assert main(["sweep", str(study), "--out", str(out)]) == 0
    starts = [e["jobs"] for e in _events(out) if e["event"] == "job_start"]
    assert ["d/patches", "d/activations"] in starts  # one shared pass
    html = (out / "index.html").read_text()
    assert "d/filters/conv1_filters.png" in html and "d/patches/" in html
    first = (out / "d" / "patches" / "top_values.npy").read_bytes()
    assert main(["sweep", str(study), "--out", str(out)]) == 0
    skipped = [e for e in _events(out) if e["event"] == "job_skipped"]
    assert {e["job"] for e in skipped} == {"d/filters", "d/activations", "d/patches"}
    assert (out / "d" / "patches" / "top_values.npy").read_bytes() == first


def test_changed_study_with_same_out_is_refused(tmp_path):
    out = tmp_path / "out"
    (tmp_path / "a.toml").write_text(STUDY)
    (tmp_path / "b.toml").write_text(STUDY.replace("top = 2", "top = 3"))
    assert main(["sweep", str(tmp_path / "a.toml"), "--out", str(out)]) == 0
    with pytest.raises(UsageError, match="--restart"):
        from jaxviz.jobs.sweep import run_study

        run_study(load_study((tmp_path / "b.toml").read_text(), out), out, restart=False)
    assert main(["sweep", str(tmp_path / "b.toml"), "--out", str(out), "--restart"]) == 0


@pytest.mark.parametrize(
    "edit,needle",
    [
        (("[study]", "[studdy]"), "unknown top-level key in"),
        (("[part.filters]", "[part.filterz]"), "unknown key 'filterz'"),
        (("top = 2", "topp = 2"), "unknown option 'topp'"),
        (('layer = "conv2"', 'layer = "conv7"'), "unknown layer 'conv7'"),
        (('data = "shapes:12:4"', 'data = "shapes:x"'), "shapes:N[:SEED]"),
        (("top = 2", "top = 'many'"), "invalid int value"),
    ],
)
def test_bad_study_is_refused_before_any_work(tmp_path, edit, needle):
    with pytest.raises(UsageError, match=needle.replace("[", r"\[")):
        load_study(STUDY.replace(*edit), tmp_path)
    assert not (tmp_path / "d").exists()


def test_dry_run_prints_plan(tmp_path, capsys):
    (tmp_path / "s.toml").write_text(STUDY)
    assert main(["sweep", str(tmp_path / "s.toml"), "--dry-run", "--out", str(tmp_path)]) == 0
    text = capsys.readouterr().out
    assert "patches + activations (one shared pass)" in text and "estimated work" in text


KILL_STUDY = """
[[part]]
name = "k"
model = "demo"
random_init = true
data = "shapes:160:2"
batch_size = 8

[part.features]
index = "Flat"
[part.activations]
layer = "conv4"
"""


def _sweep_cmd(study, out):
    return [
        sys.executable,
        "-m",
        "jaxviz.cli",
        "sweep",
        str(study),
        "--out",
        str(out),
        "--checkpoint-every",
        "2",
    ]


def _arrays(root):
    """Every .npy and store chunk, as bytes."""
    files = [p for p in sorted(root.rglob("*")) if p.suffix == ".npy" or ".zarr/" in str(p)]
    return {str(p.relative_to(root)): p.read_bytes() for p in files if p.is_file()}


def test_kill_9_at_a_random_batch_then_resume_equals_clean_run(tmp_path):
    study = tmp_path / "s.toml"
    study.write_text(KILL_STUDY)
    clean, broken = tmp_path / "clean", tmp_path / "broken"
    subprocess.run(_sweep_cmd(study, clean), check=True, capture_output=True, timeout=600)
    proc = subprocess.Popen(
        _sweep_cmd(study, broken), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    kill_after = random.randint(1, 6)  # checkpoints saved, i.e. batches done / 2
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        ck = broken / "k" / "features" / ".scan-checkpoint"
        steps = [int(n) for n in (os.listdir(ck) if ck.is_dir() else []) if n.isdigit()]
        if steps and max(steps) >= kill_after:
            break
        time.sleep(0.01)
    proc.kill()  # SIGKILL at a random batch: no handler runs
    proc.wait()
    events = [json.loads(ln) for ln in (broken / "events.jsonl").read_text().splitlines()]
    assert not any(e["event"] == "sweep_done" for e in events), "killed too late to test"
    subprocess.run(_sweep_cmd(study, broken), check=True, capture_output=True, timeout=600)
    a, b = _arrays(clean), _arrays(broken)
    assert a.keys() == b.keys() and any("activations.zarr/" in k for k in a)
    tables = [results.open(r / "k" / "activations").table for r in (clean, broken)]
    assert tables[0] == tables[1] and tables[0].num_rows == 160
    assert [k for k in a if a[k] != b[k]] == []
    m = json.loads((broken / "k" / "activations" / "manifest.json").read_text())
    assert m["counts"]["images"] == 160


def test_five_percent_corrupt_files_each_good_file_exactly_once(tmp_path):
    """40 files, 2 of them corrupt: both in `skipped`, every good file in the features exactly
    once, in the activations exactly once."""
    from PIL import Image

    from jaxviz.index.feature_store import FeatureStore

    data = tmp_path / "data"
    data.mkdir()
    rng = np.random.default_rng(0)
    for i in range(40):
        path = data / f"{i:02d}.png"
        if i in (7, 31):
            path.write_bytes(b"\x89PNG\r\n\x1a\n" + rng.bytes(50))  # truncated garbage
        else:
            Image.fromarray(rng.integers(0, 255, (48, 40, 3), np.uint8)).save(path)
    study = tmp_path / "s.toml"
    study.write_text(f"""
[[part]]
name = "c"
model = "demo"
random_init = true
data = "{data}"
batch_size = 8
[part.features]
index = "Flat"
[part.activations]
layer = "conv1"
""")
    out = tmp_path / "out"
    assert main(["sweep", str(study), "--out", str(out)]) == 0
    for job in ("features", "activations"):
        m = json.loads((out / "c" / job / "manifest.json").read_text())
        assert sorted(s["id"].rsplit("/", 1)[1] for s in m["skipped"]) == ["07.png", "31.png"]
        assert m["counts"]["images"] == 38
    store = FeatureStore(out / "c" / "features")
    index = np.concatenate([idx for _, idx, _ in store.shards()])
    assert sorted(index.tolist()) == [i for i in range(40) if i not in (7, 31)]
    table = results.open(out / "c" / "activations").table
    assert table["index"].to_pylist() == list(range(40))  # skipped items have their rows too
    assert [r["index"] for r in table.to_pylist() if r["skipped"]] == [7, 31]
