"""Per-item jobs (occlusion, attribution, invert, dream) at dataset scale, on every process.

Each process streams its blocks of items (`jobs.blocks`: block b of the stores' chunk rows goes
to process b % P) and writes them with a `BlockWriter`; progress is saved every few batches
(`jobs.resume`), so a rerun continues where each process stopped. Per item, the host work is
O(1). Process 0 merges the table parts and writes the manifest and report at the end.

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

import contextlib
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import jax
import numpy as np
import pyarrow as pa

from jaxviz.data.pipeline import Batch, stream
from jaxviz.data.sources import Source
from jaxviz.jobs.blocks import BlockWriter, StoreOptions, process_items
from jaxviz.jobs.output import JobOutput
from jaxviz.jobs.resume import CheckpointOptions, ProgressRecord, signature
from jaxviz.models.preprocess import Preprocess
from jaxviz.runtime.distributed import barrier
from jaxviz.runtime.signals import deferred_interrupts


@dataclass(kw_only=True)
class ItemOptions(CheckpointOptions, StoreOptions):
    """Options of every per-item job: checkpoints, the PNG sample, the stores' layout."""


class ItemOutput:
    """The stores, table, PNG sample and progress of one per-item job (see the module doc).

    stores: {name: row shape}; columns: {name: pyarrow type} of the job's table columns.
    args: the job's config (it inherits `ItemOptions`). Every process of the run constructs one.
    `state`: a JSON-able dict of the job's own, saved with the progress.
    """

    def __init__(
        self,
        out: JobOutput,
        source: Source,
        n: int,
        stores: dict[str, tuple[int, ...]],
        columns: dict[str, pa.DataType],
        args: ItemOptions,
    ):
        self.writer = w = BlockWriter(out, source, n, stores, columns, args)
        self.out, self.source, self.n, self.every = out, source, n, args.checkpoint_every
        # the input pipeline's options (DataOptions), as the scan jobs pass them
        self.workers = getattr(args, "workers", None)
        self.exact_decode = getattr(args, "exact_decode", False)
        self.me, self.count = jax.process_index(), jax.process_count()
        sig = signature(out.config, items=n, rows=w.rows, stores=w.shapes, process_count=self.count)
        self.record = ProgressRecord(out.out, sig, self.me)
        resume = self.record.resumable()
        barrier("items-read")  # every process has decided before process 0 wipes
        if self.me == 0 and not resume:
            w.create()
            self.record.start()
        elif self.me == 0:
            w.clear_stale_locks()
        barrier("items-ready")
        w.open()
        self.indices = process_items(n, w.rows, self.me, self.count)
        progress = self.record.load() if resume else None
        self.position = progress["position"] if progress else 0
        self.state: dict[str, Any] = progress["state"] if progress else {}
        if progress:
            out.counts.update(progress["counts"])
            out.timings.update(progress["timings"])
            out.results["resumed_at_item"] = self.position
        self._skips: deque[tuple[int, str, str]] = deque()
        self._batches = 0
        if self.position < len(self.indices):
            w.reload(int(self.indices[self.position]))

    def stream(self, preprocess: Preprocess, batch_size: int) -> Iterator[Batch]:
        """Batches of this process's items not done yet, in order."""
        return stream(
            self.source,
            preprocess,
            batch_size,
            indices=self.indices[self.position :].tolist(),
            on_skip=lambda i, item, reason: self._skips.append((int(i), str(item), reason)),
            workers=self.workers,
            exact_decode=self.exact_decode,
        )

    @property
    def done(self) -> int:
        """Items of this process done (good or skipped)."""
        return self.position

    def sample(self, i: int) -> bool:
        """Whether item i gets an overlay PNG."""
        return self.writer.sample(i)

    def png(self, name: str, render: Callable[[], np.ndarray]) -> None:
        """Draw `render()` and save it as png/NAME.png on the writer thread."""
        self.writer.png(name, render)

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
        self.writer.add(i, arrays, row)
        self.out.count("images")

    def _drain(self, below: int) -> None:
        """Table rows of the skipped items before source index `below`."""
        while self._skips and self._skips[0][0] < below:
            self.writer.add_skip(*self._skips.popleft())

    def _checkpoint(self) -> None:
        """Everything up to `position` to disk (PNGs included), then the progress record."""
        self.writer.flush()
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
            self.writer.close(cancel=True)
        return False

    def finish(self, complete: Callable[[pa.Table], None]) -> None:
        """After the stream: write out the last block; on process 0, merge every process's
        counts and table parts, record the files and call `complete(table)` (the job's results,
        manifest and report); every process returns once that is done."""
        self._drain(self.n)
        self.position = len(self.indices)
        self._checkpoint()
        self.writer.close()
        barrier("items-done")
        if self.me == 0:
            out = self.out
            everyone = self.record.everyone(self.count)
            out.counts = {}
            for p in everyone:
                for k, v in p["counts"].items():
                    out.count(k, v)
            names = sorted({k for p in everyone for k in p["timings"]})
            out.timings = {k: max(p["timings"].get(k, 0.0) for p in everyone) for k in names}
            table = self.writer.merge()
            out.count("skipped", len(out.skipped))
            self.record.remove()
            complete(table)
        barrier("items-final")
