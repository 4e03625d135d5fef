"""`jaxviz classviz|invert|dream`: images synthesized by optimizing a network's input.

The subcommand (`args.command`) picks the method of jaxviz.methods.synthesis; one compiled loop
runs a whole batch (classes for classviz, images for invert and dream), sharded over local devices.

- classviz: per class `CLASS_NAME.png` (upscaled x4), `grid.png` captioned with each class's name
  and the model's probability of it, `images.npy` [N, H, W, 3] float32 in [0, 1]; results list the
  probabilities.
- invert / dream (`jobs.items` layout, row i = item i): `images.zarr` [N, H, W, 3] (the results
  in [0, 1]), `items.parquet` with per item the relative feature distance (invert; "before" is
  that of the plain mean-colour image) or the layer energy 0.5 ||a||^2 (dream) before and after,
  and for a sample png/STEM.png (the input beside the result).
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

from jaxviz.jobs.attribution import NOT_CONFIG
from jaxviz.jobs.common import (
    DataOptions,
    ModelOptions,
    OutOptions,
    model_config,
    model_from_args,
    source_from_args,
)
from jaxviz.jobs.config import NON_NEGATIVE, POSITIVE, Check, option, redefault
from jaxviz.jobs.items import ItemOptions, ItemOutput
from jaxviz.jobs.output import JobOutput
from jaxviz.methods import synthesis as syn
from jaxviz.methods.targets import parse_target
from jaxviz.models.stage import Model, Params, forward_fn
from jaxviz.render.grid import caption, tile_grid, upscale
from jaxviz.runtime.devices import batch_sharding, local_mesh, replicated, round_up
from jaxviz.runtime.progress import Progress

ASCENT = syn.DEFAULT_ASCENT  # classviz's defaults are those of the ascent


@dataclass(kw_only=True)
class SynthesisConfig(ModelOptions, OutOptions):
    """Options of every synthesis job; each job's own defaults of steps and lr."""

    steps: int = option(ASCENT.steps, "steps", check=POSITIVE)
    lr: float = option(ASCENT.lr, "step size", check=POSITIVE)
    synth_seed: int = option(0, "noise/jitter seed")


@dataclass(kw_only=True)
class ClassvizConfig(SynthesisConfig):
    classes: str = option("all", "comma-separated class ids or names, or 'all'")
    batch_size: int = option(32, "classes per batch", check=POSITIVE)
    l2: float = option(ASCENT.l2, "L2 decay per step", check=NON_NEGATIVE)
    blur_every: int = option(ASCENT.blur_every, "blur every N steps", check=POSITIVE)
    blur_sigma: float = option(ASCENT.blur_sigma, "blur std in pixels", check=NON_NEGATIVE)
    blur_until: float = option(
        ASCENT.blur_until,
        "blur only during this first fraction of the steps; the rest sharpen",
        check=Check("in [0, 1]", lambda v: 0 <= v <= 1),
    )
    clip_norm_pct: float = option(
        ASCENT.clip_norm_pct,
        "after each step reset pixels whose norm is below this per-image quantile to the mean "
        "colour (Yosinski 2015; e.g. 0.5; 0: off)",
        check=Check("in [0, 1)", lambda v: 0 <= v < 1),
    )
    objective: str = option(
        "logprob",
        "score ascended: the class log-probability, or the class logit as in Simonyan 2014 (on "
        "the demo model the logit also raises similar classes: ring -> circle)",
        choices=("logprob", "logit"),
    )
    jitter: int = option(ASCENT.jitter, "max random roll in px", check=NON_NEGATIVE)


@dataclass(kw_only=True)
class PerImageSynthesisConfig(SynthesisConfig, DataOptions, ItemOptions):
    """Options of the synthesis jobs that start from each image of a source."""

    layer: str = option(help="stage whose features are used")


@dataclass(kw_only=True)
class InvertConfig(PerImageSynthesisConfig):
    tv_weight: float = option(0.05, "total-variation weight", check=NON_NEGATIVE)
    tv_beta: float = option(2.0, "TV exponent beta", check=POSITIVE)
    lr: float = redefault(SynthesisConfig, "lr", 0.05)


@dataclass(kw_only=True)
class DreamConfig(PerImageSynthesisConfig):
    octaves: int = option(3, "number of scales", check=POSITIVE)
    octave_scale: float = option(1.4, "ratio between scales", check=POSITIVE)
    jitter: int = option(4, "max random roll in px", check=NON_NEGATIVE)
    steps: int = redefault(SynthesisConfig, "steps", 20)
    lr: float = redefault(SynthesisConfig, "lr", 0.02)


def parse_classes(spec: str, model: Model) -> list[int]:
    """`--classes`: 'all' or comma-separated ids/names -> class ids."""
    if spec == "all":
        return list(range(model.num_classes))
    return [parse_target(s.strip(), model.num_classes, model.class_names) for s in spec.split(",")]


