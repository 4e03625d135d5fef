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

import math
import time
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageOps

from jaxviz.data.decode import BadInput
from jaxviz.data.sources import Source, open_source
from jaxviz.errors import UsageError
from jaxviz.index.feature_store import FeatureStore
from jaxviz.index.mosaic import assignment_cost, grid_assignment
from jaxviz.index.quality import knn_accuracy, trustworthiness
from jaxviz.index.tsne import BACKENDS, MODES, tsne
from jaxviz.jobs.common import OutOptions
from jaxviz.jobs.config import NON_NEGATIVE, POSITIVE, as_dict, option
from jaxviz.jobs.output import JobOutput
from jaxviz.render.scatter import mosaic_image, scatter_plot


@dataclass(kw_only=True)
class TsneConfig(OutOptions):
    features: str = option(help="output folder of `jaxviz features`")
    backend: str = option(
        "auto",
        "jax (this package's engine), opentsne, tsnecuda, sklearn, or auto: jax on an "
        "accelerator, openTSNE on CPU",
        choices=tuple(BACKENDS),
    )
    mode: str = option(
        "auto",
        "repulsion: exact (tiled, O(N^2)), interpolated (FFT, O(N)), auto (exact up to 5000 "
        "points)",
        choices=tuple(MODES),
    )
    perplexity: float = option(30.0, "effective number of neighbours of each point", check=POSITIVE)
    n_iter: int = option(500, "iterations after early exaggeration", check=POSITIVE)
    early_exaggeration_iter: int = option(250, "exaggerated iterations", check=NON_NEGATIVE)
    seed: int = option(0, "seed of the initialization")
    limit: int | None = option(None, "embed only the first N rows", check=POSITIVE)
    data: str | None = option(
        None, "data source for the mosaic thumbnails (default: the one in features.json)"
    )
    mosaic_grid: int | None = option(
        None,
        "mosaic cells per side (default: ceil(sqrt(N)), at most 48); 0 = no mosaic",
        check=NON_NEGATIVE,
    )
    thumb: int = option(32, "mosaic cell side in px", check=POSITIVE)
    trust_sample: int = option(
        5000, "points used for trustworthiness above this many", check=POSITIVE
    )


def run(args: TsneConfig) -> int:
    store = FeatureStore(args.features)
    n = len(store) if args.limit is None else min(args.limit, len(store))
    if n <= 3 * args.perplexity:
        raise UsageError(
            f"--features {args.features}: {n} rows; t-SNE with perplexity {args.perplexity:g} "
            f"needs more than {3 * args.perplexity:g}"
        )
    out = JobOutput(args.out, "tsne", as_dict(args))
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
