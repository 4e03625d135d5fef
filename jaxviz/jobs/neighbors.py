"""`jaxviz neighbors`: the k nearest images of each query in an index written by `jaxviz features`.

Queries are either rows already in the index (`--query ids:3,17,42`: source positions; the query
itself is left out of its neighbours) or a data source (`--query DIR|shapes:N|...`), embedded with
the model and layer named in the index's features.json; no model is loaded for `ids:` queries.

Writes into --out: query_NNNN.png per query (the query first, then its neighbours nearest first,
captioned with distance and label), neighbors.json (per query: its id and label; per neighbour:
source position, id, label, distance), neighbor_index.npy [Q, k] int64 (source positions, -1
where fewer than k exist) and distances.npy [Q, k] float32, manifest.json (precision@k when
labels are known).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

from jaxviz.data.decode import BadInput
from jaxviz.data.sources import Source, open_source
from jaxviz.errors import UsageError
from jaxviz.index.feature_store import FeatureStore, FeatureWriter
from jaxviz.index.knn import KnnIndex, gpu_count
from jaxviz.jobs.common import DTYPES, OutOptions
from jaxviz.jobs.config import POSITIVE, option
from jaxviz.jobs.features import FeatureConsumer
from jaxviz.jobs.output import JobOutput
from jaxviz.jobs.scan import scan
from jaxviz.methods.retrieval import drop_self, precision_at_k
from jaxviz.models.stage import cast_params
from jaxviz.models.zoo import load_model
from jaxviz.render.grid import caption, tile_grid
from jaxviz.runtime.memory import share_with_faiss


@dataclass(kw_only=True)
class NeighborsConfig(OutOptions):
    index: str = option(help="output folder of `jaxviz features`")
    query: str = option(
        help="ids:3,17,42 (source positions already in the index) or a data source "
        "(directory, list file, glob, .npy/.npz, shapes:N[:SEED], samples) to embed with the "
        "index's model"
    )
    k: int = option(5, "neighbours per query (at most the index's other vectors)", check=POSITIVE)
    nprobe: int | None = option(
        None, "IVF cells searched per query (default: the index's)", check=POSITIVE
    )
    thumb: int = option(96, "tile side in the grids, px", check=POSITIVE)
    batch_size: int = option(32, "query images per batch", check=POSITIVE)
    limit: int | None = option(None, "use at most this many query images", check=POSITIVE)


def parse_ids(spec: str) -> np.ndarray:
    """'ids:3,17,42' -> [3, 17, 42] int64."""
    try:
        ids = [int(t) for t in spec.removeprefix("ids:").split(",") if t.strip()]
    except ValueError:
        raise UsageError(f"bad --query {spec!r}; expected ids:3,17,42 (source positions)") from None
    if not ids:
        raise UsageError("--query ids: names no ids")
    return np.asarray(ids, np.int64)


def embed_queries(
    meta: dict, query: Source, out: JobOutput, batch_size: int, limit: int | None
) -> FeatureStore:
    """Features of the query source with the index's model and layer (stored under out/query)."""
    model, params = load_model(meta["model"], meta["random_init"], meta["seed"])
    if meta["compute_dtype"] != "float32":
        params = cast_params(params, DTYPES[meta["compute_dtype"]])
    sub = JobOutput(out.out / "query", "neighbors-query", {})
    writer = FeatureWriter(sub, meta["dim"], "float32")
    consumer = FeatureConsumer(meta["layer"], query, writer, None)
    scan(
        model,
        params,
        query,
        [consumer],
        batch_size=batch_size,
        out=out,
        stop=limit,
        dtype=DTYPES[meta["compute_dtype"]],
        desc="embed queries",
    )
    return FeatureStore(sub.out)


def thumbnail(source: Source, i: int, size: int) -> np.ndarray:
    """Image i of `source` center-cropped to [size, size, 3] uint8 (grey if unreadable)."""
    try:
        img = ImageOps.fit(source.load(int(i)), (size, size), Image.BILINEAR)
        return np.asarray(img, np.uint8)
    except BadInput:
        return np.full((size, size, 3), 128, np.uint8)


def label_name(label: int, names: list[str] | None) -> str:
    if label < 0:
        return "?"
    return names[label] if names and label < len(names) else str(label)


