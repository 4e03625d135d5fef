"""Streaming fixed-shape batches from a source through a grain pipeline.

The pipeline is a random-access `grain.MapDataset` over chunks of positions of the sequence to
read (`indices`, default every source index in order): each chunk is decoded and resized (the
caller's `Transform`) by worker processes (`mp_prefetch`, `workers` of them, each with its own
prefetch buffer) or, with `workers=0`, by threads of this process. Chunks come back in order, so
the output never depends on the worker count.

Every batch has the same shape (one compile per job): the last one is padded, with `mask` False
and `index` -1 on padding rows. Unusable inputs never stop the stream: they are reported through
`on_skip(index, id, reason)` and the next good image takes their place. A decoding error inside
a worker comes back as that item's reason; a worker process that dies (a crash in a native
decoder) is replaced, the items it held are read again one at a time in a fresh worker, and the
item that kills it again is skipped with the reason.

Sharding and resume are by position. With several JAX processes each reads its own contiguous
block of positions [0, stop), split as `grain.sharding.ShardByJaxProcess` splits a dataset
(`even_split`), from `start` on. `Batch.next_index` is the position after the last item the batch
consumed (good or skipped): passing it back as `start` (same stop, process index and count)
continues exactly where that batch ended. This position is grain's iterator state for this
pipeline (the dataset is a fixed function of the positions and nothing is filtered inside it), so
jobs checkpoint the one integer instead of grain's state dict. Without `indices` a position is a
source index, so `next_index` is the global source index to resume from.
"""

from __future__ import annotations

import os
import signal
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import numpy as np

from jaxviz.data.decode import BadInput, Size
from jaxviz.data.sources import Source
from jaxviz.data.transform import Transform, draft_target
from jaxviz.errors import UsageError

SkipCallback = Callable[[int, str, str], None]

AUTO_WORKERS_MIN_ITEMS = 1000  # below this many images, `workers=None` decodes in-process
CHUNK = 8  # images a worker decodes per round trip (at most the batch size)
MAX_CRASHES = 16  # worker deaths in a row before the stream gives up


@dataclass
class Batch:
    """images [B, H, W, 3] uint8 (zeros on padding); mask [B] bool; index [B] int64 source
    indices (-1 on padding); labels [B] int64 (-1 unknown or padding); next_index: the position
    to resume from after this batch (the source index when reading the whole source)."""

    images: np.ndarray
    mask: np.ndarray
    index: np.ndarray
    labels: np.ndarray
    next_index: int

    @property
    def count(self) -> int:
        return int(self.mask.sum())


