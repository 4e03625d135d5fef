"""One streaming pass over a dataset that feeds several consumers from one forward pass.

The forward pass (up to the deepest stage any consumer taps) and every consumer's `reduce` run in
ONE jitted function, with the batch sharded over local devices; the host side (`update`) of batch
k runs while the device computes batch k+1. Features, patch mining and channel statistics share a
pass this way (the sweep relies on it).
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import jax
import jax.numpy as jnp
import numpy as np

from jaxviz.data.pipeline import Batch, stream
from jaxviz.data.sources import Source
from jaxviz.errors import UsageError
from jaxviz.jobs.blocks import process_items
from jaxviz.jobs.common import DTYPES, scan_key
from jaxviz.jobs.output import JobOutput
from jaxviz.models.stage import Model, Params, forward
from jaxviz.runtime.devices import batch_sharding, local_mesh, replicated, round_up
from jaxviz.runtime.distributed import barrier, exchange
from jaxviz.runtime.progress import Progress
from jaxviz.runtime.signals import deferred_interrupts


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

    # optional, for checkpoints: state() -> pytree of numpy arrays (or None); load_state(state)
    # optional, for several processes: merge(state) adds another process's state to this one
    # optional: cleanup() removes scratch files once the results are written and the checkpoint
    #   that might still need them is gone (run_scan_jobs calls it on every process)
    # optional: skip(i, item_id, reason) hears of this process's skipped inputs in source order,
    #   each before the update of the batch holding the next good item after it (or at the end)

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


class ScanCheckpoint:
    """The streaming state of a scan, saved with orbax every `every` batches and on interrupt.

    Holds the next source index, every consumer's `state()` (consumers without one cannot be
    resumed), the image count and the skipped inputs before that index. A run that finds a
    checkpoint of the same `signature` continues from it; results equal an uninterrupted run.
    """

    def __init__(self, directory: str | Path, signature: str, every: int = 20):
        import orbax.checkpoint as ocp

        self.directory, self.signature, self.every = Path(directory), signature, every
        self._ocp = ocp
        self._manager = ocp.CheckpointManager(
            self.directory.absolute(),
            options=ocp.CheckpointManagerOptions(max_to_keep=1, enable_async_checkpointing=False),
        )

    def restore(self) -> dict | None:
        step = self._manager.latest_step()
        if step is None:
            return None
        state = self._manager.restore(step, args=self._ocp.args.StandardRestore())
        meta = json.loads(bytes(np.asarray(state["meta"], np.uint8)).decode())
        if meta["signature"] != self.signature:
            return None
        return {"meta": meta, "consumers": state.get("consumers", {})}

    def save(self, meta: dict, consumers: dict) -> None:
        meta = {**meta, "signature": self.signature}
        step = (self._manager.latest_step() or 0) + 1
        blob = np.frombuffer(json.dumps(meta).encode(), np.uint8)
        state = {"meta": blob, "consumers": {k: v for k, v in consumers.items() if v is not None}}
        self._manager.save(step, args=self._ocp.args.StandardSave(state), force=True)
        self._manager.wait_until_finished()

    def remove(self) -> None:
        self._manager.close()
        shutil.rmtree(self.directory, ignore_errors=True)


def _state(c: Consumer) -> Any:
    if not hasattr(c, "state"):
        raise TypeError(f"consumer {c.name} has no state(): it cannot be checkpointed")
    return c.state()


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
    checkpoint: ScanCheckpoint | None = None,
    desc: str = "scan",
    workers: int | None = None,
    exact_decode: bool = False,
) -> dict[str, dict] | None:
    """Stream source[start:stop] through the model once; every consumer sees every good image.

    batch_size is rounded up to a multiple of the local device count. Skipped inputs go to
    `out.skip` (in source order). With a `checkpoint`, the state is saved every few batches
    and on interrupt (KeyboardInterrupt, SIGTERM turned into one), and a rerun resumes from it.
    With several processes, each streams its share of the data (blocks of items, see `rows`
    below), then process 0 merges every consumer's state (`merge`) and returns the results;
    the others return None. Returns {consumer name: consumer.finish()}. workers and
    exact_decode go to the input pipeline.
    """
    if process_count > 1:
        lacking = [c.name for c in consumers if not hasattr(c, "merge")]
        if lacking:
            raise UsageError(f"{', '.join(lacking)} cannot run on several processes yet")
    mesh = local_mesh()
    batch_size = round_up(batch_size, mesh.size)
    data_sharding = batch_sharding(mesh)
    params = jax.device_put(params, replicated(mesh))
    step = make_step(model, consumers, dtype)
    # blocks of `rows` items go to process b % P: a consumer writing chunks of `rows` items
    # (`rows` attribute, a power of two) is each chunk's only writer
    rows = max((c.rows for c in consumers if isinstance(getattr(c, "rows", None), int)), default=1)
    n = len(source) if stop is None else min(stop, len(source))
    mine = process_items(n, rows, process_index, process_count)
    mine = mine[mine >= start]
    total = len(mine)
    skips: list[tuple[int, str, str]] = []
    done = {"batches": 0, "images": 0, "next_index": start}
    restored = checkpoint.restore() if checkpoint else None
    if restored:
        meta = restored["meta"]
        done.update(batches=meta["batches"], images=meta["images"], next_index=meta["next_index"])
        skips = [tuple(s) for s in meta["skips"]]
        for c in consumers:
            c.load_state(restored["consumers"].get(c.name))
    told = [c for c in consumers if hasattr(c, "skip")]
    heard = len(skips)  # skips[:heard] are with the consumers (restored ones: in their state)

    def skip(i: int, item_id: str, reason: str) -> None:
        skips.append((i, item_id, reason))
        bar.update(1)

    def tell_skips(below: float) -> None:
        nonlocal heard
        while heard < len(skips) and skips[heard][0] < below:
            for c in told:
                c.skip(*skips[heard])
            heard += 1

    def save() -> None:
        nxt = done["next_index"]
        meta = {
            "batches": done["batches"],
            "images": done["images"],
            "next_index": nxt,
            "skips": [s for s in skips if s[0] < nxt],
        }
        checkpoint.save(meta, {c.name: _state(c) for c in consumers})

    def finish_batch(batch: Batch, result: dict) -> None:
        result = jax.tree.map(np.asarray, result)
        nxt = int(batch.index[batch.mask].max()) + 1
        with deferred_interrupts():  # consumers and counters move together, or not at all
            tell_skips(nxt)
            for c in consumers:
                c.update(batch, result[c.name])
            done["batches"] += 1
            done["images"] += batch.count
            done["next_index"] = nxt
        bar.update(batch.count)
        if checkpoint and done["batches"] % checkpoint.every == 0:
            save()

    with Progress(total, desc) as bar:
        bar.update(done["images"] + len(skips))
        pending = None
        try:
            for batch in stream(
                source,
                model.preprocess,
                batch_size,
                indices=mine[mine >= done["next_index"]].tolist(),
                on_skip=skip,
                workers=workers,
                exact_decode=exact_decode,
            ):
                images = jax.device_put(batch.images, data_sharding)
                mask = jax.device_put(batch.mask, data_sharding)
                result = step(params, images, mask)  # dispatched asynchronously
                if pending is not None:
                    finish_batch(*pending)
                pending = (batch, result)
            if pending is not None:
                finish_batch(*pending)
                pending = None
            tell_skips(float("inf"))
        except KeyboardInterrupt:
            if checkpoint:
                save()
            raise
    if checkpoint:
        done["next_index"] = len(source) if stop is None else min(stop, len(source))
        save()
    if process_count > 1:
        payload = {
            "states": {c.name: _state(c) for c in consumers},
            "skips": skips,
            "images": done["images"],
        }
        gathered = exchange(out.path(".processes"), "scan", payload)
        if gathered is None:
            return None  # process 0 merges and writes the results
        for other in gathered[1:]:
            for c in consumers:
                c.merge(other["states"][c.name])
            skips += other["skips"]
            done["images"] += other["images"]
    for _, item_id, reason in sorted(skips):
        out.skip(item_id, reason)
    out.count("skipped", len(skips))
    out.count("images", done["images"])
    return {c.name: c.finish() for c in consumers}


@dataclass
class ScanJob:
    """A job that is one streaming pass plus a finishing step, so the sweep can merge several
    jobs over the same model and data into ONE pass.

    `complete(results)` receives {consumer name: finish()} for this job's consumers and writes
    its outputs. Batch size, limit, dtype and the sharing key come from the job's config
    (`--batch-size`, `--limit`, `--dtype`, see `jobs.common.scan_key`); jobs merge
    when their keys are equal.
    """

    model: Model
    params: Params
    source: Source
    out: JobOutput
    consumers: list
    complete: Callable[[dict], None]
    args: Any  # the job's config: ModelOptions and DataOptions fields

    @property
    def batch_size(self) -> int:
        return self.args.batch_size

    @property
    def limit(self) -> int | None:
        return self.args.limit

    @property
    def dtype(self) -> Any:
        return DTYPES[self.args.dtype]

    @property
    def key(self) -> tuple:
        return scan_key(self.args)

    def run(self) -> int:
        """Run this job alone (one pass); the exit code of a job's `run`."""
        run_scan_jobs([self])
        return 0


