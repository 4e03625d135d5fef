"""Streaming fixed-shape batches from a source, decoding in background threads.

Every batch has the same shape (one compile per job): the last one is padded, with `mask` False
and `index` -1 on padding rows. Unusable inputs never stop the stream: they are reported through
`on_skip(index, id, reason)` and the next good image takes their place. Decoding runs ahead of the
consumer in a thread pool (PIL releases the GIL while decoding), bounded by `prefetch` batches.
"""

from __future__ import annotations

import os
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

from jaxviz.data.decode import BadInput
from jaxviz.data.sources import Source
from jaxviz.models.preprocess import Preprocess

SkipCallback = Callable[[int, str, str], None]


@dataclass
class Batch:
    """images [B, H, W, 3] uint8 (zeros on padding); mask [B] bool; index [B] int64 source
    indices (-1 on padding); labels [B] int64 (-1 unknown or padding); next_index: the global
    source index to resume from after this batch."""

    images: np.ndarray
    mask: np.ndarray
    index: np.ndarray
    labels: np.ndarray
    next_index: int

    @property
    def count(self) -> int:
        return int(self.mask.sum())


def shard_indices(
    n: int, start: int, stop: int | None, process_index: int, process_count: int
) -> range:
    """Indices this process reads: every process_count-th of [start, stop), from its offset."""
    stop = n if stop is None else min(stop, n)
    return range(start + process_index, stop, process_count)


def _load(source: Source, preprocess: Preprocess, i: int) -> np.ndarray | str:
    try:
        return preprocess.to_uint8(source.load(i))
    except BadInput as e:
        return str(e)
    except Exception as e:  # a decoder bug must not kill a million-image job
        return f"{type(e).__name__}: {e}"


def stream(
    source: Source,
    preprocess: Preprocess,
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
) -> Iterator[Batch]:
    """Yield fixed-shape Batches of this process's share of source[start:stop], or of exactly
    the source `indices` given, in their order (a job's own sharding; next_index is then
    meaningless)."""
    if indices is None:
        indices = shard_indices(len(source), start, stop, process_index, process_count)
    h, w = preprocess.size
    workers = workers or min(8, os.cpu_count() or 1)
    window = max(batch_size * prefetch, workers)

    def empty() -> Batch:
        return Batch(
            np.zeros((batch_size, h, w, 3), np.uint8),
            np.zeros(batch_size, bool),
            np.full(batch_size, -1, np.int64),
            np.full(batch_size, -1, np.int64),
            start,
        )

    with ThreadPoolExecutor(workers, thread_name_prefix="jaxviz-decode") as pool:
        pending: deque[tuple[int, Future]] = deque()
        it = iter(indices)
        batch, fill = empty(), 0
        while True:
            while len(pending) < window:
                i = next(it, None)
                if i is None:
                    break
                pending.append((i, pool.submit(_load, source, preprocess, i)))
            if not pending:
                break
            i, fut = pending.popleft()
            result = fut.result()
            if isinstance(result, str):
                if on_skip is not None:
                    on_skip(i, source.info(i).id, result)
                batch.next_index = i + process_count
                continue
            label = source.info(i).label
            batch.images[fill] = result
            batch.mask[fill], batch.index[fill] = True, i
            batch.labels[fill] = -1 if label is None else label
            batch.next_index = i + process_count
            fill += 1
            if fill == batch_size:
                yield batch
                nxt = batch.next_index
                batch, fill = empty(), 0
                batch.next_index = nxt
        if fill:
            yield batch
