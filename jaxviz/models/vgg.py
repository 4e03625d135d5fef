"""`vgg16`: torchvision's VGG-16 without batch norm (Simonyan & Zisserman 2015, configuration D).

Input 224x224 RGB, ImageNet normalization. Stages (torchvision module in brackets):

    conv1_1 conv1_2 pool1        3x3 pad 1 convs + ReLU, 64 channels, 2x2/2 max-pool
    conv2_1 conv2_2 pool2        128
    conv3_1 conv3_2 conv3_3 pool3    256
    conv4_1 conv4_2 conv4_3 pool4    512
    conv5_1 conv5_2 conv5_3 pool5    512   (features.0 .. features.30)
    fc6    avgpool (adaptive 7x7) + classifier.0 Linear 25088 -> 4096 + ReLU
    fc7    classifier.3 Linear 4096 -> 4096 + ReLU (features stage)
    logits classifier.6 Linear 4096 -> 1000
"""

from __future__ import annotations

from jaxviz.models import ops
from jaxviz.models.alexnet import IMAGENET_PREPROCESS, PooledDense, imagenet_classes
from jaxviz.models.convert import NameTable, conv_rules, linear_rules, load_converted
from jaxviz.models.layers import ConvAct, Dense, MaxPool
from jaxviz.models.stage import Model, Params, Stage
from jaxviz.models.zoo import ZooEntry

INPUT_SIZE = (224, 224)
NUM_CLASSES = 1000
# convolutions per block and their width (configuration D)
BLOCKS = ((2, 64), (2, 128), (3, 256), (3, 512), (3, 512))


def _layout() -> list[tuple[str, int, int | None]]:
    """(stage name, torchvision features index, conv width or None for a pool) in order."""
    out, idx = [], 0
    for b, (n, width) in enumerate(BLOCKS, start=1):
        for j in range(1, n + 1):
            out.append((f"conv{b}_{j}", idx, width))
            idx += 2  # Conv2d, ReLU
        out.append((f"pool{b}", idx, None))
        idx += 1
    return out


def build() -> Model:
    stages = []
    for name, _, width in _layout():
        module = MaxPool(2, 2) if width is None else ConvAct(width, 3, 1, 1)
        stages.append(Stage(name, module, module.geometry))
    stages += [
        Stage("fc6", PooledDense(4096, 7), None),
        Stage("fc7", Dense(4096, act=ops.relu), None),
        Stage("logits", Dense(NUM_CLASSES), None),
    ]
    return Model(
        name="vgg16",
        stages=tuple(stages),
        input_size=INPUT_SIZE,
        num_classes=NUM_CLASSES,
        features_stage="fc7",
        preprocess=IMAGENET_PREPROCESS,
        class_names=imagenet_classes(),
    )


def name_table() -> NameTable:
    """torchvision VGG-16 state-dict name -> jaxviz parameter."""
    t: NameTable = {}
    for name, idx, width in _layout():
        if width is not None:
            conv_rules(t, f"features.{idx}", name, "conv")
    linear_rules(t, "classifier.0", "fc6", "dense", chw=(512, 7, 7))
    linear_rules(t, "classifier.3", "fc7", "dense")
    linear_rules(t, "classifier.6", "logits", "dense")
    return t


def load_checkpoint(model: Model, path: str) -> Params:
    """Params from a torchvision VGG-16 `.pth`/`.safetensors` (read without torch, cached)."""
    return load_converted(model, path, name_table())


ENTRY = ZooEntry(
    name="vgg16",
    description="VGG-16, torchvision layout (224x224, 1000 classes); weights: vgg16=PATH.pth",
    build=build,
    load_checkpoint=load_checkpoint,
)
