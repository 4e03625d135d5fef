"""Synthesis methods: class-model visualization reaches the class, inversion matches features,
DeepDream raises the layer norm, and a batch equals one call per image."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxviz.methods import synthesis as syn
from jaxviz.models.stage import forward_fn
from jaxviz.models.zoo import load_model


@pytest.fixture(scope="module")
def demo():
    return load_model("demo")


def _in_range(model, x):
    lo, hi = syn.valid_range(model.preprocess)
    return bool(jnp.all(x >= lo - 1e-5) & jnp.all(x <= hi + 1e-5))


def test_classviz_reaches_every_class(demo):
    model, params = demo
    classes = jnp.arange(model.num_classes, dtype=jnp.int32)
    run = jax.jit(functools.partial(syn.class_visualization, model))
    x = run(params, classes, jax.random.key(0))
    probs = jax.nn.softmax(forward_fn(model)(params, x), axis=-1)
    p = np.asarray(probs[jnp.arange(model.num_classes), classes])
    assert p.min() >= 0.9, p
    assert _in_range(model, x)


def test_classviz_small_norm_clipping_reaches_every_class(demo):
    """Yosinski's small-norm clipping: 30% of each image's pixels stay the mean colour and the
    class is still reached."""
    model, params = demo
    classes = jnp.arange(model.num_classes, dtype=jnp.int32)
    run = jax.jit(
        functools.partial(
            syn.class_visualization, model, ascent=syn.Ascent(blur_until=0.6, clip_norm_pct=0.3)
        )
    )
    x = run(params, classes, jax.random.key(0))
    probs = jax.nn.softmax(forward_fn(model)(params, x), axis=-1)
    assert np.asarray(probs[jnp.arange(model.num_classes), classes]).min() >= 0.9
    assert float((jnp.linalg.norm(x, axis=-1) == 0).mean()) >= 0.25


def test_batched_equals_per_image(demo):
    model, params = demo
    key = jax.random.key(3)
    images = model.preprocess.normalize(
        jax.random.randint(jax.random.key(1), (2, 32, 32, 3), 0, 256)
    )
    cases = [
        (
            jax.jit(functools.partial(syn.class_visualization, model, ascent=syn.Ascent(steps=4))),
            jnp.asarray([2, 7]),
        ),
        (jax.jit(functools.partial(syn.invert, model, layer="conv2", steps=4)), images),
        (jax.jit(functools.partial(syn.dream, model, layer="conv2", steps=2, octaves=2)), images),
    ]
    for fn, inputs in cases:
        batched = fn(params, inputs, key=key)
        single = jnp.concatenate([fn(params, inputs[i : i + 1], key=key) for i in range(2)])
        np.testing.assert_allclose(batched, single, rtol=1e-4, atol=1e-4)


def _two_shapes(model, seed):
    """Shapes images 0 and 1 of `seed`, normalized for `model`: [2, 64, 64, 3]."""
    from jaxviz.data.shapes import ShapesSet

    shapes = ShapesSet(2, seed=seed)
    return model.preprocess.normalize(np.stack([shapes.sample(i)[0] for i in range(2)]))


def test_invert_reduces_feature_distance(demo):
    model, params = demo
    images = _two_shapes(model, seed=0)
    x = jax.jit(functools.partial(syn.invert, model, layer="conv3", steps=150))(
        params, images, key=jax.random.key(0)
    )
    target = forward_fn(model, stop="conv3")(params, images)
    before = syn.feature_distance(model, params, jnp.zeros_like(images), target, "conv3")
    after = syn.feature_distance(model, params, x, target, "conv3")
    assert np.all(np.asarray(before / after) > 10), (before, after)
    assert _in_range(model, x)


def test_dream_increases_layer_norm(demo):
    model, params = demo
    images = _two_shapes(model, seed=1)
    x = jax.jit(functools.partial(syn.dream, model, layer="conv4", steps=10))(
        params, images, key=jax.random.key(0)
    )
    before = syn.layer_energy(model, params, images, "conv4")
    after = syn.layer_energy(model, params, x, "conv4")
    assert np.all(np.asarray(after / before) > 1.5), (before, after)
    assert _in_range(model, x)


def test_cli_jobs(tmp_path):
    import json

    from jaxviz import results
    from jaxviz.cli import main

    args = ["--steps", "2", "--batch-size", "4"]
    cv = tmp_path / "cv"
    assert main(["classviz", "--classes", "circle,3", *args, "--out", str(cv)]) == 0
    manifest = json.loads((cv / "manifest.json").read_text())
    assert [c["name"] for c in manifest["results"]["classes"]] == ["circle", "cross"]
    images = np.load(cv / "images.npy")
    assert images.shape == (2, 64, 64, 3) and images.min() >= 0 and images.max() <= 1
    assert (cv / "grid.png").exists() and (cv / "0003_cross.png").exists()
    data = ["--data", "shapes:3", "--layer", "conv2"]
    for cmd in ("invert", "dream"):
        assert main([cmd, *data, *args, "--out", str(tmp_path / cmd)]) == 0
        r = results.open(tmp_path / cmd)
        assert r.table["index"].to_pylist() == [0, 1, 2]
        assert np.isfinite(r.table["after"].to_numpy()).all()
        made = r.read("images", [0, 1, 2])
        assert made.shape == (3, 64, 64, 3) and made.min() >= 0 and made.max() <= 1
    assert main(["invert", "--data", "shapes:3", "--layer", "nope", "--out", str(tmp_path)]) == 2
    assert main(["classviz", "--classes", "11", "--out", str(tmp_path / "bad")]) == 2