def run_scan_jobs(jobs: Sequence[ScanJob], desc: str = "scan", checkpoint_every: int = 20) -> None:
    """Run jobs that share model, data and batch settings as one pass over the data.

    The pass is checkpointed under the first job's `--out/.scan-checkpoint` (when every
    consumer has a state) and resumes from there; the checkpoint is removed once every job has
    written its outputs.
    """
    first = jobs[0]
    for j in jobs[1:]:
        if j.key != first.key:
            raise ValueError(f"cannot share a pass: {j.key} != {first.key}")
    consumers = [c for j in jobs for c in j.consumers]
    names = [c.name for c in consumers]
    if len(set(names)) != len(names):
        raise ValueError(f"consumer names must be unique in a shared pass: {names}")
    checkpoint = None
    if all(hasattr(c, "state") for c in consumers):
        signature = json.dumps([first.key, names, [j.out.config for j in jobs]], default=str)
        folder = first.out.path(".scan-checkpoint")
        if jax.process_count() > 1:
            folder = folder / f"p{jax.process_index()}"
        checkpoint = ScanCheckpoint(folder, signature, checkpoint_every)
    results = scan(
        first.model,
        first.params,
        first.source,
        consumers,
        batch_size=first.batch_size,
        out=first.out,
        stop=first.limit,
        dtype=first.dtype,
        process_index=jax.process_index(),
        process_count=jax.process_count(),
        checkpoint=checkpoint,
        desc=desc,
        workers=getattr(first.args, "workers", None),
        exact_decode=getattr(first.args, "exact_decode", False),
    )
    if results is not None:  # else another process writes the outputs
        for j in jobs:
            if j is not first:
                j.out.skipped, j.out.counts = list(first.out.skipped), dict(first.out.counts)
            j.complete({c.name: results[c.name] for c in j.consumers})
    barrier("scan-complete")
    if checkpoint:
        checkpoint.remove()
    for c in consumers:
        if hasattr(c, "cleanup"):
            c.cleanup()
