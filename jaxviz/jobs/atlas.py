"""`jaxviz atlas`: a browsable microscope of every channel of spatial stages over a dataset.

ONE streaming pass (jobs/scan.py; the sweep can share it) feeds, for every chosen stage, a
PatchMiner (top-k units per channel, methods/patches.py) and a ChannelStats, plus the features
job's consumer for the model's features stage (its store and k-NN index under --out/features).
Then, per stage: the winners' receptive fields are cropped (jobs.patches.cut_patches) and their
images drawn with the field boxed; every channel gets a feature visualization, many channels
optimized as one batch in one compiled loop (methods/feature_viz.py), started from the mean of
its top images. The features stage gets a t-SNE mosaic and neighbour grids (the tsne and
neighbors jobs, run on --out/features). A static site ties it together (render/atlas.py).

Writes into --out: index.html (the model: stages, shapes, receptive fields, features); per stage
LAYER/index.html (sortable channel cards), LAYER/cNNNN.html (one channel),
LAYER/cNNNN_{viz,top,patches,images}.png, LAYER/top_{values,image,y,x}.npy [C, k],
LAYER/top_boxes.npy [C, k, 4], LAYER/channel_{mean,std,max,frac_positive}.npy [C],
LAYER/feature_viz.npy [C, H, W, 3] float32 in [0, 1] with LAYER/feature_viz.json (its settings:
a rerun with the same settings reuses it), LAYER/channels.json; features/, tsne/, neighbors/
(those jobs' outputs); manifest.json. Resumable: the pass checkpoints, finished feature
visualizations are kept.
"""

from __future__ import annotations

import functools
import hashlib
import itertools
import json
import time
from dataclasses import dataclass
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from jaxviz.data.decode import BadInput
from jaxviz.data.sources import Source
from jaxviz.errors import UsageError
from jaxviz.jobs import features, neighbors, tsne
from jaxviz.jobs.channels import STATS
from jaxviz.jobs.common import (
    DataOptions,
    ModelOptions,
    OutOptions,
    model_config,
    model_from_args,
    shared_models,
    source_from_args,
)
from jaxviz.jobs.config import NON_NEGATIVE, POSITIVE, option
from jaxviz.jobs.output import JobOutput, atomic_write
from jaxviz.jobs.patches import cut_patches
from jaxviz.jobs.registry import job
from jaxviz.jobs.scan import ScanJob
from jaxviz.methods.channel_stats import ChannelStats
from jaxviz.methods.feature_viz import channel_visualization
from jaxviz.methods.patches import PatchMiner
from jaxviz.methods.synthesis import DEFAULT_ASCENT, Ascent
from jaxviz.models.stage import Model, Params, receptive_fields, stage_shapes
from jaxviz.render.atlas import boxed, layer_pages, overview_page
from jaxviz.render.grid import tile_grid, upscale
from jaxviz.render.patches import patch_grid
from jaxviz.runtime.devices import batch_sharding, local_mesh, replicated, round_up
from jaxviz.runtime.progress import Progress

THUMB = 64  # px: top patch thumbnails of the layer pages
VIZ_PX = 192  # px: feature visualizations are upscaled (nearest) to at least this
IMAGE_PX = 128  # px: the full images with the box drawn


