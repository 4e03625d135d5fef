"""Per-item results at dataset scale: array stores, an item table and a PNG sample, written in
chunk-aligned blocks so that several processes never write the same file.

Layout under `--out` (row i = source item i, for i in [0, n)):

    NAME.zarr/       one zarr v3 array [n, ...] per kind of result (tensorstore), chunks of
                     `rows` items, zstd-compressed, float32 or --store-dtype; skipped rows are 0
    items.parquet    the item table: index, id, label, skipped (the reason, else null) and the
                     job's own columns
    png/STEM.png     overlays of a sample: the items below --png (STEM: 7-digit source index)

The items are cut in blocks of `rows` (the stores' chunk rows); block b belongs to process
b % P (`process_items`). A `BlockWriter` holds its process's current block in memory and writes
it whole: every chunk and every table part (`.parts/bB.parquet`, merged into items.parquet at
the end) has one writer, and rewriting a block after kill -9 writes the same bytes.
"""

from __future__ import annotations

import math
import shutil
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import tensorstore as ts

from jaxviz.data.sources import Source
from jaxviz.errors import UsageError
from jaxviz.jobs.config import POSITIVE, Check, JobConfig, option
from jaxviz.jobs.output import JobOutput, atomic_write, save_png

TABLE = "items.parquet"
PARTS = ".parts"
PNG = "png"
CHUNK_BYTES = 16 << 20  # a chunk of the widest store holds at most this much
MAX_ROWS = 4096
STORE_DTYPES = {"float32": np.float32, "float16": np.float16, "bfloat16": ts.bfloat16.numpy_dtype}
BASE_COLUMNS = (
    ("index", pa.int64()),
    ("id", pa.string()),
    ("label", pa.int64()),
    ("skipped", pa.string()),
)


PNG_COUNT = Check("a count or 'all'", lambda v: v == "all" or v.isdigit())


@dataclass(kw_only=True)
class StoreOptions(JobConfig):
    """Options of every job writing per-item stores: the PNG sample and the stores' layout."""

    GROUP = "outputs"

    png: str = option(
        "32", "draw pictures of the items below N, or 'all'", check=PNG_COUNT, metavar="N"
    )
    store_dtype: str = option(
        "float32", "dtype of the array stores", choices=tuple(sorted(STORE_DTYPES))
    )
    rows_per_chunk: int | None = option(
        None,
        "items per store chunk and per process block (default: sized so a chunk of the widest "
        f"store is at most {CHUNK_BYTES >> 20} MiB, at most {MAX_ROWS})",
        check=POSITIVE,
        metavar="N",
    )


def parse_png(spec: str) -> int | None:
    """--png (checked by StoreOptions): a count (items below it get pictures) or 'all' (None)."""
    return None if spec == "all" else int(spec)


