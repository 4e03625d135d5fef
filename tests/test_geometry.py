"""Receptive-field algebra checked against gradients, for every stage of every zoo model.

The support of d(unit)/d(input) must lie inside the computed box; with ReLUs made linear and
max-pooling replaced by average pooling (same windows) it must also touch every edge of the box
(clipped at the image border): the box is neither too small nor too large.
"""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxviz.models import ops
from jaxviz.models.geometry import Geometry, ReceptiveField
from jaxviz.models.stage import forward, init_params, receptive_fields, stage_shapes
from jaxviz.models.zoo import entry

# (zoo name, input size used for the test)
MODELS = [
    ("demo", (64, 64)),
    ("efficientnet_lite0", (64, 64)),
    # the smallest sizes at which floor-mode pooling drops no input pixel
    ("alexnet", (63, 63)),
    ("vgg16", (32, 32)),
    ("resnet18", (32, 32)),
    ("resnet50", (32, 32)),
]


def _support_box(grad: np.ndarray) -> tuple[int, int, int, int]:
    ys, xs = np.nonzero(np.abs(grad).sum(-1) > 0)
    return (ys.min(), xs.min(), ys.max() + 1, xs.max() + 1)


def _linear_pool(x, window, strides, padding):
    return nn.avg_pool(x, window, strides, padding=padding, count_include_pad=True)


def _unit_grads(model, params, x, queries, last):
    """d(sum over channels of unit (y, x) of stage)/d(input) for every (stage, y, x) query:
    one jitted VJP of all spatial taps, called with a one-hot cotangent per query."""

    def taps(v):
        return forward(model, params, v, stop=last)[1]

    @jax.jit
    def grad(v, cotangent):
        return jax.vjp(taps, v)[1](cotangent)[0][0]

    zeros = {k: np.zeros(a.shape, np.float32) for k, a in jax.eval_shape(taps, x).items()}
    out = []
    for stage, y, xx in queries:
        cot = dict(zeros)
        cot[stage] = np.zeros_like(zeros[stage])
        cot[stage][0, y, xx] = 1.0
        out.append(np.asarray(grad(x, cot)))
    return out


@pytest.mark.parametrize("name,size", MODELS)
def test_receptive_field_matches_gradient_support(name, size):
    model = entry(name).build()
    rfs = receptive_fields(model)
    last = [k for k, rf in rfs.items() if rf is not None][-1]
    params = init_params(model, jax.random.key(1), size, stop=last)
    x = jax.random.normal(jax.random.key(2), (1, *size, 3))
    shapes = stage_shapes(model, size)
    queries, boxes = [], []
    for stage, rf in rfs.items():
        if rf is None:
            continue
        h, w = shapes[stage][:2]
        for y, xx in sorted({(0, 0), (h - 1, w - 1), (h // 2, w // 2), (0, w - 1)}):
            queries.append((stage, y, xx))
            boxes.append(rf.box(y, xx, size))
    for q, box, g in zip(queries, boxes, _unit_grads(model, params, x, queries, last), strict=True):
        y0, x0, y1, x1 = _support_box(g)
        assert box[0] <= y0 and box[1] <= x0 and y1 <= box[2] and x1 <= box[3], q
    with ops.activation_override(relu=lambda v: v, relu6=lambda v: v, max_pool=_linear_pool):
        linear = _unit_grads(model, params, x, queries, last)
    for q, box, g in zip(queries, boxes, linear, strict=True):
        assert _support_box(g) == box, (q, _support_box(g), box)


def test_alexnet_conv5_and_pool5_geometry_at_224():
    model = entry("alexnet").build()
    shapes, rfs = stage_shapes(model, (224, 224)), receptive_fields(model)
    assert shapes["conv5"] == (13, 13, 256) and shapes["pool5"] == (6, 6, 256)
    assert rfs["conv5"].size == (163, 163) and rfs["conv5"].stride == (16, 16)
    assert rfs["pool5"].size == (195, 195) and rfs["pool5"].stride == (32, 32)
    assert model.stage_names.index("conv5") + 1 == model.stage_names.index("pool5")


def test_geometry_composition_matches_conv_chain():
    a = Geometry.window(11, 4, 2)
    b = Geometry.window(3, 2)
    c = a.then(b)
    assert c.span == (19, 19) and c.stride == (8, 8) and c.pad_lo == (2, 2)
    rf = ReceptiveField.of(c)
    assert rf.box(0, 0) == (-2, -2, 17, 17)
    assert rf.box(1, 2, (30, 30)) == (6, 14, 25, 30)
    assert a.out_size((224, 224)) == (55, 55)


def test_forward_start_stop_composes(demo_random):
    model, params = demo_random
    x = jax.random.normal(jax.random.key(3), (2, 64, 64, 3))
    logits, taps = forward(model, params, x)
    mid, _ = forward(model, params, x, stop="conv3")
    tail, _ = forward(model, params, mid, start=model.next_stage("conv3"))
    np.testing.assert_allclose(tail, logits, rtol=1e-5, atol=1e-5)
    assert set(taps) == set(model.stage_names)
    assert logits.shape == (2, model.num_classes)


def test_unknown_layer_names_the_choices(demo_random):
    model, params = demo_random
    with pytest.raises(ValueError, match="conv1.*conv2"):
        forward(model, params, jnp.zeros((1, 64, 64, 3)), stop="conv9")