@dataclass(kw_only=True)
class AtlasConfig(ModelOptions, DataOptions, OutOptions):
    layers: str = option("all", "comma-separated spatial stages, or 'all' (every spatial stage)")
    top: int = option(9, "patches per channel", check=POSITIVE)
    max_channels: int = option(
        0, "only the first N channels of each stage, 0 for all", check=NON_NEGATIVE
    )
    per_image_max: bool = option(True, "at most one patch per image and channel")
    viz_steps: int = option(
        DEFAULT_ASCENT.steps,
        "gradient-ascent steps of the feature visualizations, 0 for none",
        check=NON_NEGATIVE,
    )
    viz_lr: float = option(DEFAULT_ASCENT.lr, "their step size", check=POSITIVE)
    viz_batch: int = option(64, "channels optimized together in one compiled loop", check=POSITIVE)
    viz_start: str = option(
        "top",
        "start from the mean of the channel's top images (Nguyen 2016) or from noise (a ReLU "
        "channel silent on the noise never moves)",
        choices=("top", "noise"),
    )
    viz_seed: int = option(0, "noise/jitter seed")
    tsne_points: int = option(2000, "rows of the t-SNE", check=NON_NEGATIVE)
    queries: int = option(6, "neighbour grids of sample images", check=NON_NEGATIVE)


def spatial_layers(model: Model, spec: str) -> list[str]:
    """'all' -> every stage with a receptive field and an [h, w, C] map; else the listed ones,
    each checked."""
    rfs, shapes = receptive_fields(model), stage_shapes(model)
    spatial = [n for n in model.stage_names if rfs[n] is not None and len(shapes[n]) == 3]
    if spec.strip() == "all":
        return spatial
    layers = [s.strip() for s in spec.split(",") if s.strip()]
    for name in layers:
        model.index(name)
        if name not in spatial:
            raise UsageError(
                f"--layers: {name} of {model.name} has no spatial map (output {shapes[name]}); "
                f"choose from: {', '.join(spatial)}"
            )
    if len(set(layers)) != len(layers) or not layers:
        raise UsageError(f"--layers {spec!r}: name each stage once")
    return layers


def _sub_config(name: str, values: dict):
    """Job `name`'s config from values, checked as a study's table is."""
    return job(name).from_values(values, f"atlas: its {name} job")


def _model_values(args: AtlasConfig) -> dict:
    return {k: getattr(args, k) for k in ("model", "seed", "dtype", "random_init")}


def viz_config(args: AtlasConfig) -> dict:
    """What a layer's feature visualizations depend on besides the model and layer."""
    return {
        "steps": args.viz_steps,
        "lr": args.viz_lr,
        "start": args.viz_start,
        "seed": args.viz_seed,
        **({"data": args.data, "top": args.top} if args.viz_start == "top" else {}),
    }


def prepare(args: AtlasConfig) -> ScanJob:
    """The job as one streaming pass (shareable with other scan jobs by the sweep)."""
    with shared_models():
        model, params = model_from_args(args)
        layers = spatial_layers(model, args.layers)
        values = {k: getattr(args, k) for k in ("data", "batch_size", "limit")}
        values["out"] = str(Path(args.out) / "features")
        fjob = features.prepare(_sub_config("features", {**_model_values(args), **values}))
    source = source_from_args(args)
    config = {
        **model_config(args),
        **{k: getattr(args, k) for k in ("layers", "max_channels", "top", "per_image_max")},
        "viz_batch": args.viz_batch,
        "viz": viz_config(args),
        **{k: getattr(args, k) for k in ("tsne_points", "queries", "data", "batch_size", "limit")},
    }
    out = JobOutput(args.out, "atlas", config)
    tag = hashlib.sha1(str(out.out.resolve()).encode()).hexdigest()[:8]  # unique in a sweep
    mesh = local_mesh()
    chans = {n: _channels(stage_shapes(model)[n][-1], args.max_channels) for n in layers}
    miners = {
        n: PatchMiner(n, chans[n], args.top, per_image_max=args.per_image_max, mesh=mesh,
                      name=f"atlas_{tag}_top_{n}")
        for n in layers
    }  # fmt: skip
    stats = {n: ChannelStats(n, name=f"atlas_{tag}_stats_{n}") for n in layers}
    (fcons,) = fjob.consumers
    fcons.name = f"atlas_{tag}_features"

    def complete(results: dict) -> None:
        if all(results[s.name]["units"] == 0 for s in stats.values()):
            out.finish()  # the manifest still lists every skipped input and why
            raise UsageError(
                f"--data {args.data}: no usable images (see {out.path('manifest.json')})"
            )
        fjob.out.skipped, fjob.out.counts = list(out.skipped), dict(out.counts)
        fjob.complete({fcons.name: results[fcons.name]})
        site_layers = {}
        for n in layers:
            t0 = time.perf_counter()
            site_layers[n] = _layer(
                args, model, params, source, out, n, results[miners[n].name],
                results[stats[n].name],
            )  # fmt: skip
            out.timing(f"layer_{n}_s", time.perf_counter() - t0)
        feats = _features_views(args, out, model.features_stage)
        _write_site(out, model, args.data, layers, site_layers, feats)
        print(f"atlas of {len(layers)} stages of {model.name} -> {args.out}/index.html")

    return ScanJob(
        model, params, source, out, [*miners.values(), *stats.values(), fcons], complete, args
    )


