"""A model as `rest(head(x))`, where `head` is its first convolution: an affine map of the input.

Path and noise methods sum gradients at many inputs. Through an affine first layer
head(v) = W * v + b they need it only once each way:

- forward, integrated gradients: head(x' + a (x - x')) = head(x') + a (head(x) - head(x')), so
  two convolutions serve every step of the path instead of one a step;
- backward, any weighted sum: sum_s w_s d f / d x at x_s = W^T (sum_s w_s d rest / d z at z_s),
  one transposed convolution for all steps or samples instead of one each.

On ResNet-18 at 224 the first layer (7x7/2, 3 -> 64 channels) and its input gradient (a 7x7
transposed convolution back to 224x224x3) are among the slowest convolutions on XLA:CPU.

The split finds the first `nn.Conv` of the first stage with flax's method interception and uses
it only when that convolution reads the model input itself (nothing before it), so the
identities above hold exactly (up to float rounding); otherwise `head` is the identity.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxviz.models.stage import Model, Params, forward_fn


class Split(NamedTuple):
    """head: x [N, H, W, C] -> z (affine: the first convolution, or the identity);
    rest: z -> logits [N, K]; forward(x) == rest(head(x))."""

    head: Callable[[jax.Array], jax.Array]
    rest: Callable[[jax.Array], jax.Array]

    def input_gradient(self, x: jax.Array, gz: jax.Array) -> jax.Array:
        """The gradient w.r.t. x of sum(gz * head(x)): W^T gz (any x: head is affine)."""
        return jax.vjp(self.head, x)[1](gz)[0]


def _first_conv(replace: Callable) -> Callable:
    """A flax interceptor that hands the first `nn.Conv.__call__` of a trace to
    `replace(call, conv_input)`; every other method call runs unchanged."""
    seen = []

    def interceptor(call, args, kwargs, context):
        if not seen and isinstance(context.module, nn.Conv) and context.method_name == "__call__":
            seen.append(True)
            return replace(lambda: call(*args, **kwargs), args[0])
        return call(*args, **kwargs)

    return interceptor


def split_first_conv(model: Model, params: Params, input_shape: tuple[int, ...]) -> Split:
    """`Split` of the model at its first convolution (see the module doc), for inputs of
    shape [N, *input_shape] (H, W, C)."""
    first = model.stages[0].name
    full = forward_fn(model)

    def head(v: jax.Array) -> jax.Array:
        out = []

        def capture(call: Callable, conv_input: jax.Array) -> jax.Array:
            if conv_input is not v:
                raise _NotAtInput
            out.append(call())
            return out[0]

        with nn.intercept_methods(_first_conv(capture)):
            forward_fn(model, stop=first)(params, v)  # the rest of the stage is dead code
        if not out:
            raise _NotAtInput
        return out[0]

    def rest(z: jax.Array) -> jax.Array:
        unused = jnp.zeros((z.shape[0], *input_shape), z.dtype)  # removed by the compiler
        with nn.intercept_methods(_first_conv(lambda call, conv_input: z)):
            return full(params, unused)

    try:
        jax.eval_shape(head, jax.ShapeDtypeStruct((1, *input_shape), jnp.float32))
    except _NotAtInput:
        return Split(lambda v: v, lambda v: full(params, v))
    return Split(head, rest)


class _NotAtInput(Exception):
    """The first convolution does not read the model input directly (or there is none)."""