def chunk_rows(shapes: list[tuple[int, ...]], itemsize: int) -> int:
    """The largest power of two <= MAX_ROWS whose chunk of the widest store fits CHUNK_BYTES."""
    widest = max((math.prod(s) * itemsize for s in shapes), default=1)
    return min(MAX_ROWS, 1 << max(0, (CHUNK_BYTES // max(widest, 1)).bit_length() - 1))


def process_items(n: int, rows: int, index: int, count: int) -> np.ndarray:
    """[k] int64: the items of process `index` of `count`: blocks b = index, index + count, ...
    of `rows` items each, in order."""
    blocks = range(index, -(-n // rows), count)
    parts = [np.arange(b * rows, min(n, (b + 1) * rows)) for b in blocks]
    return np.concatenate(parts).astype(np.int64) if parts else np.zeros(0, np.int64)


def open_store(
    path: Path, shape: tuple[int, ...] | None = None, rows: int = 1, dtype=None, keep=False
):
    """The zarr v3 array at `path` (tensorstore); with `shape`, created anew (keep: opened if
    it exists with this shape, by any number of processes at once)."""
    spec: dict[str, Any] = {"driver": "zarr3", "kvstore": {"driver": "file", "path": str(path)}}
    if shape is None:
        return ts.open(spec, open=True).result()
    spec["metadata"] = {
        "shape": list(shape),
        "data_type": np.dtype(dtype).name,
        "chunk_grid": {"name": "regular", "configuration": {"chunk_shape": [rows, *shape[1:]]}},
        "chunk_key_encoding": {"name": "v2", "configuration": {"separator": "."}},
        "codecs": [{"name": "bytes", "configuration": {"endian": "little"}}, {"name": "zstd"}],
        "fill_value": 0,
    }
    if keep:
        try:
            return ts.open(spec, create=True, open=True).result()
        except ValueError:
            raise UsageError(f"{path} holds another array; use another --out") from None
    return ts.open(spec, create=True, delete_existing=True).result()


class BlockWriter:
    """One process's writer of per-item stores, table parts and PNGs (see the module doc).

    stores: {name: row shape}; columns: {name: pyarrow type} of the job's table columns;
    args: the job's `StoreOptions`. Process 0 calls `create()` before any process `open()`s.
    Items arrive in increasing order (`add`, `add_skip`); `flush()` writes the current block
    as it is (rows not yet added are 0 and are written again later).
    """

    def __init__(
        self,
        out: JobOutput,
        source: Source,
        n: int,
        stores: dict[str, tuple[int, ...]],
        columns: dict[str, pa.DataType],
        args: StoreOptions,
    ):
        self.out, self.source, self.n = out, source, n
        self.dtype = STORE_DTYPES[args.store_dtype]
        self.shapes = {k: tuple(int(d) for d in v) for k, v in stores.items()}
        self.rows = args.rows_per_chunk or chunk_rows(list(self.shapes.values()), 4)
        self.png_limit = parse_png(args.png)
        self.schema = pa.schema([*BASE_COLUMNS, *columns.items()])
        self.stores: dict[str, Any] = {}
        self._block: int | None = None
        self._buffers: dict[str, np.ndarray] = {}
        self._table: list[dict] = []
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="jaxviz-png")
        self._pngs: deque[Future] = deque()

    def _store_path(self, name: str) -> Path:
        return self.out.path(f"{name}.zarr")

    def _part_path(self, block: int) -> Path:
        return self.out.path(f"{PARTS}/b{block:07d}.parquet")

    def create(self) -> None:
        """Remove what an earlier run left and create the empty stores (process 0)."""
        for k, shape in self.shapes.items():
            shutil.rmtree(self._store_path(k), ignore_errors=True)
            open_store(self._store_path(k), (self.n, *shape), self.rows, self.dtype)
        for rel in (PARTS, PNG):
            shutil.rmtree(self.out.path(rel), ignore_errors=True)
        self.out.path(TABLE).unlink(missing_ok=True)

    def clear_stale_locks(self) -> None:
        """Delete the `KEY.__lock` files tensorstore's file store leaves beside a chunk when a
        process is killed while writing it (process 0, on resume, while no process writes)."""
        for k in self.shapes:
            for lock in self._store_path(k).rglob("*.__lock"):
                lock.unlink(missing_ok=True)

    def open(self, create: bool = False) -> None:
        """Open the stores; create: those missing too (any process; see `open_store`)."""
        self.stores = {
            k: open_store(self._store_path(k), (self.n, *s), self.rows, self.dtype, keep=True)
            if create
            else open_store(self._store_path(k))
            for k, s in self.shapes.items()
        }

    def sample(self, i: int) -> bool:
        """Whether item i gets a picture."""
        return self.png_limit is None or i < self.png_limit

    def png(self, name: str, render: Callable[[], np.ndarray]) -> None:
        """Draw `render()` and save it as png/NAME.png on the writer thread."""
        path = self.out.path(f"{PNG}/{name}.png")
        self._pngs.append(self._pool.submit(lambda: save_png(path, render())))
        while len(self._pngs) > 16:
            self._pngs.popleft().result()

    def add(self, i: int, arrays: dict[str, np.ndarray], row: dict[str, Any]) -> None:
        """Item i's arrays ({store: row array}) and table columns."""
        self._enter(i)
        for k, a in arrays.items():
            self._buffers[k][i - self._block * self.rows] = a
        info = self.source.info(i)
        self._table.append({"index": i, "id": info.id, "label": info.label, **row})

    def add_skip(self, i: int, item: str, reason: str) -> None:
        """Skipped item i: a table row with the reason; its store rows stay 0."""
        self._enter(i)
        label = self.source.info(i).label
        self._table.append({"index": i, "id": item, "label": label, "skipped": reason})

    def _enter(self, i: int) -> None:
        """Make item i's block the current one, writing out the previous one."""
        block = i // self.rows
        if block == self._block:
            return
        self.flush()
        self._block, self._table = block, []
        size = min(self.n, (block + 1) * self.rows) - block * self.rows
        self._buffers = {k: np.zeros((size, *s), self.dtype) for k, s in self.shapes.items()}

    def reload(self, i: int) -> None:
        """Continue inside item i's block: its rows before i from the stores and table part."""
        self._enter(i)
        start = self._block * self.rows
        for k, buf in self._buffers.items():
            buf[: i - start] = self.stores[k][start:i].read().result()
        part = self._part_path(self._block)
        if part.is_file():
            rows = pq.read_table(part, schema=self.schema).to_pylist()
            self._table = [r for r in rows if r["index"] < i]

    def flush(self) -> None:
        """Write the current block whole (its chunk of every store and its table part) and
        wait for the pictures drawn so far."""
        if self._block is not None:
            start = self._block * self.rows
            writes = [
                self.stores[k][start : start + len(b)].write(b) for k, b in self._buffers.items()
            ]
            for w in writes:
                w.result()
            rows = sorted(self._table, key=lambda r: r["index"])
            table = pa.Table.from_pylist(rows, self.schema)
            atomic_write(self._part_path(self._block), lambda f: pq.write_table(table, f))
        while self._pngs:
            self._pngs.popleft().result()

    def close(self, cancel: bool = False) -> None:
        self._pool.shutdown(wait=True, cancel_futures=cancel)

    def merge(self, record_skips: bool = True) -> pa.Table:
        """Every process's table parts into items.parquet (process 0, after every process has
        flushed); record the skipped items (unless the caller does, as a scan does) and every
        file in `out`. Returns the table."""
        out = self.out
        blocks = -(-self.n // self.rows)
        parts = [self._part_path(b) for b in range(blocks) if self._part_path(b).is_file()]
        table = pa.concat_tables(
            [pq.read_table(p, schema=self.schema) for p in parts] or [self.schema.empty_table()]
        )
        atomic_write(out.path(TABLE), lambda f: pq.write_table(table, f))
        if record_skips:
            skipped = table.filter(pc.is_valid(table["skipped"]))
            ids, reasons = skipped["id"].to_pylist(), skipped["skipped"].to_pylist()
            for item, reason in zip(ids, reasons, strict=True):
                out.skip(item, reason)
        for k in self.shapes:
            root = self._store_path(k)
            out.add_files(
                sorted(str(p.relative_to(out.out)) for p in root.rglob("*") if p.is_file())
            )
        out.add_files([TABLE])
        if out.path(PNG).is_dir():
            out.add_files(sorted(f"{PNG}/{p.name}" for p in out.path(PNG).glob("*.png")))
        shutil.rmtree(out.path(PARTS), ignore_errors=True)
        return table
