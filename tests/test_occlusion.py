"""Occlusion: Captum parity, chunk/device invariance, patch and pixel-map semantics, the job."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import Mesh

from jaxviz.methods.occlusion import (
    coverage,
    fill_images,
    grid_size,
    occlude,
    occlusion,
    pixel_map,
    window_centre,
)
from jaxviz.methods.pointing import pointing_game, pointing_hit, scale_box
from jaxviz.models.stage import forward_fn


@pytest.fixture(scope="module")
def images():
    return jax.random.normal(jax.random.key(1), (4, 64, 64, 3), jnp.float32)


@pytest.mark.parametrize("window,stride", [(8, 4), (12, 5)])  # (64 - 12) / 5: not an integer
def test_captum_parity(demo_random, images, window, stride):
    torch = pytest.importorskip("torch")
    from captum.attr import Occlusion

    from tests.twins import demo_twin, to_torch

    model, params = demo_random
    x = images[:2]
    targets = np.array([3, 7])
    res = occlusion(model, params, x, window, stride, targets=targets, fill=0.3)
    twin = demo_twin(params)
    ref = Occlusion(lambda t: torch.softmax(twin(t), -1)).attribute(
        to_torch(x),
        sliding_window_shapes=(3, window, window),
        strides=(3, stride, stride),
        baselines=0.3,
        target=torch.from_numpy(targets),
        perturbations_per_eval=128,
    )
    ref = ref.detach().numpy()[:, 0]  # the same for every channel
    got = np.asarray(res.pixels[..., 0])
    assert res.grid.shape == (2, *grid_size((64, 64), (window, window), (stride, stride)), 1)
    assert np.abs(got - ref).max() <= 1e-4 * np.abs(ref).max()


def test_chunk_and_device_invariance(demo_random, images):
    model, params = demo_random
    targets = np.array([[0, 5], [1, 2], [9, 3], [4, 4]])
    kw = dict(targets=targets, fill="mean", output="prob")
    ref = occlusion(model, params, images, 16, 6, **kw)
    assert ref.chunk not in (1, 7)  # the default comes from the memory budget
    one = Mesh(np.array(jax.local_devices()[:1]), ("batch",))
    for run in (
        occlusion(model, params, images, 16, 6, chunk=1, **kw),
        occlusion(model, params, images, 16, 6, chunk=7, **kw),
        occlusion(model, params, images, 16, 6, mesh=one, **kw),
        occlusion(model, params, images, 16, 6, mesh=one, chunk=7, **kw),
        occlusion(model, params, images, 16, 6, budget=1, **kw),  # budget 1 byte -> chunk 1
    ):
        np.testing.assert_allclose(run.grid, ref.grid, atol=1e-5, rtol=0)
        np.testing.assert_allclose(run.pixels, ref.pixels, atol=1e-5, rtol=0)


def test_targets_outputs_and_batch(demo_random, images):
    model, params = demo_random
    pred = occlusion(model, params, images[:3], 16, 8, output="drop")
    base_logits = forward_fn(model)(params, images[:3])
    np.testing.assert_array_equal(pred.targets[:, 0], np.argmax(base_logits, -1))
    multi = occlusion(model, params, images[:3], 16, 8, targets=[[1, 2]] * 3, output="prob")
    single = occlusion(model, params, images[:3], 16, 8, targets=[2, 2, 2], output="prob")
    np.testing.assert_allclose(multi.grid[..., 1:], single.grid, atol=1e-6)
    drop = occlusion(model, params, images[:3], 16, 8, targets=[2, 2, 2], output="drop")
    np.testing.assert_allclose(drop.grid, single.base[:, None, None, :] - single.grid, atol=1e-6)
    logit = occlusion(model, params, images[:3], 16, 8, targets=[2, 2, 2], output="logit")
    np.testing.assert_allclose(logit.base[:, 0], base_logits[:, 2], rtol=1e-5)
    # batch of 3 on 4 devices (padded) equals image by image
    alone = occlusion(model, params, images[1:2], 16, 8, targets=[2], output="prob")
    np.testing.assert_allclose(alone.grid[0], single.grid[1], atol=1e-6)


def test_occlude_partial_window_and_fills():
    x = jnp.arange(10 * 9 * 2, dtype=jnp.float32).reshape(10, 9, 2)
    fill = -jnp.ones_like(x)
    out = np.asarray(occlude(x, fill, jnp.int32(8), jnp.int32(4), (4, 3)))  # rows 8..9 only
    mask = np.zeros((10, 9, 2), bool)
    mask[8:10, 4:7] = True
    np.testing.assert_array_equal(out, np.where(mask, -1.0, np.asarray(x)))
    b = jax.random.normal(jax.random.key(0), (2, 12, 12, 3))
    mean = fill_images(b, "mean", 1.0)
    np.testing.assert_allclose(mean[:, 3, 5], b.mean(axis=(1, 2)), rtol=1e-5)
    blur = np.asarray(fill_images(b, "blur", 1.5))
    assert blur.std() < np.asarray(b).std()
    flat = jnp.ones((1, 12, 12, 3))
    np.testing.assert_allclose(fill_images(flat, "blur", 2.0), flat, rtol=1e-5)


def test_pixel_map_matches_window_loop():
    rng = np.random.default_rng(0)
    hw, win, st = (11, 13), (4, 5), (3, 4)  # neither stride divides
    hp, wp = grid_size(hw, win, st)
    grid = rng.normal(size=(1, hp, wp, 1)).astype(np.float32)
    total, count = np.zeros(hw), np.zeros(hw)
    for i in range(hp):
        for j in range(wp):
            total[i * st[0] : i * st[0] + win[0], j * st[1] : j * st[1] + win[1]] += grid[
                0, i, j, 0
            ]
            count[i * st[0] : i * st[0] + win[0], j * st[1] : j * st[1] + win[1]] += 1
    got = np.asarray(pixel_map(jnp.asarray(grid), hw, win, st))[0, :, :, 0]
    np.testing.assert_allclose(got, total / count, rtol=1e-5)
    assert coverage(11, 4, 3).sum(0).tolist() == [4, 4, 4, 2]


def test_pointing_game():
    heat = np.zeros((10, 10))
    heat[2, 7] = 1.0
    assert pointing_hit(heat, (0, 5, 4, 9))
    assert not pointing_hit(heat, (3, 0, 10, 10))
    assert pointing_hit(heat, (3, 0, 10, 10), tolerance=1.0)
    assert pointing_game(np.stack([heat, heat]), [(0, 5, 4, 9), (5, 5, 9, 9)]) == 0.5
    assert scale_box((10, 20, 30, 40), (100, 100), (50, 50)) == (5, 10, 15, 20)


def test_window_centre_matches_covered_pixels():
    hw, win, st = (11, 13), (4, 6), (3, 5)
    ay, ax = coverage(hw[0], win[0], st[0]), coverage(hw[1], win[1], st[1])
    for py in range(ay.shape[1]):
        for px in range(ax.shape[1]):
            ys, xs = np.flatnonzero(ay[:, py]), np.flatnonzero(ax[:, px])
            want = ((ys[0] + ys[-1]) // 2, (xs[0] + xs[-1]) // 2)
            assert window_centre((py, px), hw, win, st) == want
    assert window_centre((3, 2), hw, win, st) == (9, 11)  # both cut at the border


def test_job_writes_maps_and_pointing(demo_random, tmp_path):
    from jaxviz import results
    from jaxviz.cli import main
    from jaxviz.data.shapes import ShapesSet

    out = tmp_path / "occ"
    argv = ["occlusion", "--model", "demo", "--random-init", "--data", "shapes:5:7"]
    argv += ["--window", "16", "--stride", "8", "--batch-size", "4", "--method", "full"]
    assert main([*argv, "--out", str(out)]) == 0
    m = json.loads((out / "manifest.json").read_text())
    assert m["results"]["images"] == 5 and m["results"]["grid"] == [7, 7]
    assert m["results"]["pointing_game"]["images_with_box"] == 5
    r = results.open(out)
    assert r.arrays["grid"].shape == (5, 7, 7, 1) and r.arrays["pixels"].shape == (5, 64, 64, 1)
    assert (out / "png" / "0000004.png").exists()
    # the stores and table hold what the method computes
    model, params = demo_random
    images = np.stack([ShapesSet(5, seed=7).sample(i)[0] for i in range(5)])
    ref = occlusion(model, params, model.preprocess.normalize(images), 16, 8)
    np.testing.assert_allclose(r.read("grid", range(5)), ref.grid, atol=1e-6)
    np.testing.assert_allclose(r.read("pixels", [4, 0]), np.asarray(ref.pixels)[[4, 0]], atol=1e-6)
    assert r.table["target"].to_pylist() == np.asarray(ref.targets).tolist()
    np.testing.assert_allclose(r.table["base"].to_pylist(), ref.base, rtol=1e-5)
    hits = r.table["pointing_hit"].to_pylist()
    assert np.mean(hits) == m["results"]["pointing_game"]["score"]
    assert main([*argv, "--target", "nonsense", "--out", str(out)]) == 2


def test_job_incremental_matches_full_and_records_the_saving(tmp_path):
    from jaxviz import results
    from jaxviz.cli import main

    argv = ["occlusion", "--model", "demo", "--random-init", "--data", "shapes:3:7"]
    argv += ["--window", "8", "--stride", "4", "--batch-size", "4", "--output", "logit"]
    grids = {}
    for method in ("full", "incremental"):
        out = tmp_path / method
        assert main([*argv, "--method", method, "--out", str(out)]) == 0
        m = json.loads((out / "manifest.json").read_text())["results"]["method"]
        assert m["method"] == method
        grids[method] = results.open(out).read("grid", range(3))
    assert m["flop_ratio"] > 1.5 and m["measured_speedup"] > 0
    np.testing.assert_allclose(grids["incremental"], grids["full"], atol=1e-4)
