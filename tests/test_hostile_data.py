"""Hostile and careless data (issue 17): symlink loops, FIFOs, sockets, devices, empty files,
zero-size images and a compressed .npz bomb end in exit 0 with the input listed in `skipped`
(or exit 2), one stderr line, no traceback, in bounded time and memory."""

import json
import os
import socket
import subprocess
import sys
import time
import tracemalloc
import zipfile

import numpy as np
from numpy.lib import format as npformat
from PIL import Image

from jaxviz.cli import main
from jaxviz.data.pipeline import stream
from jaxviz.data.sources import open_source
from jaxviz.models.preprocess import Preprocess

PRE = Preprocess((32, 32), None, (0.5,) * 3, (0.25,) * 3)


CHILD = """
import sys
from jaxviz.cli import main
try:
    code = main(sys.argv[2:])
finally:  # this process's own peak RSS (ru_maxrss would include the parent's, across exec)
    with open("/proc/self/status") as f:
        hwm = next(line.split()[1] for line in f if line.startswith("VmHWM:"))
    with open(sys.argv[1], "w") as f:
        f.write(hwm)
sys.exit(code)
"""


def _run(argv, tmp_path, timeout=120):
    """(exit code, stderr, wall seconds, peak RSS bytes) of `jaxviz ARGV` in a child."""
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    hwm = tmp_path / "hwm"
    t = time.monotonic()
    cmd = [sys.executable, "-c", CHILD, str(hwm), *argv]
    p = subprocess.run(
        cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, timeout=timeout
    )
    return p.returncode, p.stderr.decode(), time.monotonic() - t, int(hwm.read_text()) * 1024


def test_hostile_folder_is_listed_not_followed_not_blocking(tmp_path):
    data = tmp_path / "d"
    (data / "sub").mkdir(parents=True)
    Image.new("RGB", (40, 40), (200, 30, 30)).save(data / "good.png")
    Image.new("RGB", (40, 40), (30, 200, 30)).save(data / "sub" / "ok.png")
    os.symlink(".", data / "loop")  # a link to the folder itself
    os.symlink("..", data / "sub" / "up")  # and one back up from a subfolder
    os.mkfifo(data / "pipe.png")  # reading it would block forever
    with socket.socket(socket.AF_UNIX) as s:
        s.bind(str(data / "sock.png"))
    os.symlink("/dev/zero", data / "zero.jpg")  # a device: endless bytes
    (data / "empty.png").write_bytes(b"")
    out = tmp_path / "out"
    argv = ["features", "--model", "demo", "--random-init", "--data", str(data),
            "--batch-size", "4", "--out", str(out)]  # fmt: skip
    code, err, wall, rss = _run(argv, tmp_path)
    assert code == 0, err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    assert wall < 90 and rss < 1 << 30, (wall, rss)
    skipped = {
        s["id"]: s["reason"] for s in json.loads((out / "manifest.json").read_text())["skipped"]
    }
    want = {"loop": "symlink loop", "sub/up": "symlink loop", "pipe.png": "FIFO",
            "sock.png": "socket", "zero.jpg": "device", "empty.png": "empty"}  # fmt: skip
    assert {os.path.relpath(k, data): v for k, v in skipped.items()}.keys() == want.keys()
    for k, v in skipped.items():
        assert want[os.path.relpath(k, data)] in v, (k, v)
    assert json.loads((out / "manifest.json").read_text())["counts"]["images"] == 2


def _bomb(path, n=1024, side=128):
    """An .npz whose 'images' member inflates to n * side * side * 3 bytes of zeros (48 MiB by
    default) from a file of about 50 kB."""
    with (
        zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED, compresslevel=1) as z,
        z.open("images.npy", "w", force_zip64=True) as m,
    ):
        header = {"descr": "|u1", "fortran_order": False, "shape": (n, side, side, 3)}
        npformat.write_array_header_2_0(m, header)
        chunk = bytes(side * side * 3 * 64)
        for _ in range(n // 64):
            m.write(chunk)


def test_compressed_npz_is_read_lazily(tmp_path):
    path = tmp_path / "bomb.npz"
    _bomb(path)
    assert path.stat().st_size < 2 << 20
    list(stream(open_source("shapes:2"), PRE, 2))  # imports and thread pools, outside the count
    tracemalloc.start()
    try:
        src = open_source(str(path))
        batches = list(stream(src, PRE, 2, stop=2))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert len(src) == 1024 and [b.count for b in batches] == [2]
    assert peak < 8 << 20, peak  # two 48 kB images, not the 48 MiB array


def test_zero_size_images_are_skipped(tmp_path, capsys):
    np.save(tmp_path / "z.npy", np.zeros((3, 0, 5, 3), np.uint8))
    skipped = []
    assert list(stream(open_source(str(tmp_path / "z.npy")), PRE, 2,
                       on_skip=lambda *s: skipped.append(s))) == []  # fmt: skip
    assert [s[0] for s in skipped] == [0, 1, 2] and all("zero-size" in s[2] for s in skipped)
    argv = ["features", "--model", "demo", "--random-init", "--data", str(tmp_path / "z.npy"),
            "--out", str(tmp_path / "o")]  # fmt: skip
    code = main(argv)
    err = capsys.readouterr().err
    assert code in (0, 2) and "Traceback" not in err
    if code == 0:
        assert len(json.loads((tmp_path / "o" / "manifest.json").read_text())["skipped"]) == 3
