"""The model zoo: names, builders, embedded weights and checkpoint readers.

`--model` takes a zoo name with embedded weights (`demo`, `efficientnet_lite0`), `NAME=PATH` for a
checkpoint the user has, `NAME` with `random_init=True` for tests and benchmarks, `MODULE:ATTR`
for a factory returning (Model, params) (e.g. through `jaxviz.from_flax`; MODULE is imported
with the working directory on sys.path), or the name of an installed plugin: an entry point in
the group `jaxviz.models` whose object is such a factory or a `ZooEntry`.
Each family module defines a `ZooEntry` object; this registry imports it lazily.
"""

from __future__ import annotations

import functools
import importlib
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass
from importlib.metadata import entry_points

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


PLUGIN_GROUP = "jaxviz.models"


def plugins() -> dict[str, object]:
    """Installed plugins: {name: entry point} of the group `jaxviz.models`."""
    return {ep.name: ep for ep in entry_points(group=PLUGIN_GROUP)}


def names() -> list[str]:
    """Zoo names and installed plugins."""
    return sorted(set(_REGISTRY) | set(plugins()))


def entry(name: str) -> ZooEntry:
    """The zoo entry `name`; an installed plugin's factory becomes an entry whose build and
    weights come from one call of it."""
    if name not in _REGISTRY:
        found = plugins().get(name)
        if found is None:
            raise unknown("model", name, names())
        obj = found.load()
        if isinstance(obj, ZooEntry):
            return obj
        made = functools.cache(lambda: _checked(name, obj()))
        doc = (getattr(obj, "__doc__", None) or f"plugin {found.value}").strip().splitlines()[0]
        return ZooEntry(name, doc, lambda: made()[0], lambda model: made()[1])
    module, attr = _REGISTRY[name].split(":")
    return getattr(importlib.import_module(module), attr)


def factory(spec: str) -> Callable[[], tuple[Model, Params]]:
    """The factory named by 'MODULE:ATTR' (ATTR may be dotted), imported with the working
    directory on sys.path; a one-line UsageError if it cannot be imported or called."""
    module, _, attr = spec.partition(":")
    if os.getcwd() not in sys.path and "" not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        obj = importlib.import_module(module)
    except ImportError as e:
        raise UsageError(f"--model {spec}: cannot import {module!r} ({e})") from None
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise UsageError(f"--model {spec}: module {module!r} has no attribute {attr!r}")
        obj = getattr(obj, part)
    if not callable(obj):
        raise UsageError(f"--model {spec}: {attr!r} is not callable")
    return obj


def _checked(spec: str, made: object) -> tuple[Model, Params]:
    if not (isinstance(made, tuple) and len(made) == 2 and isinstance(made[0], Model)):
        raise UsageError(f"--model {spec}: the factory must return (Model, params)")
    return made


def _is_factory(spec: str) -> bool:
    return ":" in spec and "=" not in spec


def build(spec: str) -> Model:
    """The Model a `--model` spec names, without its weights (checking a study's layer names,
    estimating work); a MODULE:ATTR factory is called, as it is the only way to learn it."""
    if _is_factory(spec):
        return load_model(spec)[0]
    return entry(spec.partition("=")[0]).build()


def load_model(spec: str, random_init: bool = False, seed: int = 0) -> tuple[Model, Params]:
    """Parse a `--model` spec and return (model, params).

    spec: 'NAME' (embedded weights, or random with random_init), 'NAME=PATH' (a checkpoint),
    'MODULE:ATTR' (a factory returning (Model, params)) or an installed plugin's name.
    """
    if _is_factory(spec):
        if random_init:
            raise UsageError(f"--random-init does not apply to --model {spec}")
        return _checked(spec, factory(spec)())
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
