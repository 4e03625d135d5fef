"""`jaxviz features`: a layer's features of a whole dataset, streamed to disk and into a k-NN index.

One streaming pass (jobs/scan.py; shareable with patches and activations in a sweep) runs the
model to `--layer` (default: the model's features stage, e.g. AlexNet fc7) and hands each batch's
flattened features to `FeatureConsumer`, which appends the good rows to sharded .npy files
(index/feature_store.py) and to a FAISS index (index/knn.py) as they come. Memory stays flat: one
shard buffer, one batch, and the index itself. With several processes each stores its share under
--out/.parts/pN and process 0 merges them in source order: the same store and index, bitwise.

Writes into --out: features.json (data source spec, model spec, layer, dim, dtype, shards),
shards/{features,index,labels,ids}-NNNNN.npy, index.faiss + ids.npy + knn.json (the index, its
ids are source positions), manifest.json with precision@k of same-label neighbours when the
source has labels. `jaxviz neighbors --index OUT` and `jaxviz tsne` read it without the model.
"""

from __future__ import annotations

import math
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from jaxviz.data.pipeline import Batch
from jaxviz.data.sources import Source
from jaxviz.errors import UsageError
from jaxviz.index.feature_store import DTYPES as STORE_DTYPES
from jaxviz.index.feature_store import FeatureStore, FeatureWriter
from jaxviz.index.knn import METRICS, KnnIndex, choose_factory, gpu_count
from jaxviz.jobs.common import (
    DataOptions,
    ModelOptions,
    OutOptions,
    model_config,
    model_from_args,
    source_from_args,
)
from jaxviz.jobs.config import NON_NEGATIVE, POSITIVE, option
from jaxviz.jobs.output import JobOutput
from jaxviz.jobs.scan import ScanJob
from jaxviz.methods.retrieval import drop_self, precision_at_k
from jaxviz.models.stage import stage_shapes
from jaxviz.runtime.memory import share_with_faiss

PARTS = ".parts"  # under --out: each process's own store in a multi-process run (then merged)


