"""`jaxviz classify`: top-k classes with names and probabilities for every image of a source.

Writes predictions.json (one record per image: index, id, label if known, top-k classes with
names and softmax probabilities), top_classes.npy [N, k] int32 and top_probs.npy [N, k] float32
(rows in the order of predictions.json), and, when the source has labels, top-1/top-k accuracy in
the manifest. The forward pass is one jitted, device-sharded step per batch (jobs/scan.py).
"""

from __future__ import annotations

from dataclasses import dataclass

import jax
import numpy as np

from jaxviz.data.pipeline import Batch
from jaxviz.data.sources import Source
from jaxviz.errors import UsageError
from jaxviz.jobs.common import (
    DTYPES,
    DataOptions,
    ModelOptions,
    OutOptions,
    model_config,
    model_from_args,
    source_from_args,
)
from jaxviz.jobs.config import POSITIVE, option, redefault
from jaxviz.jobs.output import JobOutput
from jaxviz.jobs.scan import scan
from jaxviz.models.stage import Model


class TopK:
    """Scan consumer: softmax over the logits and the k most probable classes, on device."""

    def __init__(self, k: int, model: Model, source: Source):
        self.name, self.taps = "classify", ("logits",)
        self.k, self.model, self.source = k, model, source
        self.records: list[dict] = []
        self.classes: list[np.ndarray] = []
        self.probs: list[np.ndarray] = []

    def reduce(self, taps: dict[str, jax.Array], mask: jax.Array) -> tuple[jax.Array, jax.Array]:
        """logits [B, K] -> (probabilities [B, k] float32, classes [B, k] int32), best first."""
        probs = jax.nn.softmax(taps["logits"].astype(np.float32), axis=-1)
        return jax.lax.top_k(probs, self.k)

    def update(self, batch: Batch, result: tuple[np.ndarray, np.ndarray]) -> None:
        probs, classes = result
        for row in np.flatnonzero(batch.mask):
            i = int(batch.index[row])
            label = int(batch.labels[row])
            top = [
                {"class": int(c), "name": self.model.class_name(int(c)), "prob": float(p)}
                for c, p in zip(classes[row], probs[row], strict=True)
            ]
            rec = {"index": i, "id": self.source.info(i).id, "top": top}
            if label >= 0:
                rec["label"] = label
            self.records.append(rec)
            self.classes.append(classes[row].astype(np.int32))
            self.probs.append(probs[row].astype(np.float32))

    def finish(self) -> dict:
        labelled = [r for r in self.records if "label" in r]
        res: dict = {"images": len(self.records), "k": self.k}
        if labelled:
            res["top1_accuracy"] = float(
                np.mean([r["top"][0]["class"] == r["label"] for r in labelled])
            )
            res[f"top{self.k}_accuracy"] = float(
                np.mean([r["label"] in [t["class"] for t in r["top"]] for r in labelled])
            )
            res["labelled"] = len(labelled)
        return res


@dataclass(kw_only=True)
class ClassifyConfig(ModelOptions, DataOptions, OutOptions):
    model: str = redefault(ModelOptions, "model", "efficientnet_lite0")
    top: int = option(
        5, "classes to report per image (at most the model's classes)", check=POSITIVE
    )


def run(args: ClassifyConfig) -> int:
    model, params = model_from_args(args)
    if args.top > model.num_classes:
        raise UsageError(f"--top must be at most {model.num_classes} (the classes), got {args.top}")
    source = source_from_args(args)
    config = {**model_config(args), "data": args.data, "top": args.top}
    out = JobOutput(args.out, "classify", config)
    topk = TopK(args.top, model, source)
    out.results.update(
        scan(
            model,
            params,
            source,
            [topk],
            batch_size=args.batch_size,
            out=out,
            stop=args.limit,
            dtype=DTYPES[args.dtype],
            desc="classify",
        )
    )
    out.json("predictions.json", topk.records)
    k = args.top
    out.npy("top_classes.npy", np.stack(topk.classes) if topk.classes else np.zeros((0, k), int))
    out.npy("top_probs.npy", np.stack(topk.probs) if topk.probs else np.zeros((0, k)))
    out.finish()
    for r in topk.records[:10]:
        best = r["top"][0]
        print(f"{r['id']}: {best['name']} ({best['prob']:.3f})")
    print(f"{len(topk.records)} images, {len(out.skipped)} skipped -> {args.out}")
    return 0
