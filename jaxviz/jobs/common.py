"""Options every job shares (model, data, output), as config pieces, and turning them into
objects.

Job configs inherit `ModelOptions` (which holds `DistributedOptions`), `DataOptions` and
`OutOptions` (jobs/config.py); per-item jobs add `jobs.items.ItemOptions`.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any

import jax.numpy as jnp

from jaxviz.data.pipeline import AUTO_WORKERS_MIN_ITEMS
from jaxviz.data.sources import Source, open_source
from jaxviz.jobs.config import NON_NEGATIVE, NOT_A_FILE, POSITIVE, JobConfig, option
from jaxviz.models.stage import Model, Params, cast_params
from jaxviz.models.zoo import load_model, names
from jaxviz.runtime.distributed import initialize_from

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


@dataclass(kw_only=True)
class DistributedOptions(JobConfig):
    """How a command joins a multi-process run (runtime/distributed.py `initialize_from`)."""

    GROUP = "multi-process run"

    coordinator: str | None = option(
        None,
        "join a multi-process run (process 0's address); under SLURM with several tasks this "
        "is detected on its own",
        metavar="HOST:PORT",
    )
    num_processes: int | None = option(None, "with --coordinator", check=POSITIVE)
    process_id: int | None = option(None, "with --coordinator", check=NON_NEGATIVE)


@dataclass(kw_only=True)
class ModelOptions(DistributedOptions):
    GROUP = "model"

    model: str = option(
        "demo",
        f"zoo name ({', '.join(names())}), NAME=PATH to a checkpoint file, or MODULE:ATTR of "
        "a factory returning (Model, params)",
    )
    random_init: bool = option(False, "random weights instead of embedded ones (tests, benchmarks)")
    seed: int = option(0, "seed for --random-init")
    dtype: str = option("float32", "compute dtype of forward passes", choices=tuple(sorted(DTYPES)))


@dataclass(kw_only=True)
class DataOptions(JobConfig):
    GROUP = "data"

    data: str = option(
        help="a directory (recursive; class subfolders are labels), a labels file (.tsv/.csv: "
        "path, label), WebDataset tar shards ('train-{000000..000127}.tar'), .parquet (Hugging "
        "Face image layout), .array_record, a text file of paths, a glob, a .npy/.npz of "
        "uint8 NHWC images, shapes:N[:SEED] (synthetic set), or samples"
    )
    batch_size: int = option(32, "images per batch", check=POSITIVE)
    limit: int | None = option(None, "use at most this many images", check=POSITIVE)
    workers: int | None = option(
        None,
        "decoding processes; 0 decodes in threads of the main process (default: one per "
        f"available core, or 0 below {AUTO_WORKERS_MIN_ITEMS} images)",
        check=NON_NEGATIVE,
        metavar="N",
    )
    exact_decode: bool = option(
        False,
        "decode JPEGs at full size (default: DCT-downscaled while decoding to no less than the "
        "size the model's preprocessing resizes to, about 2x faster on large photos)",
    )


@dataclass(kw_only=True)
class OutOptions(JobConfig):
    GROUP = "outputs"

    out: str | None = option(None, "output folder", check=NOT_A_FILE)


_SHARED_MODELS: ContextVar[dict | None] = ContextVar("jaxviz_shared_models", default=None)
# a model and a data source handed over as objects (jaxviz.run) instead of spec strings
_GIVEN: ContextVar[dict | None] = ContextVar("jaxviz_given_inputs", default=None)


@contextmanager
def shared_models() -> Iterator[None]:
    """Inside this block, `model_from_args` loads each (model, random_init, seed, dtype) once
    and hands the same model and params to every job that asks (the jobs of one shared pass;
    params are immutable arrays, so sharing them is safe)."""
    token = _SHARED_MODELS.set({})
    try:
        yield
    finally:
        _SHARED_MODELS.reset(token)


@contextmanager
def given_inputs(
    model: tuple[Model, Params] | None = None, source: Source | None = None
) -> Iterator[None]:
    """Inside this block, `model_from_args` returns `model` and `source_from_args` returns
    `source` (where given) whatever the config's spec strings say (jaxviz.run with objects)."""
    token = _GIVEN.set({k: v for k, v in (("model", model), ("source", source)) if v})
    try:
        yield
    finally:
        _GIVEN.reset(token)


def model_from_args(args: Any) -> tuple[Model, Params]:
    """The model and its params (cast to --dtype) named by the config; joins the
    multi-process run it names first (before anything starts a JAX backend)."""
    initialize_from(args)
    given = (_GIVEN.get() or {}).get("model")
    if given is not None:
        model, params = given
        return model, _cast(params, args.dtype)
    cache = _SHARED_MODELS.get()
    key = (args.model, args.random_init, args.seed, args.dtype)
    if cache is not None and key in cache:
        return cache[key]
    model, params = load_model(args.model, random_init=args.random_init, seed=args.seed)
    params = _cast(params, args.dtype)
    if cache is not None:
        cache[key] = (model, params)
    return model, params


def _cast(params: Params, dtype: str) -> Params:
    return params if dtype == "float32" else cast_params(params, DTYPES[dtype])


def source_from_args(args: Any) -> Source:
    """The data source named by the config (`--data`), or the one handed over by jaxviz.run."""
    given = (_GIVEN.get() or {}).get("source")
    return given if given is not None else open_source(args.data)


def model_config(args: Any) -> dict:
    return {
        "model": args.model,
        "random_init": args.random_init,
        "seed": args.seed,
        "dtype": args.dtype,
    }


def scan_key(args: Any) -> tuple:
    """What must be equal for two scan jobs to share one pass over the data."""
    return (
        args.model,
        args.random_init,
        args.seed,
        args.dtype,
        args.data,
        args.batch_size,
        args.limit,
        getattr(args, "exact_decode", False),
    )
