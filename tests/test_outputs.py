"""Output plumbing without a model: the vectorised overlay is the colormap lookup, index.html
stays small whatever the item count, blocks of items go to one process each."""

import matplotlib
import numpy as np

from jaxviz.jobs.blocks import chunk_rows, process_items
from jaxviz.jobs.output import MAX_FIGURES, write_index
from jaxviz.render.heatmap import MIN_SIDE, TITLE_PX, colormap_lut, overlay


def test_overlay_is_the_colormap_lookup():
    image = np.full((4, 8, 3), 40, np.uint8)
    heat = np.array([[0.0, 1.0], [0.5, np.nan]], np.float32)  # stretched over the image
    pic = overlay(image, heat, "title", alpha=1.0)
    f = MIN_SIDE // 8
    body = pic[TITLE_PX : TITLE_PX + 4 * f, : 8 * f]
    want = matplotlib.colormaps["jet"]([0.0, 1.0, 128 / 255])[:, :3] * 255
    np.testing.assert_allclose(body[[0, 0, -1], [0, -1, 0]], want, atol=0.5)
    assert (body[-1, -1] == 40).all()  # NaN is transparent: the image shows
    assert (body[: 2 * f, : 4 * f] == body[0, 0]).all()  # nearest neighbour, no blur
    half = overlay(image, heat, "title", alpha=0.5)[TITLE_PX, 0]
    np.testing.assert_allclose(half, (colormap_lut("jet")[0] + 40.0) / 2, atol=1)


def test_index_stays_small_at_many_items(tmp_path):
    files = [f"maps.zarr/{b}.0.0" for b in range(1000)] + ["maps.zarr/zarr.json"]
    files += [f"png/{i:07d}.png" for i in range(100_000)] + ["items.parquet"]
    manifest = {"job": "saliency", "files": files, "skipped": [{"id": "x", "reason": "r"}] * 10**5}
    write_index(tmp_path, "t", files, manifest)
    page = (tmp_path / "index.html").read_text()
    assert page.count("<img") == MAX_FIGURES and len(page) < 100_000
    assert "href='maps.zarr/'" in page and "href='png/'" in page and "items.parquet" in page


def test_blocks_go_to_one_process_each():
    n, rows = 23, 4
    shares = [process_items(n, rows, k, 3) for k in range(3)]
    assert sorted(np.concatenate(shares).tolist()) == list(range(n))
    for k, share in enumerate(shares):
        assert set(share // rows) == set(range(k, 6, 3))
    assert chunk_rows([(64, 64, 1), (7, 7, 1)], 4) == 1024  # 16 KiB rows: 16 MiB chunks
    assert chunk_rows([(8,)], 4) == 4096 and chunk_rows([(4096, 4096, 3)], 4) == 1


def test_per_image_jobs_pass_the_data_options_to_the_pipeline(tmp_path, monkeypatch):
    """--workers and --exact-decode reach the input pipeline of a per-image job (they were
    dropped once: ItemOutput streamed with the defaults)."""
    from jaxviz.cli import main
    from jaxviz.jobs import items

    seen = []

    def spy(*args, **kwargs):
        seen.append({k: kwargs.get(k) for k in ("workers", "exact_decode")})
        return real(*args, **kwargs)

    real = items.stream
    monkeypatch.setattr(items, "stream", spy)
    argv = ["saliency", "--model", "demo", "--random-init", "--data", "shapes:2", "--png", "0"]
    assert main([*argv, "--workers", "0", "--exact-decode", "--out", str(tmp_path / "a")]) == 0
    assert seen == [{"workers": 0, "exact_decode": True}]
