"""Per-item results at dataset scale, split over every process of a run.

Layout under `--out` (row i = source item i, for i in [0, n)):

    NAME.zarr/       one zarr v3 array [n, ...] per kind of result (tensorstore), chunks of
                     `rows` items, zstd-compressed, float32 or --store-dtype; skipped rows are 0
    items.parquet    the item table: index, id, label, skipped (the reason, else null) and the
                     job's own columns
    png/STEM.png     overlays of a sample: the items below --png (STEM: 7-digit source index)

The items are cut in blocks of `rows` (the stores' chunk rows); block b belongs to process
b % P. Each process streams its blocks in order, holds the current block in memory and writes
it whole: every chunk and every table part (`.parts/bB.parquet`, merged into items.parquet at
the end) has one writer, and replaying a block after kill -9 rewrites the same bytes. Progress
is saved every few batches (`jobs.resume`); per item, the host work is O(1).

    items = ItemOutput(out, source, n, {"maps": (64, 64)}, {"prob": pa.float32()}, args)
    with items:
        for batch in items.stream(model.preprocess, batch_size):
            res = compute(batch)
            with items.commit(batch):              # interrupts wait; progress saved now and then
                for row in np.flatnonzero(batch.mask):
                    items.add(int(batch.index[row]), {"maps": res[row]}, {"prob": p[row]})
    items.finish(complete)                         # process 0: complete(table) writes results
"""

from __future__ import annotations

import argparse
import contextlib
import math
import shutil
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import jax
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import tensorstore as ts

from jaxviz.data.pipeline import Batch, stream
from jaxviz.data.sources import Source
from jaxviz.errors import UsageError
from jaxviz.jobs.output import JobOutput, atomic_write, save_png
from jaxviz.jobs.resume import ProgressRecord, add_checkpoint_arg, signature
from jaxviz.models.preprocess import Preprocess
from jaxviz.runtime.distributed import barrier
from jaxviz.runtime.signals import deferred_interrupts

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


def add_item_args(p: argparse.ArgumentParser) -> None:
    """Options of every per-item job: checkpoints, the PNG sample, the stores' layout."""
    add_checkpoint_arg(p)
    p.add_argument(
        "--png",
        default="32",
        metavar="N",
        help="draw overlays of the items below N, or 'all' (default: 32)",
    )
    p.add_argument(
        "--store-dtype",
        choices=sorted(STORE_DTYPES),
        default="float32",
        help="dtype of the array stores (default: float32)",
    )
    p.add_argument(
        "--rows-per-chunk",
        type=int,
        default=None,
        metavar="N",
        help="items per store chunk and per process block (default: sized so a chunk of the "
        f"widest store is at most {CHUNK_BYTES >> 20} MiB, at most {MAX_ROWS})",
    )


def parse_png(spec: str) -> int | None:
    """--png: a count (items below it get overlays) or 'all' (None)."""
    if spec == "all":
        return None
    if not spec.isdigit():
        raise UsageError(f"--png must be a count or 'all', got {spec!r}")
    return int(spec)