def run(args: NeighborsConfig) -> int:
    share_with_faiss(gpu_count())  # before JAX starts: the index gets its share of the GPUs
    store = FeatureStore(args.index)
    index = KnnIndex.load(args.index)
    meta = store.meta
    base = open_source(meta["source"])
    names = meta.get("class_names")
    from_ids = args.query.startswith("ids:")
    same = from_ids or Path(args.query) == Path(meta["source"]) or args.query == meta["source"]
    most = index.ntotal - (1 if same else 0)  # a query in the index is not its own neighbour
    if args.k > most:
        raise UsageError(
            f"--k {args.k} is more than the {most} vectors of --index {args.index} a query can "
            "have as neighbours"
        )
    out = JobOutput(args.out, "neighbors", {"index": args.index, "query": args.query, "k": args.k})
    if from_ids:
        qsrc, qpos = base, parse_ids(args.query)
        qvec = store.vectors(store.rows_of(qpos))
        qlabels = store.labels()[store.rows_of(qpos)]
        qids = [base.info(int(i)).id for i in qpos]
    else:
        qsrc = open_source(args.query)
        qstore = embed_queries(meta, qsrc, out, args.batch_size, args.limit)
        qpos, qvec, qlabels, qids = qstore.index(), qstore.features(), qstore.labels(), qstore.ids()
        if len(qpos) == 0:
            raise UsageError(f"--query {args.query}: no usable images")
    d, nb = index.search(qvec, args.k + 1 if same else args.k, nprobe=args.nprobe)
    if same:  # a query that is in the index is not its own neighbour
        nb, d = drop_self(nb, d, qpos, args.k)
    labels = store.labels()
    nb_labels = _labels_of(store, labels, nb)
    write_outputs(out, args, qsrc, base, qpos, qids, qlabels, nb, d, nb_labels, names)
    out.finish()
    print(f"{len(qpos)} queries x {args.k} neighbours -> {args.out}")
    return 0


def _labels_of(store: FeatureStore, labels: np.ndarray, nb: np.ndarray) -> np.ndarray:
    """[Q, k] labels of neighbour source positions (-1 where missing)."""
    found = nb >= 0
    out = np.full(nb.shape, -1, np.int64)
    out[found] = labels[store.rows_of(nb[found])]
    return out


def write_outputs(
    out: JobOutput,
    args: NeighborsConfig,
    qsrc: Source,
    base: Source,
    qpos: np.ndarray,
    qids,
    qlabels: np.ndarray,
    nb: np.ndarray,
    d: np.ndarray,
    nb_labels: np.ndarray,
    names: list[str] | None,
) -> None:
    """Grids, neighbors.json, arrays and the precision@k summary into `out`."""
    out.npy("neighbor_index.npy", nb)
    out.npy("distances.npy", d)
    width = max(4, int(math.log10(max(len(qpos), 1))) + 1)
    records = []
    for q in range(len(qpos)):
        tiles = [
            caption(thumbnail(qsrc, qpos[q], args.thumb), f"query {label_name(qlabels[q], names)}")
        ]
        tiles += [
            caption(
                thumbnail(base, nb[q, j], args.thumb),
                f"{d[q, j]:.3g} {label_name(nb_labels[q, j], names)}",
            )
            for j in range(nb.shape[1])
            if nb[q, j] >= 0
        ]
        png = f"query_{q:0{width}d}.png"
        out.png(png, tile_grid(np.stack(tiles), ncols=len(tiles), border=2))
        records.append(
            {
                "query": {"index": int(qpos[q]), "id": str(qids[q]), "label": int(qlabels[q])},
                "png": png,
                "neighbors": [
                    {
                        "index": int(nb[q, j]),
                        "id": base.info(int(nb[q, j])).id,
                        "label": int(nb_labels[q, j]),
                        "distance": float(d[q, j]),
                    }
                    for j in range(nb.shape[1])
                    if nb[q, j] >= 0
                ],
            }
        )
    out.json("neighbors.json", records)
    out.count("queries", len(qpos))
    known = qlabels >= 0
    if known.any():
        out.results[f"precision_at_{args.k}"] = precision_at_k(qlabels[known], nb_labels[known])
