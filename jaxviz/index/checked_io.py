"""Checked reading of a k-NN index folder (`neighbors --index` takes it from the user).

knn.json, ids.npy and index.faiss are checked before they are trusted: fields and types of the
metadata, the ids' shape and dtype from the .npy header (memory-mapped, nothing read before the
check), and the FAISS file's vectors against the file's real length. FAISS allocates a vector
as large as the length its file claims before reading it (a 1.6 kB file can claim 1 GB), so
flat-code indexes (Flat, the default below a million vectors) are first opened with
`IO_FLAG_MMAP_IFC`, which maps the vectors instead of allocating them and fails on a claim past
the end of the file, and then copied; other index types are read as FAISS reads them (their
inverted lists are not checked before allocation). Every failure is one UsageError line naming
the file.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import faiss
import numpy as np

from jaxviz.errors import UsageError

_FLAT_FOURCC = (b"IxF2", b"IxFI", b"IxFl")  # IndexFlatL2, IndexFlatIP, IndexFlat
_KNN_TYPES: dict[str, type | tuple[type, ...]] = {
    "dim": int,
    "metric": str,
    "factory": str,
    "nlist": (int, type(None)),
    "nprobe": (int, type(None)),
}


def _fail(path: Path, e: BaseException) -> UsageError:
    last = str(e).strip().splitlines()[-1] if str(e).strip() else ""
    last = last if len(last) <= 200 else "..." + last[-200:]  # FAISS puts the reason last
    return UsageError(f"cannot read {path}: {type(e).__name__}: {last}")


def read_knn_meta(path: Path) -> dict[str, Any]:
    """knn.json with its fields checked: dim (positive int), metric, factory, nlist, nprobe."""
    try:
        meta = json.loads(path.read_text())
    except (OSError, ValueError, RecursionError) as e:
        raise _fail(path, e) from None
    if not isinstance(meta, dict):
        raise UsageError(f"{path} holds a {type(meta).__name__}, not a k-NN index record")
    for key, kind in _KNN_TYPES.items():
        if key not in meta:
            raise UsageError(f"{path} has no {key!r} field; is it a k-NN index?")
        if not isinstance(meta[key], kind) or isinstance(meta[key], bool):
            raise UsageError(f"{path}: {key} is a {type(meta[key]).__name__}")
    if not 0 < meta["dim"] <= 1 << 24 or meta["metric"] not in ("l2", "cosine"):
        raise UsageError(f"{path}: dim {meta['dim']} / metric {meta['metric'][:20]!r} invalid")
    return meta


def read_ids(path: Path) -> np.ndarray:
    """ids.npy: [ntotal] int64, checked from its header before it is read."""
    try:
        ids = np.load(path, mmap_mode="r", allow_pickle=False)
    except (OSError, ValueError, EOFError) as e:
        raise _fail(path, e) from None
    if ids.ndim != 1 or ids.dtype.kind != "i" or ids.dtype.itemsize > 8:
        raise UsageError(f"{path} holds {ids.dtype} {ids.shape}, not [ntotal] integer ids")
    return np.array(ids, np.int64)


def read_faiss(path: Path, dim: int) -> faiss.Index:
    """The CPU index in `path` (see the module doc), of dimension `dim`."""
    try:
        with open(path, "rb") as f:
            flat = f.read(4) in _FLAT_FOURCC
        if flat:  # map first: a vector length past the end of the file fails here, unallocated
            index = faiss.clone_index(faiss.read_index(str(path), faiss.IO_FLAG_MMAP_IFC))
        else:
            index = faiss.read_index(str(path))
    except (OSError, RuntimeError, MemoryError) as e:
        raise _fail(path, e) from None
    if index.d != dim:
        raise UsageError(f"{path}: index of dimension {index.d}, its knn.json says {dim}")
    return index