def chunk_rows(shapes: list[tuple[int, ...]], itemsize: int) -> int:
    """The largest power of two <= MAX_ROWS whose chunk of the widest store fits CHUNK_BYTES."""
    widest = max((math.prod(s) * itemsize for s in shapes), default=1)
    return min(MAX_ROWS, 1 << max(0, (CHUNK_BYTES // max(widest, 1)).bit_length() - 1))


def open_store(path: Path, shape: tuple[int, ...] | None = None, rows: int = 1, dtype=None):
    """The zarr v3 array at `path` (tensorstore); with `shape`, created anew."""
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
    return ts.open(spec, create=True, delete_existing=True).result()


class ItemOutput:
    """The stores, table, PNG sample and progress of one per-item job (see the module doc).

    stores: {name: row shape}; columns: {name: pyarrow type} of the job's table columns.
    args: the job's options (`add_item_args`). Every process of the run constructs one.
    """

    def __init__(
        self,
        out: JobOutput,
        source: Source,
        n: int,
        stores: dict[str, tuple[int, ...]],
        columns: dict[str, pa.DataType],
        args: argparse.Namespace,
    ):
        if args.checkpoint_every < 1:
            raise UsageError(f"--checkpoint-every must be at least 1, got {args.checkpoint_every}")
        if args.rows_per_chunk is not None and args.rows_per_chunk < 1:
            raise UsageError(f"--rows-per-chunk must be at least 1, got {args.rows_per_chunk}")
        self.out, self.source, self.n, self.every = out, source, n, args.checkpoint_every
        self.dtype = STORE_DTYPES[args.store_dtype]
        self.shapes = {k: tuple(int(d) for d in v) for k, v in stores.items()}
        self.rows = args.rows_per_chunk or chunk_rows(list(self.shapes.values()), 4)
        self.png_limit = parse_png(args.png)
        self.schema = pa.schema([*BASE_COLUMNS, *columns.items()])
        self.me, self.count = jax.process_index(), jax.process_count()
        sig = signature(
            out.config, items=n, rows=self.rows, stores=self.shapes, process_count=self.count
        )
        self.record = ProgressRecord(out.out, sig, self.me)
        resume = self.record.resumable()
        barrier("items-read")  # every process has decided before process 0 wipes
        if self.me == 0 and not resume:
            self._wipe()
            for k, shape in self.shapes.items():
                open_store(self._store_path(k), (n, *shape), self.rows, self.dtype)
            self.record.start()
        barrier("items-ready")
        self.stores = {k: open_store(self._store_path(k)) for k in self.shapes}
        blocks = range(self.me, -(-n // self.rows), self.count)
        self.indices = np.concatenate(
            [np.arange(b * self.rows, min(n, (b + 1) * self.rows)) for b in blocks] or [[]]
        ).astype(np.int64)
        progress = self.record.load() if resume else None
        self.position = progress["position"] if progress else 0
        self.state: dict[str, Any] = progress["state"] if progress else {}
        if progress:
            out.counts.update(progress["counts"])
            out.timings.update(progress["timings"])
            out.results["resumed_at_item"] = self.position
        self._block: int | None = None
        self._buffers: dict[str, np.ndarray] = {}
        self._table: list[dict] = []
        self._skips: deque[tuple[int, str, str]] = deque()
        self._batches = 0
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="jaxviz-png")
        self._pngs: deque[Future] = deque()
        if self.position < len(self.indices):
            self._reload(int(self.indices[self.position]))

    # paths ---------------------------------------------------------------------------------
    def _store_path(self, name: str) -> Path:
        return self.out.path(f"{name}.zarr")

    def _part_path(self, block: int) -> Path:
        return self.out.path(f"{PARTS}/b{block:07d}.parquet")

    def _wipe(self) -> None:
        """Remove what an earlier, different run of this job left (process 0, fresh start)."""
        for k in self.shapes:
            shutil.rmtree(self._store_path(k), ignore_errors=True)
        for rel in (PARTS, PNG):
            shutil.rmtree(self.out.path(rel), ignore_errors=True)
        self.out.path(TABLE).unlink(missing_ok=True)

    # the stream ----------------------------------------------------------------------------
    def stream(self, preprocess: Preprocess, batch_size: int) -> Iterator[Batch]:
        """Batches of this process's items not done yet, in order."""
        return stream(
            self.source,
            preprocess,
            batch_size,
            indices=self.indices[self.position :].tolist(),
            on_skip=lambda i, item, reason: self._skips.append((int(i), str(item), reason)),
        )

    @property
    def done(self) -> int:
        """Items of this process done (good or skipped)."""
        return self.position

    def sample(self, i: int) -> bool:
        """Whether item i gets an overlay PNG."""
        return self.png_limit is None or i < self.png_limit

    def png(self, name: str, render: Callable[[], np.ndarray]) -> None:
        """Draw `render()` and save it as png/NAME.png on the writer thread."""
        path = self.out.path(f"{PNG}/{name}.png")
        self._pngs.append(self._pool.submit(lambda: save_png(path, render())))
        while len(self._pngs) > 16:
            self._pngs.popleft().result()

    @contextlib.contextmanager
    def commit(self, batch: Batch) -> Iterator[None]:
        """`add` the batch's good rows inside the block; interrupts wait until it is done, then
        the batch counts as done and every `every` batches progress is saved."""
        with deferred_interrupts():
            yield
            good = batch.index[batch.mask]
            if len(good):
                self.position = int(np.searchsorted(self.indices, good.max(), "right"))
            self._batches += 1
            if self._batches % self.every == 0:
                self._checkpoint()

    def add(self, i: int, arrays: dict[str, np.ndarray], row: dict[str, Any]) -> None:
        """Item i's arrays ({store: row array}) and table columns."""
        self._drain(i)
        self._enter(i)
        for k, a in arrays.items():
            self._buffers[k][i - self._block * self.rows] = a
        info = self.source.info(i)
        self._table.append({"index": i, "id": info.id, "label": info.label, **row})
        self.out.count("images")

    def _drain(self, below: int) -> None:
        """Table rows of the skipped items before source index `below`."""
        while self._skips and self._skips[0][0] < below:
            i, item, reason = self._skips.popleft()
            self._enter(i)
            self._table.append(
                {"index": i, "id": item, "label": self.source.info(i).label, "skipped": reason}
            )

    def _enter(self, i: int) -> None:
        """Make item i's block the current one, writing out the previous one."""
        block = i // self.rows
        if block == self._block:
            return
        if self._block is not None:
            self._flush()
        self._block, self._table = block, []
        size = min(self.n, (block + 1) * self.rows) - block * self.rows
        self._buffers = {k: np.zeros((size, *s), self.dtype) for k, s in self.shapes.items()}

    def _reload(self, i: int) -> None:
        """Resume inside item i's block: its rows before i from the stores and table part."""
        self._enter(i)
        start = self._block * self.rows
        for k, buf in self._buffers.items():
            buf[: i - start] = self.stores[k][start:i].read().result()
        part = self._part_path(self._block)
        if part.is_file():
            rows = pq.read_table(part, schema=self.schema).to_pylist()
            self._table = [r for r in rows if r["index"] < i]

    def _flush(self) -> None:
        """Write the current block whole: its chunk of every store and its table part."""
        if self._block is None:
            return
        start = self._block * self.rows
        writes = [
            self.stores[k][start : start + len(buf)].write(buf) for k, buf in self._buffers.items()
        ]
        for w in writes:
            w.result()
        table = pa.Table.from_pylist(sorted(self._table, key=lambda r: r["index"]), self.schema)
        atomic_write(self._part_path(self._block), lambda f: pq.write_table(table, f))

    def _checkpoint(self) -> None:
        """Everything up to `position` to disk (PNGs included), then the progress record."""
        self._flush()
        while self._pngs:
            self._pngs.popleft().result()
        self.record.save(
            {
                "position": self.position,
                "counts": self.out.counts,
                "timings": self.out.timings,
                "state": self.state,
            }
        )

    def __enter__(self) -> ItemOutput:
        return self

    def __exit__(self, kind, value, tb) -> bool:
        if kind is not None and issubclass(kind, KeyboardInterrupt):
            self._checkpoint()
        if kind is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
        return False

    # the end -------------------------------------------------------------------------------
    def finish(self, complete: Callable[[pa.Table], None]) -> None:
        """After the stream: write out the last block; on process 0, merge every process's
        counts and table parts, record the files and call `complete(table)` (the job's results,
        manifest and report); every process returns once that is done."""
        self._drain(self.n)
        self.position = len(self.indices)
        self._checkpoint()
        self._pool.shutdown()
        barrier("items-done")
        if self.me == 0:
            complete(self._merge())
        barrier("items-final")

    def _merge(self) -> pa.Table:
        out = self.out
        everyone = self.record.everyone(self.count)
        out.counts = {}
        for p in everyone:
            for k, v in p["counts"].items():
                out.count(k, v)
        names = {k for p in everyone for k in p["timings"]}
        out.timings = {k: max(p["timings"].get(k, 0.0) for p in everyone) for k in sorted(names)}
        parts = sorted(out.path(PARTS).glob("b*.parquet"))
        table = pa.concat_tables(
            [pq.read_table(p, schema=self.schema) for p in parts] or [self.schema.empty_table()]
        )
        atomic_write(out.path(TABLE), lambda f: pq.write_table(table, f))
        skipped = table.filter(pc.is_valid(table["skipped"]))
        for item, reason in zip(
            skipped["id"].to_pylist(), skipped["skipped"].to_pylist(), strict=True
        ):
            out.skip(item, reason)
        out.count("skipped", len(skipped))
        for k in self.shapes:
            root = self._store_path(k)
            out.add_files(
                sorted(str(p.relative_to(out.out)) for p in root.rglob("*") if p.is_file())
            )
        out.add_files([TABLE])
        if out.path(PNG).is_dir():
            out.add_files(sorted(f"{PNG}/{p.name}" for p in out.path(PNG).glob("*.png")))
        shutil.rmtree(out.path(PARTS), ignore_errors=True)
        self.record.remove()
        return table