class FeatureConsumer:
    """Scan consumer: `layer`'s output flattened to [B, D] on device, cast to the store's dtype;
    on the host the good rows go to the feature store and the index (when given).

    Rows arrive in increasing source order; a row at or before the last one written is ignored,
    so a batch replayed after an interrupted checkpoint is never stored twice.

    Several processes: give each a `part` writer (its own folder, `part_folder`) and its
    `process_index`. Each process then stores its share of the rows there and fills no index;
    process 0 `merge`s the others' states and, in `finish`, interleaves every part in source
    order into `writer` and `index`: the same rows, shards and index, bitwise, as one process
    would write (the parts are read back shard by shard; only their [N] int64 source positions
    are held at once). `cleanup` removes the parts once the scan's checkpoint is gone.
    """

    def __init__(
        self,
        layer: str,
        source: Source,
        writer: FeatureWriter,
        index: KnnIndex | None,
        name: str = "features",
        part: FeatureWriter | None = None,
        process_index: int = 0,
    ):
        self.name, self.taps = name, (layer,)
        self.layer, self.source, self.writer, self.index = layer, source, writer, index
        self.part, self.process_index = part, process_index
        self._others: list[int] = []  # processes whose parts this one merges (process 0)
        self._last = -1  # last source index written

    @property
    def _store(self) -> FeatureWriter:
        """Where this process's rows go during the scan."""
        return self.writer if self.part is None else self.part

    def reduce(self, taps: dict[str, jax.Array], mask: jax.Array) -> jax.Array:
        f = taps[self.layer]
        return f.reshape(f.shape[0], -1).astype(jnp.dtype(self.writer.dtype))

    def update(self, batch: Batch, result: np.ndarray) -> None:
        keep = batch.mask & (batch.index > self._last)
        if not keep.any():
            return
        rows, index = result[keep], batch.index[keep]
        ids = [self.source.info(int(i)).id for i in index]
        if self.part is None:
            self._add(rows, index, batch.labels[keep], ids)
        else:
            self.part.add(rows, index, batch.labels[keep], ids)
        self._last = int(index[-1])

    def _add(self, rows: np.ndarray, index: np.ndarray, labels: np.ndarray, ids: list[str]):
        self.writer.add(rows, index, labels, ids)
        if self.index is not None:
            self.index.add(rows, index)

    def state(self) -> np.ndarray:
        """[3] int64 (shards on disk, rows, process index): everything so far is flushed to
        disk first."""
        w = self._store
        w.flush()
        return np.asarray([len(w.shards), w.count, self.process_index], np.int64)

    def load_state(self, state: np.ndarray | None) -> None:
        """Continue after `state`: keep its shards and re-add their rows to the index."""
        if state is None:
            return
        w = self._store
        w.restore(int(state[0]))
        store = FeatureStore(w.out.path(""))
        for f, index, _ in store.shards(len(w.shards)):
            if self.index is not None and self.part is None:
                self.index.add(f, index)
            self._last = int(index[-1])

    def merge(self, state: np.ndarray | None) -> None:
        """Take in another process's part (merged into the store and index by `finish`)."""
        if self.part is None:
            raise ValueError("merge needs a part writer (FeatureConsumer(part=...))")
        if state is not None and int(state[1]) > 0:
            self._others.append(int(state[2]))

    def _merge_parts(self) -> None:
        """Every process's part, interleaved in source order, into the store and the index."""
        self.part.close()
        root = self.writer.out
        stores = [
            FeatureStore(part_folder(root, k)) for k in sorted({self.process_index, *self._others})
        ]
        stores = [s for s in stores if len(s)]
        if not stores:
            return
        which = np.concatenate([np.full(len(s), j, np.int32) for j, s in enumerate(stores)])
        src = np.concatenate([s.index() for s in stores])
        order = np.argsort(src, kind="stable")  # each part is already in source order
        readers = [_ShardReader(s) for s in stores]
        step = self.writer.rows
        for a in range(0, len(order), step):
            w = which[order[a : a + step]]
            rows = np.empty((len(w), self.writer.dim), self.writer.dtype)
            index, labels = np.empty(len(w), np.int64), np.empty(len(w), np.int64)
            ids = np.empty(len(w), object)
            for j, r in enumerate(readers):
                sel = w == j
                rows[sel], index[sel], labels[sel], ids[sel] = r.take(int(sel.sum()))
            self._add(rows, index, labels, ids.tolist())

    def cleanup(self) -> None:
        """Remove the parts (after the scan's checkpoint, which refers to them, is gone)."""
        if self.part is not None:
            mine = part_folder(self.writer.out, self.process_index)
            shutil.rmtree(self.writer.out.path(PARTS) if self.process_index == 0 else mine, True)

    def finish(self) -> dict:
        if self.part is not None:
            self._merge_parts()
        meta = self.writer.close()
        if self.index is not None and self.index.ntotal:
            self.index.train()  # fewer vectors than the training sample: train on those
            self.index.save(self.writer.out)
        return {"count": meta["count"], "dim": meta["dim"], "dtype": meta["dtype"]}


def part_folder(out: JobOutput, process: int) -> Path:
    """The folder of process `process`'s part of a multi-process features job."""
    return out.path(f"{PARTS}/p{process}")


