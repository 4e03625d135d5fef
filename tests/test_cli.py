"""The CLI contract: jobs write manifest/npy/png/index.html; bad usage exits 2 with one line."""

import errno
import json
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from jaxviz import results
from jaxviz.cli import main


def test_filters_writes_grid_and_raw_weights(tmp_path, demo_random):
    assert main(["filters", "--model", "demo", "--random-init", "--out", str(tmp_path)]) == 0
    m = json.loads((tmp_path / "manifest.json").read_text())
    w = np.load(tmp_path / "conv1_weights.npy")
    assert w.shape == (7, 7, 3, 32) and m["results"]["layer"] == "conv1"
    np.testing.assert_array_equal(
        w, np.asarray(demo_random[1]["conv1"]["params"]["conv"]["kernel"])
    )
    grid = np.asarray(Image.open(tmp_path / "conv1_filters.png"))
    assert grid.ndim == 3 and grid.shape[2] == 3
    assert "conv1_filters.png" in (tmp_path / "index.html").read_text()


def test_activations_on_a_folder_with_bad_files(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    rgb = np.random.default_rng(0).integers(0, 255, (70, 60, 3), np.uint8)
    Image.fromarray(rgb).save(data / "ok.png")
    Image.fromarray(rgb[..., 0]).save(data / "gray.png")
    Image.fromarray(np.dstack([rgb, rgb[..., :1]])).save(data / "rgba.png")
    Image.fromarray(rgb).convert("CMYK").save(data / "cmyk.jpg")
    (data / "empty.jpg").write_bytes(b"")
    (data / "text.png").write_text("not a png")
    out = tmp_path / "out"
    rc = main(
        [
            "activations",
            "--model",
            "demo",
            "--random-init",
            "--layer",
            "conv2",
            "--data",
            str(data),
            "--out",
            str(out),
            "--batch-size",
            "3",
        ]
    )
    assert rc == 0
    m = json.loads((out / "manifest.json").read_text())
    assert sorted(s["id"].rsplit("/", 1)[1] for s in m["skipped"]) == ["empty.jpg", "text.png"]
    assert m["counts"]["images"] == 4
    r = results.open(out)
    assert r.arrays["activations"].shape == (6, 16, 16, 64)
    rows = r.table.sort_by("index").to_pylist()  # every item has its row, skipped ones too
    assert [row["index"] for row in rows] == list(range(6))
    bad = [row["index"] for row in rows if row["skipped"]]
    assert sorted(rows[i]["id"].rsplit("/", 1)[1] for i in bad) == ["empty.jpg", "text.png"]
    assert not np.asarray(r.read("activations", bad)).any()  # their store rows stay 0
    good = [row["index"] for row in rows if not row["skipped"]]
    assert np.abs(r.read("activations", good)).sum(axis=(1, 2, 3)).all()


@pytest.mark.parametrize(
    "argv,needle",
    [
        (["filters", "--model", "nosuch"], "unknown model 'nosuch'; choose from: "),
        (
            [
                "activations",
                "--model",
                "demo",
                "--random-init",
                "--layer",
                "conv9",
                "--data",
                "shapes:2",
            ],
            "conv1, pool1, conv2",
        ),
        (
            [
                "activations",
                "--model",
                "demo",
                "--random-init",
                "--layer",
                "fc",
                "--data",
                "shapes:2",
            ],
            "no spatial map",
        ),
        (
            [
                "activations",
                "--model",
                "demo",
                "--random-init",
                "--layer",
                "conv1",
                "--data",
                "shapes:x",
            ],
            "shapes:N[:SEED]",
        ),
        (
            [
                "activations",
                "--model",
                "demo",
                "--random-init",
                "--layer",
                "conv1",
                "--data",
                "/no/such/path",
            ],
            "no such file",
        ),
    ],
)
def test_bad_usage_exits_2_with_one_clear_line(argv, needle, tmp_path):
    r = subprocess.run(
        [sys.executable, "-m", "jaxviz.cli", *argv, "--out", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 2, r.stderr
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and needle in lines[0] and "Traceback" not in r.stderr, r.stderr


@pytest.mark.parametrize(
    "error",
    [
        OSError(errno.ENOSPC, "No space left on device", "OUT/file"),
        ValueError("Error writing local file: [OS error 28: No space left on device]"),
    ],
)
def test_full_disk_exits_1_with_one_line(error, tmp_path, monkeypatch, capsys):
    """A full disk (an OSError, or a store library's error with the OS text) is one line."""

    def full(path, write):
        raise error

    monkeypatch.setattr("jaxviz.jobs.output.atomic_write", full)
    assert main(["filters", "--model", "demo", "--random-init", "--out", str(tmp_path)]) == 1
    lines = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
    assert len(lines) == 1 and "no space left on the device" in lines[0], lines
    assert ("writing OUT/file" in lines[0]) == isinstance(error, OSError)


def test_models_lists_receptive_fields(capsys):
    assert main(["models", "demo", "--json"]) == 0
    rows = {r["stage"]: r for r in json.loads(capsys.readouterr().out)["demo"]["stages"]}
    assert rows["conv1"]["shape"] == [32, 32, 32] and rows["conv1"]["rf_size"] == [7, 7]
    assert rows["conv2"]["rf_size"] == [17, 17] and rows["conv2"]["rf_stride"] == [4, 4]
    assert "rf_size" not in rows["fc"]
