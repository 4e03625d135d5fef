"""Arguments every job shares (--model, --data, --out, ...) and turning them into objects."""

from __future__ import annotations

import argparse
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar

import jax.numpy as jnp

from jaxviz.data.pipeline import AUTO_WORKERS_MIN_ITEMS
from jaxviz.models.stage import Model, Params, cast_params
from jaxviz.models.zoo import load_model, names
from jaxviz.runtime.distributed import add_distributed_args, initialize_from

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


def add_model_args(p: argparse.ArgumentParser, default: str = "demo") -> None:
    p.add_argument(
        "--model",
        default=default,
        help=f"zoo name ({', '.join(names())}), or NAME=PATH to a checkpoint file "
        f"(default: {default})",
    )
    p.add_argument(
        "--random-init",
        action="store_true",
        help="random weights instead of embedded ones (tests, benchmarks)",
    )
    p.add_argument("--seed", type=int, default=0, help="seed for --random-init (default: 0)")
    p.add_argument(
        "--dtype",
        choices=sorted(DTYPES),
        default="float32",
        help="compute dtype of forward passes (default: float32)",
    )
    add_distributed_args(p)


def add_data_args(p: argparse.ArgumentParser, default: str | None = None) -> None:
    p.add_argument(
        "--data",
        default=default,
        required=default is None,
        help="a directory (recursive; class subfolders are labels), a labels file (.tsv/.csv: "
        "path, label), WebDataset tar shards ('train-{000000..000127}.tar'), .parquet (Hugging "
        "Face image layout), .array_record, a text file of paths, a glob, a .npy/.npz of "
        "uint8 NHWC images, shapes:N[:SEED] (synthetic set), or samples"
        + (f" (default: {default})" if default else ""),
    )
    p.add_argument("--batch-size", type=int, default=32, help="images per batch (default: 32)")
    p.add_argument("--limit", type=int, default=None, help="use at most this many images")
    p.add_argument(
        "--workers",
        type=int,
        default=None,
        metavar="N",
        help="decoding processes; 0 decodes in threads of the main process (default: one per "
        f"available core, or 0 below {AUTO_WORKERS_MIN_ITEMS} images)",
    )
    p.add_argument(
        "--exact-decode",
        action="store_true",
        help="decode JPEGs at full size (default: DCT-downscaled while decoding to no less "
        "than the size the model's preprocessing resizes to, about 2x faster on large photos)",
    )


def add_out_arg(p: argparse.ArgumentParser, default: str) -> None:
    p.add_argument("--out", default=default, help=f"output folder (default: {default})")


_SHARED_MODELS: ContextVar[dict | None] = ContextVar("jaxviz_shared_models", default=None)


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


def model_from_args(args: argparse.Namespace) -> tuple[Model, Params]:
    """The model and its params (cast to --dtype) named by the arguments; joins the
    multi-process run they name first (before anything starts a JAX backend)."""
    initialize_from(args)
    cache = _SHARED_MODELS.get()
    key = (args.model, args.random_init, args.seed, args.dtype)
    if cache is not None and key in cache:
        return cache[key]
    model, params = load_model(args.model, random_init=args.random_init, seed=args.seed)
    if args.dtype != "float32":
        params = cast_params(params, DTYPES[args.dtype])
    if cache is not None:
        cache[key] = (model, params)
    return model, params


def model_config(args: argparse.Namespace) -> dict:
    return {
        "model": args.model,
        "random_init": args.random_init,
        "seed": args.seed,
        "dtype": args.dtype,
    }


def scan_key(args: argparse.Namespace) -> tuple:
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
