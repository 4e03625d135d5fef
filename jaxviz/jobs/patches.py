"""`jaxviz patches`: maximally activating patches of a layer's channels over a dataset.

One streaming pass (jobs/scan.py; the sweep shares it with other scan jobs) mines each channel's
top-k units (methods/patches.py) and the channels' mean activations (methods/channel_stats.py);
then the images holding a winner are re-read by source index at the model's input size and the
units' receptive fields cropped.

Writes into --out: grids/channel_NNNN.png (top patches, strongest first, activation captions),
overview.png (a row per channel), patches.json (every channel, rank, image id, y, x, value,
box), top_values.npy / top_image.npy / top_y.npy / top_x.npy [C, k], top_boxes.npy [C, k, 4]
(clipped, model-input pixels), patches.npy [C, k, s, s, 3] uint8, channels.npy, and the per
channel statistics of the whole layer as `jaxviz channels` writes them: channel_mean.npy,
channel_std.npy, channel_max.npy, channel_frac_positive.npy.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np

from jaxviz.data.decode import BadInput
from jaxviz.data.sources import Source
from jaxviz.errors import UsageError
from jaxviz.jobs.channels import write_stats
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
from jaxviz.methods.channel_stats import ChannelStats
from jaxviz.methods.patches import PatchMiner, box_coverage, crop_patch
from jaxviz.models.geometry import ReceptiveField
from jaxviz.models.preprocess import Preprocess
from jaxviz.models.stage import Model, receptive_field, receptive_fields, stage_shapes
from jaxviz.render.patches import overview, patch_grid
from jaxviz.runtime.devices import local_mesh


@dataclass(kw_only=True)
class PatchesConfig(ModelOptions, DataOptions, OutOptions):
    layer: str = option(help="stage whose channels to mine (e.g. conv5)")
    channels: str = option("all", "channels: 'all', a range '0-15', a list '3,7' or a mix '0-3,9'")
    top: int = option(9, "patches per channel", check=POSITIVE)
    per_image_max: bool = option(
        False,
        "at most one patch per image and channel (its strongest unit); "
        "default: every position competes",
    )
    patch_size: int = option(
        0,
        "side of each patch in the pictures, px (0: the receptive field, 48..128)",
        check=NON_NEGATIVE,
    )


def parse_channels(spec: str, n: int) -> list[int] | None:
    """'all' -> None; '0-15', '3,7', '0-3,9' -> sorted unique channel list, checked against n."""
    if spec.strip() == "all":
        return None
    out: set[int] = set()
    try:
        for part in spec.split(","):
            lo, sep, hi = part.strip().partition("-")
            a = int(lo)
            b = int(hi) if sep else a
            if b < a:
                raise ValueError
            out.update(range(a, b + 1))
    except ValueError:
        raise UsageError(
            f"bad --channels {spec!r}; expected all, a range 0-15, a list 3,7 or a mix 0-3,9"
        ) from None
    bad = [c for c in sorted(out) if c >= n]
    if bad:
        raise UsageError(f"--channels {spec!r}: the layer has channels 0-{n - 1}, not {bad[0]}")
    return sorted(out)


def _spatial_layer(model: Model, layer: str) -> tuple[ReceptiveField, int]:
    rf = receptive_field(model, layer, "patch crops")
    shape = stage_shapes(model)[layer]
    if rf is None or len(shape) != 3:
        spatial = [n for n, f in receptive_fields(model).items() if f is not None]
        raise UsageError(
            f"layer {layer} of {model.name} has no spatial map (output {shape}); "
            f"choose from: {', '.join(spatial)}"
        )
    return rf, shape[-1]


def object_box_in_input(
    box: tuple[int, int, int, int], size_wh: tuple[int, int], pre: Preprocess
) -> tuple[int, int, int, int]:
    """An object box in original pixels -> model-input pixels, as `pre.to_uint8` maps images."""
    iw, ih = size_wh
    h, w = pre.size
    if pre.resize is None:
        sy, sx, oy, ox = h / ih, w / iw, 0, 0
    else:
        scale = pre.resize / min(iw, ih)
        nw, nh = max(w, round(iw * scale)), max(h, round(ih * scale))
        sy, sx, oy, ox = nh / ih, nw / iw, (nh - h) // 2, (nw - w) // 2
    y0, x0 = round(box[0] * sy) - oy, round(box[1] * sx) - ox
    y1, x1 = round(box[2] * sy) - oy, round(box[3] * sx) - ox
    return (max(y0, 0), max(x0, 0), min(y1, h), min(x1, w))


def cut_patches(
    source: Source,
    pre: Preprocess,
    rf: ReceptiveField,
    top: dict[str, np.ndarray],
    size: int,
    out: JobOutput,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Crop every winner's receptive field from its re-read image.

    Returns patches [C, k, size, size, 3] uint8, boxes [C, k, 4] int32 (clipped, -1 if empty) and
    on_object [C, k] float32 (fraction of the patch box inside the source's object box; NaN where
    the source gives no box).
    """
    c, k = top["image"].shape
    patches = np.full((c, k, size, size, 3), 128, np.uint8)
    boxes = np.full((c, k, 4), -1, np.int32)
    on_object = np.full((c, k), np.nan, np.float32)
    hw = pre.size
    for i in np.unique(top["image"][top["image"] >= 0]):
        try:
            pil = source.load(int(i))
        except BadInput as e:
            out.skip(source.info(int(i)).id, f"could not be re-read for cropping: {e}")
            continue
        image = pre.to_uint8(pil)
        obj = source.info(int(i)).box
        for ch, r in zip(*np.nonzero(top["image"] == i), strict=True):
            y, x = int(top["y"][ch, r]), int(top["x"][ch, r])
            patches[ch, r] = crop_patch(image, rf.box(y, x), size)
            boxes[ch, r] = rf.box(y, x, hw)
            if obj is not None:
                on_object[ch, r] = box_coverage(
                    tuple(boxes[ch, r]), object_box_in_input(obj, pil.size, pre)
                )
    return patches, boxes, on_object


