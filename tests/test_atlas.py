"""`jaxviz atlas`: the site's every link and picture resolves and every layer and channel page is
reached from the index; the single pass mines the same top-k as separate `patches` runs; batched
feature visualization equals one channel at a time; a rerun reuses the feature visualizations."""

import functools
import json
import re
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import urldefrag

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

from jaxviz.cli import main
from jaxviz.jobs.atlas import query_rows
from jaxviz.methods.feature_viz import channel_mean, channel_visualization
from jaxviz.methods.synthesis import Ascent
from tests.test_report import CHROMIUM_FLAGS, _chromium

LAYERS = ("conv1", "conv3")
DATA = ["--data", "shapes:100:3", "--batch-size", "25"]
COMMON = ["--model", "demo", *DATA, "--top", "4", "--max-channels", "3"]


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    out = tmp_path_factory.mktemp("atlas") / "site"
    argv = ["atlas", *COMMON, "--layers", ",".join(LAYERS), "--viz-steps", "8", "--viz-batch",
            "2", "--tsne-points", "40", "--queries", "2", "--out", str(out)]  # fmt: skip
    assert main(argv) == 0
    return out


class _Links(HTMLParser):
    def __init__(self):
        super().__init__()
        self.hrefs, self.srcs = [], []

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "a" and "href" in a:
            self.hrefs.append(a["href"])
        if tag == "img":
            self.srcs.append(a.get("src"))


def _crawl(index: Path) -> tuple[set[Path], list[Path]]:
    """Every page reached from `index` by links, and every picture they show (paths)."""
    seen, todo, pictures = set(), [index.resolve()], []
    while todo:
        page = todo.pop()
        if page in seen:
            continue
        seen.add(page)
        parser = _Links()
        parser.feed(page.read_text())
        for href in parser.hrefs:
            target = (page.parent / urldefrag(href).url).resolve()
            assert target.exists(), f"{page.name}: broken link {href}"
            if target.suffix == ".html":
                todo.append(target)
        pictures += [(page.parent / s).resolve() for s in parser.srcs]
    return seen, pictures


def test_every_page_reached_and_every_picture_loads(site):
    pages, pictures = _crawl(site / "index.html")
    for layer in LAYERS:
        channels = json.loads((site / layer / "channels.json").read_text())
        assert [c["channel"] for c in channels] == [0, 1, 2]
        want = {site / layer / "index.html"} | {site / layer / f"c{c:04d}.html" for c in range(3)}
        assert {p.resolve() for p in want} <= pages
    assert (site / "tsne" / "mosaic.png").resolve() in pictures
    assert sum(p.parent.name == "neighbors" for p in pictures) == 2
    assert len(pictures) >= 2 * 3 * 4
    for p in set(pictures):
        with Image.open(p) as im:  # exists and decodes
            im.load()


def test_channel_pages_hold_their_numbers(site):
    """The channel page shows the statistics and top units the job mined (class histogram of
    the labelled shapes included)."""
    channels = json.loads((site / "conv3" / "channels.json").read_text())
    mean = np.load(site / "conv3" / "channel_mean.npy")
    values = np.load(site / "conv3" / "top_values.npy")
    for j, c in enumerate(channels):
        assert c["mean"] == pytest.approx(float(mean[c["channel"]]))
        assert [t["value"] for t in c["top"]] == pytest.approx(values[j][: len(c["top"])].tolist())
        assert sum(c["hist"].values()) == len(c["top"]) == 4
        page = (site / "conv3" / f"c{c['channel']:04d}.html").read_text()
        assert all(t["id"] in page for t in c["top"]) and all(k in page for k in c["hist"])


def test_single_pass_equals_separate_patches_runs(site, tmp_path):
    for layer in LAYERS:
        out = tmp_path / layer
        argv = ["patches", *COMMON[:-2], "--layer", layer, "--channels", "0-2",
                "--per-image-max", "--out", str(out)]  # fmt: skip
        assert main(argv) == 0
        for name in ("image", "y", "x"):  # the same units, exactly
            want = np.load(out / f"top_{name}.npy")
            np.testing.assert_array_equal(np.load(site / layer / f"top_{name}.npy"), want)
        # values to float rounding: one compiled pass for all layers fuses differently
        got, want = (np.load(d / "top_values.npy") for d in (site / layer, out))
        np.testing.assert_allclose(got, want, rtol=1e-5)
        np.testing.assert_array_equal(
            np.load(site / layer / "top_boxes.npy"), np.load(out / "top_boxes.npy")
        )


