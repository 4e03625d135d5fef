"""`jaxviz occlusion`: occlusion maps (Zeiler & Fergus 2014) for every image of a source.

Outputs (`jobs.items` layout, row i = item i): `grid.zarr` [N, Hp, Wp, T] (the raw position
grid), `pixels.zarr` [N, H, W, T] (the Captum-style pixel map), `items.parquet` (prediction and
its probability, targets, base outputs, grid max/min per target, the pointing game's hits on
sources with boxes: the point is the centre of the window with the largest effect, and the pixel
map's maximum is scored beside it) and overlay PNGs of a sample (png/STEM.png, one per target).
The manifest holds the pointing game's score and, for `--method incremental`, the theoretical
FLOP saving and a measured speedup over brute force.
"""

from __future__ import annotations

import functools
import time
from dataclasses import dataclass

import jax
import numpy as np
import pyarrow as pa

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
from jaxviz.jobs.config import NON_NEGATIVE, POSITIVE, option
from jaxviz.jobs.items import ItemOptions, ItemOutput
from jaxviz.jobs.output import JobOutput
from jaxviz.methods import incremental
from jaxviz.methods.occlusion import OUTPUTS, grid_size, occlusion, positions, window_centre
from jaxviz.methods.pointing import argmax_2d, point_in_box, pointing_hit, scale_box
from jaxviz.models.stage import Model, forward_fn
from jaxviz.render.heatmap import overlay
from jaxviz.runtime.progress import Progress


@dataclass(kw_only=True)
class OcclusionConfig(ModelOptions, DataOptions, ItemOptions, OutOptions):
    window: int = option(16, "patch size in pixels", check=POSITIVE)
    stride: int = option(4, "step between patches", check=POSITIVE)
    target: str = option(
        "pred",
        "'pred' (the predicted class), or class ids/names separated by commas, all computed in "
        "the same passes",
    )
    fill: str = option(
        "0",
        "what the patch shows: a number in normalized input units, 'mean' (the image's mean "
        "colour) or 'blur' (a Gaussian-blurred copy, sigma window/4)",
    )
    output: str = option(
        "drop",
        "grid value: probability drop vs the unoccluded image (Captum), the probability or the "
        "logit",
        choices=OUTPUTS,
    )
    chunk: int | None = option(
        None,
        "positions per chunk (default: sized from a fraction of device memory)",
        check=POSITIVE,
    )
    method: str = option(
        "auto",
        "full: one whole forward pass per position; incremental: exact incremental inference "
        "(Krypton); auto: incremental when it saves at least 1.1x the FLOPs and enough of them "
        "over the whole job (5 TFLOP) to repay compiling it",
        choices=("auto", "full", "incremental"),
    )
    pointing_tolerance: float = option(
        0.0,
        "pointing game: a hit when the centre of the window with the largest effect is within "
        "this many pixels of the box",
        check=NON_NEGATIVE,
    )


def parse_targets(spec: str, model: Model) -> list[int] | None:
    """None for 'pred', else class ids from a comma list of ids or class names."""
    if spec == "pred":
        return None
    names = list(model.class_names or [])
    out = []
    for tok in spec.split(","):
        tok = tok.strip()
        if tok.isdigit() and int(tok) < model.num_classes:
            out.append(int(tok))
        elif tok in names:
            out.append(names.index(tok))
        else:
            raise UsageError(
                f"unknown target {tok!r}: use 'pred', a class id below {model.num_classes} or a "
                f"class name of {model.name} (e.g. {', '.join(names[:5]) or 'none'})"
            )
    return out


def parse_fill(spec: str) -> float | str:
    if spec in ("mean", "blur"):
        return spec
    try:
        return float(spec)
    except ValueError:
        raise UsageError(f"--fill must be a number, 'mean' or 'blur', got {spec!r}") from None


