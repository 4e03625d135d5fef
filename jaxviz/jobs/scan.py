"""One streaming pass over a dataset that feeds several consumers from one forward pass.

The forward pass (up to the deepest stage any consumer taps) and every consumer's `reduce` run in
ONE jitted function, with the batch sharded over local devices; the host side (`update`) of batch
k runs while the device computes batch k+1. Features, patch mining and channel statistics share a
pass this way (the sweep relies on it).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import jax
import jax.numpy as jnp
import numpy as np

from jaxviz.data.pipeline import Batch, shard_indices, stream
from jaxviz.data.sources import Source
from jaxviz.jobs.output import JobOutput
from jaxviz.models.stage import Model, Params, forward
from jaxviz.runtime.devices import batch_sharding, local_mesh, replicated, round_up
from jaxviz.runtime.progress import Progress


class Consumer(Protocol):
    """What a scan feeds.

    name: unique key of its results. taps: stage outputs it needs.
    reduce(taps, mask): pure and jit-able, on device; taps {stage: [B, ...]}, mask [B] bool
      (False on padding rows, which must not influence results).
    update(batch, result): host side, with result as numpy arrays.
    finish(): results for the manifest.
    """

    name: str
    taps: tuple[str, ...]

    def reduce(self, taps: dict[str, jax.Array], mask: jax.Array) -> Any: ...

    def update(self, batch: Batch, result: Any) -> None: ...

    def finish(self) -> dict: ...


def make_step(model: Model, consumers: Sequence[Consumer], dtype=jnp.float32) -> Callable:
    """The jitted `(params, images uint8 [B,H,W,3], mask [B]) -> {consumer: reduced}`."""
    last = max((model.index(t) for c in consumers for t in c.taps), default=0)
    stop = model.stages[last].name

    @jax.jit
    def step(params: Params, images: jax.Array, mask: jax.Array) -> dict[str, Any]:
        x = model.preprocess.normalize(images).astype(dtype)
        _, taps = forward(model, params, x, stop=stop)
        return {c.name: c.reduce({t: taps[t] for t in c.taps}, mask) for c in consumers}

    return step


def scan(
    model: Model,
    params: Params,
    source: Source,
    consumers: Sequence[Consumer],
    *,
    batch_size: int,
    out: JobOutput,
    start: int = 0,
    stop: int | None = None,
    dtype=jnp.float32,
    process_index: int = 0,
    process_count: int = 1,
    on_batch: Callable[[Batch], None] | None = None,
    desc: str = "scan",
) -> dict[str, dict]:
    """Stream source[start:stop] through the model once; every consumer sees every good image.

    batch_size is rounded up to a multiple of the local device count. Skipped inputs go to
    `out.skip`; `on_batch(batch)` runs after every consumer has taken the batch (checkpoints).
    Returns {consumer name: consumer.finish()}.
    """
    mesh = local_mesh()
    batch_size = round_up(batch_size, mesh.size)
    data_sharding = batch_sharding(mesh)
    params = jax.device_put(params, replicated(mesh))
    step = make_step(model, consumers, dtype)
    total = len(shard_indices(len(source), start, stop, process_index, process_count))

    def skip(i: int, item_id: str, reason: str) -> None:
        out.skip(item_id, reason)
        out.count("skipped")
        bar.update(1)

    def finish_batch(batch: Batch, result: dict) -> None:
        result = jax.tree.map(np.asarray, result)
        for c in consumers:
            c.update(batch, result[c.name])
        out.count("images", batch.count)
        bar.update(batch.count)
        if on_batch is not None:
            on_batch(batch)

    with Progress(total, desc) as bar:
        pending = None
        for batch in stream(
            source,
            model.preprocess,
            batch_size,
            start=start,
            stop=stop,
            process_index=process_index,
            process_count=process_count,
            on_skip=skip,
        ):
            images = jax.device_put(batch.images, data_sharding)
            mask = jax.device_put(batch.mask, data_sharding)
            result = step(params, images, mask)  # dispatched asynchronously
            if pending is not None:
                finish_batch(*pending)
            pending = (batch, result)
        if pending is not None:
            finish_batch(*pending)
    return {c.name: c.finish() for c in consumers}


@dataclass
class ScanJob:
    """A job that is one streaming pass plus a finishing step, so the sweep can merge several
    jobs over the same model and data into ONE pass.

    `complete(results)` receives {consumer name: finish()} for this job's consumers and writes
    its outputs. Jobs merge when their `key` (model, data, batch, limit, dtype) is equal.
    """

    model: Model
    params: Params
    source: Source
    out: JobOutput
    consumers: list
    complete: Callable[[dict], None]
    batch_size: int
    limit: int | None
    dtype: Any
    key: tuple

    def run(self) -> None:
        run_scan_jobs([self])


def run_scan_jobs(jobs: Sequence[ScanJob], desc: str = "scan") -> None:
    """Run jobs that share model, data and batch settings as one pass over the data."""
    first = jobs[0]
    for j in jobs[1:]:
        if j.key != first.key:
            raise ValueError(f"cannot share a pass: {j.key} != {first.key}")
    consumers = [c for j in jobs for c in j.consumers]
    names = [c.name for c in consumers]
    if len(set(names)) != len(names):
        raise ValueError(f"consumer names must be unique in a shared pass: {names}")
    results = scan(
        first.model,
        first.params,
        first.source,
        consumers,
        batch_size=first.batch_size,
        out=first.out,
        stop=first.limit,
        dtype=first.dtype,
        desc=desc,
    )
    for j in jobs:
        if j is not first:
            j.out.skipped, j.out.counts = list(first.out.skipped), dict(first.out.counts)
        j.complete({c.name: results[c.name] for c in j.consumers})
