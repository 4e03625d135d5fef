"""`jaxviz saliency|guided|gradcam|ig|smoothgrad`: gradient attributions for every image of a
source. The subcommand (`args.command`) picks the method; one compiled function per job runs a
whole batch, sharded over local devices.

Outputs (`jobs.items` layout, row i = item i): `maps.zarr` with the raw attributions (saliency:
[N, H, W]; guided, ig, smoothgrad: [N, H, W, C]; gradcam: [N, h, w] at the layer's resolution),
`guided.zarr` [N, H, W, C] with gradcam --guided, `items.parquet` (prediction and probability,
the explained class and its probability, the pointing hit on sources with boxes, IG's
completeness error and delta, with --faithfulness the deletion/insertion AUCs) and overlays of a
sample (png/STEM.png, titled with the explained class). The manifest holds the pointing game on
sources with boxes (the shapes set), statistics of the scalars, and with --sanity-check Adebayo's
model-randomization check on the first batch (results.randomization).
"""

from __future__ import annotations

import dataclasses
import functools
import time
from dataclasses import dataclass

import jax
import jax.numpy as jnp
import numpy as np
import pyarrow as pa

from jaxviz.data.pipeline import stream
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
from jaxviz.jobs.occlusion import item_box
from jaxviz.jobs.output import JobOutput
from jaxviz.methods import faithfulness as faith
from jaxviz.methods.gradcam import check_layer, default_layer, gradcam, guided_gradcam, upsample
from jaxviz.methods.guided_backprop import guided_gradients
from jaxviz.methods.integrated_gradients import DEFAULT_METHOD, METHODS, integrated_gradients
from jaxviz.methods.pointing import pointing_hit
from jaxviz.methods.saliency import channel_max, saliency
from jaxviz.methods.smoothgrad import smoothgrad
from jaxviz.methods.targets import chunk_for_budget, parse_target, resolve, target_array
from jaxviz.models.stage import Model, Params, forward_fn
from jaxviz.render.heatmap import overlay
from jaxviz.runtime.devices import batch_sharding, local_mesh, replicated, round_up
from jaxviz.runtime.progress import Progress

TITLES = {
    "saliency": "saliency",
    "guided": "guided backprop",
    "gradcam": "Grad-CAM",
    "ig": "integrated gradients",
    "smoothgrad": "SmoothGrad",
}
BASELINES = ("zero", "black", "white", "blur")


@dataclass(kw_only=True)
class AttributionConfig(ModelOptions, DataOptions, ItemOptions, OutOptions):
    """Options of every attribution job (saliency and guided take no others)."""

    target: str = option(
        "pred",
        "class explained: 'pred' (each image's predicted class), a class id or a class name",
    )
    chunk: int | None = option(
        None,
        "perturbations (IG steps, SmoothGrad samples, deletion steps) per pass; each pass runs "
        "chunk x batch images (default: from the device-memory plan, or --memory-mb)",
        check=POSITIVE,
    )
    memory_mb: float | None = option(
        None,
        "activation memory per device and pass that sizes --chunk (default: the device-memory "
        "plan's budget; `jaxviz doctor --plan` prints it)",
        check=POSITIVE,
    )
    faithfulness: bool = option(
        False, "also deletion/insertion AUC (Petsiuk et al. 2018) of every map"
    )
    faith_steps: int = option(
        64, "pixel-removal steps of the deletion/insertion curves", check=POSITIVE
    )
    sanity_check: bool = option(
        False,
        "model-randomization sanity check (Adebayo et al. 2018) on the first batch: the "
        "Spearman correlation of |heat maps| between the trained model and the model with its "
        "stages re-initialized from the top down (one row a stage, the mean of 3 "
        "re-initializations; the trained model's class stays the target); low means the maps "
        "depend on the weights",
    )
    pointing_tolerance: float = option(
        0.0, "pointing game: a hit within this many pixels of the box", check=NON_NEGATIVE
    )


@dataclass(kw_only=True)
class GradcamConfig(AttributionConfig):
    layer: str | None = option(None, "stage explained (default: the last spatial stage)")
    guided: bool = option(
        False, "also Guided Grad-CAM: guided backprop x upsampled map (guided.zarr)"
    )


@dataclass(kw_only=True)
class IgConfig(AttributionConfig):
    steps: int = option(50, "integration steps", check=POSITIVE)
    method: str = option(
        DEFAULT_METHOD,
        "quadrature rule, as Captum's; the midpoint rule suits ReLU networks' piecewise "
        "constant integrand better than Gauss-Legendre",
        choices=METHODS,
    )
    baseline: str = option(
        "zero",
        "x': zero (0 in normalized units, the dataset mean colour), black, white, or blur (a "
        "Gaussian-blurred copy of the image)",
        choices=BASELINES,
    )


@dataclass(kw_only=True)
class SmoothgradConfig(AttributionConfig):
    samples: int = option(50, "noisy copies", check=POSITIVE)
    noise: float = option(
        0.15, "noise std as a fraction of each image's value range", check=NON_NEGATIVE
    )
    noise_seed: int = option(0, "noise seed")


