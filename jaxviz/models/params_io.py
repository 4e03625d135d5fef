"""Saving and loading stage-chain parameters as flat `.npz` files, with strict name checking.

`load_npz` reads a user's file (`demo=PATH.npz`) in two steps: first every member's `.npy` header
(name, shape, dtype; a few hundred bytes each), checked against the model; only then the arrays,
each inflated to exactly the bytes its (now expected) shape needs. A compressed member that would
inflate to gigabytes, pickled objects or a non-zip file give one UsageError line naming the file.
"""

from __future__ import annotations

import os
import tempfile
import zipfile

import numpy as np
from flax.traverse_util import flatten_dict, unflatten_dict

from jaxviz.errors import UsageError
from jaxviz.models.stage import Params


def flatten(params: Params) -> dict[str, np.ndarray]:
    """{'conv1/params/kernel': array, ...} with numpy leaves."""
    return {"/".join(k): np.asarray(v) for k, v in flatten_dict(params).items()}


def unflatten(flat: dict[str, np.ndarray]) -> Params:
    return unflatten_dict({tuple(k.split("/")): v for k, v in flat.items()})


def check_matches(expected: Params, got: dict[str, np.ndarray], source: str) -> None:
    """Refuse `got` unless it has exactly the names and shapes of `expected`; list mismatches."""
    want = {"/".join(k): tuple(np.shape(v)) for k, v in flatten_dict(expected).items()}
    have = {k: tuple(np.shape(v)) for k, v in got.items()}
    missing = sorted(set(want) - set(have))
    unexpected = sorted(set(have) - set(want))
    misshaped = sorted(
        f"{k}: {have[k]} != expected {want[k]}" for k in set(want) & set(have) if want[k] != have[k]
    )
    if missing or unexpected or misshaped:
        parts = []
        if missing:
            parts.append(f"missing {missing}")
        if unexpected:
            parts.append(f"unexpected {unexpected}")
        if misshaped:
            parts.append(f"mis-shaped {misshaped}")
        raise ValueError(f"parameters in {source} do not match the model: " + "; ".join(parts))


def save_npz(path: str | os.PathLike, params: Params) -> None:
    """Atomically write params as a compressed `.npz` of flat names."""
    path = os.fspath(path)
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path) or ".", suffix=".npz")
    os.close(fd)
    np.savez_compressed(tmp, **flatten(params))
    os.replace(tmp, path)


def _npz_headers(zf: zipfile.ZipFile) -> dict[str, np.ndarray]:
    """{name: zero-stride placeholder of the member's shape and dtype}, from the headers only."""
    out = {}
    for info in zf.infolist():
        if not info.filename.endswith(".npy"):
            raise ValueError(f"member {info.filename[:80]!r} is not an .npy array")
        with zf.open(info) as f:
            version = np.lib.format.read_magic(f)
            read = {(1, 0): np.lib.format.read_array_header_1_0}.get(
                version, np.lib.format.read_array_header_2_0
            )
            shape, _, dtype = read(f)
        if dtype.kind not in "biuf" or dtype.itemsize > 8:
            raise ValueError(f"array {info.filename[:80]!r} has the dtype {dtype}")
        out[info.filename[: -len(".npy")]] = np.broadcast_to(np.zeros((), dtype), shape)
    return out


def load_npz(path: str | os.PathLike, like: Params) -> Params:
    """Load params saved by `save_npz`, checked against the structure of `like` (e.g. init)
    before any array is read; UsageError (one line) for a file that does not match or is not
    a params `.npz`."""
    path = os.fspath(path)
    try:
        with zipfile.ZipFile(path) as zf:
            check_matches(like, _npz_headers(zf), path)
        with np.load(path) as f:
            flat = {k: f[k] for k in f.files}
    except Exception as e:  # noqa: BLE001 - any failure on a user's file is bad input
        raise UsageError(f"cannot read {path}: {type(e).__name__}: {str(e)[:300]}") from None
    params = unflatten(flat)
    return {k: params.get(k, {}) for k in like}  # parameter-free stages (pools) hold {}
