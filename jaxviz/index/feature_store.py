"""Feature vectors on disk: sharded .npy files written through as they stream, read back later.

Layout of a store folder:

    features.json                 metadata: dim, dtype, count, shards, and whatever the writer was
                                  given (data source spec, model spec, layer, class names, ...)
    shards/features-00000.npy     [rows, D] float16 or float32, rows in arrival order
    shards/index-00000.npy        [rows] int64: each row's position in the data source
    shards/labels-00000.npy       [rows] int64: the source's label (-1 unknown)
    shards/ids-00000.npy          [rows] unicode: the source's id (the path for files)

Only one shard is in memory at a time (at most `shard_bytes`), so writing never grows with the
dataset. features.json is rewritten after every shard with `complete: false` until `close()`.

Reading trusts nothing in the folder (`neighbors --index` and `tsne` take it from the user):
features.json is checked for its fields and their types (a missing one is a UsageError naming it
when asked for), and every shard file is opened memory-mapped and checked against its row count,
D and dtype before any of it is read; any failure is one UsageError line naming the file.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from jaxviz.errors import UsageError

META_FILE = "features.json"
SHARD_DIR = "shards"
DTYPES = ("float16", "float32")


def _shard_name(kind: str, k: int) -> str:
    return f"{SHARD_DIR}/{kind}-{k:05d}.npy"


class Writer(Protocol):
    """Where files go: a jobs.output.JobOutput (atomic writes, paths relative to its folder)."""

    def path(self, rel: str) -> Path: ...

    def npy(self, rel: str, array: np.ndarray) -> None: ...

    def json(self, rel: str, obj: Any) -> None: ...


class FeatureWriter:
    """Append rows of features with their source index, label and id; shards hit disk when full.

    out: the job's output (the store is its folder); dim: D; dtype: 'float16' or 'float32' on
    disk; meta: extra metadata for features.json; shard_bytes: feature bytes per shard (its row
    count follows from D and dtype).
    """

    def __init__(
        self,
        out: Writer,
        dim: int,
        dtype: str = "float32",
        meta: dict[str, Any] | None = None,
        shard_bytes: int = 64 << 20,
    ):
        if dtype not in DTYPES:
            raise UsageError(f"unknown feature dtype {dtype!r}; choose from: {', '.join(DTYPES)}")
        self.out = out
        self.dim, self.dtype = int(dim), dtype
        self.meta = dict(meta or {})
        self.rows = max(1, shard_bytes // (self.dim * np.dtype(dtype).itemsize))
        self._feat = np.empty((self.rows, self.dim), dtype)
        self._index = np.empty(self.rows, np.int64)
        self._labels = np.empty(self.rows, np.int64)
        self._ids: list[str] = []
        self._fill = 0
        self.shards: list[dict[str, Any]] = []
        self.count = 0

    def add(self, features: np.ndarray, index: np.ndarray, labels: np.ndarray, ids: list[str]):
        """Append features [n, D] (cast to the store dtype), index [n], labels [n], ids (n)."""
        features = np.asarray(features).reshape(len(index), self.dim)
        done = 0
        while done < len(index):
            take = min(self.rows - self._fill, len(index) - done)
            sl, dst = slice(done, done + take), slice(self._fill, self._fill + take)
            self._feat[dst] = features[sl]
            self._index[dst] = index[sl]
            self._labels[dst] = labels[sl]
            self._ids += ids[sl]
            self._fill += take
            done += take
            if self._fill == self.rows:
                self.flush()

    def flush(self) -> None:
        """Write the rows buffered so far as a shard (shards may hold fewer than `rows`)."""
        n, k = self._fill, len(self.shards)
        if n == 0:
            return
        self.out.npy(_shard_name("features", k), self._feat[:n])
        self.out.npy(_shard_name("index", k), self._index[:n])
        self.out.npy(_shard_name("labels", k), self._labels[:n])
        self.out.npy(_shard_name("ids", k), np.asarray(self._ids, dtype=str))
        self.shards.append({"rows": n, "features": _shard_name("features", k)})
        self.count += n
        self._fill, self._ids = 0, []
        self._write_meta(complete=False)

    def restore(self, n_shards: int) -> None:
        """Continue a store whose first `n_shards` shards are on disk (resume after a kill)."""
        meta = json.loads(self.out.path(META_FILE).read_text())
        if len(meta["shards"]) < n_shards or meta["dim"] != self.dim:
            raise ValueError(f"{self.out.path(META_FILE)} does not hold {n_shards} shards")
        self.shards = meta["shards"][:n_shards]
        self.count = sum(s["rows"] for s in self.shards)
        self._fill, self._ids = 0, []

    def _write_meta(self, complete: bool) -> None:
        self.out.json(
            META_FILE,
            {
                **self.meta,
                "dim": self.dim,
                "dtype": self.dtype,
                "count": self.count,
                "shards": self.shards,
                "complete": complete,
            },
        )

    def close(self) -> dict[str, Any]:
        """Write the last partial shard and the final metadata; returns the metadata."""
        self.flush()
        self._write_meta(complete=True)
        return {**self.meta, "dim": self.dim, "dtype": self.dtype, "count": self.count}


# features.json fields written by the jobs, and their types (checked when present)
_META_TYPES: dict[str, type | tuple[type, ...]] = {
    "source": str,
    "model": str,
    "layer": str,
    "compute_dtype": str,
    "metric": str,
    "random_init": bool,
    "seed": int,
    "class_names": (list, type(None)),
    "complete": bool,
}
# shard kind -> (dtype kinds allowed, 2-D)
_SHARD_KINDS = {"features": ("f", True), "index": ("i", False), "labels": ("i", False)}


class _Meta(dict):
    """features.json; a missing field is a UsageError naming the file and the field."""

    path: Path

    def __missing__(self, key: str):
        raise UsageError(f"{self.path} has no {key!r} field; is it a feature store?")


def read_meta(path: Path) -> _Meta:
    """features.json of a store, checked: dim, dtype, count, shards and the job fields."""
    try:
        raw = json.loads(path.read_text())
    except (OSError, ValueError, RecursionError) as e:
        raise UsageError(f"cannot read {path}: {type(e).__name__}: {str(e)[:160]}") from None
    if not isinstance(raw, dict):
        raise UsageError(f"{path} holds a {type(raw).__name__}, not a feature-store record")
    meta = _Meta(raw)
    meta.path = path
    dim, shards = meta["dim"], meta["shards"]
    if not (isinstance(dim, int) and not isinstance(dim, bool) and 0 < dim <= 1 << 24):
        raise UsageError(f"{path}: dim is {str(dim)[:40]}, not a positive integer")
    if meta.get("dtype", "float32") not in DTYPES:
        raise UsageError(f"{path}: dtype {str(meta['dtype'])[:40]} is not one of {DTYPES}")
    if not (
        isinstance(shards, list)
        and all(
            isinstance(s, dict)
            and isinstance(s.get("rows"), int)
            and not isinstance(s["rows"], bool)
            and 0 <= s["rows"] < 1 << 40
            for s in shards
        )
    ):
        raise UsageError(f"{path}: shards is not a list of {{'rows': count}} records")
    for key, kind in _META_TYPES.items():
        if key in meta and not isinstance(meta[key], kind):
            raise UsageError(f"{path}: {key} is a {type(meta[key]).__name__}")
    if key_bad := [n for n in meta.get("class_names") or [] if not isinstance(n, str)]:
        raise UsageError(f"{path}: class_names holds {type(key_bad[0]).__name__} values")
    return meta


class FeatureStore:
    """Read a store written by FeatureWriter (features memory-mapped)."""

    def __init__(self, folder: str | os.PathLike):
        self.folder = Path(folder)
        path = self.folder / META_FILE
        if not path.is_file():
            raise UsageError(f"no feature store in {self.folder} (missing {META_FILE})")
        self.meta: dict[str, Any] = read_meta(path)
        self.dim: int = self.meta["dim"]
        self.offsets = np.cumsum([0] + [s["rows"] for s in self.meta["shards"]])
        self._index: np.ndarray | None = None

    def __len__(self) -> int:
        return int(self.offsets[-1])

    def _load(self, kind: str, k: int, mmap: bool = False) -> np.ndarray:
        """Shard k's `kind` array, checked against the metadata before it is read."""
        path = self.folder / _shard_name(kind, k)
        rows = self.meta["shards"][k]["rows"]
        try:
            a = np.load(path, mmap_mode="r", allow_pickle=False)
        except (OSError, ValueError, EOFError) as e:
            raise UsageError(f"cannot read {path}: {type(e).__name__}: {str(e)[:160]}") from None
        kinds, matrix = _SHARD_KINDS.get(kind, ("U", False))
        shape = (rows, self.dim) if matrix else (rows,)
        itemsize = 4 << 12 if kind == "ids" else 8  # ids: at most 4096 characters
        if a.shape != shape or a.dtype.kind not in kinds or a.dtype.itemsize > itemsize:
            raise UsageError(
                f"{path} holds {a.dtype} {a.shape}; the store says {shape} ({self.meta.path})"
            )
        return a if mmap else np.array(a)

    def shards(self, count: int | None = None) -> Iterator[tuple[np.ndarray, ...]]:
        """Per shard (the first `count`; default all): (features [rows, D] memory-mapped,
        index [rows] int64, labels [rows] int64)."""
        for k in range(len(self.meta["shards"]) if count is None else count):
            yield (
                self._load("features", k, mmap=True),
                self._load("index", k),
                self._load("labels", k),
            )

    def shard(self, k: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Shard k: (features [rows, D] memory-mapped, in the store's dtype; index [rows] int64;
        labels [rows] int64; ids [rows] str)."""
        return (
            self._load("features", k, mmap=True),
            self._load("index", k),
            self._load("labels", k),
            self._load("ids", k),
        )

    def features(self, dtype: str = "float32") -> np.ndarray:
        """All features [N, D] in row order, as one in-memory array of `dtype`."""
        out = np.empty((len(self), self.dim), dtype)
        for k, (f, _, _) in enumerate(self.shards()):
            out[self.offsets[k] : self.offsets[k + 1]] = f
        return out

    def _column(self, kind: str) -> np.ndarray:
        parts = [self._load(kind, k) for k in range(len(self.meta["shards"]))]
        return np.concatenate(parts) if parts else np.zeros(0, np.int64 if kind != "ids" else str)

    def index(self) -> np.ndarray:
        """[N] int64: source position of every row."""
        if self._index is None:
            self._index = self._column("index")
        return self._index

    def labels(self) -> np.ndarray:
        """[N] int64: label of every row (-1 unknown)."""
        return self._column("labels")

    def ids(self) -> np.ndarray:
        """[N] str: source id of every row."""
        return self._column("ids")

    def rows_of(self, source_index: np.ndarray) -> np.ndarray:
        """Row of each source position; UsageError naming those not in the store."""
        idx = self.index()
        order = np.argsort(idx, kind="stable")
        want = np.asarray(source_index, np.int64).reshape(-1)
        pos = np.clip(np.searchsorted(idx[order], want), 0, max(len(idx) - 1, 0))
        ok = (len(idx) > 0) & (idx[order][pos] == want) if len(idx) else np.zeros(len(want), bool)
        if not np.all(ok):
            raise UsageError(f"ids not in the feature store: {want[~ok][:10].tolist()}")
        return order[pos]

    def vectors(self, rows: np.ndarray) -> np.ndarray:
        """Features [len(rows), D] float32 of the given rows (read from the memory maps)."""
        rows = np.asarray(rows, np.int64).reshape(-1)
        out = np.empty((len(rows), self.dim), np.float32)
        shard = np.searchsorted(self.offsets, rows, side="right") - 1
        for k in np.unique(shard):
            sel = shard == k
            out[sel] = self._load("features", int(k), mmap=True)[rows[sel] - self.offsets[k]]
        return out