def run(args: AtlasConfig) -> int:
    return prepare(args).run()


def _channels(n: int, max_channels: int) -> list[int] | None:
    """The mined channels: None (all n) or the first max_channels."""
    return None if max_channels in (0, n) or max_channels > n else list(range(max_channels))


def _label_name(source: Source, label: int | None) -> str:
    if label is None or label < 0:
        return "?"
    names = source.class_names
    return names[label] if names and label < len(names) else str(label)


def _full_images(
    source: Source, model: Model, top: dict, boxes: np.ndarray, mean_start: bool
) -> tuple[np.ndarray, np.ndarray | None]:
    """Each winner's image with its receptive field boxed, [C, k, s, s', 3] uint8, and (when
    mean_start) the mean of each channel's top images [C, H, W, 3] float32 in [0, 255]."""
    c, k = top["image"].shape
    h, w = model.preprocess.size
    scale = IMAGE_PX / max(h, w)
    shown = np.full((c, k, round(h * scale), round(w * scale), 3), 200, np.uint8)
    total = np.zeros((c, h, w, 3), np.float32) if mean_start else None
    count = np.zeros(c, np.int64)
    for i in np.unique(top["image"][top["image"] >= 0]):
        try:
            image = model.preprocess.to_uint8(source.load(int(i)))
        except BadInput:
            continue  # cut_patches has recorded it
        for ch, r in zip(*np.nonzero(top["image"] == i), strict=True):
            shown[ch, r] = boxed(image, tuple(int(v) for v in boxes[ch, r]), IMAGE_PX)
            if total is not None:
                total[ch] += image
            count[ch] += 1
    if total is not None:
        total /= np.maximum(count, 1)[:, None, None, None]
        total[count == 0] = 127.5
    return shown, total


def _feature_viz(
    args: AtlasConfig,
    model: Model,
    params: Params,
    layer: str,
    channels: np.ndarray,
    start: np.ndarray | None,
    out: JobOutput,
) -> np.ndarray | None:
    """[C, H, W, 3] float32 in [0, 1]: the feature visualizations of `channels` [C] (starting
    from `start` [C, H, W, 3] in [0, 255], or noise), computed in batches of --viz-batch
    channels (one compile), or read back when a finished run's settings match."""
    if args.viz_steps == 0 or len(channels) == 0:
        return None
    meta = {"model": model_config(args), "layer": layer, "channels": channels.tolist(),
            **viz_config(args)}  # fmt: skip
    n_channels = len(channels)
    done = out.path(f"{layer}/feature_viz.json")
    if done.exists() and json.loads(done.read_text()) == meta:
        return np.load(out.path(f"{layer}/feature_viz.npy"))
    mesh = local_mesh()
    batch = round_up(min(args.viz_batch, round_up(n_channels, mesh.size)), mesh.size)
    put = functools.partial(jax.device_put, device=batch_sharding(mesh))
    ascent = Ascent(steps=args.viz_steps, lr=args.viz_lr)  # classviz's other settings
    fn = functools.partial(channel_visualization, model, layer=layer, ascent=ascent)
    step = jax.jit(lambda p, c, k, s: fn(p, channels=c, key=k, start=s))
    params = jax.device_put(params, replicated(mesh))
    key = jax.random.key(args.viz_seed)
    result = []
    with Progress(n_channels, f"feature viz {layer}", unit="ch") as bar:
        for a in range(0, n_channels, batch):
            rows = np.arange(a, a + batch) % n_channels  # the last batch wraps: fixed shape
            s = None
            if start is not None:
                s = put(np.asarray(model.preprocess.normalize(jnp.asarray(start[rows]))))
            t0 = time.perf_counter()
            x = step(params, put(channels[rows].astype(np.int32)), key, s)
            x = np.asarray(model.preprocess.denormalize(x))[: min(batch, n_channels - a)]
            out.timing("feature_viz_s", time.perf_counter() - t0)
            result.append(x)
            bar.update(len(x))
    viz = np.clip(np.concatenate(result), 0, 1).astype(np.float32)
    out.npy(f"{layer}/feature_viz.npy", viz)
    out.json(f"{layer}/feature_viz.json", meta)
    return viz


