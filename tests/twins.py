"""PyTorch twins of jaxviz models, loaded with the same weights, for parity tests with Captum.

Twins use nn.ReLU modules (not functional ReLU) so Captum's GuidedBackprop can hook them.
Inputs are NCHW; jaxviz inputs are NHWC: use `to_torch` / `from_torch`.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn


def to_torch(x) -> torch.Tensor:
    """[B, H, W, C] array -> [B, C, H, W] float32 tensor."""
    return torch.from_numpy(np.ascontiguousarray(np.asarray(x, np.float32).transpose(0, 3, 1, 2)))


def from_torch(t: torch.Tensor) -> np.ndarray:
    """[B, C, H, W] tensor -> [B, H, W, C] numpy (2-D tensors pass through)."""
    a = t.detach().cpu().numpy()
    return a.transpose(0, 2, 3, 1) if a.ndim == 4 else a


def _conv(layer: nn.Conv2d, p: dict) -> None:
    layer.weight.data = torch.from_numpy(np.asarray(p["kernel"]).transpose(3, 2, 0, 1).copy())
    layer.bias.data = torch.from_numpy(np.asarray(p["bias"]).copy())


def _dense(layer: nn.Linear, p: dict) -> None:
    layer.weight.data = torch.from_numpy(np.asarray(p["kernel"]).copy())
    layer.bias.data = torch.from_numpy(np.asarray(p["bias"]).copy())


class DemoTwin(nn.Module):
    """The `demo` architecture in PyTorch; `stages` maps jaxviz stage names to submodules."""

    def __init__(self, num_classes: int = 10):
        super().__init__()
        self.stages = nn.ModuleDict(
            {
                "conv1": nn.Sequential(nn.Conv2d(3, 32, 7, 2, 3), nn.ReLU()),
                "pool1": nn.MaxPool2d(2, 2),
                "conv2": nn.Sequential(nn.Conv2d(32, 64, 3, 1, 1), nn.ReLU()),
                "pool2": nn.MaxPool2d(2, 2),
                "conv3": nn.Sequential(nn.Conv2d(64, 128, 3, 1, 1), nn.ReLU()),
                "conv4": nn.Sequential(nn.Conv2d(128, 128, 3, 1, 1), nn.ReLU()),
                "pool": nn.Sequential(nn.AdaptiveMaxPool2d(1), nn.Flatten()),
                "fc": nn.Sequential(nn.Linear(128, 128), nn.ReLU()),
                "logits": nn.Linear(128, num_classes),
            }
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for m in self.stages.values():
            x = m(x)
        return x

    def taps(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        out = {}
        for name, m in self.stages.items():
            x = m(x)
            out[name] = x
        return out


def demo_twin(params: dict) -> DemoTwin:
    """A DemoTwin holding the jaxviz demo `params` (float32, eval mode)."""
    twin = DemoTwin()
    for name in ("conv1", "conv2", "conv3", "conv4"):
        _conv(twin.stages[name][0], params[name]["params"]["conv"])
    _dense(twin.stages["fc"][0], params["fc"]["params"]["dense"])
    _dense(twin.stages["logits"], params["logits"]["params"]["dense"])
    return twin.eval()
