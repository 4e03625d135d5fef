"""The study report opens in headless Chromium: the page loads, every picture resolves, and a
screenshot is taken (Chromium comes from Debian's `chromium` package, installed by .ci/run)."""

import re
import shutil
import subprocess

import pytest
from PIL import Image

from jaxviz.cli import main

STUDY = """
[[part]]
name = "r"
model = "demo"
random_init = true
data = "shapes:6:1"
batch_size = 2

[part.filters]
[part.patches]
layer = "conv1"
channels = "0-2"
top = 2
"""

CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--hide-scrollbars",
]


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    root = tmp_path_factory.mktemp("report")
    (root / "s.toml").write_text(STUDY)
    assert main(["sweep", str(root / "s.toml"), "--out", str(root / "out")]) == 0
    return root / "out" / "index.html"


def _chromium() -> str:
    exe = shutil.which("chromium") or shutil.which("chromium-browser")
    assert exe, "chromium is not installed: `apt-get install chromium` (.ci/run does this)"
    return exe


def test_every_picture_in_the_report_exists(report):
    srcs = re.findall(r"<img src='([^']+)'", report.read_text())
    assert len(srcs) >= 3
    assert [s for s in srcs if not (report.parent / s).is_file()] == []


def test_report_loads_in_headless_chromium_with_no_broken_image(report, tmp_path):
    exe = _chromium()
    dom = subprocess.run(
        [
            exe,
            *CHROMIUM_FLAGS,
            f"--user-data-dir={tmp_path / 'u1'}",
            "--virtual-time-budget=5000",
            "--dump-dom",
            report.as_uri(),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    ).stdout
    images = re.search(r'data-images="(\d+)"', dom)
    broken = re.search(r'data-broken="(\d+)"', dom)
    assert images and broken, "the page's load handler did not run"
    assert int(images.group(1)) >= 3 and int(broken.group(1)) == 0
    shot = tmp_path / "report.png"
    subprocess.run(
        [
            exe,
            *CHROMIUM_FLAGS,
            f"--user-data-dir={tmp_path / 'u2'}",
            f"--screenshot={shot}",
            "--window-size=1280,1600",
            report.as_uri(),
        ],
        capture_output=True,
        timeout=120,
    )
    pixels = Image.open(shot).convert("L")
    assert pixels.size == (1280, 1600)
    lo, hi = pixels.getextrema()
    assert hi - lo > 100  # not a blank page
