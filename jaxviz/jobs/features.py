"""`jaxviz features`: a layer's features of a whole dataset, streamed to disk and into a k-NN index.

One streaming pass (jobs/scan.py; shareable with patches and activations in a sweep) runs the
model to `--layer` (default: the model's features stage, e.g. AlexNet fc7) and hands each batch's
flattened features to `FeatureConsumer`, which appends the good rows to sharded .npy files
(index/feature_store.py) and to a FAISS index (index/knn.py) as they come. Memory stays flat: one
shard buffer, one batch, and the index itself.

Writes into --out: features.json (data source spec, model spec, layer, dim, dtype, shards),
shards/{features,index,labels,ids}-NNNNN.npy, index.faiss + ids.npy + knn.json (the index, its
ids are source positions), manifest.json with precision@k of same-label neighbours when the
source has labels. `jaxviz neighbors --index OUT` and `jaxviz tsne` read it without the model.
"""

from __future__ import annotations

import argparse
import math
import time

import jax
import jax.numpy as jnp
import numpy as np

from jaxviz.data.pipeline import Batch
from jaxviz.data.sources import Source, open_source
from jaxviz.errors import UsageError
from jaxviz.index.feature_store import DTYPES as STORE_DTYPES
from jaxviz.index.feature_store import FeatureStore, FeatureWriter
from jaxviz.index.knn import METRICS, KnnIndex, choose_factory
from jaxviz.jobs.common import (
    add_data_args,
    add_model_args,
    add_out_arg,
    model_config,
    model_from_args,
)
from jaxviz.jobs.output import JobOutput
from jaxviz.jobs.scan import ScanJob
from jaxviz.methods.retrieval import drop_self, precision_at_k
from jaxviz.models.stage import stage_shapes


class FeatureConsumer:
    """Scan consumer: `layer`'s output flattened to [B, D] on device, cast to the store's dtype;
    on the host the good rows go to the feature store and the index (when given).

    Rows arrive in increasing source order; a row at or before the last one written is ignored,
    so a batch replayed after an interrupted checkpoint is never stored twice.
    """

    def __init__(
        self,
        layer: str,
        source: Source,
        writer: FeatureWriter,
        index: KnnIndex | None,
        name: str = "features",
    ):
        self.name, self.taps = name, (layer,)
        self.layer, self.source, self.writer, self.index = layer, source, writer, index
        self._last = -1  # last source index written

    def reduce(self, taps: dict[str, jax.Array], mask: jax.Array) -> jax.Array:
        f = taps[self.layer]
        return f.reshape(f.shape[0], -1).astype(jnp.dtype(self.writer.dtype))

    def update(self, batch: Batch, result: np.ndarray) -> None:
        keep = batch.mask & (batch.index > self._last)
        if not keep.any():
            return
        rows, index = result[keep], batch.index[keep]
        ids = [self.source.info(int(i)).id for i in index]
        self.writer.add(rows, index, batch.labels[keep], ids)
        if self.index is not None:
            self.index.add(rows, index)
        self._last = int(index[-1])

    def state(self) -> np.ndarray:
        """[2] int64 (shards on disk, rows): everything so far is flushed to disk first."""
        self.writer.flush()
        return np.asarray([len(self.writer.shards), self.writer.count], np.int64)

    def load_state(self, state: np.ndarray | None) -> None:
        """Continue after `state`: keep its shards and re-add their rows to the index."""
        if state is None:
            return
        self.writer.restore(int(state[0]))
        store = FeatureStore(self.writer.out.path(""))
        for f, index, _ in store.shards(len(self.writer.shards)):
            if self.index is not None:
                self.index.add(f, index)
            self._last = int(index[-1])

    def finish(self) -> dict:
        meta = self.writer.close()
        if self.index is not None and self.index.ntotal:
            self.index.train()  # fewer vectors than the training sample: train on those
            self.index.save(self.writer.out)
        return {"count": meta["count"], "dim": meta["dim"], "dtype": meta["dtype"]}


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


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_model_args(p)
    p.add_argument(
        "--layer", default=None, help="stage whose output is the feature (default: the model's)"
    )
    add_data_args(p)
    add_out_arg(p, "out/features")
    p.add_argument(
        "--dtype-out",
        choices=STORE_DTYPES,
        default="float32",
        help="dtype of the stored features (default: float32; float16 halves disk and transfer)",
    )
    p.add_argument(
        "--index",
        default="auto",
        help="k-NN index: auto (Flat below 1M vectors, else IVF or IVF,PQ), Flat, IVF, IVF,PQ, "
        "a FAISS factory string such as 'IVF4096,PQ64', or none (default: auto); on the GPUs "
        "when faiss-gpu sees any",
    )
    p.add_argument("--metric", choices=METRICS, default="l2", help="distance (default: l2)")
    p.add_argument(
        "--nprobe",
        type=int,
        default=None,
        help="IVF cells searched per query (default: nlist/64, at least 8)",
    )
    p.add_argument(
        "--eval-k",
        type=int,
        default=5,
        help="report precision@k of same-label neighbours when labels are known (0: skip)",
    )
    p.add_argument(
        "--shard-mb", type=int, default=64, help="MiB of features per shard file (default: 64)"
    )


def prepare(args: argparse.Namespace) -> ScanJob:
    """The job as one streaming pass (shareable with other scan jobs by the sweep)."""
    model, params = model_from_args(args)
    layer = args.layer or model.features_stage
    model.index(layer)
    dim = math.prod(stage_shapes(model)[layer])
    source = open_source(args.data)
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
    consumer = FeatureConsumer(layer, source, writer, index)

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


def run(args: argparse.Namespace) -> int:
    return prepare(args).run()
