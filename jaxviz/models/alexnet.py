"""`alexnet`: torchvision's AlexNet (Krizhevsky et al. 2012, the "one weird trick" variant).

Input 224x224 RGB, ImageNet normalization. Stages and torchvision modules, one to one:

    conv1  features.0  11x11/4 pad 2, 64 + ReLU -> 55x55     pool1  features.2  3x3/2 -> 27x27
    conv2  features.3  5x5 pad 2, 192 + ReLU    -> 27x27     pool2  features.5  3x3/2 -> 13x13
    conv3  features.6  3x3 pad 1, 384 + ReLU    -> 13x13
    conv4  features.8  3x3 pad 1, 256 + ReLU    -> 13x13
    conv5  features.10 3x3 pad 1, 256 + ReLU    -> 13x13     pool5  features.12 3x3/2 -> 6x6
    fc6    avgpool (adaptive 6x6) + classifier.1 Linear 9216 -> 4096 + ReLU
    fc7    classifier.4 Linear 4096 -> 4096 + ReLU (the 4096-d features of the lecture)
    logits classifier.6 Linear 4096 -> 1000

Dropout is the identity at inference. The adaptive average pool is part of fc6 (at 224x224 it is
the identity), so pool5's geometry stays exact at every input size.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jaxviz.models import ops
from jaxviz.models.convert import NameTable, conv_rules, linear_rules, load_converted
from jaxviz.models.layers import ConvAct, Dense, Linear, MaxPool
from jaxviz.models.preprocess import Preprocess
from jaxviz.models.stage import Model, Params, Stage
from jaxviz.models.zoo import ZooEntry

INPUT_SIZE = (224, 224)
NUM_CLASSES = 1000
IMAGENET_PREPROCESS = Preprocess(INPUT_SIZE, resize=256)


def imagenet_classes() -> tuple[str, ...] | None:
    """The 1000 ImageNet class names (jaxviz/assets/imagenet_classes.txt), None if not shipped."""
    try:
        from jaxviz.models.imagenet import imagenet_class_names
    except ImportError:
        return None
    return imagenet_class_names()


def _adaptive_matrix(n: int, out: int) -> np.ndarray:
    """[out, n] averaging matrix of torch's AdaptiveAvgPool1d (windows floor(i*n/out) ..
    ceil((i+1)*n/out))."""
    m = np.zeros((out, n), np.float32)
    for i in range(out):
        lo, hi = (i * n) // out, -(-((i + 1) * n) // out)
        m[i, lo:hi] = 1.0 / (hi - lo)
    return m


def adaptive_avg_pool(x: jax.Array, out: int) -> jax.Array:
    """torch's AdaptiveAvgPool2d(out) on NHWC: [B, H, W, C] -> [B, out, out, C]."""
    if x.shape[1:3] == (out, out):
        return x
    mh = jnp.asarray(_adaptive_matrix(x.shape[1], out), x.dtype)
    mw = jnp.asarray(_adaptive_matrix(x.shape[2], out), x.dtype)
    return jnp.einsum("ih,bhwc,jw->bijc", mh, x, mw)


class PooledDense(nn.Module):
    """AdaptiveAvgPool2d(pool) + NHWC flatten + Dense + ReLU: the first classifier layer.

    [B, H, W, C] -> [B, features]. The converter reorders torch's NCHW-flatten weight once.
    """

    features: int
    pool: int

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        x = adaptive_avg_pool(x, self.pool)
        x = Linear(self.features, name="dense")(jnp.reshape(x, (x.shape[0], -1)))
        return ops.relu(x)


def _spatial(name: str, module: nn.Module) -> Stage:
    return Stage(name, module, module.geometry)


def build() -> Model:
    stages = (
        _spatial("conv1", ConvAct(64, 11, 4, 2)),
        _spatial("pool1", MaxPool(3, 2)),
        _spatial("conv2", ConvAct(192, 5, 1, 2)),
        _spatial("pool2", MaxPool(3, 2)),
        _spatial("conv3", ConvAct(384, 3, 1, 1)),
        _spatial("conv4", ConvAct(256, 3, 1, 1)),
        _spatial("conv5", ConvAct(256, 3, 1, 1)),
        _spatial("pool5", MaxPool(3, 2)),
        Stage("fc6", PooledDense(4096, 6), None),
        Stage("fc7", Dense(4096, act=ops.relu), None),
        Stage("logits", Dense(NUM_CLASSES), None),
    )
    return Model(
        name="alexnet",
        stages=stages,
        input_size=INPUT_SIZE,
        num_classes=NUM_CLASSES,
        features_stage="fc7",
        preprocess=IMAGENET_PREPROCESS,
        class_names=imagenet_classes(),
    )


def name_table() -> NameTable:
    """torchvision AlexNet state-dict name -> jaxviz parameter."""
    t: NameTable = {}
    for i, stage in ((0, "conv1"), (3, "conv2"), (6, "conv3"), (8, "conv4"), (10, "conv5")):
        conv_rules(t, f"features.{i}", stage, "conv")
    linear_rules(t, "classifier.1", "fc6", "dense", chw=(256, 6, 6))
    linear_rules(t, "classifier.4", "fc7", "dense")
    linear_rules(t, "classifier.6", "logits", "dense")
    return t


def load_checkpoint(model: Model, path: str) -> Params:
    """Params from a torchvision AlexNet `.pth`/`.safetensors` (read without torch, cached)."""
    return load_converted(model, path, name_table())


ENTRY = ZooEntry(
    name="alexnet",
    description="AlexNet, torchvision layout (224x224, 1000 classes); weights: alexnet=PATH.pth",
    build=build,
    load_checkpoint=load_checkpoint,
)
