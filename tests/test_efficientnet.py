"""EfficientNet-Lite0: parity with an independent PyTorch implementation loaded from the package's
file, strict conversion, no torch at load time, and the classification acceptance test."""

import json
import math
import re
import subprocess
import sys

import jax
import numpy as np
import pytest
import torch
from torch import nn

from jaxviz.models import efficientnet_lite
from jaxviz.models.checkpoint import CheckpointError, read_state_dict
from jaxviz.models.convert import from_state_dict
from jaxviz.models.stage import forward
from jaxviz.models.zoo import load_model

# lukemelas / efficientnet_lite_builder block strings of Lite0
BLOCKS = [
    "r1_k3_s11_e1_i32_o16",
    "r2_k3_s22_e6_i16_o24",
    "r2_k5_s22_e6_i24_o40",
    "r3_k3_s22_e6_i40_o80",
    "r3_k5_s11_e6_i80_o112",
    "r4_k5_s22_e6_i112_o192",
    "r1_k3_s11_e6_i192_o320",
]


class SameConv(nn.Conv2d):
    """Conv2d with TensorFlow "SAME" padding fixed for an input of `image_size` (static)."""

    def __init__(self, cin, cout, k, stride=1, groups=1, image_size=224):
        super().__init__(cin, cout, k, stride, 0, groups=groups, bias=False)
        out = math.ceil(image_size / stride)
        total = max((out - 1) * stride + k - image_size, 0)
        self.pad = (total // 2, total - total // 2) * 2

    def forward(self, x):
        return super().forward(nn.functional.pad(x, self.pad))


def _bn(c):
    return nn.BatchNorm2d(c, eps=1e-3)


class MBConv(nn.Module):
    def __init__(self, k, s, e, cin, cout, image_size):
        super().__init__()
        mid = cin * e
        if e != 1:
            self._expand_conv = SameConv(cin, mid, 1, image_size=image_size)
            self._bn0 = _bn(mid)
        self._depthwise_conv = SameConv(mid, mid, k, s, groups=mid, image_size=image_size)
        self._bn1 = _bn(mid)
        self._project_conv = SameConv(mid, cout, 1, image_size=math.ceil(image_size / s))
        self._bn2 = _bn(cout)
        self.skip = s == 1 and cin == cout
        self.e = e

    def forward(self, x):
        h = x
        if self.e != 1:
            h = nn.functional.relu6(self._bn0(self._expand_conv(h)))
        h = nn.functional.relu6(self._bn1(self._depthwise_conv(h)))
        h = self._bn2(self._project_conv(h))
        return h + x if self.skip else h


class TorchLite0(nn.Module):
    """EfficientNet-Lite0 with the state-dict names of the package's checkpoint."""

    def __init__(self):
        super().__init__()
        self._conv_stem = SameConv(3, 32, 3, 2)
        self._bn0 = _bn(32)
        blocks, size = [], 112
        for s in BLOCKS:
            o = dict(re.findall(r"([a-z]+)(\d+)", s))
            r, k, st, e = int(o["r"]), int(o["k"]), int(o["s"][0]), int(o["e"])
            cin, cout = int(o["i"]), int(o["o"])
            for j in range(r):
                blocks.append(
                    MBConv(k, st if j == 0 else 1, e, cin if j == 0 else cout, cout, size)
                )
                size = math.ceil(size / (st if j == 0 else 1))
        self._blocks = nn.ModuleList(blocks)
        self._conv_head = SameConv(320, 1280, 1, image_size=7)
        self._bn1 = _bn(1280)
        self._fc = nn.Linear(1280, 1000)

    def forward(self, x):
        taps = {}
        x = taps["stem"] = nn.functional.relu6(self._bn0(self._conv_stem(x)))
        for i, b in enumerate(self._blocks):
            x = taps[f"block{i}"] = b(x)
        x = taps["head"] = nn.functional.relu6(self._bn1(self._conv_head(x)))
        x = taps["pool"] = x.mean((2, 3))
        taps["logits"] = self._fc(x)
        return taps


@pytest.fixture(scope="module")
def lite0():
    return load_model("efficientnet_lite0")


@pytest.fixture(scope="module")
def torch_lite0():
    net = TorchLite0().eval()
    state = torch.load(efficientnet_lite.package_checkpoint(), map_location="cpu")
    net.load_state_dict(state, strict=True)
    return net


def _images():
    from PIL import Image
    from skimage import data

    return [Image.fromarray(data.chelsea()), Image.fromarray(data.coffee())]


def test_parity_with_torch_on_package_weights(lite0, torch_lite0):
    model, params = lite0
    pp = model.preprocess
    x = np.asarray(pp.normalize(np.stack([pp.to_uint8(im) for im in _images()])))
    _, taps = jax.jit(lambda p, v: forward(model, p, v))(params, x)
    with torch.no_grad():
        ref = torch_lite0(torch.from_numpy(x.transpose(0, 3, 1, 2).copy()))
    assert list(ref) == list(model.stage_names)
    for name, t in ref.items():
        t = t.numpy()
        t = t.transpose(0, 2, 3, 1) if t.ndim == 4 else t
        got = np.asarray(taps[name])
        assert got.shape == t.shape, name
        err = np.max(np.abs(got - t)) / np.max(np.abs(t))
        assert err < 1e-4, (name, err)
    assert np.argmax(ref["logits"].numpy(), -1).tolist() == np.argmax(taps["logits"], -1).tolist()


def test_geometry_of_strided_blocks():
    model = efficientnet_lite.build()
    geo = {s.name: s.geometry for s in model.stages}
    assert geo["stem"].pad_lo == (0, 0) and geo["stem"].pad_hi == (1, 1)
    assert geo["block1"].pad_lo == (0, 0) and geo["block1"].pad_hi == (1, 1)  # k3/2 on 112
    assert geo["block3"].pad_lo == (1, 1) and geo["block3"].pad_hi == (2, 2)  # k5/2 on 56
    assert geo["block4"].pad_lo == (2, 2) and geo["block4"].pad_hi == (2, 2)  # k5/1
    assert geo["block11"].kernel == (5, 5) and geo["block11"].stride == (2, 2)


def test_conversion_refuses_mismatched_state_dicts():
    model = efficientnet_lite.build()
    state = read_state_dict(efficientnet_lite.package_checkpoint())
    table = efficientnet_lite.name_table()

    def convert(sd):
        return from_state_dict(model, sd, table, "x.pth")

    with pytest.raises(CheckpointError, match=r"unexpected \['_blocks\.16\._bn1\.weight'\]"):
        convert(dict(state, **{"_blocks.16._bn1.weight": np.zeros(3, np.float32)}))
    with pytest.raises(CheckpointError, match=r"missing \['_blocks\.3\._bn1\.running_var'\]"):
        convert({k: v for k, v in state.items() if k != "_blocks.3._bn1.running_var"})
    with pytest.raises(CheckpointError, match=r"mis-shaped.*_fc\.bias: \(10,\)"):
        convert(dict(state, **{"_fc.bias": np.zeros(10, np.float32)}))
    # every tensor of the file is used, and converted params equal the file's, transposed
    params = convert(state)
    np.testing.assert_array_equal(
        params["block3"]["params"]["depthwise_conv"]["kernel"],
        state["_blocks.3._depthwise_conv.weight"].transpose(2, 3, 1, 0),
    )
    np.testing.assert_array_equal(
        params["logits"]["params"]["dense"]["kernel"], state["_fc.weight"]
    )
    used = {k for k in state if not k.endswith("num_batches_tracked")}
    assert used == set(table)


def test_embedded_load_does_not_import_torch(tmp_path):
    code = (
        "import sys; sys.modules['torch'] = None\n"
        "from jaxviz.models.zoo import load_model\n"
        "m, p = load_model('efficientnet_lite0')\n"
        "assert p['block15']['params']['depthwise_conv']['kernel'].shape == (3, 3, 1, 1152)\n"
        "m, p = load_model('efficientnet_lite0')  # again, from the orbax cache\n"
        "print('ok')\n"
    )
    env = {"JAX_PLATFORMS": "cpu", "PATH": "/usr/bin:/bin", "JAXVIZ_CACHE": str(tmp_path)}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr[-2000:]


def test_classify_samples_cat_and_espresso(tmp_path):
    from jaxviz.cli import main

    rc = main(
        ["classify", "--model", "efficientnet_lite0", "--data", "samples", "--top", "5"]
        + ["--batch-size", "8", "--out", str(tmp_path)]
    )
    assert rc == 0
    preds = {p["id"]: p for p in json.loads((tmp_path / "predictions.json").read_text())}
    chelsea = next(v for k, v in preds.items() if "chelsea" in k)
    coffee = next(v for k, v in preds.items() if "coffee" in k)
    assert chelsea["top"][0]["class"] in (281, 282, 285), chelsea
    assert coffee["top"][0]["class"] in (967, 968), coffee
    for p in preds.values():
        probs = [t["prob"] for t in p["top"]]
        assert len(probs) == 5 and probs == sorted(probs, reverse=True) and sum(probs) <= 1 + 1e-5
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    assert manifest["counts"]["images"] == len(preds)