def prepare(args: PatchesConfig) -> ScanJob:
    """The job as one streaming pass (shareable with other scan jobs by the sweep)."""
    model, params = model_from_args(args)
    rf, n_channels = _spatial_layer(model, args.layer)
    channels = parse_channels(args.channels, n_channels)
    chans = np.arange(n_channels) if channels is None else np.asarray(channels)
    source = source_from_args(args)
    size = args.patch_size or int(min(max(max(rf.size), 48), 128))
    config = {
        **model_config(args),
        "layer": args.layer,
        "channels": args.channels,
        "top": args.top,
        "per_image_max": args.per_image_max,
        "patch_size": size,
        "data": args.data,
        "batch_size": args.batch_size,
        "limit": args.limit,
    }
    out = JobOutput(args.out, "patches", config)
    tag = hashlib.sha1(str(out.out.resolve()).encode()).hexdigest()[:8]  # unique in a sweep
    miner = PatchMiner(
        args.layer,
        channels,
        args.top,
        per_image_max=args.per_image_max,
        mesh=local_mesh(),
        name=f"patches_{tag}",
    )
    stats = ChannelStats(args.layer, name=f"channel_stats_{tag}")

    def complete(results: dict) -> None:
        top, st = results[miner.name], results[stats.name]
        if st["units"] == 0:
            out.finish()  # the manifest still lists every skipped input and why
            raise UsageError(
                f"--data {args.data}: no usable images (see {out.path('manifest.json')})"
            )
        crops = cut_patches(source, model.preprocess, rf, top, size, out)
        write_outputs(out, model.name, args.layer, rf, chans, top, st, crops, source)
        out.finish()
        print(f"{len(chans)} channels, {out.counts.get('images', 0)} images -> {args.out}")

    return ScanJob(
        model,
        params,
        source,
        out,
        [miner, stats],
        complete,
        args,
    )


def run(args: PatchesConfig) -> int:
    return prepare(args).run()


def write_outputs(
    out: JobOutput,
    model_name: str,
    layer: str,
    rf: ReceptiveField,
    chans: np.ndarray,
    top: dict,
    st: dict,
    crops: tuple[np.ndarray, np.ndarray, np.ndarray],
    source: Source,
) -> None:
    """Arrays, patches.json, grids and overview into `out`; a summary into out.results."""
    patches, boxes, on_object = crops
    valid = top["image"] >= 0
    for name in ("values", "image", "y", "x"):
        out.npy(f"top_{name}.npy", top[name])
    out.npy("top_boxes.npy", boxes)
    out.npy("patches.npy", patches)
    out.npy("channels.npy", chans.astype(np.int32))
    write_stats(out, st)
    ids = {int(i): source.info(int(i)).id for i in np.unique(top["image"][valid])}
    records = [
        {
            "channel": int(ch),
            "rank": r,
            "image": int(top["image"][j, r]),
            "id": ids[int(top["image"][j, r])],
            "y": int(top["y"][j, r]),
            "x": int(top["x"][j, r]),
            "value": float(top["values"][j, r]),
            "box": [int(v) for v in boxes[j, r]],
            **({} if np.isnan(on_object[j, r]) else {"on_object": float(on_object[j, r])}),
        }
        for j, ch in enumerate(chans)
        for r in range(top["values"].shape[1])
        if valid[j, r]
    ]
    out.json(
        "patches.json",
        {
            "model": model_name,
            "layer": layer,
            "channel_mean": {int(c): float(st["mean"][c]) for c in chans},
            "patches": records,
        },
    )
    for j, ch in enumerate(chans):
        title = f"{layer} ch {ch}  mean {st['mean'][ch]:.3g}"
        if st["max"][ch] <= 0:
            title += "  never > 0"  # a dead channel: its "top" units are ties at 0
        out.png(
            f"grids/channel_{ch:04d}.png", patch_grid(patches[j], top["values"][j], valid[j], title)
        )
    out.png("overview.png", overview(patches, valid, [f"ch {c}" for c in chans]))
    out.count("channels", len(chans))
    out.results.update(
        {
            "layer": layer,
            "receptive_field": {"size": rf.size, "stride": rf.stride, "offset": rf.offset},
            "channels": len(chans),
            "patches": len(records),
            "units_scanned": st["units"],
        }
    )
    if not np.all(np.isnan(on_object)):
        falls = np.where(valid, on_object >= 0.5, False)
        channel_on = falls.sum(1) >= np.maximum(valid.sum(1), 1) / 2
        out.results["on_object"] = {
            "patch_fraction": float(falls.sum() / max(valid.sum(), 1)),
            "channel_fraction": float(channel_on.mean()),
            "rule": "a patch falls on the object when >= half its box lies in the object box; "
            "a channel when at least half of its top patches do",
        }
