"""Typed job configs: one `@dataclass` per job, the single place its options are declared.

A config field is declared with `option(default, "one-line help", check=..., choices=...)`; a
field without a default is required. From one declaration come:

- the CLI parser (`add_arguments(parser, Config)`): `--field-name` with the help line, the type
  of the annotation, bools as flags, ranges checked while parsing (exit 2, one line naming it);
- the study's validation (`from_values(Config, table, where=...)`): TOML values checked for type
  and range and turned into a config directly, errors naming the part, job and key;
- `jaxviz.run(job, **config)`, which builds the config from Python keywords the same way.

Field names equal the argparse dests (`--batch-size` -> `batch_size`), so a job body reads
`config.batch_size` whether the config came from the CLI, a study or Python. Shared pieces
(model, data, output options) are dataclasses that job configs inherit (`jobs/common.py`).

    @dataclass(kw_only=True)
    class PatchesConfig(ModelOptions, DataOptions, OutOptions):
        layer: str = option(help="stage whose channels to mine (e.g. conv5)")
        top: int = option(9, "patches per channel", check=POSITIVE)
"""

from __future__ import annotations

import argparse
import dataclasses
import types
import typing
from collections.abc import Callable
from dataclasses import MISSING, dataclass, field, fields
from pathlib import Path
from typing import Any, ClassVar

from jaxviz.errors import UsageError


class Parser(argparse.ArgumentParser):
    """An argument parser that raises a one-line UsageError instead of printing usage and
    exiting (the CLI prints it as one line, exit 2; the study adds the part and job)."""

    def error(self, message: str):  # type: ignore[override]
        raise UsageError(message)


@dataclass(frozen=True)
class Check:
    """A declared range of a value: `ok(value)` says whether it is in range; `text` completes
    "must be ..." in the error."""

    text: str
    ok: Callable[[Any], bool]

    def error(self, value: Any) -> str | None:
        """None when `value` is in range (None always is: "not given"), else the complaint."""
        if value is None or self.ok(value):
            return None
        return f"must be {self.text}, got {value!r}"


POSITIVE = Check("> 0", lambda v: v > 0)
NON_NEGATIVE = Check(">= 0", lambda v: v >= 0)
UNIT_INTERVAL = Check("in (0, 1]", lambda v: 0 < v <= 1)
NOT_A_FILE = Check("a folder, not an existing file", lambda v: not Path(v).is_file())


def option(
    default: Any = MISSING,
    help: str = "",
    *,
    check: Check | None = None,
    choices: tuple | None = None,
    metavar: str | None = None,
    positional: bool = False,
) -> Any:
    """A config field: its default (none: required), one-line help, range and choices."""
    meta = {
        "help": help,
        "check": check,
        "choices": choices,
        "metavar": metavar,
        "positional": positional,
    }
    if isinstance(default, list):
        return field(default_factory=lambda: list(default), metadata=meta)
    return field(default=default, metadata=meta)


def redefault(cls: type, name: str, default: Any) -> Any:
    """Field `name` of config class `cls` (help, range) with another default, for a subclass:
    `model: str = redefault(ModelOptions, "model", "efficientnet_lite0")`."""
    return field(default=default, metadata=cls.__dataclass_fields__[name].metadata)


@dataclass(kw_only=True)
class JobConfig:
    """Base of every job config. `command` is the job's name, set by whoever builds the config
    (the registry knows it), never an option."""

    command: str = field(default="", metadata={"internal": True})
    # the --help section of the options a class declares itself (None: the job's own options)
    GROUP: ClassVar[str | None] = None


def options(cls: type) -> list[dataclasses.Field]:
    """The user-facing fields of a config class, in declaration order."""
    return [f for f in fields(cls) if not f.metadata.get("internal")]


