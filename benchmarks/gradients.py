"""Gradient attributions, jaxviz vs Captum on the same CPU in one process (one JSON line a case).

Cases: saliency, Grad-CAM (last spatial stage: resnet18 layer4, Lite0 head) and integrated
gradients (32 gausslegendre steps) for resnet18 and efficientnet_lite0 (random init, 224x224,
batch 16). Images/s of each side and the ratio jaxviz / Captum. jaxviz runs one jitted call per
batch (compiled before timing); Captum runs its batched `attribute` on a PyTorch model of the same
architecture (tests/torchvision_refs.py, tests/test_efficientnet.py). IG: jaxviz `chunk` steps per
pass and Captum `internal_batch_size = chunk * batch`, so both hold the same number of images per
pass. The two sides alternate and the best of `reps` timings of each is kept (the machine is
shared and noisy). Lite0's Grad-CAM in Captum hooks `_bn1` (its ReLU6 is functional): the same
cost as the activation after it.

    python benchmarks/gradients.py --size smoke    # tiny: 64x64, batch 2, 4 IG steps
    python benchmarks/gradients.py --size medium   # 64x64, batch 8, 32 IG steps (slow CPUs)
    python benchmarks/gradients.py                 # the measured sizes above
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import jax
import numpy as np
import torch
from captum.attr import IntegratedGradients, LayerGradCam, Saliency

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from jaxviz.methods.gradcam import default_layer, gradcam  # noqa: E402
from jaxviz.methods.integrated_gradients import integrated_gradients  # noqa: E402
from jaxviz.methods.saliency import input_gradients  # noqa: E402
from jaxviz.models.stage import init_params  # noqa: E402
from jaxviz.models.zoo import entry  # noqa: E402

HARDWARE = (
    f"{platform.machine()}, {os.cpu_count()} CPU cores (torch threads "
    f"{torch.get_num_threads()}), loaded shared machine"
)
SIZES = {
    "smoke": {"hw": 64, "batch": 2, "steps": 4, "chunk": 2, "reps": 1},
    "medium": {"hw": 64, "batch": 8, "steps": 32, "chunk": 4, "reps": 1},
    "full": {"hw": 224, "batch": 16, "steps": 32, "chunk": 4, "reps": 3},
}
MODELS = ("resnet18", "efficientnet_lite0")


class Logits(torch.nn.Module):
    """Lite0's reference returns a dict of taps; Captum needs the logits."""

    def __init__(self, net: torch.nn.Module):
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)["logits"]


def torch_model(name: str) -> tuple[torch.nn.Module, torch.nn.Module]:
    """(PyTorch model of the same architecture, random weights; its Grad-CAM layer)."""
    if name == "efficientnet_lite0":
        from tests.test_efficientnet import TorchLite0

        net = TorchLite0().eval()
        return Logits(net).eval(), net._bn1
    from tests.torchvision_refs import make

    net = make(name)
    return net, net.layer4


def best_time(fn, reps: int) -> float:
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def run_case(name: str, size: dict) -> None:
    hw, b, steps, chunk, reps = (size[k] for k in ("hw", "batch", "steps", "chunk", "reps"))
    model = entry(name).build()
    params = init_params(model, jax.random.key(0), (hw, hw))
    layer = default_layer(model)
    x = np.asarray(jax.random.normal(jax.random.key(1), (b, hw, hw, 3)), np.float32)
    target = np.arange(b, dtype=np.int32) * 7 % model.num_classes
    net, net_layer = torch_model(name)
    xt = torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2)))
    tt = torch.from_numpy(target.astype(np.int64))

    ours = {
        "saliency": lambda: input_gradients(model, params, x, target),
        "gradcam": lambda: gradcam(model, params, x, target, layer),
        f"ig{steps}": lambda: (
            integrated_gradients(
                model, params, x, target, 0.0, steps, "gausslegendre", chunk
            ).attributions
        ),
    }
    theirs = {
        "saliency": lambda v, u: Saliency(net).attribute(v, target=u, abs=False),
        "gradcam": lambda v, u: LayerGradCam(net, net_layer).attribute(v, target=u),
        f"ig{steps}": lambda v, u: IntegratedGradients(net).attribute(
            v, target=u, n_steps=steps, internal_batch_size=chunk * b
        ),
    }
    for method in ours:
        t0 = time.perf_counter()
        jax.block_until_ready(ours[method]())  # compile
        compile_s = time.perf_counter() - t0
        theirs[method](xt[:1], tt[:1])  # warm-up on one image (hooks, allocator)
        t_ours, t_theirs = float("inf"), float("inf")
        for _ in range(reps):  # alternate: load changes hit both sides alike
            t_ours = min(t_ours, best_time(lambda m=method: jax.block_until_ready(ours[m]()), 1))
            t_theirs = min(t_theirs, best_time(lambda m=method: theirs[m](xt, tt), 1))
        print(
            json.dumps(
                {
                    "case": f"{name}/{method}",
                    "model": name,
                    "method": method,
                    "input": [b, hw, hw, 3],
                    "jaxviz_images_per_s": b / t_ours,
                    "captum_images_per_s": b / t_theirs,
                    "ratio": t_theirs / t_ours,
                    "jaxviz_compile_s": compile_s,
                    "layer": layer if method == "gradcam" else None,
                    "hardware": HARDWARE,
                }
            ),
            flush=True,
        )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--size", choices=sorted(SIZES), default="full")
    p.add_argument("--models", nargs="+", choices=MODELS, default=list(MODELS))
    args = p.parse_args()
    torch.set_grad_enabled(True)
    for name in args.models:
        run_case(name, SIZES[args.size])


if __name__ == "__main__":
    main()