def _baseline(model: Model, x: jax.Array, kind: str) -> jax.Array:
    if kind == "zero":
        return jnp.zeros_like(x)
    if kind == "blur":
        return faith.blur(x)
    value = 0 if kind == "black" else 255
    return model.preprocess.normalize(jnp.full(x.shape, value, jnp.uint8))


def make_step(args: AttributionConfig, model: Model, chunk: int):
    """The jitted (params, images uint8, target [B], index [B]) -> dict of [B, ...] arrays:
    `maps` (stored), `heat` [B, H, W] (drawn, pointing game), `target`, `prob`, `prediction`,
    `prediction_prob`, extras (`guided`, IG's `completeness_error` and `delta`, AUCs)."""
    cmd = args.command

    def step(params: Params, images: jax.Array, target: jax.Array, index: jax.Array) -> dict:
        x = model.preprocess.normalize(images)
        logits = forward_fn(model)(params, x)
        t = resolve(logits, target)
        probs = jax.nn.softmax(logits, -1)
        rows = jnp.arange(t.shape[0])
        pred = jnp.argmax(logits, -1)
        out = {"target": t, "prob": probs[rows, t], "prediction": pred}
        out["prediction_prob"] = probs[rows, pred]
        size = x.shape[1:3]
        if cmd == "saliency":
            out["maps"] = out["heat"] = saliency(model, params, x, t)
        elif cmd == "guided":
            out["maps"] = guided_gradients(model, params, x, t)
            out["heat"] = channel_max(out["maps"])
        elif cmd == "gradcam":
            out["maps"] = gradcam(model, params, x, t, args.layer)
            out["heat"] = upsample(out["maps"], size)
            if args.guided:
                out["guided"] = guided_gradcam(model, params, x, t, args.layer)
        elif cmd == "ig":
            base = _baseline(model, x, args.baseline)
            res = integrated_gradients(model, params, x, t, base, args.steps, args.method, chunk)
            out["maps"], out["heat"] = res.attributions, jnp.abs(res.attributions).sum(-1)
            out["completeness_error"] = res.completeness_error
            out["delta"] = res.delta
        else:
            keys = jax.vmap(jax.random.fold_in, (None, 0))(jax.random.key(args.noise_seed), index)
            span = x.max(axis=(1, 2, 3)) - x.min(axis=(1, 2, 3))
            out["maps"] = smoothgrad(
                model, params, x, t, keys, args.noise * span, args.samples, chunk
            )
            out["heat"] = channel_max(out["maps"])
        if args.faithfulness:
            per = -(-(size[0] * size[1]) // args.faith_steps)
            for mode, sub in (("deletion", jnp.zeros_like(x)), ("insertion", faith.blur(x))):
                curve = faith.deletion_insertion(
                    model, params, x, out["heat"], t, sub, mode, per, chunk
                )
                out[mode] = faith.auc(curve)
        return out

    return jax.jit(step)


COLUMNS = {
    "prediction": pa.int64(),
    "prediction_prob": pa.float32(),
    "target": pa.int64(),
    "prob": pa.float32(),
    "pointing_hit": pa.bool_(),
    "completeness_error": pa.float32(),
    "delta": pa.float32(),
    "deletion": pa.float32(),
    "insertion": pa.float32(),
}
NOT_CONFIG = ("model", "coordinator", "num_processes", "process_id", "checkpoint_every")


def run(args: AttributionConfig) -> int:
    model, params = model_from_args(args)
    cmd = args.command
    if isinstance(args, GradcamConfig):
        args = dataclasses.replace(args, layer=args.layer or default_layer(model))
        check_layer(model, args.layer)
    if isinstance(args, IgConfig) and args.steps < 2 and args.method != "gausslegendre":
        raise UsageError("--steps must be at least 2 for the Riemann rules")
    target = parse_target(args.target, model.num_classes, model.class_names)
    source = source_from_args(args)
    mesh = local_mesh()
    batch_size = round_up(args.batch_size, mesh.size)
    chunk = args.chunk or chunk_for_budget(model, batch_size, model.input_size, args.memory_mb)
    # the chunk the memory plan chose depends on the memory free now: a result, not config
    # (in the config, a rerun's resume signature would differ and it would start over)
    config = {
        **model_config(args),
        **{k: v for k, v in vars(args).items() if k not in NOT_CONFIG},
        "batch_size": batch_size,
    }
    out = JobOutput(args.out, cmd, config)
    out.results["chunk"] = chunk
    step = make_step(args, model, chunk)
    params = jax.device_put(params, replicated(mesh))
    sharding = batch_sharding(mesh)
    put = functools.partial(jax.device_put, device=sharding)
    n = len(source) if args.limit is None else min(args.limit, len(source))
    if args.sanity_check and jax.process_index() == 0:
        first = next(stream(source, model.preprocess, batch_size, stop=min(n, batch_size)), None)
        if first is not None:
            maps_only = dataclasses.replace(args, faithfulness=False)
            out.results["randomization"] = randomization(
                make_step(maps_only, model, chunk) if args.faithfulness else step,
                model,
                params,
                first,
                target,
                put,
                functools.partial(jax.device_put, device=replicated(mesh)),
                jax.random.key(args.seed),
            )
    images = jax.ShapeDtypeStruct((batch_size, *model.input_size, 3), jnp.uint8)
    vector = jax.ShapeDtypeStruct((batch_size,), jnp.int32)
    shapes = jax.eval_shape(step, params, images, vector, vector)
    stores = {k: shapes[k].shape[1:] for k in ("maps", "guided") if k in shapes}
    columns = {k: t for k, t in COLUMNS.items() if k in shapes or k == "pointing_hit"}
    items = ItemOutput(out, source, n, stores, columns, args)
    what = TITLES[cmd] + (f" @{args.layer}" if cmd == "gradcam" else "")
    with items, Progress(len(items.indices), cmd) as bar:
        bar.update(items.done)
        for batch in items.stream(model.preprocess, batch_size):
            t0 = time.perf_counter()
            res = step(
                params,
                put(batch.images),
                put(np.asarray(target_array(target, batch_size))),
                put(batch.index.astype(np.int32)),
            )
            res = jax.tree.map(np.asarray, res)
            with items.commit(batch):
                out.timing("attribution_s", time.perf_counter() - t0)
                for row in np.flatnonzero(batch.mask):
                    i = int(batch.index[row])
                    item = {k: res[k][row].item() for k in columns if k in res}
                    box = item_box(source, i, model)
                    if box is not None:
                        item["pointing_hit"] = pointing_hit(
                            res["heat"][row], box, args.pointing_tolerance
                        )
                    items.add(i, {k: res[k][row] for k in stores}, item)
                    if items.sample(i):
                        title = f"{model.class_name(item['target'])} (p={item['prob']:.3f}): {what}"
                        heat = res["heat"][row]
                        draw = functools.partial(overlay, batch.images[row].copy(), heat, title)
                        items.png(f"{i:07d}", draw)
            bar.update(items.done - bar.n)

    def complete(table) -> None:
        out.results.update(summary(out, table, args))
        out.finish()
        score = out.results["pointing_game"]["score"]
        print(
            f"{out.counts.get('images', 0)} images, {len(out.skipped)} skipped, pointing game "
            f"{'n/a' if score is None else f'{score:.3f}'} -> {args.out}"
        )

    items.finish(complete)
    return 0


RANDOMIZATION_DRAWS = 3  # one re-initialization swings the top stages' mean by ~0.4


def randomization(step, model: Model, params: Params, batch, target, put, replicate, key) -> dict:
    """Adebayo's cascading randomization of the heat maps of one batch's real images, over
    RANDOMIZATION_DRAWS re-initializations: {deepest re-initialized stage: {mean, per_draw,
    pairs, undefined}}, top stage first. mean: over every (draw, image) pair; undefined counts
    the pairs whose map is constant (an all-zero Grad-CAM), where Spearman is undefined.
    put / replicate: place a batch / params on the job's mesh."""
    rows = np.flatnonzero(batch.mask)
    images, index = put(batch.images), put(batch.index.astype(np.int32))
    trained = step(params, images, put(np.asarray(target_array(target, len(batch.mask)))), index)
    fixed = put(np.asarray(trained["target"]))  # the trained model's class for every re-init
    heat = lambda p: step(replicate(p), images, fixed, index)["heat"]  # noqa: E731
    draws = [
        faith.randomization_check(
            heat, model, params, jax.random.fold_in(key, d), reference=trained["heat"]
        )
        for d in range(RANDOMIZATION_DRAWS)
    ]
    report = {}
    for stage in draws[0]:
        c = np.stack([d[stage][rows] for d in draws])  # [draws, images]
        ok = np.isfinite(c)
        per_draw = [float(r[k].mean()) if k.any() else None for r, k in zip(c, ok, strict=True)]
        report[stage] = {
            "mean": float(c[ok].mean()) if ok.any() else None,
            "per_draw": per_draw,
            "pairs": int(ok.sum()),
            "undefined": int((~ok).sum()),
        }
    return report


def summary(out: JobOutput, table, args: AttributionConfig) -> dict:
    """The job's results from its item table: throughput, pointing game, scalar statistics."""
    images = out.counts.get("images", 0)
    hits = table["pointing_hit"].drop_null().to_numpy(zero_copy_only=False)
    res = {
        "images": images,
        "images_per_s": images / max(out.timings.get("attribution_s", 0.0), 1e-9),
        "pointing_game": {
            "score": float(np.mean(hits)) if len(hits) else None,
            "images_with_box": len(hits),
            "tolerance_px": args.pointing_tolerance,
        },
    }
    for k in [
        c for c in ("completeness_error", "deletion", "insertion") if c in table.column_names
    ]:
        a = table[k].drop_null().to_numpy(zero_copy_only=False)
        if len(a):
            res[k] = {"mean": float(a.mean()), "median": float(np.median(a)), "max": float(a.max())}
    return res