def make_step(args: SynthesisConfig, model: Model):
    """The jitted synthesis of one batch: (params, inputs) -> dict of [B, ...] arrays."""
    key = jax.random.key(args.synth_seed)
    cmd = args.command
    if cmd == "classviz":  # its options of the same names as Ascent's fields
        names = [f.name for f in dataclasses.fields(syn.Ascent) if hasattr(args, f.name)]
        ascent = syn.Ascent(**{k: getattr(args, k) for k in names})

    def classviz(params: Params, classes: jax.Array) -> dict:
        x = syn.class_visualization(model, params, classes, key, ascent, args.objective)
        probs = jax.nn.softmax(forward_fn(model)(params, x).astype(jnp.float32), axis=-1)
        return {"x": x, "prob": jnp.take_along_axis(probs, classes[:, None], axis=1)[:, 0]}

    def invert(params: Params, images: jax.Array) -> dict:
        x0 = model.preprocess.normalize(images)
        x = syn.invert(model, params, x0, args.layer, key, args.steps, args.lr, args.tv_weight,
                       args.tv_beta)  # fmt: skip
        target = forward_fn(model, stop=args.layer)(params, x0)
        return {
            "x": x,
            "before": syn.feature_distance(model, params, jnp.zeros_like(x0), target, args.layer),
            "after": syn.feature_distance(model, params, x, target, args.layer),
        }

    def dream(params: Params, images: jax.Array) -> dict:
        x0 = model.preprocess.normalize(images)
        x = syn.dream(model, params, x0, args.layer, key, args.steps, args.lr, args.octaves,
                      args.octave_scale, args.jitter)  # fmt: skip
        return {
            "x": x,
            "before": syn.layer_energy(model, params, x0, args.layer),
            "after": syn.layer_energy(model, params, x, args.layer),
        }

    return jax.jit({"classviz": classviz, "invert": invert, "dream": dream}[cmd])


def run(args: SynthesisConfig) -> int:
    model, params = model_from_args(args)
    if isinstance(args, PerImageSynthesisConfig):
        model.index(args.layer)  # a one-line UsageError naming the stages
    mesh = local_mesh()
    batch_size = round_up(args.batch_size, mesh.size)
    config = {
        **model_config(args),
        **{k: v for k, v in vars(args).items() if k not in NOT_CONFIG},
        "batch_size": batch_size,
    }
    out = JobOutput(args.out, args.command, config)
    step = make_step(args, model)
    params = jax.device_put(params, replicated(mesh))
    put = functools.partial(jax.device_put, device=batch_sharding(mesh))
    if isinstance(args, ClassvizConfig):
        _classviz(args, model, params, step, put, out, batch_size)
        _finish(args, out)
    else:
        _per_image(args, model, params, step, put, out, batch_size)
    return 0


def _finish(args: SynthesisConfig, out: JobOutput) -> None:
    out.finish()
    print(f"{args.command}: {out.counts} -> {args.out}")


def _to01(model: Model, x: np.ndarray) -> np.ndarray:
    return np.asarray(model.preprocess.denormalize(jnp.asarray(x)))


def _classviz(args, model, params, step, put, out: JobOutput, batch_size: int) -> None:
    classes = parse_classes(args.classes, model)
    batch_size = min(batch_size, round_up(len(classes), jax.local_device_count()))
    images, probs = [], []
    with Progress(len(classes), "classviz", unit="class") as bar:
        for s in range(0, len(classes), batch_size):
            chunk = classes[s : s + batch_size]
            padded = np.asarray(chunk + [chunk[-1]] * (batch_size - len(chunk)), np.int32)
            t0 = time.perf_counter()
            res = jax.tree.map(np.asarray, step(params, put(padded)))
            out.timing("synthesis_s", time.perf_counter() - t0)
            images.append(_to01(model, res["x"][: len(chunk)]))
            probs.extend(float(p) for p in res["prob"][: len(chunk)])
            out.count("classes", len(chunk))
            bar.update(len(chunk))
    images = np.concatenate(images)
    tiles = []
    for k, img, p in zip(classes, images, probs, strict=True):
        name = model.class_name(k)
        big = (upscale(img, 4) * 255 + 0.5).astype(np.uint8)
        out.png(f"{k:04d}_{name}.png", big)
        tiles.append(caption(big, f"{name} p={p:.3f}"))
    out.png("grid.png", tile_grid(np.stack(tiles), ncols=min(len(tiles), 5)))
    out.npy("images.npy", images.astype(np.float32))
    out.results["classes"] = [
        {"class": k, "name": model.class_name(k), "prob": p}
        for k, p in zip(classes, probs, strict=True)
    ]
    out.results["min_prob"] = min(probs)


def _per_image(args, model, params, step, put, out: JobOutput, batch_size: int) -> None:
    source = source_from_args(args)
    n = len(source) if args.limit is None else min(args.limit, len(source))
    columns = {"before": pa.float32(), "after": pa.float32()}
    items = ItemOutput(out, source, n, {"images": (*model.input_size, 3)}, columns, args)
    with items, Progress(len(items.indices), args.command) as bar:
        bar.update(items.done)
        for batch in items.stream(model.preprocess, batch_size):
            t0 = time.perf_counter()
            res = jax.tree.map(np.asarray, step(params, put(batch.images)))
            result = _to01(model, res["x"])
            with items.commit(batch):
                out.timing("synthesis_s", time.perf_counter() - t0)
                for row in np.flatnonzero(batch.mask):
                    i = int(batch.index[row])
                    scores = {k: float(res[k][row]) for k in columns}
                    items.add(i, {"images": result[row]}, scores)
                    if items.sample(i):
                        pair = np.concatenate([batch.images[row] / 255.0, result[row]], axis=1)
                        items.png(
                            f"{i:07d}", lambda p=pair: (upscale(p, 2) * 255 + 0.5).astype(np.uint8)
                        )
            bar.update(items.done - bar.n)

    def complete(table) -> None:
        before = table["before"].drop_null().to_numpy(zero_copy_only=False)
        after = table["after"].drop_null().to_numpy(zero_copy_only=False)
        if len(before):
            if args.command == "invert":
                what, ratio = "feature_distance", ("median_reduction", before / after)
            else:
                what, ratio = "layer_energy", ("median_gain", after / before)
            out.results[what] = {
                "before_mean": float(before.mean()),
                "after_mean": float(after.mean()),
                ratio[0]: float(np.median(ratio[1])),
            }
        _finish(args, out)

    items.finish(complete)
