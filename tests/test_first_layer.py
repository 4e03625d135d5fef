"""first_layer.split_first_conv: forward == rest(head(x)) for every zoo model, the input gradient
through the split equals the model's, and a model with work before its first convolution is not
split."""

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxviz.methods.first_layer import split_first_conv
from jaxviz.models.conv import Conv
from jaxviz.models.stage import Stage, forward_fn, init_params
from jaxviz.models.zoo import entry

ZOO = ["demo", "alexnet", "resnet18", "efficientnet_lite0"]  # one a family of first layers


@pytest.mark.parametrize("name", ZOO)
def test_split_reproduces_forward_and_input_gradient(name):
    model = entry(name).build()
    hw = (67, 67) if name == "alexnet" else (35, 35)  # odd sizes: padding at the borders
    params = jax.jit(init_params, static_argnums=(0, 2))(model, jax.random.key(0), hw)
    x = jax.random.normal(jax.random.key(1), (2, *hw, 3))
    hot = jax.nn.one_hot(jnp.array([1, 2]), model.num_classes)
    full = forward_fn(model)

    @jax.jit
    def both_ways(params, x):
        split = split_first_conv(model, params, x.shape[1:])
        z = split.head(x)
        gz = jax.grad(lambda u: jnp.sum(split.rest(u) * hot))(z)
        want = jax.grad(lambda v: jnp.sum(full(params, v) * hot))(x)
        return z, split.rest(z), full(params, x), split.input_gradient(x, gz), want

    z, split_logits, logits, got, want = both_ways(params, x)
    assert z.shape[-1] != 3, "the head is the first convolution, not the identity"
    np.testing.assert_array_equal(split_logits, logits)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6 * float(jnp.abs(want).max()))


class _ScaledStem(nn.Module):
    @nn.compact
    def __call__(self, x):
        return Conv(4, (3, 3), name="conv")(2.0 * x + 1.0)


def test_work_before_the_first_conv_means_no_split(demo_random):
    model, _ = demo_random
    stem = Stage("stem", _ScaledStem(), None)
    model = dataclasses.replace(model, stages=(stem,))
    params = {"stem": stem.module.init(jax.random.key(0), jnp.zeros((1, 8, 8, 3)))}
    x = jnp.ones((1, 8, 8, 3))
    split = split_first_conv(model, params, x.shape[1:])
    assert split.head(x) is x
    np.testing.assert_array_equal(split.rest(x), forward_fn(model)(params, x))