class _ShardReader:
    """A store's rows in order, read shard by shard: `take(n)` -> the next n rows."""

    def __init__(self, store: FeatureStore):
        self.store, self.k, self.pos = store, 0, 0
        self.buf = store.shard(0)

    def take(self, n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """(features, index, labels, ids) of the next n rows."""
        out = [tuple(a[:0] for a in self.buf)]
        while n > 0:
            left = len(self.buf[1]) - self.pos
            if left == 0:
                self.k, self.pos = self.k + 1, 0
                self.buf = self.store.shard(self.k)
                continue
            t = min(n, left)
            out.append(tuple(a[self.pos : self.pos + t] for a in self.buf))
            self.pos, n = self.pos + t, n - t
        return tuple(np.concatenate(parts) for parts in zip(*out, strict=True))


def self_precision(
    index: KnnIndex,
    store: FeatureStore,
    k: int,
    max_queries: int = 10_000,
) -> dict | None:
    """Leave-one-out precision@k of same-label neighbours over (up to max_queries evenly spaced)
    labelled rows of the store; None when the store has fewer than k + 1 labelled rows."""
    labels = store.labels()
    labelled = np.flatnonzero(labels >= 0)
    if len(labelled) <= k:
        return None
    rows = labelled[np.linspace(0, len(labelled) - 1, min(max_queries, len(labelled))).astype(int)]
    src = store.index()
    d, nb = index.search(store.vectors(rows), k + 1)
    nb, _ = drop_self(nb, d, src[rows], k)
    nb_labels = labels[store.rows_of(np.where(nb >= 0, nb, src[rows[0]]))].reshape(nb.shape)
    nb_labels = np.where(nb >= 0, nb_labels, -2)  # a missing neighbour never matches
    return {
        f"precision_at_{k}": precision_at_k(labels[rows], nb_labels),
        "queries": len(rows),
        "rule": "leave-one-out: share of each labelled row's k nearest other rows with its label",
    }


@dataclass(kw_only=True)
class FeaturesConfig(ModelOptions, DataOptions, OutOptions):
    layer: str | None = option(None, "stage whose output is the feature (default: the model's)")
    dtype_out: str = option(
        "float32",
        "dtype of the stored features (float16 halves disk and transfer)",
        choices=tuple(STORE_DTYPES),
    )
    index: str = option(
        "auto",
        "k-NN index: auto (Flat below 1M vectors, else IVF or IVF,PQ), Flat, IVF, IVF,PQ, "
        "a FAISS factory string such as 'IVF4096,PQ64', or none; on the GPUs when faiss-gpu "
        "sees any",
    )
    metric: str = option("l2", "distance", choices=tuple(METRICS))
    nprobe: int | None = option(
        None, "IVF cells searched per query (default: nlist/64, at least 8)", check=POSITIVE
    )
    eval_k: int = option(
        5,
        "report precision@k of same-label neighbours when labels are known (0: skip)",
        check=NON_NEGATIVE,
    )
    shard_mb: int = option(64, "MiB of features per shard file", check=POSITIVE)


def prepare(args: FeaturesConfig) -> ScanJob:
    """The job as one streaming pass (shareable with other scan jobs by the sweep)."""
    share_with_faiss(0 if args.index.lower() == "none" else gpu_count())  # before JAX starts
    model, params = model_from_args(args)
    layer = args.layer or model.features_stage
    model.index(layer)
    dim = math.prod(stage_shapes(model)[layer])
    source = source_from_args(args)
    n = len(source) if args.limit is None else min(args.limit, len(source))
    factory = None if args.index.lower() == "none" else choose_factory(args.index, n, dim)
    config = {
        **model_config(args),
        "layer": layer,
        "data": args.data,
        "batch_size": args.batch_size,
        "limit": args.limit,
        "dtype_out": args.dtype_out,
        "index": factory,
        "metric": args.metric,
        "nprobe": args.nprobe,
    }
    out = JobOutput(args.out, "features", config)
    meta = {
        "source": args.data,
        "class_names": list(source.class_names or []) or None,
        "layer": layer,
        "model": args.model,
        "random_init": args.random_init,
        "seed": args.seed,
        "compute_dtype": args.dtype,
        "metric": args.metric,
    }
    writer = FeatureWriter(out, dim, args.dtype_out, meta, shard_bytes=args.shard_mb << 20)
    index = None if factory is None else KnnIndex(dim, args.metric, factory, args.nprobe)
    part, me = None, jax.process_index()
    if jax.process_count() > 1:  # each process stores its share; process 0 merges them
        part_out = JobOutput(part_folder(out, me), "features-part", config)
        part = FeatureWriter(part_out, dim, args.dtype_out, shard_bytes=args.shard_mb << 20)
    consumer = FeatureConsumer(layer, source, writer, index, part=part, process_index=me)

    def complete(results: dict) -> None:
        res = results[consumer.name]
        if res["count"] == 0:
            raise UsageError(f"--data {args.data}: no usable images")
        out.results.update(res)
        extra = ""
        if index is not None:
            out.results["index"] = index.meta()
            t0 = time.time()
            prec = (
                self_precision(index, FeatureStore(out.out), args.eval_k) if args.eval_k else None
            )
            out.timing("eval_s", time.time() - t0)
            if prec is not None:
                out.results.update(prec)
                extra = f", precision@{args.eval_k} {prec[f'precision_at_{args.eval_k}']:.3f}"
        out.finish()
        print(f"{res['count']} x {dim} features of {layer}{extra} -> {args.out}")

    return ScanJob(
        model,
        params,
        source,
        out,
        [consumer],
        complete,
        args,
    )


def run(args: FeaturesConfig) -> int:
    return prepare(args).run()
