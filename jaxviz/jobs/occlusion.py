"""`jaxviz occlusion`: occlusion maps (Zeiler & Fergus 2014) for every image of a source.

Per image: the raw position grid (npy/grid_ID.npy, [Hp, Wp, T]), the Captum-style pixel map
(npy/pixels_ID.npy, [H, W, T]) and an overlay PNG per target. The manifest holds a per-image
summary, the pointing game on sources with boxes (the shapes set; the point is the centre of the
window with the largest effect, and the pixel map's maximum is scored beside it), and for
`--method incremental`
the theoretical FLOP saving and a measured speedup over brute force.
"""

from __future__ import annotations

import argparse
import time

import jax
import numpy as np

from jaxviz.data.sources import Source, open_source
from jaxviz.errors import UsageError
from jaxviz.jobs.common import (
    add_data_args,
    add_model_args,
    add_out_arg,
    model_config,
    model_from_args,
)
from jaxviz.jobs.output import JobOutput
from jaxviz.jobs.resume import ItemCheckpoint, add_checkpoint_arg
from jaxviz.methods import incremental
from jaxviz.methods.occlusion import OUTPUTS, grid_size, occlusion, positions, window_centre
from jaxviz.methods.pointing import argmax_2d, point_in_box, pointing_hit, scale_box
from jaxviz.models.stage import Model
from jaxviz.render.heatmap import overlay
from jaxviz.runtime.progress import Progress


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_model_args(p)
    add_data_args(p)
    add_out_arg(p, "out/occlusion")
    add_checkpoint_arg(p)
    p.add_argument("--window", type=int, default=16, help="patch size in pixels (default: 16)")
    p.add_argument("--stride", type=int, default=4, help="step between patches (default: 4)")
    p.add_argument(
        "--target",
        default="pred",
        help="'pred' (the predicted class), or class ids/names separated by commas, all "
        "computed in the same passes (default: pred)",
    )
    p.add_argument(
        "--fill",
        default="0",
        help="what the patch shows: a number in normalized input units, 'mean' (the image's "
        "mean colour) or 'blur' (a Gaussian-blurred copy, sigma window/4) (default: 0)",
    )
    p.add_argument(
        "--output",
        choices=OUTPUTS,
        default="drop",
        help="grid value: probability drop vs the unoccluded image (Captum), the probability or "
        "the logit (default: drop)",
    )
    p.add_argument(
        "--chunk",
        type=int,
        default=None,
        help="positions per chunk (default: sized from a fraction of device memory)",
    )
    p.add_argument(
        "--method",
        choices=("auto", "full", "incremental"),
        default="auto",
        help="full: one whole forward pass per position; incremental: exact incremental "
        "inference (Krypton); auto: incremental when it saves at least 1.1x the FLOPs and "
        "enough of them over the whole job (5 TFLOP) to repay compiling it (default: auto)",
    )
    p.add_argument(
        "--pointing-tolerance",
        type=float,
        default=0.0,
        help="pointing game: a hit when the centre of the window with the largest effect is "
        "within this many pixels of the box (default: 0)",
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


def run(args: argparse.Namespace) -> int:
    model, params = model_from_args(args)
    hw = model.input_size
    window, stride = (args.window, args.window), (args.stride, args.stride)
    try:
        hp, wp = grid_size(hw, window, stride)
    except ValueError as e:
        raise UsageError(str(e)) from None
    if args.chunk is not None and args.chunk < 1:
        raise UsageError("--chunk must be at least 1")
    targets = parse_targets(args.target, model)
    fill = parse_fill(args.fill)
    source = open_source(args.data)
    n = len(source) if args.limit is None else min(args.limit, len(source))
    plan = incremental.choose(model, hw, window, stride, args.method, n * hp * wp)
    config = {
        **model_config(args),
        "data": args.data,
        "window": args.window,
        "stride": args.stride,
        "target": args.target,
        "fill": args.fill,
        "output": args.output,
        "chunk": args.chunk,
        "method": args.method,
    }
    out = JobOutput(args.out, "occlusion", config)
    out.results["method"] = plan.summary()
    evaluator = plan.evaluator
    initial = {"items": [], "hits": [], "pixel_hits": [], "chunk": None}
    ck = ItemCheckpoint(out, initial, args.checkpoint_every)
    state = ck.state
    with ck, Progress(n, "occlusion") as bar:
        bar.update(ck.images_done)
        for batch in ck.stream(source, model.preprocess, args.batch_size, stop=n):
            t0 = time.perf_counter()
            x = model.preprocess.normalize(batch.images)
            t = None if targets is None else np.tile(np.asarray(targets), (len(batch.mask), 1))
            res = occlusion(
                model,
                params,
                x,
                window,
                stride,
                targets=t,
                fill=fill,
                output=args.output,
                chunk=args.chunk,
                evaluator=evaluator,
            )
            grid, pixels = np.asarray(res.grid), np.asarray(res.pixels)
            tgt, base = np.asarray(res.targets), np.asarray(res.base)
            speedup = None
            if plan.incremental and "measured_speedup" not in state:
                speedup = measure_speedup(model, params, x[:1], window, stride, evaluator)
            with ck.commit(batch):
                out.timing("occlusion_s", time.perf_counter() - t0)
                state["chunk"] = res.chunk
                if speedup is not None:
                    state["measured_speedup"] = speedup
                for row in np.flatnonzero(batch.mask):
                    i = int(batch.index[row])
                    item = write_item(
                        out,
                        source,
                        model,
                        batch.images[row],
                        i,
                        grid[row],
                        pixels[row],
                        tgt[row],
                        base[row],
                        args.output,
                    )
                    box = item_box(source, i, model)
                    if box is not None:
                        sign = 1 if args.output == "drop" else -1
                        top = argmax_2d(sign * grid[row, :, :, 0])
                        hit = point_in_box(
                            window_centre(top, hw, window, stride), box, args.pointing_tolerance
                        )
                        heat = sign * pixels[row, :, :, 0]
                        state["hits"].append(hit)
                        state["pixel_hits"].append(pointing_hit(heat, box, args.pointing_tolerance))
                        item["pointing_hit"] = hit
                    state["items"].append(item)
                out.count("images", batch.count)
            bar.update(batch.count)
    ck.finish()
    hits, pixel_hits = state["hits"], state["pixel_hits"]
    n_img = out.counts.get("images", 0)
    out.count("positions", n_img * hp * wp)
    out.json("items.json", state["items"])
    out.results.update(
        {
            "images": n_img,
            "grid": [hp, wp],
            "positions_per_image": hp * wp,
            "chunk": state["chunk"],
            "positions_per_s": out.counts.get("positions", 0)
            / max(out.timings.get("occlusion_s", 0), 1e-9),
            "pointing_game": {
                "score": float(np.mean(hits)) if hits else None,
                "point": "centre of the window with the largest effect (Zeiler & Fergus)",
                "pixel_map_score": float(np.mean(pixel_hits)) if hits else None,
                "images_with_box": len(hits),
                "tolerance_px": args.pointing_tolerance,
            },
        }
    )
    if "measured_speedup" in state:
        out.results["method"]["measured_speedup"] = state["measured_speedup"]
    out.finish()
    score = out.results["pointing_game"]["score"]
    print(
        f"{n_img} images, {len(out.skipped)} skipped, pointing game "
        f"{'n/a' if score is None else f'{score:.3f}'} -> {args.out}"
    )
    return 0


def write_item(
    out: JobOutput,
    source: Source,
    model: Model,
    image: np.ndarray,
    i: int,
    grid: np.ndarray,
    pixels: np.ndarray,
    tgt: np.ndarray,
    base: np.ndarray,
    output: str,
) -> dict:
    """Save one image's grid, pixel map and overlays; its summary for the manifest."""
    stem = f"{i:07d}"
    out.npy(f"npy/grid_{stem}.npy", grid)
    out.npy(f"npy/pixels_{stem}.npy", pixels)
    pngs = []
    for k, cls in enumerate(tgt):
        name = model.class_name(int(cls))
        unit = "logit" if output == "logit" else "p"
        title = f"{name} ({unit}={base[k]:.3f}): occlusion {output}"
        png = f"{stem}.png" if len(tgt) == 1 else f"{stem}_{name}.png"
        out.png(png, overlay(image, pixels[:, :, k], title))
        pngs.append(png)
    return {
        "index": i,
        "id": source.info(i).id,
        "targets": [int(c) for c in tgt],
        "classes": [model.class_name(int(c)) for c in tgt],
        "base": [float(b) for b in base],
        "grid_max": [float(v) for v in grid.reshape(-1, grid.shape[-1]).max(0)],
        "grid_min": [float(v) for v in grid.reshape(-1, grid.shape[-1]).min(0)],
        "png": pngs,
        "grid": f"npy/grid_{stem}.npy",
        "pixels": f"npy/pixels_{stem}.npy",
    }


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