def _types(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _base(tp: Any) -> tuple[Any, bool]:
    """(the type without None, whether None is allowed) of an annotation like `int | None`."""
    args = typing.get_args(tp)
    if typing.get_origin(tp) in (typing.Union, types.UnionType) and type(None) in args:
        rest = [a for a in args if a is not type(None)]
        return rest[0], True
    return tp, False


def _default(f: dataclasses.Field) -> Any:
    if f.default is not MISSING:
        return f.default
    if f.default_factory is not MISSING:
        return f.default_factory()
    return MISSING


def flag(name: str) -> str:
    """`batch_size` -> `--batch-size`."""
    return "--" + name.replace("_", "-")


def checked(base: type, check: Check | None) -> Callable[[str], Any]:
    """An argparse `type=` that parses `base` and enforces `check` (one-line argparse error)."""

    def parse(text: str) -> Any:
        value = base(text)
        problem = check.error(value) if check else None
        if problem:
            raise argparse.ArgumentTypeError(problem)
        return value

    parse.__name__ = base.__name__  # argparse names it in "invalid int value"
    return parse


def add_arguments(parser: argparse.ArgumentParser, cls: type, defaults: dict | None = None):
    """Add one argument per option of config class `cls`; `defaults` overrides field defaults
    (e.g. `out/JOB`)."""
    hints = _types(cls)
    groups: dict[str | None, Any] = {None: parser}
    for f in sorted(options(cls), key=lambda f: HELP_GROUPS.index(_group(cls, f.name))):
        title = _group(cls, f.name)
        if title not in groups:
            groups[title] = parser.add_argument_group(title)
        into = groups[title]
        base, _ = _base(hints[f.name])
        default = (defaults or {}).get(f.name, _default(f))
        meta = f.metadata
        help_ = meta["help"]
        if not (default is MISSING or default is None or default is False or default == []):
            help_ += f" (default: {default})"
        kw: dict[str, Any] = {"help": help_}
        if meta.get("metavar"):
            kw["metavar"] = meta["metavar"]
        if typing.get_origin(base) is list:
            kw.update(nargs="*", default=default, type=typing.get_args(base)[0])
        elif base is bool:
            kw.update(
                default=default, action=argparse.BooleanOptionalAction if default else "store_true"
            )
        else:
            kw.update(type=checked(base, meta.get("check")), choices=meta.get("choices"))
            if default is MISSING:
                kw["required"] = True
            else:
                kw["default"] = default
        if meta.get("positional"):
            kw.pop("required", None)  # a positional without a default is required as it is
            if default is not MISSING:
                kw.setdefault("nargs", "?")
            into.add_argument(f.name, **kw)
        else:
            into.add_argument(flag(f.name), dest=f.name, **kw)


HELP_GROUPS = (None, "model", "data", "outputs", "multi-process run")  # --help's order


def _group(cls: type, name: str) -> str | None:
    """The help group of field `name`: that of the class first declaring it (a subclass may
    redefault it, see `redefault`)."""
    for k in reversed(cls.__mro__):
        if name in vars(k).get("__annotations__", {}):
            return vars(k).get("GROUP")
    return None


def from_namespace(cls: type, ns: argparse.Namespace, command: str) -> Any:
    """The config of a parsed command line (parsing already checked types and ranges)."""
    return cls(command=command, **{f.name: getattr(ns, f.name) for f in options(cls)})


_TYPE_NAMES = {int: "int", float: "float", str: "string", bool: "boolean"}


def _coerce(base: Any, value: Any) -> tuple[Any, bool]:
    """(value as `base`, whether it has that type); ints are accepted as floats, bools never
    as numbers; a list for a string option is its comma-separated form (`[0, 3]` -> "0,3"), a
    number its text (`png = 4`, `fill = 0.5`, `target = 3`), as the CLI spells them."""
    if base is str and isinstance(value, int | float) and not isinstance(value, bool):
        return str(value), True
    if base is str and isinstance(value, list):
        ok = all(isinstance(v, str | int) and not isinstance(v, bool) for v in value)
        return (",".join(map(str, value)), True) if ok and value else (value, False)
    if base is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value), True
    if typing.get_origin(base) is list:
        item = typing.get_args(base)[0]
        ok = isinstance(value, list) and all(isinstance(v, item) for v in value)
        return value, ok
    if base in (int, float) and isinstance(value, bool):
        return value, False
    return value, isinstance(value, base)


def from_values(
    cls: type,
    values: dict[str, Any],
    *,
    command: str,
    where: str,
    defaults: dict | None = None,
) -> Any:
    """A config from typed values (a study's TOML table, Python keywords), each checked for
    name, type, choices and range. Errors are one-line UsageErrors starting with `where`
    (e.g. "part 'demo', job 'patches'") and naming the key."""
    hints = _types(cls)
    known = {f.name: f for f in options(cls)}
    for key in values:
        if key not in known:
            raise UsageError(f"{where}: unknown option {key!r}; options: {', '.join(known)}")
    kwargs = {}
    for name, f in known.items():
        if name in values:
            value = values[name]
        else:
            value = (defaults or {}).get(name, _default(f))
            if value is MISSING:
                raise UsageError(f"{where}: option {name!r} is required ({f.metadata['help']})")
        base, nullable = _base(hints[name])
        if value is None and nullable:
            kwargs[name] = None
            continue
        value, ok = _coerce(base, value)
        if not ok:
            expected = _TYPE_NAMES.get(base, getattr(base, "__name__", str(base)))
            raise UsageError(f"{where}: {name}: invalid {expected} value {value!r}")
        choices = f.metadata.get("choices")
        if choices and value not in choices:
            raise UsageError(
                f"{where}: {name}: {value!r} is not one of: {', '.join(map(str, choices))}"
            )
        check = f.metadata.get("check")
        problem = check.error(value) if check else None
        if problem:
            raise UsageError(f"{where}: {name} {problem}")
        kwargs[name] = value
    return cls(command=command, **kwargs)


def as_dict(config: Any) -> dict[str, Any]:
    """The options of a config as a plain dict (for manifests)."""
    return {f.name: getattr(config, f.name) for f in options(type(config))}
