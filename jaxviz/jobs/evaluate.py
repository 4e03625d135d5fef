"""`jaxviz evaluate`: top-1 (and top-5) accuracy of a model on a labelled source.

One streaming pass (jobs/scan.py): the jitted forward pass, sharded over local devices, returns
each image's top-k class indices; the host compares them with the source's labels. Padding rows
and images without a label are not counted.

Writes into --out: manifest.json (results: top1, top5, images, per_class accuracy),
predictions.npy [N, 3] int64 (source index, label, predicted class) and confusion.npy
[num_classes, num_classes] int64 (rows: label, columns: prediction).
"""

from __future__ import annotations

from dataclasses import dataclass

import jax
import jax.numpy as jnp
import numpy as np

from jaxviz.data.labels import relabel
from jaxviz.data.pipeline import Batch
from jaxviz.data.sources import Source
from jaxviz.errors import UsageError
from jaxviz.jobs.common import (
    DataOptions,
    ModelOptions,
    OutOptions,
    model_config,
    model_from_args,
    source_from_args,
)
from jaxviz.jobs.output import JobOutput
from jaxviz.jobs.scan import ScanJob
from jaxviz.models.stage import Model


class TopK:
    """Scan consumer: top-k predictions from the logits, counted against the batch labels."""

    name = "evaluate"

    def __init__(self, logits_stage: str, num_classes: int, k: int = 5):
        self.taps = (logits_stage,)
        self.num_classes, self.k = num_classes, min(k, num_classes)
        self.confusion = np.zeros((num_classes, num_classes), np.int64)
        self.topk_correct = 0
        self.unlabelled = 0
        self.rows: list[np.ndarray] = []

    def reduce(self, taps: dict[str, jax.Array], mask: jax.Array) -> jax.Array:
        """[B, num_classes] logits -> [B, k] int32 class indices, best first."""
        return jax.lax.top_k(taps[self.taps[0]].astype(jnp.float32), self.k)[1]

    def update(self, batch: Batch, result: np.ndarray) -> None:
        labels = batch.labels
        valid = batch.mask & (labels >= 0)
        self.unlabelled += int((batch.mask & (labels < 0)).sum())
        if (labels[valid] >= self.num_classes).any():
            bad = int(labels[valid].max())
            raise UsageError(f"label {bad} is out of range for a {self.num_classes}-class model")
        top, labels = result[valid], labels[valid]
        pred = top[:, 0].astype(np.int64)
        np.add.at(self.confusion, (labels, pred), 1)
        self.topk_correct += int((top == labels[:, None]).any(axis=1).sum())
        self.rows.append(np.stack([batch.index[valid], labels, pred], axis=1))

    def state(self) -> dict[str, np.ndarray]:
        """Counters and prediction rows as arrays (checkpoints, merging across processes)."""
        rows = np.concatenate(self.rows) if self.rows else np.zeros((0, 3), np.int64)
        return {
            "confusion": self.confusion.copy(),
            "rows": rows,
            "counts": np.asarray([self.topk_correct, self.unlabelled], np.int64),
        }

    def load_state(self, state: dict | None) -> None:
        if state is None:
            return
        self.confusion = np.array(state["confusion"])
        self.rows = [np.array(state["rows"])]
        self.topk_correct, self.unlabelled = (int(v) for v in state["counts"])

    def merge(self, state: dict | None) -> None:
        """Add another process's counters; rows stay ordered by source index."""
        if state is None:
            return
        self.confusion += state["confusion"]
        rows = np.concatenate([*self.rows, state["rows"]])
        self.rows = [rows[np.argsort(rows[:, 0], kind="stable")]]
        self.topk_correct += int(state["counts"][0])
        self.unlabelled += int(state["counts"][1])

    def finish(self) -> dict:
        n = int(self.confusion.sum())
        per_class = self.confusion.diagonal() / np.maximum(self.confusion.sum(axis=1), 1)
        return {
            "images": n,
            "unlabelled": self.unlabelled,
            "top1": float(self.confusion.trace() / n) if n else float("nan"),
            f"top{self.k}": float(self.topk_correct / n) if n else float("nan"),
            "per_class": per_class.tolist(),
        }


@dataclass(kw_only=True)
class EvaluateConfig(ModelOptions, DataOptions, OutOptions):
    """`jaxviz evaluate`: the shared model, data and output options only."""


def labelled_source(model: Model, source: Source, spec: str) -> Source:
    """The source of `spec` with its labels in the model's class order (named classes are
    mapped by name, in any order; items of classes the model lacks are skipped); UsageError
    unless it has labels meant for this model's classes."""
    source = relabel(source, model.class_names)
    labelled = source.class_names is not None or any(
        source.info(i).label is not None for i in range(min(len(source), 16))
    )
    if len(source) == 0 or not labelled:
        raise UsageError(
            f"--data {spec} has no labels; evaluate needs a labelled source "
            "(shapes:N[:SEED], class subfolders, a labels file, or an .npz with a 'labels' array)"
        )
    return source


def prepare(args: EvaluateConfig) -> ScanJob:
    """The job as one streaming pass (shareable with other scan jobs by the sweep)."""
    model, params = model_from_args(args)
    source = labelled_source(model, source_from_args(args), args.data)
    config = {
        **model_config(args),
        "data": args.data,
        "batch_size": args.batch_size,
        "limit": args.limit,
    }
    out = JobOutput(args.out, "evaluate", config)
    top = TopK(model.stages[-1].name, model.num_classes)

    def complete(results: dict) -> None:
        res = results[top.name]
        if res["images"] == 0:
            raise UsageError(f"--data {args.data}: no usable labelled images")
        rows = np.concatenate(top.rows) if top.rows else np.zeros((0, 3), np.int64)
        out.npy("predictions.npy", rows.astype(np.int64))
        out.npy("confusion.npy", top.confusion)
        out.results.update(res)
        out.finish()
        k = top.k
        print(
            f"{model.name} on {args.data}: top-1 {res['top1']:.4f}, top-{k} "
            f"{res[f'top{k}']:.4f} ({res['images']} images); wrote {out.path('manifest.json')}"
        )

    return ScanJob(
        model,
        params,
        source,
        out,
        [top],
        complete,
        args,
    )


def run(args: EvaluateConfig) -> int:
    return prepare(args).run()
