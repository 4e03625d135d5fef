"""Bring your own model: a user's Flax Linen / NNX CNN through from_flax / from_nnx, checked
against direct references (vmap, jax.grad, dependency support), the incremental path against
brute force, and the same architecture written as a zoo-style stage chain."""

import json
import subprocess
import sys
from pathlib import Path

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxviz
from jaxviz.cli import main
from jaxviz.errors import UsageError
from jaxviz.jobs.study import load_study
from jaxviz.methods import synthesis as syn
from jaxviz.methods.filters import conv_kernel, first_conv_layer
from jaxviz.methods.guided_backprop import guided_gradients
from jaxviz.methods.incremental import choose
from jaxviz.methods.occlusion import grid_size, positions
from jaxviz.models.geometry import UNKNOWN, Geometry
from jaxviz.models.preprocess import Preprocess
from jaxviz.models.stage import Model, Stage, forward, receptive_fields, stage_shapes
from jaxviz.models.zoo import load_model
from tests.fixtures import byom

ROOT = Path(__file__).resolve().parents[1]
HW = (byom.SIZE, byom.SIZE)


@pytest.fixture(scope="module")
def models():
    """{"linen": (Model, params), "nnx": (Model, params)} of the same weights."""
    return {"linen": byom.make(), "nnx": byom.make_nnx()}


@pytest.fixture(scope="module")
def x():
    return jax.random.normal(jax.random.key(7), (2, *HW, 3))


def _reference(v):
    return byom.TinyNet().apply(byom.variables(), v)


def test_stages_geometry_and_forward(models, x):
    for model, params in models.values():
        assert model.stage_names == ("entry", "shrink", "skip", "classifier")
        geo = {s.name: s.geometry for s in model.stages}
        assert geo["entry"] == Geometry.window(3, 1, 1)
        assert geo["shrink"] == Geometry.window(2, 2).then(Geometry.window(3, 2, 1))
        assert geo["skip"] == Geometry.window(3, 1, 1).then(Geometry.window(3, 1, 1))
        assert geo["classifier"] is None
        logits, taps = forward(model, params, x)
        np.testing.assert_allclose(logits, _reference(x), atol=1e-5, rtol=0)
        mid, _ = forward(model, params, x, stop="shrink")
        tail, _ = forward(model, params, mid, start="skip")
        np.testing.assert_allclose(tail, logits, atol=1e-5, rtol=0)


def _occlusion_reference(v, window, stride):
    """Brute force by hand: every occluded copy through the module, vmapped."""
    corners = positions(HW, (window, window), (stride, stride)) * stride
    base = jax.nn.softmax(_reference(v))

    def one(img, c):
        rows = (jnp.arange(HW[0]) >= c[0]) & (jnp.arange(HW[0]) < c[0] + window)
        cols = (jnp.arange(HW[1]) >= c[1]) & (jnp.arange(HW[1]) < c[1] + window)
        return jnp.where(rows[:, None, None] & cols[None, :, None], 0.0, img)

    occluded = jax.vmap(lambda img: jax.vmap(lambda c: one(img, c))(jnp.asarray(corners)))(v)
    probs = jax.nn.softmax(_reference(occluded.reshape(-1, *HW, 3))).reshape(len(v), -1, 5)
    pred = jnp.argmax(base, axis=-1)
    drop = base[jnp.arange(len(v)), pred][:, None] - probs[jnp.arange(len(v)), :, pred]
    return drop.reshape(len(v), *grid_size(HW, (window, window), (stride, stride)))


@pytest.mark.parametrize("kind", ["linen", "nnx", "apply_fn"])
def test_occlusion_matches_vmap_reference(models, x, kind):
    if kind == "apply_fn":
        model, params = (lambda p, v: byom.TinyNet().apply(p, v)), byom.variables()
    else:
        model, params = models[kind]
    got = jaxviz.occlusion(model, params, x, window=8, stride=4)
    np.testing.assert_allclose(got.grid, _occlusion_reference(x, 8, 4), atol=1e-5, rtol=0)


