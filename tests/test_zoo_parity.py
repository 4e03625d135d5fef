"""Zoo parity with PyTorch: torchvision-named reference models (tests/torchvision_refs.py, random
weights, non-trivial BatchNorm statistics) saved to `.pth` and loaded by jaxviz without torch.
Logits and every tap must agree to 1e-4 of the largest absolute value (fp32). Also: the name-table
converter's refusals, the orbax cache, `.safetensors`, bf16 forward passes."""

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from jaxviz.models import convert
from jaxviz.models.checkpoint import CheckpointError
from jaxviz.models.params_io import flatten
from jaxviz.models.resnet import name_table as resnet_table
from jaxviz.models.stage import cast_params, forward
from jaxviz.models.zoo import entry
from tests import torchvision_refs as refs

# (zoo name, input size: the smallest the architecture allows, kept small for speed)
CASES = [("alexnet", 67), ("vgg16", 32), ("resnet18", 64), ("resnet50", 64)]
TOL = 1e-4


def _rel_err(got: np.ndarray, want: np.ndarray) -> float:
    return float(np.abs(got - want).max() / np.abs(want).max())


@pytest.fixture(scope="module")
def loaded(tmp_path_factory):
    """name -> (reference torch model, jaxviz model, params loaded from the saved .pth, path)."""
    os.environ["JAXVIZ_CACHE"] = "off"
    d = tmp_path_factory.mktemp("zoo")
    cache = {}

    def get(name):
        if name not in cache:
            ref = refs.make(name)
            path = str(d / f"{name}.pth")
            torch.save(ref.state_dict(), path)
            e = entry(name)
            model = e.build()
            cache[name] = (ref, model, e.load_checkpoint(model, path), path)
        return cache[name]

    yield get
    del os.environ["JAXVIZ_CACHE"]


@pytest.mark.parametrize("name,size", CASES)
def test_logits_and_every_tap_match_torch(loaded, name, size):
    ref, model, params, _ = loaded(name)
    x = np.random.default_rng(0).normal(size=(2, size, size, 3)).astype(np.float32)
    logits, taps = jax.jit(lambda p, v: forward(model, p, v))(params, x)
    want_logits, want = refs.run_with_taps(
        ref, refs.TAPS[name], torch.from_numpy(x).permute(0, 3, 1, 2)
    )
    assert set(want) == set(model.stage_names)
    assert _rel_err(np.asarray(logits), want_logits.numpy()) < TOL
    assert np.array_equal(np.argmax(logits, -1), want_logits.numpy().argmax(-1))
    for stage, w in want.items():
        w = w.numpy()
        w = w.transpose(0, 2, 3, 1) if w.ndim == 4 else w
        got = np.asarray(taps[stage])
        assert got.shape == w.reshape(got.shape).shape and got.size == w.size, stage
        assert _rel_err(got, w.reshape(got.shape)) < TOL, stage


@pytest.mark.parametrize("name,size", [("resnet18", 64)])
def test_bfloat16_forward_runs_close_to_fp32(loaded, name, size):
    _, model, params, _ = loaded(name)
    x = np.random.default_rng(1).normal(size=(2, size, size, 3)).astype(np.float32)
    fwd = jax.jit(lambda p, v: forward(model, p, v)[0])
    ref = np.asarray(fwd(params, x))
    out = fwd(cast_params(params, jnp.bfloat16), jnp.asarray(x, jnp.bfloat16))
    assert out.dtype == jnp.bfloat16
    assert _rel_err(np.asarray(out, np.float32), ref) < 0.1


def test_converter_lists_missing_unexpected_and_misshaped(loaded):
    ref, model, _, _ = loaded("resnet18")
    sd = {k: v.numpy() for k, v in ref.state_dict().items()}
    del sd["layer2.0.downsample.1.running_var"]
    sd["layer2.0.extra.weight"] = np.zeros(3, np.float32)
    sd["fc.weight"] = np.zeros((10, 512), np.float32)
    with pytest.raises(CheckpointError) as err:
        convert.from_state_dict(model, sd, resnet_table((2, 2, 2, 2), False), "bad.pth")
    msg = str(err.value)
    assert "missing ['layer2.0.downsample.1.running_var']" in msg
    assert "unexpected ['layer2.0.extra.weight']" in msg
    assert "mis-shaped ['fc.weight: (10, 512) != expected (1000, 512)']" in msg


def test_data_parallel_prefix_and_wrong_family_name(loaded, tmp_path):
    ref, model, params, _ = loaded("resnet18")
    table = resnet_table((2, 2, 2, 2), False)
    sd = {f"module.{k}": v.numpy() for k, v in ref.state_dict().items()}
    got = flatten(convert.from_state_dict(model, sd, table, "dp.pth"))
    assert all(np.array_equal(got[k], v) for k, v in flatten(params).items())
    alex = refs.make("alexnet").state_dict()
    with pytest.raises(CheckpointError, match="does not match model resnet18: missing .*conv1"):
        convert.from_state_dict(model, {k: v.numpy() for k, v in alex.items()}, table, "a.pth")


def test_orbax_cache_round_trip_and_invalidation(loaded, tmp_path, monkeypatch):
    _, model, params, path = loaded("resnet18")
    monkeypatch.setenv("JAXVIZ_CACHE", str(tmp_path / "cache"))
    table = resnet_table((2, 2, 2, 2), False)
    first = convert.load_converted(model, path, table)
    entries = os.listdir(tmp_path / "cache" / "converted")
    assert len(entries) == 1
    second = convert.load_converted(model, path, table)
    for p in (first, second):
        assert set(p) == set(model.stage_names)
        f, want = flatten(p), flatten(params)
        assert f.keys() == want.keys() and all(np.array_equal(f[k], want[k]) for k in f)
    os.utime(path, ns=(1, 1))  # a changed file gets a new entry
    convert.load_converted(model, path, table)
    assert len(os.listdir(tmp_path / "cache" / "converted")) == 2


def test_safetensors_checkpoint_loads_the_same(loaded, tmp_path):
    from safetensors.torch import save_file

    ref, model, params, _ = loaded("resnet18")
    path = str(tmp_path / "r18.safetensors")
    save_file({k: v.contiguous() for k, v in ref.state_dict().items()}, path)
    got = flatten(entry("resnet18").load_checkpoint(model, path))
    assert all(np.array_equal(got[k], v) for k, v in flatten(params).items())
