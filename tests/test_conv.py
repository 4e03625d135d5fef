"""jaxviz.models.conv: the custom input gradient equals JAX's own rule (strided convolutions in
the sub-pixel form too), and stays canonical (HWIO kernel, no input dilation) inside a loop body,
where JAX's rule leaves the slow swapped-kernel form."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from jaxviz.models.conv import NHWC, conv_general_dilated

CASES = [  # (size, kernel, stride, padding, dilation)
    (13, 3, 1, ((1, 1), (1, 1)), 1),
    (32, 11, 4, ((2, 2), (2, 2)), 1),
    (23, 7, 2, ((3, 3), (3, 3)), 1),
    (14, 1, 2, ((0, 0), (0, 0)), 1),
    (15, 3, 2, ((0, 1), (1, 0)), 1),  # TF-style "same" on an odd size
    (17, 3, 1, "SAME", 2),
    (19, 3, 2, ((2, 2), (2, 2)), 2),  # strided and dilated
    (20, 5, 3, ((1, 2), (2, 1)), 1),  # a stride that divides neither kernel nor size
]


@pytest.mark.parametrize("size,k,s,pad,d", CASES)
def test_gradients_equal_jax_rule(size, k, s, pad, d):
    rng = np.random.default_rng(size)
    x = jnp.asarray(rng.normal(size=(2, size, size + 1, 3)), jnp.float32)
    w = jnp.asarray(rng.normal(size=(k, k, 3, 5)), jnp.float32)

    def loss(conv):
        return lambda x, w: jnp.sum(
            jnp.sin(conv(x, w, (s, s), pad, rhs_dilation=(d, d), dimension_numbers=NHWC))
        )

    ref = jax.grad(loss(lax.conv_general_dilated), (0, 1))(x, w)
    ours = jax.grad(loss(conv_general_dilated), (0, 1))(x, w)
    for a, b in zip(ref, ours, strict=True):
        np.testing.assert_allclose(b, a, rtol=1e-5, atol=1e-5 * float(jnp.abs(a).max()))


def test_grouped_and_other_layouts_fall_back_to_lax():
    x = jnp.ones((1, 8, 8, 4))
    w = jnp.ones((3, 3, 1, 4))
    out = conv_general_dilated(x, w, (1, 1), "SAME", dimension_numbers=NHWC, feature_group_count=4)
    ref = lax.conv_general_dilated(
        x, w, (1, 1), "SAME", dimension_numbers=NHWC, feature_group_count=4
    )
    np.testing.assert_array_equal(out, ref)


def test_input_gradient_in_a_loop_uses_canonical_kernels():
    x = jnp.ones((2, 9, 9, 4))
    w = jnp.ones((3, 3, 4, 6))

    def loop(conv, stride):
        def body(acc, a):
            y = lambda v: conv(v, w, (stride, stride), "SAME", dimension_numbers=NHWC)  # noqa: E731
            return acc + jax.grad(lambda v: jnp.sum(y(v) ** 2))(a * x), None

        return lambda: lax.scan(body, jnp.zeros_like(x), jnp.linspace(0, 1, 3))[0]

    def hlo(conv, stride=1):
        return jax.jit(loop(conv, stride)).lower().compile().as_text()

    assert "01oi" in hlo(lax.conv_general_dilated)  # the slow form this module avoids
    assert "01oi" not in hlo(conv_general_dilated)
    assert "lhs_dilate" in hlo(lax.conv_general_dilated, 2)  # zeros between g's pixels
    assert "lhs_dilate" not in hlo(conv_general_dilated, 2)