def available_cores() -> int:
    """CPU cores this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def default_workers(items: int) -> int:
    """Worker processes for `items` images: every available core, or none (threads of this
    process) for small jobs, where starting the processes would cost more than they save."""
    return available_cores() if items >= AUTO_WORKERS_MIN_ITEMS else 0


def shard_indices(
    n: int, start: int, stop: int | None, process_index: int, process_count: int
) -> range:
    """Positions this process reads: its block of [0, min(stop, n)) split as grain splits a
    dataset across JAX processes, from `start` on."""
    from grain._src.core.sharding import ShardOptions, even_split

    stop = n if stop is None else max(0, min(stop, n))
    lo, hi = even_split(stop, ShardOptions(process_index, process_count))
    return range(max(lo, start), hi)


class _Chunks:
    """grain's random-access source: chunk k -> [m, 2] int64 (position, source index)."""

    def __init__(self, positions: range, indices: np.ndarray | None, size: int):
        self.positions, self.indices, self.size = positions, indices, size

    def __len__(self) -> int:
        return -(-len(self.positions) // self.size)

    def __getitem__(self, k: int) -> np.ndarray:
        pos = np.asarray(self.positions[k * self.size : (k + 1) * self.size], np.int64)
        idx = pos if self.indices is None else self.indices[pos]
        return np.stack([pos, idx], axis=1)


@dataclass(frozen=True)
class _Decode:
    """Runs in the workers: a chunk of (position, index) -> decoded, resized images, labels and
    the reason for every item that could not be used ('' for good ones)."""

    source: Source
    transform: Transform
    draft: Size | None

    def __call__(self, chunk: np.ndarray) -> dict:
        h, w = self.transform.size
        m = len(chunk)
        images = np.zeros((m, h, w, 3), np.uint8)
        labels = np.full(m, -1, np.int64)
        reasons = []
        for r, i in enumerate(chunk[:, 1]):
            try:
                image, label = self.source.sample(int(i), self.draft)
                a = np.asarray(self.transform.to_uint8(image))
                if a.shape != (h, w, 3) or a.dtype != np.uint8:
                    raise BadInput(f"resized to {a.shape} {a.dtype}, not ({h}, {w}, 3) uint8")
                images[r] = a
                labels[r] = -1 if label is None else label
                reasons.append("")
            except BadInput as e:
                reasons.append(str(e) or "unusable input")
            except Exception as e:  # a decoder bug must not kill a million-image job
                reasons.append(f"{type(e).__name__}: {e}")
        return {"pos": chunk[:, 0], "index": chunk[:, 1], "images": images, "labels": labels,
                "reasons": tuple(reasons)}  # fmt: skip


def _worker_init(worker: int, count: int) -> None:
    """In each worker process: Ctrl-C is the main process's to handle, and the worker ends
    when the main process is gone (also after kill -9)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    parent = os.getppid()

    def watch() -> None:
        while True:
            threading.Event().wait(1.0)
            if os.getppid() != parent:
                os._exit(0)

    threading.Thread(target=watch, daemon=True, name="jaxviz-parent-watch").start()


def _iterate(chunks: _Chunks, decode: _Decode, workers: int, prefetch: int):
    import grain
    from absl import flags

    if not flags.FLAGS.is_parsed():  # grain reads its absl flags; jaxviz parses none
        flags.FLAGS.mark_as_parsed()
    ds = grain.MapDataset.source(chunks).map(decode)
    if workers == 0:
        threads = min(8, available_cores() * 2)
        opts = grain.ReadOptions(num_threads=threads, prefetch_buffer_size=threads * prefetch)
        return ds.to_iter_dataset(opts).__iter__()
    opts = grain.ReadOptions(num_threads=1, prefetch_buffer_size=prefetch)
    mp = grain.MultiprocessingOptions(num_workers=workers, per_worker_buffer_size=prefetch)
    # chunks travel pickled through the workers' queues, not in shared memory blocks: a block
    # still in flight when the stream stops would be reported leaked at exit
    no_shm = grain.experimental.DatasetOptions(min_shm_size=1 << 62)
    ds = grain.experimental.WithOptionsIterDataset(ds.to_iter_dataset(opts), no_shm)
    return ds.mp_prefetch(mp, worker_init_fn=_worker_init).__iter__()


def _isolated(
    window: range, indices: np.ndarray | None, decode: _Decode, died: str
) -> Iterator[dict]:
    """Decode `window` one item at a time in a fresh worker process, so that an item that
    kills its worker is known for certain; it is skipped and the worker replaced."""
    from concurrent.futures import ProcessPoolExecutor
    from concurrent.futures.process import BrokenProcessPool
    from multiprocessing import get_context

    def pool() -> ProcessPoolExecutor:
        return ProcessPoolExecutor(1, get_context("spawn"), _worker_init, (0, 1))

    ex, crashes = pool(), 0
    try:
        for p in window:
            chunk = _Chunks(range(p, p + 1), indices, 1)[0]
            try:
                yield ex.submit(decode, chunk).result()
                crashes = 0
            except BrokenProcessPool:
                crashes += 1
                if crashes > MAX_CRASHES:
                    raise RuntimeError(f"{crashes} worker processes died in a row") from None
                ex.shutdown(wait=False)
                ex = pool()
                yield {"pos": chunk[:, 0], "index": chunk[:, 1], "images": None,
                       "labels": np.asarray([-1]),
                       "reasons": (f"a worker process died reading it ({died})",)}  # fmt: skip
    finally:
        ex.shutdown(wait=False, cancel_futures=True)


def _decoded(
    positions: range,
    indices: np.ndarray | None,
    decode: _Decode,
    workers: int,
    prefetch: int,
    chunk: int,
) -> Iterator[dict]:
    """Decoded chunks in position order; a dead worker process is replaced (module doc)."""
    done = positions.start
    while done < positions.stop:
        it = _iterate(
            _Chunks(range(done, positions.stop), indices, chunk), decode, workers, prefetch
        )
        try:
            while True:
                try:
                    c = next(it)
                except StopIteration:
                    return
                except RuntimeError as e:
                    if workers == 0 or "terminated unexpectedly" not in str(e):
                        raise
                    died = str(e).split(".")[0]
                    break
                yield c
                done = int(c["pos"][-1]) + 1
        finally:
            if hasattr(it, "close"):
                it.close()
        # the items in flight when a worker died: one at a time, to find the one that kills it
        window = range(done, min(positions.stop, done + (workers * (prefetch + 2) + 1) * chunk))
        yield from _isolated(window, indices, decode, died)
        done = window.stop


def stream(
    source: Source,
    preprocess: Transform,
    batch_size: int,
    *,
    start: int = 0,
    stop: int | None = None,
    process_index: int = 0,
    process_count: int = 1,
    on_skip: SkipCallback | None = None,
    workers: int | None = None,
    prefetch: int = 2,
    indices: Sequence[int] | None = None,
    exact_decode: bool = False,
) -> Iterator[Batch]:
    """Yield fixed-shape Batches of this process's share of positions [start, stop) of
    `indices` (default: every source index, in order).

    preprocess: the caller's Transform (size, to_uint8, optional resize). workers: decoding
    processes (None: `default_workers`; 0: threads of this process). prefetch: chunks buffered
    per worker. exact_decode: decode JPEGs at full size (default: DCT-downscaled to no less
    than the size `preprocess` resizes to).
    """
    if indices is not None:
        indices = np.asarray(indices, np.int64).reshape(-1)
        if len(indices) and (indices.min() < 0 or indices.max() >= len(source)):
            raise IndexError(f"indices must lie in [0, {len(source)})")
    n = len(source) if indices is None else len(indices)
    positions = shard_indices(n, start, stop, process_index, process_count)
    if workers is not None and workers < 0:
        raise UsageError(f"--workers must be >= 0, got {workers}")
    workers = default_workers(len(positions)) if workers is None else int(workers)
    draft = None if exact_decode else draft_target(preprocess)
    decode = _Decode(source, preprocess, draft)
    h, w = preprocess.size

    def empty(next_index: int) -> Batch:
        return Batch(
            np.zeros((batch_size, h, w, 3), np.uint8),
            np.zeros(batch_size, bool),
            np.full(batch_size, -1, np.int64),
            np.full(batch_size, -1, np.int64),
            next_index,
        )

    batch, fill = empty(max(start, positions.start)), 0
    chunk = max(1, min(batch_size, CHUNK))
    for c in _decoded(positions, indices, decode, workers, prefetch, chunk):
        for r, reason in enumerate(c["reasons"]):
            pos, i = int(c["pos"][r]), int(c["index"][r])
            batch.next_index = pos + 1
            if reason:
                if on_skip is not None:
                    on_skip(i, source.info(i).id, reason)
                continue
            batch.images[fill] = c["images"][r]
            batch.mask[fill], batch.index[fill] = True, i
            batch.labels[fill] = c["labels"][r]
            fill += 1
            if fill == batch_size:
                yield batch
                batch, fill = empty(batch.next_index), 0
    if fill:
        yield batch
