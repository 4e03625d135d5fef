"""Saving and loading stage-chain parameters as flat `.npz` files, with strict name checking."""

from __future__ import annotations

import os
import tempfile

import numpy as np
from flax.traverse_util import flatten_dict, unflatten_dict

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


def load_npz(path: str | os.PathLike, like: Params) -> Params:
    """Load params saved by `save_npz`, checked against the structure of `like` (e.g. init)."""
    with np.load(path) as f:
        flat = {k: f[k] for k in f.files}
    check_matches(like, flat, os.fspath(path))
    params = unflatten(flat)
    return {k: params.get(k, {}) for k in like}  # parameter-free stages (pools) hold {}
