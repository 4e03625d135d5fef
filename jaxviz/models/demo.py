"""`demo`: a small CNN trained on the synthetic shapes set (scripts/train_demo.py).

Input 64x64 RGB. conv1 has 7x7 filters so its filter grid is worth looking at.

    conv1  7x7/2, 32  -> 32x32      pool1  2x2/2 -> 16x16
    conv2  3x3,   64  -> 16x16      pool2  2x2/2 -> 8x8
    conv3  3x3,  128  -> 8x8        conv4  3x3, 128 -> 8x8
    pool   global max -> 128        fc 128 (ReLU)   logits 10

The committed weights are adversarially trained (scripts/train_demo.py): their input gradients
follow object shapes, so class visualizations are recognizable; 97.7% top-1 on shapes:2000:123.
The global max pool (not average) makes a class's evidence come from one place: class
visualization then draws one object, where an average pool rewarded repeating its parts over the
whole image (a lattice of blobs for "star").
"""

from __future__ import annotations

from importlib import resources

import jax

from jaxviz.models import ops
from jaxviz.models.layers import ConvAct, Dense, GlobalMaxPool, MaxPool
from jaxviz.models.params_io import load_npz
from jaxviz.models.preprocess import Preprocess
from jaxviz.models.stage import Model, Params, Stage, init_params
from jaxviz.models.zoo import ZooEntry

INPUT_SIZE = (64, 64)
NUM_CLASSES = 10
CHECKPOINT = "demo.npz"
# the shapes set's classes in label order (jaxviz/data/shapes.py draws them; a test checks they
# match: the model knows nothing of the data package)
CLASS_NAMES = (
    "circle",
    "square",
    "triangle",
    "cross",
    "star",
    "ring",
    "stripes",
    "diamond",
    "hexagon",
    "crescent",
)


def _spatial(name, module) -> Stage:
    return Stage(name, module, module.geometry)


def build() -> Model:
    stages = (
        _spatial("conv1", ConvAct(32, 7, 2, 3)),
        _spatial("pool1", MaxPool(2, 2)),
        _spatial("conv2", ConvAct(64, 3, 1, 1)),
        _spatial("pool2", MaxPool(2, 2)),
        _spatial("conv3", ConvAct(128, 3, 1, 1)),
        _spatial("conv4", ConvAct(128, 3, 1, 1)),
        Stage("pool", GlobalMaxPool(), None),
        Stage("fc", Dense(128, act=ops.relu), None),
        Stage("logits", Dense(NUM_CLASSES), None),
    )
    return Model(
        name="demo",
        stages=stages,
        input_size=INPUT_SIZE,
        num_classes=NUM_CLASSES,
        features_stage="fc",
        preprocess=Preprocess(INPUT_SIZE, None, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)),
        class_names=tuple(CLASS_NAMES),
    )


def embedded(model: Model) -> Params:
    """The committed checkpoint, checked against the architecture."""
    ref = resources.files("jaxviz.assets") / CHECKPOINT
    like = jax.eval_shape(lambda: init_params(model, jax.random.key(0)))
    with resources.as_file(ref) as path:
        return load_npz(path, like)


ENTRY = ZooEntry(
    name="demo",
    description="small CNN trained on the synthetic shapes set (64x64, 10 classes)",
    build=build,
    embedded=embedded,
    load_checkpoint=lambda model, path: load_npz(
        path, jax.eval_shape(lambda: init_params(model, jax.random.key(0)))
    ),
)