def item_box(source: Source, i: int, model: Model) -> tuple[int, int, int, int] | None:
    """The ground-truth box of item i in model-input pixels (None: no box, or a cropping resize)."""
    box = source.info(i).box
    if box is None or model.preprocess.resize is not None:
        return None
    w, h = source.load(i).size
    return scale_box(box, (h, w), model.input_size)


def run(args: OcclusionConfig) -> int:
    model, params = model_from_args(args)
    hw = model.input_size
    window, stride = (args.window, args.window), (args.stride, args.stride)
    try:
        hp, wp = grid_size(hw, window, stride)
    except ValueError as e:
        raise UsageError(str(e)) from None
    targets = parse_targets(args.target, model)
    fill = parse_fill(args.fill)
    source = source_from_args(args)
    n = len(source) if args.limit is None else min(args.limit, len(source))
    plan = incremental.choose(model, hw, window, stride, args.method, n * hp * wp)
    config = {
        **model_config(args),
        "data": args.data,
        "limit": args.limit,
        "window": args.window,
        "stride": args.stride,
        "target": args.target,
        "fill": args.fill,
        "output": args.output,
        "chunk": args.chunk,
        "method": args.method,
        "png": args.png,
        "store_dtype": args.store_dtype,
    }
    out = JobOutput(args.out, "occlusion", config)
    out.results["method"] = plan.summary()
    evaluator = plan.evaluator
    t = 1 if targets is None else len(targets)
    items = ItemOutput(out, source, n, {"grid": (hp, wp, t), "pixels": (*hw, t)}, COLUMNS, args)
    predict = jax.jit(lambda p, x: jax.nn.softmax(forward_fn(model)(p, x), -1))
    with items, Progress(len(items.indices), "occlusion") as bar:
        bar.update(items.done)
        for batch in items.stream(model.preprocess, args.batch_size):
            t0 = time.perf_counter()
            x = model.preprocess.normalize(batch.images)
            tg = None if targets is None else np.tile(np.asarray(targets), (len(batch.mask), 1))
            res = occlusion(
                model,
                params,
                x,
                window,
                stride,
                targets=tg,
                fill=fill,
                output=args.output,
                chunk=args.chunk,
                evaluator=evaluator,
            )
            probs = np.asarray(predict(params, x))
            grid, pixels = np.asarray(res.grid), np.asarray(res.pixels)
            tgt, base = np.asarray(res.targets), np.asarray(res.base)
            speedup = None
            if plan.incremental and "measured_speedup" not in items.state:
                speedup = measure_speedup(model, params, x[:1], window, stride, evaluator)
            with items.commit(batch):
                out.timing("occlusion_s", time.perf_counter() - t0)
                items.state["chunk"] = res.chunk
                if speedup is not None:
                    items.state["measured_speedup"] = speedup
                for row in np.flatnonzero(batch.mask):
                    i = int(batch.index[row])
                    pred = int(probs[row].argmax())
                    item = {
                        "prediction": pred,
                        "prediction_prob": float(probs[row, pred]),
                        "target": tgt[row].tolist(),
                        "base": base[row].tolist(),
                        "grid_max": grid[row].reshape(-1, t).max(0).tolist(),
                        "grid_min": grid[row].reshape(-1, t).min(0).tolist(),
                        **pointing(source, model, i, grid[row], pixels[row], args),
                    }
                    items.add(i, {"grid": grid[row], "pixels": pixels[row]}, item)
                    if items.sample(i):
                        draw_item(items, model, batch.images[row], i, pixels[row], item, args)
            bar.update(int(items.done) - bar.n)

    def complete(table) -> None:
        n_img = out.counts.get("images", 0)
        out.count("positions", n_img * hp * wp)
        hits = table["pointing_hit"].drop_null().to_numpy(zero_copy_only=False)
        pixel_hits = table["pixel_pointing_hit"].drop_null().to_numpy(zero_copy_only=False)
        out.results.update(
            {
                "images": n_img,
                "grid": [hp, wp],
                "positions_per_image": hp * wp,
                "chunk": items.state.get("chunk"),
                "positions_per_s": out.counts.get("positions", 0)
                / max(out.timings.get("occlusion_s", 0), 1e-9),
                "pointing_game": {
                    "score": float(np.mean(hits)) if len(hits) else None,
                    "point": "centre of the window with the largest effect (Zeiler & Fergus)",
                    "pixel_map_score": float(np.mean(pixel_hits)) if len(hits) else None,
                    "images_with_box": len(hits),
                    "tolerance_px": args.pointing_tolerance,
                },
            }
        )
        if "measured_speedup" in items.state:
            out.results["method"]["measured_speedup"] = items.state["measured_speedup"]
        out.finish()
        score = out.results["pointing_game"]["score"]
        print(
            f"{n_img} images, {len(out.skipped)} skipped, pointing game "
            f"{'n/a' if score is None else f'{score:.3f}'} -> {args.out}"
        )

    items.finish(complete)
    return 0