def test_batched_feature_viz_equals_one_channel_at_a_time():
    from jaxviz.models.zoo import load_model

    model, params = load_model("demo")
    channels = jnp.asarray([3, 0, 17, 5], jnp.int32)
    start = jax.random.uniform(jax.random.key(1), (4, 64, 64, 3), minval=-1.0, maxval=1.0)
    fn = jax.jit(
        functools.partial(channel_visualization, model, layer="conv2", ascent=Ascent(steps=12))
    )
    batched = fn(params, channels=channels, key=jax.random.key(0), start=start)
    single = [
        fn(params, channels=channels[i : i + 1], key=jax.random.key(0), start=start[i : i + 1])
        for i in range(4)
    ]
    np.testing.assert_allclose(batched, jnp.concatenate(single), rtol=1e-5, atol=1e-5)
    before = channel_mean(model, params, start, "conv2", channels)
    after = channel_mean(model, params, batched, "conv2", channels)
    assert np.all(np.asarray(after) > np.asarray(before)), (before, after)


def test_rerun_reuses_feature_viz_and_checks_layers(site, tmp_path, capsys):
    again = tmp_path / "again"
    shutil.copytree(site, again)
    stamp = {p: p.stat().st_mtime_ns for p in again.glob("conv*/feature_viz.npy")}
    argv = ["atlas", *COMMON, "--layers", ",".join(LAYERS), "--viz-steps", "8", "--viz-batch",
            "2", "--tsne-points", "0", "--queries", "0", "--out", str(again)]  # fmt: skip
    assert main(argv) == 0
    assert {p: p.stat().st_mtime_ns for p in stamp} == stamp and len(stamp) == 2
    m = json.loads((again / "manifest.json").read_text())
    assert "feature_viz_s" not in m["timings"]
    assert main(["atlas", *COMMON, "--layers", "conv1,fc", "--out", str(tmp_path / "x")]) == 2
    assert "no spatial map" in capsys.readouterr().err


def test_site_loads_in_headless_chromium_with_no_broken_image(site, tmp_path):
    exe = _chromium()
    for page in ("index.html", "conv3/index.html", "conv3/c0002.html"):
        dom = subprocess.run(
            [exe, *CHROMIUM_FLAGS, f"--user-data-dir={tmp_path / 'u'}",
             "--virtual-time-budget=5000", "--dump-dom", (site / page).as_uri()],
            capture_output=True, text=True, timeout=120,
        ).stdout  # fmt: skip
        images = re.search(r'data-images="(\d+)"', dom)
        broken = re.search(r'data-broken="(\d+)"', dom)
        assert images and broken, f"{page}: the page's load handler did not run"
        assert int(images.group(1)) >= 2 and int(broken.group(1)) == 0, page
    shot = tmp_path / "layer.png"
    subprocess.run(
        [exe, *CHROMIUM_FLAGS, f"--user-data-dir={tmp_path / 'u2'}", f"--screenshot={shot}",
         "--window-size=1000,800", (site / "conv3" / "index.html").as_uri()],
        capture_output=True, timeout=120,
    )  # fmt: skip
    lo, hi = Image.open(shot).convert("L").getextrema()
    assert hi - lo > 100  # not a blank page


def test_dead_channel_gets_no_feature_viz(tmp_path):
    """A channel never > 0 on the data has a zero gradient: the atlas skips its ascent, draws a
    flat card and says why, and visualizes the live channels."""
    out = tmp_path / "dead"
    argv = ["atlas", "--model", "tests.fixtures.byom:make_dead_channel", "--data", "shapes:12:3",
            "--layers", "entry", "--max-channels", "2", "--top", "2", "--viz-steps", "4",
            "--tsne-points", "0", "--queries", "0", "--out", str(out)]  # fmt: skip
    assert main(argv) == 0
    channels = json.loads((out / "entry" / "channels.json").read_text())
    assert [c["dead"] for c in channels] == [True, False]
    assert np.load(out / "entry" / "feature_viz.npy").shape[0] == 1  # the live channel only
    dead, live = (np.asarray(Image.open(out / "entry" / f"c000{c}_viz.png")) for c in (0, 1))
    assert dead.std() == 0 and live.std() > 0
    assert "no feature visualization" in (out / "entry" / "c0000.html").read_text()


def test_neighbour_queries_cover_the_labels_first():
    labels = np.array([2, 2, 2, 0, 2, 1, 1, 2])
    np.testing.assert_array_equal(query_rows(labels, 2), [0, 3])
    np.testing.assert_array_equal(query_rows(labels, 5), [0, 3, 5, 1, 7])
    np.testing.assert_array_equal(query_rows(np.full(8, -1), 3), [0, 3, 7])
