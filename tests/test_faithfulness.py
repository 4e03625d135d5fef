"""Faithfulness metrics against brute force and scipy."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.stats import spearmanr

from jaxviz.methods import faithfulness as fa
from jaxviz.methods.gradcam import gradcam, upsample
from jaxviz.methods.targets import PRED
from jaxviz.models.stage import forward

HW = 24  # the demo model is fully convolutional up to its global pool: small inputs are fine


@pytest.fixture(scope="module")
def case(demo_random):
    model, params = demo_random
    k1, k2 = jax.random.split(jax.random.key(2))
    x = jax.random.normal(k1, (3, HW, HW, 3), jnp.float32)
    maps = jax.random.uniform(k2, (3, HW, HW))
    maps = jnp.round(maps * 20) / 20  # many ties: order must be stable and shared
    t = jnp.asarray([PRED, 2, 5], jnp.int32)
    return model, params, x, maps, t


def brute_curve(model, params, x, m, t, substrate, mode, step):
    """One image, one forward pass per step, ranks from numpy's stable sort."""
    order = np.argsort(-np.asarray(m).ravel(), kind="stable")
    probs = []
    for k in range(fa.num_steps(m.size, step) + 1):
        changed = np.zeros(m.size, bool)
        changed[order[: k * step]] = True
        changed = changed.reshape(m.shape)[..., None]
        xk = (
            np.where(changed, substrate, x)
            if mode == "deletion"
            else np.where(changed, x, substrate)
        )
        logits = np.asarray(forward(model, params, jnp.asarray(xk[None]))[0])[0]
        p = np.exp(logits - logits.max())
        probs.append((p / p.sum())[t])
    return np.asarray(probs)


@pytest.mark.parametrize("mode", fa.MODES)
def test_curves_match_brute_force(case, mode):
    model, params, x, maps, t = case
    step = 50  # 576 pixels: 12 steps, the last one partial
    sub = fa.blur(x) if mode == "insertion" else jnp.zeros_like(x)
    curves = fa.deletion_insertion(model, params, x, maps, t, sub, mode, step, chunk=5)
    assert curves.shape == (3, 13)
    logits, _ = forward(model, params, x)
    resolved = np.where(np.asarray(t) < 0, np.argmax(logits, -1), np.asarray(t))
    for i in range(3):
        ref = brute_curve(
            model, params, np.asarray(x[i]), maps[i], resolved[i], np.asarray(sub[i]), mode, step
        )
        np.testing.assert_allclose(curves[i], ref, rtol=1e-5, atol=1e-7)
    # the ends are the untouched image and the pure substrate
    full = np.asarray(jax.nn.softmax(logits, -1))[np.arange(3), resolved]
    end = 0 if mode == "deletion" else -1
    np.testing.assert_allclose(curves[:, end], full, rtol=1e-5)
    # batch and chunk do not change results
    single = fa.deletion_insertion(
        model, params, x[1:2], maps[1:2], t[1:2], sub[1:2], mode, step, chunk=13
    )
    np.testing.assert_allclose(single[0], curves[1], rtol=1e-5, atol=1e-7)


def test_auc_is_trapezoid():
    c = jax.random.uniform(jax.random.key(0), (4, 17))
    ref = np.trapezoid(np.asarray(c), dx=1 / 16, axis=-1)
    np.testing.assert_allclose(fa.auc(c), ref, rtol=1e-6)


def test_blur_preserves_constants_and_smooths():
    x = jnp.ones((1, 16, 16, 3)) * 2.0
    np.testing.assert_allclose(fa.blur(x), x, rtol=1e-6)
    n = jax.random.normal(jax.random.key(0), (2, 32, 32, 3))
    assert float(jnp.std(fa.blur(n))) < 0.5 * float(jnp.std(n))


def test_spearman_matches_scipy_with_ties():
    k1, k2 = jax.random.split(jax.random.key(0))
    a = jnp.round(jax.random.uniform(k1, (5, 8, 9)) * 6)
    b = jnp.round(a + jax.random.normal(k2, (5, 8, 9)) * 2)
    ours = fa.spearman(a, b)
    for i in range(5):
        ref = spearmanr(np.asarray(a[i]).ravel(), np.asarray(b[i]).ravel()).statistic
        np.testing.assert_allclose(ours[i], ref, rtol=1e-5)
    assert np.isnan(fa.spearman(jnp.zeros((1, 9)), b[:1, 0]))[0]


def test_cascade_randomizes_top_down(demo_random):
    model, params = demo_random
    steps = fa.cascade(model, params, jax.random.key(9))
    assert [s for s, _ in steps] == ["logits", "fc", "conv4", "conv3", "conv2", "conv1"]
    order = [s for s, _ in steps]
    for i, (_, p) in enumerate(steps):
        for name in order:
            same = all(
                np.array_equal(a, b)
                for a, b in zip(
                    jax.tree.leaves(p[name]), jax.tree.leaves(params[name]), strict=True
                )
            )
            assert same == (name not in order[: i + 1]), (i, name)


def test_randomization_check(case):
    model, params, x, _, t = case
    # a "method" that ignores the model passes nothing: correlation stays exactly 1
    edges = jnp.abs(jnp.diff(x, axis=1, append=x[:, -1:])).sum(-1)
    flat = fa.randomization_check(lambda p: edges, model, params, jax.random.key(1))
    assert all(np.allclose(v, 1.0) for v in flat.values())
    # Grad-CAM: the reported correlation is the Spearman correlation of the two maps
    cam = jax.jit(lambda p: upsample(gradcam(model, p, x, t, "conv3"), (HW, HW)))
    res = fa.randomization_check(cam, model, params, jax.random.key(1))
    _, p_all = fa.cascade(model, params, jax.random.key(1))[-1]
    ref = [
        spearmanr(np.asarray(cam(params)[i]).ravel(), np.asarray(cam(p_all)[i]).ravel())
        for i in range(3)
    ]
    np.testing.assert_allclose(res["conv1"], [r.statistic for r in ref], rtol=1e-4)
