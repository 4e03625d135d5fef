"""Both depthwise formulations agree with each other and with torch's grouped conv2d."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from jaxviz.models.depthwise import (
    _shift_add,
    _shift_add_fused_grad,
    depthwise_conv,
    depthwise_grouped,
    depthwise_shift,
    same_padding,
)

CASES = [  # (size, channels, kernel, stride)
    (12, 8, 3, 1),
    (12, 8, 3, 2),
    (13, 5, 5, 1),
    (14, 6, 5, 2),
    (11, 4, 3, 2),
]


def _inputs(size, c, k, seed=0):
    kx, kw = jax.random.split(jax.random.key(seed))
    x = jax.random.normal(kx, (2, size, size, c), jnp.float32)
    w = jax.random.normal(kw, (k, k, 1, c), jnp.float32)
    return x, w


@pytest.mark.parametrize("size,c,k,s", CASES)
def test_shift_matches_grouped_and_torch(size, c, k, s):
    x, w = _inputs(size, c, k)
    pad = same_padding(size, k, s)
    padding = (pad, pad)
    g = depthwise_grouped(x, w, (s, s), padding)
    sh = jax.jit(depthwise_shift, static_argnums=(2, 3))(x, w, (s, s), padding)
    assert g.shape == sh.shape == (2, -(-size // s), -(-size // s), c)
    np.testing.assert_allclose(sh, g, rtol=1e-5, atol=1e-5)

    xt = torch.from_numpy(np.asarray(x).transpose(0, 3, 1, 2).copy())
    wt = torch.from_numpy(np.asarray(w).transpose(3, 2, 0, 1).copy())
    xt = torch.nn.functional.pad(xt, (pad[0], pad[1], pad[0], pad[1]))
    ref = torch.nn.functional.conv2d(xt, wt, stride=s, groups=c).numpy().transpose(0, 2, 3, 1)
    np.testing.assert_allclose(sh, ref, rtol=1e-5, atol=1e-5)


def test_gradients_agree():
    x, w = _inputs(10, 4, 5, seed=1)
    padding = ((1, 2), (1, 2))

    def loss(fn):
        return lambda a, b: jnp.sum(jnp.sin(fn(a, b, (2, 2), padding)))

    gg = jax.grad(loss(depthwise_grouped), argnums=(0, 1))(x, w)
    gs = jax.grad(loss(depthwise_shift), argnums=(0, 1))(x, w)
    for a, b in zip(gg, gs, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4)


def test_dispatch_uses_shift_and_add_on_cpu():
    x, w = _inputs(12, 8, 3)
    padding = ((0, 1), (0, 1))
    f = jax.jit(lambda a, b: depthwise_conv(a, b, (2, 2), padding))
    hlo = f.lower(x, w).compile().as_text()
    assert "feature_group_count" not in hlo
    forced = jax.jit(lambda a, b: depthwise_conv(a, b, (2, 2), padding, impl="grouped"))
    assert "feature_group_count=8" in forced.lower(x, w).compile().as_text()
    np.testing.assert_allclose(f(x, w), forced(x, w), rtol=1e-5, atol=1e-5)


def test_same_padding_is_tensorflows():
    assert same_padding(224, 3, 2) == (0, 1)
    assert same_padding(56, 5, 2) == (1, 2)
    assert same_padding(7, 5, 1) == (2, 2)
    assert same_padding(225, 3, 2) == (1, 1)
    assert same_padding(14, 1, 1) == (0, 0)


@pytest.mark.parametrize("size,c,k,s", CASES)
def test_fused_gradient_matches_jax_rule(size, c, k, s):
    """The shift-and-add input gradient (and the kernel gradient) equal JAX's own rule."""
    x, w = _inputs(size, c, k, seed=3)
    padding = (same_padding(size, k, s), (k // 2, (k - 1) // 2))  # asymmetric both ways

    def grads(fn):
        y, vjp = jax.vjp(lambda a, b: fn(a, b, (s, s), padding), x, w)
        return jax.jit(vjp)(jax.random.normal(jax.random.key(4), y.shape))

    want = grads(_shift_add)
    got = grads(_shift_add_fused_grad)
    for a, b in zip(want, got, strict=True):
        np.testing.assert_allclose(b, a, rtol=1e-5, atol=1e-5 * float(jnp.abs(a).max()))