COLUMNS = {
    "prediction": pa.int64(),
    "prediction_prob": pa.float32(),
    "target": pa.list_(pa.int64()),
    "base": pa.list_(pa.float32()),
    "grid_max": pa.list_(pa.float32()),
    "grid_min": pa.list_(pa.float32()),
    "pointing_hit": pa.bool_(),
    "pixel_pointing_hit": pa.bool_(),
}


def pointing(
    source: Source,
    model: Model,
    i: int,
    grid: np.ndarray,
    pixels: np.ndarray,
    args: OcclusionConfig,
) -> dict:
    """The pointing game of item i's first target, on sources with boxes (else {})."""
    box = item_box(source, i, model)
    if box is None:
        return {}
    hw, window, stride = model.input_size, (args.window,) * 2, (args.stride,) * 2
    sign = 1 if args.output == "drop" else -1
    top = argmax_2d(sign * grid[:, :, 0])
    return {
        "pointing_hit": point_in_box(
            window_centre(top, hw, window, stride), box, args.pointing_tolerance
        ),
        "pixel_pointing_hit": pointing_hit(sign * pixels[:, :, 0], box, args.pointing_tolerance),
    }


def draw_item(
    items: ItemOutput,
    model: Model,
    image: np.ndarray,
    i: int,
    pixels: np.ndarray,
    item: dict,
    args: OcclusionConfig,
) -> None:
    """Overlay PNGs of item i's pixel map, one per target (png/STEM[_CLASS].png)."""
    unit = "logit" if args.output == "logit" else "p"
    for k, cls in enumerate(item["target"]):
        name = model.class_name(int(cls))
        title = f"{name} ({unit}={item['base'][k]:.3f}): occlusion {args.output}"
        stem = f"{i:07d}" if len(item["target"]) == 1 else f"{i:07d}_{name}"
        items.png(stem, functools.partial(overlay, image.copy(), pixels[:, :, k].copy(), title))


def measure_speedup(
    model: Model, params, x: jax.Array, window, stride, evaluator, sample: int = 64
) -> float:
    """Wall-clock ratio full / incremental on `sample` positions of one image (after compiles)."""
    from jaxviz.methods.occlusion import FullForward, evaluate

    corners = positions(model.input_size, window, stride) * np.asarray(stride, np.int32)
    pick = corners[np.linspace(0, len(corners) - 1, min(sample, len(corners))).astype(int)]
    times = []
    for ev in (FullForward(model, model.input_size, window), evaluator):
        fn = jax.jit(
            lambda p, xx, ev=ev: evaluate(ev, p, ev.prepare(p, xx, xx * 0), pick, len(pick))
        )
        jax.block_until_ready(fn(params, x))
        t0 = time.perf_counter()
        jax.block_until_ready(fn(params, x))
        times.append(time.perf_counter() - t0)
    return times[0] / times[1]
