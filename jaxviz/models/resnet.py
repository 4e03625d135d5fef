"""`resnet18`, `resnet50`: torchvision's ResNets (He et al. 2016; ResNet-50 is "v1.5", the stride
on the 3x3 conv of a bottleneck).

Input 224x224 RGB, ImageNet normalization. Stages (torchvision modules in brackets):

    stem    conv1 7x7/2 pad 3 + bn1 + ReLU + maxpool 3x3/2 pad 1     -> 56x56
    layer1  layer1 (stride 1)                                         -> 56x56
    layer2  layer2 (stride 2)                                         -> 28x28
    layer3  layer3 (stride 2)                                         -> 14x14
    layer4  layer4 (stride 2)                                         -> 7x7
    pool    avgpool (global)  -> 512 (ResNet-18) / 2048 (ResNet-50), the features stage
    logits  fc

BatchNorm runs in inference mode on the checkpoint's running statistics (eps 1e-5 as torch).
A residual block's geometry is that of its main branch (the 1x1 shortcut reads inside it); a
layer's geometry composes its blocks.
"""

from __future__ import annotations

from functools import partial

import flax.linen as nn
import jax

from jaxviz.models import ops
from jaxviz.models.alexnet import IMAGENET_PREPROCESS, imagenet_classes
from jaxviz.models.conv import Conv
from jaxviz.models.convert import NameTable, bn_rules, conv_rules, linear_rules, load_converted
from jaxviz.models.geometry import IDENTITY, Geometry
from jaxviz.models.layers import Dense, GlobalAvgPool
from jaxviz.models.stage import Model, Stage
from jaxviz.models.zoo import ZooEntry

INPUT_SIZE = (224, 224)
NUM_CLASSES = 1000
LAYER_STRIDES = (1, 2, 2, 2)
LAYER_WIDTHS = (64, 128, 256, 512)


def _bn(name: str) -> nn.BatchNorm:
    return nn.BatchNorm(use_running_average=True, momentum=0.9, epsilon=1e-5, name=name)


def _conv(features: int, kernel: int, stride: int, name: str) -> nn.Module:
    p = kernel // 2
    return Conv(
        features, (kernel, kernel), (stride, stride), ((p, p), (p, p)), use_bias=False, name=name
    )


class Stem(nn.Module):
    """conv1 7x7/2 (no bias), bn1, ReLU, 3x3/2 max-pool pad 1: [B,H,W,3] -> [B,H/4,W/4,64]."""

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        x = ops.relu(_bn("bn1")(_conv(64, 7, 2, "conv1")(x)))
        return ops.max_pool(x, (3, 3), (2, 2), ((1, 1), (1, 1)))

    @property
    def geometry(self) -> Geometry:
        return Geometry.window(7, 2, 3).then(Geometry.window(3, 2, 1))


class Block(nn.Module):
    """A basic (two 3x3) or bottleneck (1x1, 3x3, 1x1 x4) residual block, torchvision names.

    [B, H, W, Cin] -> [B, H/stride, W/stride, planes * expansion].
    """

    planes: int
    stride: int
    bottleneck: bool
    downsample: bool

    @staticmethod
    def expansion(bottleneck: bool) -> int:
        return 4 if bottleneck else 1

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        p, s = self.planes, self.stride
        # (features, kernel, stride) of conv1, conv2[, conv3]
        convs = ((p, 1, 1), (p, 3, s), (4 * p, 1, 1)) if self.bottleneck else ((p, 3, s), (p, 3, 1))
        y = x
        for i, (features, kernel, stride) in enumerate(convs, start=1):
            y = _bn(f"bn{i}")(_conv(features, kernel, stride, f"conv{i}")(y))
            if i < len(convs):
                y = ops.relu(y)
        shortcut = x
        if self.downsample:
            shortcut = _bn("downsample_bn")(_conv(y.shape[-1], 1, s, "downsample_conv")(x))
        return ops.relu(y + shortcut)

    @staticmethod
    def branch_geometry(stride: int, bottleneck: bool) -> Geometry:
        g = Geometry.window(3, stride, 1)
        return g if bottleneck else g.then(Geometry.window(3, 1, 1))


class Layer(nn.Module):
    """torchvision's `layerN`: `blocks` residual blocks, the first with `stride` and shortcut."""

    planes: int
    blocks: int
    stride: int
    bottleneck: bool
    in_planes: int

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        first_down = self.stride != 1 or self.in_planes != self.planes * Block.expansion(
            self.bottleneck
        )
        for i in range(self.blocks):
            x = Block(
                self.planes,
                self.stride if i == 0 else 1,
                self.bottleneck,
                downsample=i == 0 and first_down,
                name=f"block{i}",
            )(x)
        return x

    @property
    def geometry(self) -> Geometry:
        g = IDENTITY
        for i in range(self.blocks):
            g = g.then(Block.branch_geometry(self.stride if i == 0 else 1, self.bottleneck))
        return g


def build(name: str, depths: tuple[int, int, int, int], bottleneck: bool) -> Model:
    stem = Stem()
    stages = [Stage("stem", stem, stem.geometry)]
    in_planes = 64
    for k, (n, width, stride) in enumerate(
        zip(depths, LAYER_WIDTHS, LAYER_STRIDES, strict=True), start=1
    ):
        layer = Layer(width, n, stride, bottleneck, in_planes)
        stages.append(Stage(f"layer{k}", layer, layer.geometry))
        in_planes = width * Block.expansion(bottleneck)
    stages += [Stage("pool", GlobalAvgPool(), None), Stage("logits", Dense(NUM_CLASSES), None)]
    return Model(
        name=name,
        stages=tuple(stages),
        input_size=INPUT_SIZE,
        num_classes=NUM_CLASSES,
        features_stage="pool",
        preprocess=IMAGENET_PREPROCESS,
        class_names=imagenet_classes(),
    )


def name_table(depths: tuple[int, int, int, int], bottleneck: bool) -> NameTable:
    """torchvision ResNet state-dict name -> jaxviz parameter."""
    t: NameTable = {}
    conv_rules(t, "conv1", "stem", "conv1", bias=False)
    bn_rules(t, "bn1", "stem", "bn1")
    nconv = 3 if bottleneck else 2
    for k, n in enumerate(depths, start=1):
        stage = f"layer{k}"
        for b in range(n):
            src, dst = f"{stage}.{b}", f"block{b}"
            for i in range(1, nconv + 1):
                conv_rules(t, f"{src}.conv{i}", stage, f"{dst}/conv{i}", bias=False)
                bn_rules(t, f"{src}.bn{i}", stage, f"{dst}/bn{i}")
            if b == 0 and (k > 1 or bottleneck):
                conv_rules(t, f"{src}.downsample.0", stage, f"{dst}/downsample_conv", bias=False)
                bn_rules(t, f"{src}.downsample.1", stage, f"{dst}/downsample_bn")
    linear_rules(t, "fc", "logits", "dense")
    return t


def _entry(name: str, depths: tuple[int, int, int, int], bottleneck: bool) -> ZooEntry:
    table = partial(name_table, depths, bottleneck)
    return ZooEntry(
        name=name,
        description=f"{name}, torchvision layout (224x224, 1000 classes); weights: {name}=PATH.pth",
        build=partial(build, name, depths, bottleneck),
        load_checkpoint=lambda model, path: load_converted(model, path, table()),
    )


RESNET18 = _entry("resnet18", (2, 2, 2, 2), bottleneck=False)
RESNET50 = _entry("resnet50", (3, 4, 6, 3), bottleneck=True)
