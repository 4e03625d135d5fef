"""`jaxviz tsne`: t-SNE of the features written by `jaxviz features`, as a scatter plot by label and
an image-grid mosaic (Karpathy's "t-SNE of CNN codes").

Reads the feature store (features.json + shards) in --features; images for the mosaic are re-read
by source position from the data source named in its features.json (or --data). Writes into --out:
coords.npy [N, 2] float32 (row order of the store), source_index.npy [N] int64, labels.npy [N]
int64, scatter.png, mosaic.png, mosaic_cells.npy [rows * cols] int64 (store row shown in each cell,
-1 empty), manifest.json with KL divergence, trustworthiness (k=10, on a sample for large N) and
the k-NN label accuracy in the embedding.
"""

from __future__ import annotations

import argparse
import math
import time

import numpy as np
from PIL import Image, ImageOps

from jaxviz.data.decode import BadInput
from jaxviz.data.sources import Source, open_source
from jaxviz.errors import UsageError
from jaxviz.index.feature_store import FeatureStore
from jaxviz.index.mosaic import assignment_cost, grid_assignment
from jaxviz.index.quality import knn_accuracy, trustworthiness
from jaxviz.index.tsne import BACKENDS, MODES, tsne
from jaxviz.jobs.common import add_out_arg
from jaxviz.jobs.output import JobOutput
from jaxviz.render.scatter import mosaic_image, scatter_plot


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--features", required=True, help="output folder of `jaxviz features`")
    p.add_argument(
        "--backend",
        choices=BACKENDS,
        default="auto",
        help="jax (this package's engine), opentsne, tsnecuda, sklearn, or auto: jax on an "
        "accelerator, openTSNE on CPU (default: auto)",
    )
    p.add_argument(
        "--mode",
        choices=MODES,
        default="auto",
        help="repulsion: exact (tiled, O(N^2)), interpolated (FFT, O(N)), auto (exact up to 5000 "
        "points) (default: auto)",
    )
    p.add_argument("--perplexity", type=float, default=30.0, help="default: 30")
    p.add_argument(
        "--n-iter", type=int, default=500, help="iterations after early exaggeration (default 500)"
    )
    p.add_argument(
        "--early-exaggeration-iter", type=int, default=250, help="exaggerated iterations (250)"
    )
    p.add_argument("--seed", type=int, default=0, help="seed of the initialization (default: 0)")
    p.add_argument("--limit", type=int, default=None, help="embed only the first N rows")
    p.add_argument(
        "--data",
        default=None,
        help="data source for the mosaic thumbnails (default: the one in features.json)",
    )
    p.add_argument(
        "--mosaic-grid",
        type=int,
        default=None,
        help="mosaic cells per side (default: ceil(sqrt(N)), at most 48); 0 = no mosaic",
    )
    p.add_argument("--thumb", type=int, default=32, help="mosaic cell side in px (default: 32)")
    p.add_argument(
        "--trust-sample",
        type=int,
        default=5000,
        help="points used for trustworthiness above this many (default: 5000)",
    )
    add_out_arg(p, "out/tsne")


def run(args: argparse.Namespace) -> int:
    store = FeatureStore(args.features)
    n = len(store) if args.limit is None else min(args.limit, len(store))
    if n <= 3 * args.perplexity:
        raise UsageError(
            f"--features {args.features}: {n} rows; t-SNE with perplexity {args.perplexity:g} "
            f"needs more than {3 * args.perplexity:g}"
        )
    config = {k: v for k, v in vars(args).items() if k != "func"}
    out = JobOutput(args.out, "tsne", config)
    t0 = time.time()
    x = store.features()[:n]
    labels = store.labels()[:n]
    src_index = store.index()[:n]
    class_names = store.meta.get("class_names")
    out.timing("load_s", time.time() - t0)

    coords, info = tsne(
        x,
        backend=args.backend,
        perplexity=args.perplexity,
        n_iter=args.n_iter,
        early_exaggeration_iter=args.early_exaggeration_iter,
        seed=args.seed,
        mode=args.mode,
    )
    out.timing("tsne_s", info["total_s"])
    out.npy("coords.npy", coords)
    out.npy("source_index.npy", src_index)
    out.npy("labels.npy", labels)

    t0 = time.time()
    trust, used = trustworthiness(x, coords, k=10, max_n=args.trust_sample, seed=args.seed)
    acc = knn_accuracy(coords, labels, k=10)
    out.timing("quality_s", time.time() - t0)
    out.results.update(
        {
            "n": n,
            "dim": int(x.shape[1]),
            "tsne": info,
            "kl_divergence": info.get("kl"),
            "trustworthiness_k10": trust,
            "trustworthiness_points": used,
            "knn_label_accuracy_k10": acc,
        }
    )
    layer = store.meta.get("layer", "features")
    out.png(
        "scatter.png",
        scatter_plot(
            coords, labels, class_names, f"t-SNE of {layer} ({n} points, {info['backend']})"
        ),
    )

    grid = args.mosaic_grid if args.mosaic_grid is not None else min(48, math.ceil(math.sqrt(n)))
    if grid > 0:
        t0 = time.time()
        data = args.data or store.meta.get("source")
        if not data:
            raise UsageError("features.json names no data source; pass --data for the mosaic")
        cells = grid_assignment(coords, grid, grid)
        tiles = _thumbnails(open_source(data), src_index, store.ids()[:n], cells, args.thumb, out)
        out.png("mosaic.png", mosaic_image(tiles, cells >= 0, grid))
        out.npy("mosaic_cells.npy", cells)
        out.results["mosaic"] = {
            "grid": grid,
            "thumb": args.thumb,
            "shown": int(np.sum(cells >= 0)),
            "cost": assignment_cost(coords, cells, grid, grid),
        }
        out.timing("mosaic_s", time.time() - t0)
    out.count("points", n)
    out.finish()
    print(
        f"t-SNE of {n} x {x.shape[1]} ({info['backend']}): KL {info.get('kl')}, trustworthiness "
        f"{trust:.4f}, kNN label accuracy {acc} -> {args.out}"
    )
    return 0


def _thumbnails(
    source: Source, src_index: np.ndarray, ids: np.ndarray, cells: np.ndarray, size: int, out
) -> np.ndarray:
    """[len(cells), size, size, 3] uint8: the centre-cropped image of each cell's row (grey where
    unreadable, recorded with out.skip; anything for empty cells)."""
    tiles = np.full((len(cells), size, size, 3), 128, np.uint8)
    for c in np.flatnonzero(cells >= 0):
        row = cells[c]
        try:
            img = source.load(int(src_index[row]))
            tiles[c] = np.asarray(ImageOps.fit(img, (size, size), Image.BILINEAR), np.uint8)
        except BadInput as e:
            out.skip(str(ids[row]), f"mosaic thumbnail: {e}")
    return tiles