def test_incremental_matches_brute_force(models, x):
    model, params = models["linen"]
    choice = choose(model, HW, (8, 8), (4, 4), "incremental")
    assert choice.incremental and choice.plan.switch >= 2  # entry and shrink on slices
    kw = dict(window=8, stride=4, target=[[1, 3], [0, 4]], output="prob", fill="mean")
    full = jaxviz.occlusion(model, params, x, **kw)
    inc = jaxviz.occlusion(model, params, x, method="incremental", **kw)
    np.testing.assert_allclose(inc.grid, full.grid, atol=1e-5, rtol=0)


def test_gradcam_inner_tap_matches_hand_written_grad(models, x):
    v = byom.variables()

    def run(module, name, a):  # one submodule of TinyNet with its own variables
        return module.apply({col: tree[name] for col, tree in v.items() if name in tree}, a)

    def tail(a):  # TinyNet from the `shrink` tap on, written out
        y = run(byom.Residual(16), "skip", a)
        return run(nn.Dense(byom.CLASSES), "classifier", jnp.mean(y, axis=(1, 2)))

    entry = run(byom.ConvBNAct(8), "entry", x)
    acts = run(byom.ConvBNAct(16, 2), "shrink", nn.max_pool(entry, (2, 2), (2, 2)))
    targets = jnp.array([2, 4])
    grads = jax.grad(lambda a: jnp.sum(tail(a)[jnp.arange(2), targets]))(acts)
    want = jax.nn.relu(jnp.einsum("bhwk,bk->bhw", acts, grads.mean(axis=(1, 2))))
    for model, params in models.values():
        got = jaxviz.gradcam(model, params, x, layer="shrink", target=targets)
        np.testing.assert_allclose(got, want, atol=1e-5, rtol=1e-5)


def _support(mask):
    ys, xs = np.nonzero(mask)
    return (ys.min(), xs.min(), ys.max() + 1, xs.max() + 1)


