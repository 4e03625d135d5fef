"""Gradient attributions: parity with Captum on the torch twin, batch/chunk/device invariance."""

import json
from importlib import resources
from unittest import mock

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from captum.attr import (
    GuidedBackprop,
    GuidedGradCam,
    IntegratedGradients,
    LayerGradCam,
    NoiseTunnel,
    Saliency,
)
from captum.attr._utils.approximation_methods import approximation_parameters

from jaxviz.errors import UsageError
from jaxviz.methods import targets
from jaxviz.methods.gradcam import default_layer, gradcam, guided_gradcam, upsample
from jaxviz.methods.guided_backprop import guided_gradients, guided_relu, guided_relu6
from jaxviz.methods.integrated_gradients import METHODS, integrated_gradients, quadrature
from jaxviz.methods.saliency import channel_max, input_gradients, saliency
from jaxviz.methods.smoothgrad import smoothgrad, smoothgrad_noise
from jaxviz.models.stage import forward
from jaxviz.runtime.devices import batch_sharding, local_mesh
from tests.twins import demo_twin, from_torch, to_torch

B = 3


def close(a, b, tol=1e-4):
    """Max abs difference relative to the reference's max abs value."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    assert a.shape == b.shape, (a.shape, b.shape)
    err = np.abs(a - b).max() / max(np.abs(b).max(), 1e-12)
    assert err < tol, err
    return err


@pytest.fixture(scope="module")
def demo(demo_random):
    """The trained demo model when its checkpoint exists (parity on real weights), else random."""
    if (resources.files("jaxviz.assets") / "demo.npz").is_file():
        from jaxviz.models.zoo import load_model

        return load_model("demo")
    return demo_random


@pytest.fixture(scope="module")
def setup(demo):
    model, params = demo
    x = jax.random.normal(jax.random.key(1), (B, 64, 64, 3), jnp.float32)
    t = jnp.asarray([targets.PRED, 3, 7], jnp.int32)
    logits, _ = forward(model, params, x)
    resolved = np.asarray(targets.resolve(logits, t))
    return model, params, x, t, resolved, demo_twin(params)


def test_targets_resolve_and_parse():
    logits = jnp.asarray([[0.0, 2.0, 1.0], [5.0, 0.0, 1.0]])
    assert targets.resolve(logits, jnp.asarray([-1, 2])).tolist() == [1, 2]
    assert targets.parse_target("pred", 10) == targets.PRED
    assert targets.parse_target("4", 10) == 4
    with pytest.raises(UsageError, match="0..9"):
        targets.parse_target("10", 10)
    with pytest.raises(UsageError):
        targets.parse_target("cat", 10)


def test_guided_relu_vjp_matches_rule():
    x = jnp.asarray([-2.0, -0.5, 0.0, 0.5, 3.0, 7.0])
    g = jnp.asarray([1.0, -1.0, 1.0, -2.0, 2.0, 3.0])
    _, vjp = jax.vjp(guided_relu, x)
    assert vjp(g)[0].tolist() == [0.0, 0.0, 0.0, 0.0, 2.0, 3.0]
    _, vjp6 = jax.vjp(guided_relu6, x)
    assert vjp6(g)[0].tolist() == [0.0, 0.0, 0.0, 0.0, 2.0, 0.0]


def test_saliency_matches_captum(setup):
    model, params, x, t, resolved, twin = setup
    ref = Saliency(twin).attribute(to_torch(x), target=resolved.tolist(), abs=False)
    g = input_gradients(model, params, x, t)
    close(g, from_torch(ref))
    close(saliency(model, params, x, t), from_torch(ref).__abs__().max(-1))
    close(channel_max(g), saliency(model, params, x, t), 1e-7)


def test_guided_backprop_matches_captum(setup):
    model, params, x, t, resolved, twin = setup
    ref = GuidedBackprop(twin).attribute(to_torch(x), target=resolved.tolist())
    g = guided_gradients(model, params, x, t)
    close(g, from_torch(ref))
    # it really differs from plain gradients (the override took effect)
    assert np.abs(np.asarray(g - input_gradients(model, params, x, t))).max() > 1e-3


@pytest.mark.parametrize("layer", ["conv4", "conv2"])
@pytest.mark.parametrize("relu", [True, False])
def test_gradcam_matches_captum(setup, layer, relu):
    model, params, x, t, resolved, twin = setup
    ref = LayerGradCam(twin, twin.stages[layer]).attribute(
        to_torch(x), target=resolved.tolist(), relu_attributions=relu
    )
    close(gradcam(model, params, x, t, layer, relu), ref[:, 0].detach().numpy())


def test_guided_gradcam_matches_captum(setup):
    model, params, x, t, resolved, twin = setup
    ref = GuidedGradCam(twin, twin.stages["conv3"]).attribute(
        to_torch(x), target=resolved.tolist(), interpolate_mode="bilinear"
    )
    close(guided_gradcam(model, params, x, t, "conv3"), from_torch(ref))


def test_gradcam_layer_checks(demo):
    model, params = demo
    assert default_layer(model) == "conv4"
    with pytest.raises(UsageError, match="conv1"):
        gradcam(model, params, jnp.zeros((1, 64, 64, 3)), jnp.zeros(1, jnp.int32), "fc")


def test_upsample_matches_torch_bilinear():
    m = jax.random.uniform(jax.random.key(3), (2, 8, 8))
    ref = torch.nn.functional.interpolate(
        torch.from_numpy(np.asarray(m))[:, None], (64, 64), mode="bilinear"
    )
    close(upsample(m, (64, 64)), ref[:, 0].numpy(), 1e-6)


@pytest.mark.parametrize("method", METHODS)
def test_quadrature_matches_captum(method):
    sizes, alphas = approximation_parameters(method)
    a, w = quadrature(method, 7)
    np.testing.assert_allclose(a, alphas(7), atol=1e-6)
    np.testing.assert_allclose(w, sizes(7), atol=1e-6)


@pytest.fixture
def setup64(setup):
    """`setup` in float64 on both sides, for the path methods (IG, SmoothGrad): in float32, a
    max-pool window whose two largest inputs differ by less than the frameworks' rounding (~1e-7)
    routes the gradient to a different input in each (both valid subgradients), and dozens of
    perturbed copies of a batch hit such windows; in float64 they do not."""
    model, params, x, t, resolved, twin = setup
    with jax.enable_x64(True):
        p64 = jax.tree.map(lambda a: jnp.asarray(a, jnp.float64), params)
        yield model, p64, jnp.asarray(x, jnp.float64), t, resolved, twin.double()
    twin.float()


@pytest.mark.parametrize("method,steps", [("gausslegendre", 16), ("riemann_trapezoid", 20)])
def test_integrated_gradients_matches_captum(setup64, method, steps):
    model, params, x, t, resolved, twin = setup64
    base = 0.5 * jnp.flip(x, axis=1)  # a non-trivial baseline
    ref, ref_delta = IntegratedGradients(twin).attribute(
        to_torch(x).double(),
        baselines=to_torch(base).double(),
        target=resolved.tolist(),
        n_steps=steps,
        method=method,
        return_convergence_delta=True,
    )
    res = integrated_gradients(model, params, x, t, base, steps=steps, method=method, chunk=5)
    close(res.attributions, from_torch(ref))
    np.testing.assert_array_equal(res.target, resolved)
    scale = np.abs(np.asarray(res.diff)).max()
    np.testing.assert_allclose(res.delta, ref_delta.detach().numpy(), atol=1e-4 * scale)


def test_integrated_gradients_completeness(setup):
    model, params, x, t, _, _ = setup
    res = integrated_gradients(model, params, x, t, 0.0, steps=64, chunk=16)
    sums = np.asarray(res.attributions).sum(axis=(1, 2, 3))
    np.testing.assert_allclose(sums - np.asarray(res.diff), res.delta, atol=1e-4)
    assert float(np.max(res.completeness_error)) < 0.01


def test_integrated_gradients_completeness_on_shapes(demo):
    """Trained demo model, 32 shapes images, 128 steps of the default rule: every image's
    |delta| / |f(x) - f(x')| is below 1% (see the integrated_gradients module docstring for the
    distribution over more images: the max-pooled demo needs 128 steps where its average-pooled
    predecessor needed 64)."""
    from jaxviz.data.shapes import ShapesSet

    model, params = demo
    shapes = ShapesSet(32, seed=0)
    x = model.preprocess.normalize(jnp.asarray(np.stack([shapes.sample(i)[0] for i in range(32)])))
    res = integrated_gradients(model, params, x, jnp.full((32,), targets.PRED), 0.0, steps=128)
    err = np.asarray(res.completeness_error)
    assert err.max() < 0.01, (err.max(), err.argmax(), float(res.diff[err.argmax()]))


@pytest.mark.parametrize("magnitude", [False, True])
def test_smoothgrad_matches_captum_noise_tunnel(setup64, magnitude):
    model, params, x, t, resolved, twin = setup64
    n, draws = 6, []
    normal = torch.normal

    def record(*args, **kwargs):
        draws.append(normal(*args, **kwargs))
        return draws[-1]

    with mock.patch("torch.normal", record):
        ref = NoiseTunnel(Saliency(twin)).attribute(
            to_torch(x).double(),
            nt_type="smoothgrad",
            nt_samples=n,
            stdevs=0.3,
            target=resolved.tolist(),
            abs=magnitude,
        )
    (noise,) = draws  # [B * n, C, H, W], image-major (repeat_interleave)
    noise = from_torch(noise).reshape(B, n, 64, 64, 3).transpose(1, 0, 2, 3, 4)
    ours = smoothgrad_noise(model, params, x, t, jnp.asarray(noise), chunk=4, magnitude=magnitude)
    close(ours, from_torch(ref))


def per_image(fn, x, t):
    return np.concatenate([np.asarray(fn(x[i : i + 1], t[i : i + 1])) for i in range(x.shape[0])])


def test_batched_equals_per_image(setup):
    model, params, x, t, _, _ = setup
    x = x[:, :32, :32]  # the demo is convolutional up to its global pool: small inputs are fine
    keys = jax.random.split(jax.random.key(5), B)
    cases = {
        "saliency": lambda v, u: saliency(model, params, v, u),
        "guided": lambda v, u: guided_gradients(model, params, v, u),
        "gradcam": lambda v, u: gradcam(model, params, v, u, "conv3"),
        "ig": lambda v, u: integrated_gradients(model, params, v, u, steps=8, chunk=3)[0],
    }
    for name, fn in cases.items():
        close(per_image(fn, x, t), fn(x, t), 1e-5), name
    batched = smoothgrad(model, params, x, t, keys, 0.2, samples=5, chunk=2)
    single = np.concatenate(
        [
            smoothgrad(model, params, x[i : i + 1], t[i : i + 1], keys[i : i + 1], 0.2, 5, 2)
            for i in range(B)
        ]
    )
    close(single, batched, 1e-5)


def test_chunk_size_does_not_change_results(setup):
    model, params, x, t, _, _ = setup
    x = x[:, :32, :32]
    keys = jax.random.split(jax.random.key(5), B)
    ig = [integrated_gradients(model, params, x, t, steps=12, chunk=c)[0] for c in (1, 5)]
    sg = [smoothgrad(model, params, x, t, keys, 0.2, samples=7, chunk=c) for c in (1, 3)]
    for runs in (ig, sg):
        for r in runs[1:]:
            close(r, runs[0], 1e-5)
    # different keys give different noise: the result is not a constant of the key
    other = smoothgrad(model, params, x, t, jax.random.split(jax.random.key(6), B), 0.2, 7, 3)
    assert np.abs(np.asarray(other - sg[0])).max() > 1e-4


def test_sharded_over_four_devices_equals_one(setup):
    model, params, x, t, _, _ = setup
    assert jax.device_count() == 4
    x4 = jnp.concatenate([x, x[:1]])[:, :32, :32]  # 4 images, one per device
    t4 = jnp.concatenate([t, t[:1]])
    sh = batch_sharding(local_mesh())
    xs, ts = jax.device_put(x4, sh), jax.device_put(t4, sh)
    for fn in (
        lambda v, u: saliency(model, params, v, u),
        lambda v, u: gradcam(model, params, v, u, "conv4"),
        lambda v, u: integrated_gradients(model, params, v, u, steps=6, chunk=4)[0],
    ):
        close(fn(xs, ts), fn(x4, t4), 1e-5)


def test_cli_jobs_write_maps_equal_to_the_methods(demo_random, tmp_path):
    from jaxviz import results
    from jaxviz.cli import main
    from jaxviz.data.shapes import ShapesSet

    model, params = demo_random
    images = np.stack([ShapesSet(5, seed=3).sample(i)[0] for i in range(5)])
    x = model.preprocess.normalize(images)
    pred = jnp.full((5,), targets.PRED, jnp.int32)
    common = ["--random-init", "--data", "shapes:5:3", "--batch-size", "4"]
    assert (
        main(["gradcam", *common, "--layer", "conv3", "--guided", "--out", str(tmp_path / "g")])
        == 0
    )
    assert main(["ig", *common, "--steps", "8", "--chunk", "3", "--out", str(tmp_path / "i")]) == 0
    cam = np.asarray(gradcam(model, params, x, pred, "conv3"))
    ig = integrated_gradients(model, params, x, pred, 0.0, steps=8)
    for name, ref in (("g", cam), ("i", np.asarray(ig.attributions))):
        m = json.loads((tmp_path / name / "manifest.json").read_text())
        assert m["counts"]["images"] == 5 and m["skipped"] == []
        assert m["results"]["pointing_game"]["images_with_box"] == 5
        assert (tmp_path / name / "png" / "0000004.png").is_file()
        r = results.open(tmp_path / name)
        close(r.read("maps", range(5)), ref, 1e-5)
        assert r.table["index"].to_pylist() == list(range(5))
        logits = forward(model, params, x)[0]
        assert r.table["prediction"].to_pylist() == np.argmax(logits, -1).tolist()
        assert r.table["target"].to_pylist() == np.argmax(logits, -1).tolist()
    table = results.open(tmp_path / "i").table
    np.testing.assert_allclose(
        table["completeness_error"].to_numpy(), ig.completeness_error, rtol=1e-3, atol=1e-6
    )
    guided = results.open(tmp_path / "g").read("guided", [0])[0]
    close(guided, guided_gradcam(model, params, x[:1], pred[:1], "conv3")[0], 1e-5)
    assert main(["gradcam", *common, "--layer", "fc", "--out", str(tmp_path / "bad")]) == 2


def test_job_sanity_check_is_adebayo_cascade_on_first_batch(demo_random, tmp_path):
    """--sanity-check: per stage, the mean Spearman of |saliency| over the first batch's real
    images (3 of a padded batch of 4) and RANDOMIZATION_DRAWS re-initializations, each from
    fold_in(key(seed), draw), the trained model's class kept as the target."""
    from jaxviz.cli import main
    from jaxviz.data.shapes import ShapesSet
    from jaxviz.jobs.attribution import RANDOMIZATION_DRAWS
    from jaxviz.methods.faithfulness import randomization_check

    model, params = demo_random
    images = np.stack([ShapesSet(3, seed=3).sample(i)[0] for i in range(3)])
    x = model.preprocess.normalize(images)
    pred = jnp.argmax(forward(model, params, x)[0], -1).astype(jnp.int32)
    argv = ["saliency", "--random-init", "--seed", "0", "--data", "shapes:3:3"]
    assert main([*argv, "--batch-size", "4", "--sanity-check", "--out", str(tmp_path)]) == 0
    report = json.loads((tmp_path / "manifest.json").read_text())["results"]["randomization"]
    key = jax.random.key(0)
    maps = lambda p: saliency(model, p, x, pred)  # noqa: E731
    draws = [
        randomization_check(maps, model, params, jax.random.fold_in(key, d))
        for d in range(RANDOMIZATION_DRAWS)
    ]
    assert list(report) == list(draws[0]) == ["logits", "fc", "conv4", "conv3", "conv2", "conv1"]
    for stage, row in report.items():
        ref = np.stack([d[stage] for d in draws])
        assert row["pairs"] == ref.size and row["undefined"] == 0
        np.testing.assert_allclose(row["per_draw"], ref.mean(1), atol=1e-5)
        np.testing.assert_allclose(row["mean"], ref.mean(), atol=1e-5)
    assert report["conv1"]["mean"] < 0.9  # re-initializing everything changes the maps
