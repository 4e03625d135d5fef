"""Studies: a TOML file naming models, data and the jobs to run on them, validated up front.

    [study]
    name = "my-study"            # a title for the report

    [[part]]                     # one model on one data source
    name = "demo"                # subfolder of --out (default: the model name)
    model = "demo"               # any --model spec
    data = "shapes:1000:7"       # any --data spec
    batch_size = 64              # options here apply to every job of the part that takes them

    [part.patches]               # a job and its options (the job's CLI flags, without --)
    layer = "conv2"
    [[part.occlusion]]           # a list of tables runs the job several times (occlusion_1, ...)
    window = 16

Every option is checked by the job's own argument parser before any work starts; layer names are
checked against the model. Errors are UsageErrors that name the part, the job and the key.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib
import json
import tomllib
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

from jaxviz.cli import COMMANDS
from jaxviz.errors import UsageError, unknown

PART_OPTIONS = ("name", "model", "data", "random_init", "seed", "dtype", "batch_size", "limit")
# every job a study may name, in the order they run within a part (producers before the jobs
# that read their outputs)
SWEEP_JOBS = (
    "filters",
    "evaluate",
    "classify",
    "features",
    "patches",
    "channels",
    "activations",
    "tsne",
    "neighbors",
    "occlusion",
    "saliency",
    "guided",
    "gradcam",
    "ig",
    "smoothgrad",
    "classviz",
    "invert",
    "dream",
)
# jobs whose input is another job's output folder: option -> producing job
DEPENDS = {"tsne": ("features", "features"), "neighbors": ("index", "features")}


class _Parser(argparse.ArgumentParser):
    """An argument parser that raises UsageError instead of exiting."""

    def error(self, message: str):  # type: ignore[override]
        raise UsageError(message)


@dataclass
class Job:
    """One job of a part: its CLI name, output subfolder and parsed arguments."""

    part: str
    command: str
    folder: str
    args: argparse.Namespace
    argv: list[str] = field(default_factory=list)

    @property
    def key(self) -> str:
        return f"{self.part}/{self.folder}"


@dataclass
class Study:
    name: str
    parts: dict[str, list[Job]]
    text: str

    @property
    def digest(self) -> str:
        return hashlib.sha256(self.text.encode()).hexdigest()[:16]


def default_study_text() -> str:
    return (resources.files("jaxviz.assets") / "default_study.toml").read_text()


def _flag_args(options: dict) -> list[str]:
    argv = []
    for k, v in options.items():
        flag = "--" + k.replace("_", "-")
        if isinstance(v, bool):
            argv += [flag] if v else []
        elif isinstance(v, list):
            argv += [flag, ",".join(map(str, v))]
        else:
            argv += [flag, str(v)]
    return argv


def parse_job(part: str, command: str, folder: str, options: dict, common: dict, out: Path) -> Job:
    """Parse one job's options with the job's own parser (UsageError naming part/job/key)."""
    if command not in COMMANDS:
        raise unknown(f"job in part {part!r}:", command, SWEEP_JOBS)
    parser = _Parser(prog=f"jaxviz {command}", add_help=False)
    importlib.import_module(COMMANDS[command][0]).add_arguments(parser)
    known = {a.dest for a in parser._actions}
    bad = [k for k in options if k not in known or k == "out"]
    if bad:
        choices = sorted(k for k in known if k not in ("out", "help"))
        raise UsageError(
            f"part {part!r}, job {command!r}: unknown option {bad[0]!r}; "
            f"options: {', '.join(choices)}"
        )
    merged = {k: v for k, v in common.items() if k in known and k != "name"}
    merged.update(options)
    argv = _flag_args(merged) + ["--out", str(out / part / folder)]
    try:
        args = parser.parse_args(argv)
    except UsageError as e:
        raise UsageError(f"part {part!r}, job {command!r}: {e}") from None
    args.command = command
    return Job(part, command, folder, args, argv)


def _check_layers(job: Job) -> None:
    layer = getattr(job.args, "layer", None)
    spec = getattr(job.args, "model", None)
    if layer and spec:
        from jaxviz.models.zoo import entry

        model = entry(spec.partition("=")[0]).build()
        if layer not in model.stage_names:
            raise UsageError(
                f"part {job.part!r}, job {job.command!r}: unknown layer {layer!r} "
                f"of model {model.name}; choose from: {', '.join(model.stage_names)}"
            )


def load_study(text: str, out: Path, source_name: str = "study") -> Study:
    """Parse and validate a study; nothing runs. Raises UsageError on any problem."""
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise UsageError(f"{source_name}: invalid TOML: {e}") from None
    bad = set(doc) - {"study", "part"}
    if bad:
        raise unknown(f"top-level key in {source_name}:", sorted(bad)[0], ["study", "part"])
    meta = doc.get("study", {})
    if set(meta) - {"name", "description"}:
        raise unknown(
            "key in [study]:",
            sorted(set(meta) - {"name", "description"})[0],
            ["name", "description"],
        )
    parts_doc = doc.get("part", [])
    if not parts_doc:
        raise UsageError(f"{source_name}: no [[part]] tables; a study needs at least one")
    parts: dict[str, list[Job]] = {}
    for p in parts_doc:
        if "model" not in p or "data" not in p:
            raise UsageError(f"{source_name}: every [[part]] needs model and data; got {p}")
        name = str(p.get("name", p["model"].partition("=")[0]))
        if name in parts:
            raise UsageError(f"{source_name}: two parts are named {name!r}; give each a name")
        common = {k: v for k, v in p.items() if k in PART_OPTIONS}
        jobs = []
        for key, value in p.items():
            if key in PART_OPTIONS:
                continue
            if key not in SWEEP_JOBS:
                raise UsageError(
                    f"part {name!r}: unknown key {key!r}; jobs: "
                    f"{', '.join(SWEEP_JOBS)}; options: {', '.join(PART_OPTIONS)}"
                )
            tables = value if isinstance(value, list) else [value]
            for n, opts in enumerate(tables, 1):
                folder = key if len(tables) == 1 else f"{key}_{n}"
                opts = _with_dependency(name, key, dict(opts), p, out)
                jobs.append(parse_job(name, key, folder, opts, common, out))
        for j in jobs:
            _check_layers(j)
        parts[name] = jobs
    from jaxviz.data.sources import open_source

    for jobs in parts.values():
        for spec in {getattr(j.args, "data", None) for j in jobs} - {None}:
            open_source(spec)
    return Study(str(meta.get("name", source_name)), parts, text)


def _with_dependency(part: str, command: str, opts: dict, part_doc: dict, out: Path) -> dict:
    """tsne/neighbors read the part's features output folder unless told otherwise."""
    if command not in DEPENDS or opts.get(DEPENDS[command][0]):
        return opts
    option, producer = DEPENDS[command]
    if producer not in part_doc:
        raise UsageError(
            f"part {part!r}, job {command!r}: needs {option!r} or a {producer!r} "
            "job in the same part"
        )
    if isinstance(part_doc[producer], list):
        raise UsageError(
            f"part {part!r}, job {command!r}: several {producer!r} jobs; name "
            f"the one to use with {option!r}"
        )
    return {**opts, option: str(out / part / producer)}


def plan_json(study: Study) -> str:
    return json.dumps({p: [j.argv for j in jobs] for p, jobs in study.parts.items()}, indent=2)