def test_receptive_fields_match_dependency_support(models):
    """Per tap with geometry and a few units: the input-gradient support and the pixels a unit
    depends on (a NaN there reaches it) lie inside the box; before the max pool (which may drop a
    NaN) those pixels span exactly the clipped box."""
    model, params = models["linen"]
    rfs, shapes = receptive_fields(model), stage_shapes(model)
    spatial = [k for k, rf in rfs.items() if rf is not None]
    assert spatial == ["entry", "shrink", "skip"]
    x0 = np.asarray(jax.random.normal(jax.random.key(3), (*HW, 3)))
    nan = np.repeat(x0[None], HW[0] * HW[1], 0)
    nan[
        np.arange(HW[0] * HW[1]),
        np.repeat(np.arange(HW[0]), HW[1]),
        np.tile(np.arange(HW[1]), HW[0]),
    ] = np.nan
    taps = jax.jit(lambda v: forward(model, params, v)[1])(jnp.asarray(nan))
    for name in spatial:
        h, w = shapes[name][:2]
        hit = np.isnan(np.asarray(taps[name])).any(-1).reshape(HW[0], HW[1], h, w)
        for y, xx in {(0, 0), (h - 1, w - 1), (h // 2, w // 2), (0, w - 1)}:
            box = rfs[name].box(y, xx, HW)
            dep = _support(hit[:, :, y, xx])
            if name == "entry":
                assert dep == box, (name, y, xx)
            assert box[0] <= dep[0] and box[1] <= dep[1], (name, y, xx)
            assert dep[2] <= box[2] and dep[3] <= box[3], (name, y, xx)
            g = jax.grad(
                lambda v, n=name, y=y, xx=xx: forward(model, params, v[None], stop=n)[0][
                    0, y, xx
                ].sum()
            )(jnp.asarray(x0))
            mask = np.abs(np.asarray(g)).sum(-1) > 0
            if mask.any():  # a dead ReLU unit has no gradient at all
                gy0, gx0, gy1, gx1 = _support(mask)
                assert box[0] <= gy0 and box[1] <= gx0 and gy1 <= box[2] and gx1 <= box[3]


def test_patch_crops_match_boxes(models, x):
    model, params = models["linen"]
    rf = jaxviz.receptive_fields(model, "shrink")
    p = jaxviz.top_patches(model, params, x, layer="shrink", k=2, channels=[0, 5], size=rf.size[0])
    acts = np.asarray(forward(model, params, x, stop="shrink")[0])
    images = np.asarray(model.preprocess.denormalize(x) * 255 + 0.5).astype(np.uint8)
    for c, ch in enumerate(p.channels):
        for j in range(2):
            i, y, xx = p.image[c, j], p.y[c, j], p.x[c, j]
            assert acts[i, y, xx, ch] == pytest.approx(p.values[c, j])
            if j == 0:
                assert p.values[c, 0] == pytest.approx(acts[..., ch].max())
            y0, x0, y1, x1 = p.boxes[c, j]
            assert (y0, x0, y1, x1) == rf.box(int(y), int(xx))
            want = np.full((y1 - y0, x1 - x0, 3), 128, np.uint8)
            cy0, cx0 = max(y0, 0), max(x0, 0)
            want[cy0 - y0 : min(y1, HW[0]) - y0, cx0 - x0 : min(x1, HW[1]) - x0] = images[
                i, cy0:y1, cx0:x1
            ]
            np.testing.assert_array_equal(p.crops[c, j], want)


def test_unknown_geometry_is_refused_where_needed(x):
    model, params = byom.make_twisted()
    assert model.stage("shrink").geometry is UNKNOWN
    assert receptive_fields(model)["entry"] == jaxviz.receptive_fields(model, "entry")
    for call in (
        lambda: jaxviz.receptive_fields(model, "shrink"),
        lambda: jaxviz.top_patches(model, params, x, layer="shrink"),
    ):
        with pytest.raises(UsageError, match="'shrink'.*no known geometry"):
            call()
    # what needs no geometry still works there
    assert jaxviz.gradcam(model, params, x, layer="shrink").shape == (2, 12, 12)
    assert jaxviz.occlusion(model, params, x, window=12, stride=12).grid.shape == (2, 2, 2)
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "jaxviz.cli",
            "patches",
            "--model",
            "tests.fixtures.byom:make_twisted",
            "--layer",
            "shrink",
            "--data",
            "shapes:4",
            "--out",
            "/tmp/jaxviz-byom-never",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 2, r.stderr
    assert len(r.stderr.strip().splitlines()) == 1 and "shrink" in r.stderr


class _PoolShrink(nn.Module):
    @nn.compact
    def __call__(self, v):
        return byom.ConvBNAct(16, 2, name="block")(nn.max_pool(v, (2, 2), (2, 2)))


class _PoolHead(nn.Module):
    @nn.compact
    def __call__(self, v):
        return nn.Dense(byom.CLASSES, name="dense")(jnp.mean(v, axis=(1, 2)))


def _zoo_chain(params):
    """TinyNet written as a hand-made chain of stages, and its params from from_flax's."""
    stages = (
        Stage("entry", byom.ConvBNAct(8), Geometry.window(3, 1, 1)),
        Stage("shrink", _PoolShrink(), Geometry.window(2, 2).then(Geometry.window(3, 2, 1))),
        Stage("skip", byom.Residual(16), Geometry.window(3, 1, 1).then(Geometry.window(3, 1, 1))),
        Stage("classifier", _PoolHead(), None),
    )
    model = Model(
        "tiny_chain", stages, HW, byom.CLASSES, "skip", Preprocess(HW, None, (0.0,) * 3, (1.0,) * 3)
    )
    chain = dict(params)
    chain["shrink"] = {col: {"block": v} for col, v in params["shrink"].items()}
    chain["classifier"] = {"params": {"dense": params["classifier"]["params"]}}
    return model, chain


def test_zoo_chain_equals_from_flax(models, x):
    """Every job of the default study, at the level of what it computes: evaluate, classify,
    features, channels, activations, tsne and neighbors read stage outputs (every tap and the
    logits); filters the first conv kernel; patches, occlusion and the five attributions their
    methods; classviz, invert and dream the synthesis loops (one step: the gradients agree)."""
    model, params = models["linen"]
    chain, cparams = _zoo_chain(params)
    _, want = forward(chain, cparams, x)
    _, got = forward(model, params, x)
    assert want.keys() == got.keys() and "classifier" in want
    for k in want:
        np.testing.assert_allclose(got[k], want[k], atol=1e-5, rtol=0)
    assert receptive_fields(chain) == receptive_fields(model)
    assert chain.features_stage == model.features_stage
    np.testing.assert_array_equal(
        conv_kernel(model, params, first_conv_layer(model, params)),
        conv_kernel(chain, cparams, first_conv_layer(chain, cparams)),
    )
    key, t = jax.random.key(3), jnp.asarray([1, 4])
    for fn in (
        lambda m, p: jaxviz.occlusion(m, p, x, window=8, stride=4).grid,
        lambda m, p: jaxviz.gradcam(m, p, x, layer="shrink"),
        lambda m, p: jaxviz.saliency(m, p, x),
        lambda m, p: guided_gradients(m, p, x, t),
        lambda m, p: jaxviz.integrated_gradients(m, p, x, steps=2, chunk=2).attributions,
        lambda m, p: jaxviz.smoothgrad(m, p, x, samples=2, chunk=2),
        lambda m, p: jaxviz.top_patches(m, p, x, layer="skip", k=3).boxes,
        lambda m, p: syn.class_visualization(m, p, t, key, syn.Ascent(steps=1)),
        lambda m, p: syn.invert(m, p, x, "shrink", key, steps=1),
        lambda m, p: syn.dream(m, p, x, "skip", key, steps=1, octaves=1),
    ):
        np.testing.assert_allclose(fn(model, params), fn(chain, cparams), atol=1e-5, rtol=0)


def test_load_model_module_attr():
    model, params = load_model("tests.fixtures.byom:make")
    assert model.stage_names[0] == "entry" and "entry" in params
    with pytest.raises(UsageError, match="no attribute"):
        load_model("tests.fixtures.byom:nothing")
    with pytest.raises(UsageError, match="cannot import"):
        load_model("tests.fixtures.nowhere:make")


BYOM_STUDY = """
[[part]]
name = "mine"
model = "tests.fixtures.byom:make"
data = "shapes:4:2"
batch_size = 4

[part.patches]
layer = "skip"
top = 2
[part.occlusion]
window = 8
stride = 8
"""


def test_sweep_runs_a_study_of_a_users_model(tmp_path, monkeypatch):
    """`model = "MODULE:ATTR"` in a study: layers are checked against the user's model, its
    jobs run and write their outputs."""
    monkeypatch.chdir(ROOT)  # MODULE is imported with the working directory on sys.path
    study = tmp_path / "s.toml"
    study.write_text(BYOM_STUDY)
    with pytest.raises(UsageError, match="unknown layer 'conv2' of model"):
        load_study(BYOM_STUDY.replace('"skip"', '"conv2"'), tmp_path / "never")
    out = tmp_path / "out"
    assert main(["sweep", str(study), "--out", str(out)]) == 0
    state = json.loads((out / "sweep.json").read_text())
    assert set(state["done"]) == {"mine/patches", "mine/occlusion"} and not state["failed"]
    assert np.load(out / "mine" / "patches" / "top_boxes.npy").shape == (16, 2, 4)
    occ = json.loads((out / "mine" / "occlusion" / "manifest.json").read_text())
    assert occ["counts"]["images"] == 4 and occ["results"]["grid"] == [3, 3]
