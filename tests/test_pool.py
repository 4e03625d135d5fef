"""jaxviz.models.pool.max_pool: forward identical to flax's, gradient equal to JAX's rule where
the maximum is unique, and PyTorch's first-maximum rule on ties."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from jaxviz.models.pool import max_pool

CASES = [  # (shape, window, stride, padding)
    ((2, 17, 17, 5), 3, 2, 1),  # ResNet's stem pool
    ((2, 27, 27, 4), 3, 2, 0),  # AlexNet
    ((2, 14, 15, 3), 2, 2, 0),  # VGG, odd width: floor mode drops the last column
    ((1, 9, 9, 2), 3, 1, 1),
]


@pytest.mark.parametrize("shape,k,s,p", CASES)
def test_matches_flax_forward_and_jax_gradient(shape, k, s, p):
    rng = np.random.default_rng(k * 10 + s)
    x = jnp.asarray(rng.normal(size=shape), jnp.float32)
    args = ((k, k), (s, s), ((p, p), (p, p)))
    ref = lambda v: nn.max_pool(v, *args[:2], padding=args[2])  # noqa: E731
    ours = lambda v: max_pool(v, *args)  # noqa: E731
    np.testing.assert_array_equal(ours(x), ref(x))
    g = jnp.asarray(rng.normal(size=ref(x).shape), jnp.float32)
    want = jax.vjp(ref, x)[1](g)[0]
    got = jax.jit(lambda v, u: jax.vjp(ours, v)[1](u)[0])(x, g)
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)


def test_ties_go_to_the_first_maximum_like_torch():
    rng = np.random.default_rng(0)
    x = np.round(np.maximum(rng.normal(size=(2, 11, 11, 3)), 0)).astype(np.float32)  # many ties
    g = rng.normal(size=(2, 6, 6, 3)).astype(np.float32)
    got = jax.vjp(lambda v: max_pool(v, (3, 3), (2, 2), ((1, 1), (1, 1))), jnp.asarray(x))[1](g)[0]
    xt = torch.from_numpy(x.transpose(0, 3, 1, 2).copy()).requires_grad_()
    torch.nn.functional.max_pool2d(xt, 3, 2, 1).backward(torch.from_numpy(g.transpose(0, 3, 1, 2)))
    np.testing.assert_allclose(got, xt.grad.numpy().transpose(0, 2, 3, 1), rtol=1e-6, atol=1e-6)
