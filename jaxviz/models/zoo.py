"""The model zoo: names, builders, embedded weights and checkpoint readers.

`--model` takes a zoo name with embedded weights (`demo`, `efficientnet_lite0`), `NAME=PATH` for a
checkpoint the user has, or `NAME` with `random_init=True` for tests and benchmarks.
Each family module defines a `ZooEntry` object; this registry imports it lazily.
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Callable
from dataclasses import dataclass

import jax

from jaxviz.errors import UsageError, unknown
from jaxviz.models.stage import Model, Params, init_params


@dataclass(frozen=True)
class ZooEntry:
    """One zoo model.

    build: makes the (parameter-free) Model description.
    embedded: loads weights that ship with jaxviz or an installed package (None: none ship).
    load_checkpoint: reads a user's checkpoint file (path) into params for `model`.
    """

    name: str
    description: str
    build: Callable[[], Model]
    embedded: Callable[[Model], Params] | None = None
    load_checkpoint: Callable[[Model, str], Params] | None = None


# name -> "module:attribute" of its ZooEntry; imported only when asked for.
_REGISTRY: dict[str, str] = {
    "demo": "jaxviz.models.demo:ENTRY",
    "efficientnet_lite0": "jaxviz.models.efficientnet_lite:ENTRY",
    "alexnet": "jaxviz.models.alexnet:ENTRY",
    "vgg16": "jaxviz.models.vgg:ENTRY",
    "resnet18": "jaxviz.models.resnet:RESNET18",
    "resnet50": "jaxviz.models.resnet:RESNET50",
}


def register(name: str, target: str) -> None:
    """Add a zoo entry given as 'module:attribute' (used by family modules and plugins)."""
    _REGISTRY[name] = target


def names() -> list[str]:
    return sorted(_REGISTRY)


def entry(name: str) -> ZooEntry:
    if name not in _REGISTRY:
        raise unknown("model", name, names())
    module, attr = _REGISTRY[name].split(":")
    return getattr(importlib.import_module(module), attr)


def load_model(spec: str, random_init: bool = False, seed: int = 0) -> tuple[Model, Params]:
    """Parse a `--model` spec and return (model, params).

    spec: 'NAME' (embedded weights, or random with random_init) or 'NAME=PATH' (a checkpoint).
    """
    name, _, path = spec.partition("=")
    e = entry(name)
    model = e.build()
    if path:
        if not os.path.exists(path):
            raise UsageError(f"checkpoint file not found: {path}")
        if e.load_checkpoint is None:
            raise UsageError(f"model {name} cannot read checkpoint files")
        return model, e.load_checkpoint(model, path)
    if random_init:
        return model, init_params(model, jax.random.key(seed))
    if e.embedded is None:
        raise UsageError(
            f"model {name} ships no weights; pass {name}=PATH to a checkpoint or --random-init"
        )
    return model, e.embedded(model)