def _layer(args, model, params, source, out: JobOutput, layer: str, top: dict, st: dict) -> dict:
    """Pictures, arrays and page data of one stage: {"shape", "rf", "channels": [...]}."""
    rf = receptive_fields(model)[layer]
    shape = stage_shapes(model)[layer]
    chans = np.asarray(_channels(shape[-1], args.max_channels) or range(shape[-1]))
    size = int(min(max(max(rf.size), 48), 128))
    patches, boxes, _ = cut_patches(source, model.preprocess, rf, top, size, out)
    shown, start = _full_images(source, model, top, boxes, args.viz_start == "top")
    dead = st["frac_positive"][chans] <= 0  # never > 0: its gradient is 0, nothing to draw
    live = np.flatnonzero(~dead)
    viz = np.full((len(chans), *model.preprocess.size, 3), 0.5, np.float32)  # flat: none
    live_viz = _feature_viz(args, model, params, layer, chans[live],
                            None if start is None else start[live], out)  # fmt: skip
    if live_viz is not None:
        viz[live] = live_viz
    for name in ("values", "image", "y", "x"):
        out.npy(f"{layer}/top_{name}.npy", top[name])
    out.npy(f"{layer}/top_boxes.npy", boxes)
    for k in STATS:
        out.npy(f"{layer}/channel_{k}.npy", st[k])
    valid = top["image"] >= 0
    channels = []
    for j, ch in enumerate(chans):
        ch = int(ch)
        stem = f"{layer}/c{ch:04d}"
        out.png(f"{stem}_patches.png", patch_grid(patches[j], top["values"][j], valid[j],
                                                  f"{layer} ch {ch}"))  # fmt: skip
        out.png(f"{stem}_top.png", patches[j, 0])
        out.png(f"{stem}_images.png", tile_grid(shown[j], ncols=min(args.top, 3), border=2))
        big = upscale(viz[j], max(1, -(-VIZ_PX // max(viz.shape[1:3]))))
        out.png(f"{stem}_viz.png", (big * 255 + 0.5).astype(np.uint8))
        labels = [source.info(int(i)).label for i in top["image"][j][valid[j]]]
        hist: dict[str, int] = {}
        if source.class_names or any(lb is not None for lb in labels):
            for lb in labels:
                hist[_label_name(source, lb)] = hist.get(_label_name(source, lb), 0) + 1
        channels.append(
            {
                "channel": ch,
                **{k: float(st[k][ch]) for k in STATS},
                "dead": bool(dead[j]),
                "hist": hist,
                "top": [
                    {
                        "rank": r,
                        "value": float(top["values"][j, r]),
                        "image": int(top["image"][j, r]),
                        "id": source.info(int(top["image"][j, r])).id,
                        "label": _label_name(source, labels[r]),
                        "box": [int(b) for b in boxes[j, r]],
                    }
                    for r in range(int(valid[j].sum()))
                ],
            }
        )
    out.json(f"{layer}/channels.json", channels)
    out.count("channels", len(chans))
    return {"shape": shape, "rf": rf, "units": st["units"], "channels": channels}


def query_rows(labels: np.ndarray, n: int) -> np.ndarray:
    """n distinct rows of a store to query, labels [N] (-1 unknown): the first row of each label
    in order of appearance, then evenly spaced rows, so the grids show different classes."""
    known = np.flatnonzero(labels >= 0)
    _, first = np.unique(labels[known], return_index=True)
    picks = [int(r) for r in known[np.sort(first)][:n]]
    for row in itertools.chain(np.linspace(0, len(labels) - 1, n).astype(int), range(len(labels))):
        if len(picks) == n:
            break
        if row not in picks:
            picks.append(int(row))
    return np.asarray(picks, np.int64)


def _features_views(args: AtlasConfig, out: JobOutput, stage: str) -> dict:
    """t-SNE mosaic and neighbour grids of the features stored under out/features."""
    from jaxviz.index.feature_store import FeatureStore

    store = FeatureStore(out.path("features"))
    n = min(len(store), args.tsne_points)
    views: dict = {"stage": stage}
    perplexity = min(30.0, (n - 1) / 3.0)
    if n >= 10 and args.tsne_points:
        t0 = time.perf_counter()
        values = {"features": str(out.path("features")), "out": str(out.path("tsne")),
                  "limit": n, "perplexity": round(perplexity, 3)}  # fmt: skip
        tsne.run(_sub_config("tsne", values))
        views["tsne"] = "tsne"
        out.timing("tsne_s", time.perf_counter() - t0)
    else:
        views["tsne_note"] = f"{n} images (t-SNE needs at least 10)"
    if args.queries and len(store) > 1:
        picks = store.index()[query_rows(store.labels(), min(args.queries, len(store)))]
        k = min(8, len(store) - 1)
        values = {"index": str(out.path("features")), "out": str(out.path("neighbors")),
                  "query": "ids:" + ",".join(map(str, picks)), "k": k}  # fmt: skip
        neighbors.run(_sub_config("neighbors", values))
        records = json.loads(out.path("neighbors/neighbors.json").read_text())
        views["neighbors"] = [f"neighbors/{r['png']}" for r in records]
    return views


def _write_site(out: JobOutput, model: Model, data: str, layers, site_layers, feats) -> None:
    shapes, rfs = stage_shapes(model), receptive_fields(model)
    stages = []
    for name in model.stage_names:
        st = {"name": name, "shape": shapes[name], "rf": rfs[name]}
        if name in site_layers:
            chans = site_layers[name]["channels"]
            st["layer"] = {"channels": len(chans), "dead": sum(c["dead"] for c in chans)}
        stages.append(st)
    out.results.update(
        {
            "layers": {
                n: {"channels": len(v["channels"]), "dead": sum(c["dead"] for c in v["channels"])}
                for n, v in site_layers.items()
            },
            "features": {k: v for k, v in feats.items() if k != "neighbors"},
        }
    )
    pages = {}
    for name in layers:
        info = {"name": name, **site_layers[name]}
        pages.update(layer_pages(model.name, info, site_layers[name]["channels"]))
    site = {
        "model": model.name,
        "data": data,
        "images": out.counts.get("images", 0),
        "stages": stages,
        "features": feats,
    }
    pages["index.html"] = overview_page(site)
    out.add_files(pages)
    out.finish()  # manifest.json and a generic index.html, which the site's replaces
    for rel, text in pages.items():
        data_ = text.encode()
        atomic_write(out.path(rel), lambda f, d=data_: f.write(d))
