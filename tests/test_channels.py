"""`jaxviz channels`: per-channel statistics of a layer equal those of one direct forward pass;
the same numbers as the patches job's, and sharing a sweep pass with it."""

import json

import numpy as np

from jaxviz.cli import main
from jaxviz.data.sources import open_source
from jaxviz.models.stage import forward

SRC = "shapes:20:4"


def test_channels_job_equals_direct_forward(demo_random, tmp_path):
    model, params = demo_random
    src = open_source(SRC)
    imgs = np.stack([model.preprocess.to_uint8(src.load(i)) for i in range(len(src))])
    _, taps = forward(model, params, model.preprocess.normalize(imgs), stop="conv3")
    acts = np.asarray(taps["conv3"], np.float64)
    out = tmp_path / "c"
    common = ["--model", "demo", "--random-init", "--data", SRC, "--batch-size", "6"]
    assert main(["channels", *common, "--layer", "conv3", "--out", str(out)]) == 0
    want = {
        "mean": acts.mean(axis=(0, 1, 2)),
        "std": acts.std(axis=(0, 1, 2)),
        "max": acts.max(axis=(0, 1, 2)),
        "frac_positive": (acts > 0).mean(axis=(0, 1, 2)),
    }
    for name, w in want.items():
        got = np.load(out / f"channel_{name}.npy")
        assert got.dtype == np.float32 and got.shape == (acts.shape[-1],)
        np.testing.assert_allclose(got, w, rtol=1e-4, atol=1e-5, err_msg=name)
    doc = json.loads((out / "channels.json").read_text())
    assert doc["layer"] == "conv3" and doc["units"] == acts[..., 0].size
    assert doc["dead"] == np.flatnonzero(want["frac_positive"] == 0).tolist()
    assert len(doc["channels"]) == acts.shape[-1]
    assert (out / "channels.png").exists() and (out / "index.html").exists()
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["counts"]["images"] == 20 and manifest["results"]["channels"] == acts.shape[-1]
    # the patches job writes the same statistics (one implementation)
    p = tmp_path / "p"
    assert main(["patches", *common, "--layer", "conv3", "--channels", "0-1", "--top", "2",
                 "--out", str(p)]) == 0  # fmt: skip
    for name in want:
        np.testing.assert_array_equal(
            np.load(p / f"channel_{name}.npy"), np.load(out / f"channel_{name}.npy")
        )


def test_channels_errors(tmp_path, capsys):
    argv = ["channels", "--model", "demo", "--random-init", "--data", SRC, "--out", str(tmp_path)]
    assert main([*argv, "--layer", "nope"]) == 2
    assert "conv1" in capsys.readouterr().err
