"""Results identical for 1 device, 4 devices and 2 processes x 2 devices (jax.distributed on
127.0.0.1 with gloo CPU collectives): patch mining, channel statistics and activation files."""

import json
import os
import socket
import subprocess
import sys

import numpy as np

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
        items = json.loads((other / "activations" / "items.json").read_text())
        assert [it["index"] for it in items] == list(range(30))
        for it in items[::7]:
            np.testing.assert_allclose(
                np.load(other / "activations" / it["npy"]),
                np.load(ref / "activations" / it["npy"]),
                rtol=1e-5,
                atol=1e-5,
            )
        m = json.loads((other / "patches" / "manifest.json").read_text())
        assert m["counts"]["images"] == 30
