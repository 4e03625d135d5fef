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

Every value is checked against the job's config (jobs/config.py: type, choices, range) before any
work starts; layer names are checked against the model. Part names are plain folder names (no
`/`, `..`, NUL), distinct after normalization, and every job writes under --out. Errors are
one-line UsageErrors that name the part, the job and the key.
"""

from __future__ import annotations

import hashlib
import tomllib
import unicodedata
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from jaxviz.errors import UsageError, unknown
from jaxviz.jobs.common import DataOptions, ModelOptions
from jaxviz.jobs.config import from_values
from jaxviz.jobs.registry import STUDY_JOBS, job

PART_OPTIONS = ("name", "model", "data", "random_init", "seed", "dtype", "batch_size", "limit")
# jobs whose input is another job's output folder: option -> producing job
DEPENDS = {"tsne": ("features", "features"), "neighbors": ("index", "features")}


@dataclass
class Job:
    """One job of a part: its name, output subfolder and config (`args`, a job config)."""

    part: str
    command: str
    folder: str
    args: Any

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


def plain_name(name: Any, what: str) -> str:
    """`name` if it is a plain folder name (a non-empty string, not . or .., without /, \\ or
    control characters), else a UsageError naming `what`."""
    if (
        not isinstance(name, str)
        or name.strip() in ("", ".", "..")
        or any(c in name for c in "/\\")
        or any(unicodedata.category(c) == "Cc" for c in name)
    ):
        raise UsageError(f"{what}: {name!r} is not a plain name (no /, \\, .., control chars)")
    return name


def _normal(name: str) -> str:
    """The form two names are compared in (a case-insensitive file system sees them alike)."""
    return unicodedata.normalize("NFC", name).strip().casefold()


def _inside(out: Path, path: Path, what: str) -> Path:
    """`path`, which must stay under `out` even through symbolic links."""
    if not path.resolve().is_relative_to(out.resolve()):
        raise UsageError(f"{what}: its output folder {path} is outside --out {out}")
    return path


def parse_job(part: str, command: str, folder: str, options: Any, common: dict, out: Path) -> Job:
    """One job's config from its table, merged over the part's options (UsageError naming
    part/job/key)."""
    where = f"part {part!r}, job {command!r}"
    if command not in STUDY_JOBS:
        raise unknown(f"job in part {part!r}:", command, STUDY_JOBS)
    if not isinstance(options, dict):
        raise UsageError(
            f"{where}: expected a table ([part.{command}]) or a list of tables "
            f"([[part.{command}]]), got {type(options).__name__} {options!r}"
        )
    spec = job(command)
    known = [k for k in spec.option_names() if k != "out"]
    bad = [k for k in options if k not in known]
    if bad:
        raise UsageError(f"{where}: unknown option {bad[0]!r}; options: {', '.join(sorted(known))}")
    values = {k: v for k, v in common.items() if k in known}
    values.update(options)
    path = _inside(out, out / part / folder, where)
    return Job(part, command, folder, spec.from_values({**values, "out": str(path)}, where))


def _check_layers(job: Job, models: dict) -> None:
    """The job's layer is a stage of its model (`models`: spec -> Model, filled as needed)."""
    layer = getattr(job.args, "layer", None)
    spec = getattr(job.args, "model", None)
    if layer and spec:
        from jaxviz.models.zoo import build

        model = models[spec] = models.get(spec) or build(spec)
        if layer not in model.stage_names:
            raise UsageError(
                f"part {job.part!r}, job {job.command!r}: unknown layer {layer!r} "
                f"of model {model.name}; choose from: {', '.join(model.stage_names)}"
            )


def _part_options(p: dict, name: str) -> dict:
    """The part-wide options, checked for type and range like any job's."""
    common = {k: v for k, v in p.items() if k in PART_OPTIONS and k != "name"}
    for piece in (ModelOptions, DataOptions):
        keys = {f for f in piece.__dataclass_fields__ if f != "command"}
        from_values(
            piece,
            {k: v for k, v in common.items() if k in keys},
            command="",
            where=f"part {name!r}",
        )
    return common


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
    if not isinstance(meta, dict):
        raise UsageError(f"{source_name}: study must be a table ([study]), got {meta!r}")
    if set(meta) - {"name", "description"}:
        raise unknown(
            "key in [study]:",
            sorted(set(meta) - {"name", "description"})[0],
            ["name", "description"],
        )
    parts_doc = doc.get("part", [])
    if not isinstance(parts_doc, list) or not all(isinstance(p, dict) for p in parts_doc):
        raise UsageError(
            f"{source_name}: part must be a list of tables ([[part]]), got {parts_doc!r}"
        )
    if not parts_doc:
        raise UsageError(f"{source_name}: no [[part]] tables; a study needs at least one")
    parts: dict[str, list[Job]] = {}
    seen: dict[str, str] = {}
    models: dict = {}
    for p in parts_doc:
        if "model" not in p or "data" not in p:
            raise UsageError(f"{source_name}: every [[part]] needs model and data; got {p}")
        if not isinstance(p["model"], str):
            raise UsageError(f"{source_name}: part model must be a string, got {p['model']!r}")
        name = plain_name(p.get("name", p["model"].partition("=")[0]), f"{source_name}: part name")
        if _normal(name) in seen:
            raise UsageError(
                f"{source_name}: parts {seen[_normal(name)]!r} and {name!r} would share a "
                "folder; give each its own name"
            )
        seen[_normal(name)] = name
        common = _part_options(p, name)
        jobs = []
        for key, value in p.items():
            if key in PART_OPTIONS:
                continue
            if key not in STUDY_JOBS:
                raise UsageError(
                    f"part {name!r}: unknown key {key!r}; jobs: "
                    f"{', '.join(STUDY_JOBS)}; options: {', '.join(PART_OPTIONS)}"
                )
            tables = value if isinstance(value, list) else [value]
            for n, opts in enumerate(tables, 1):
                folder = key if len(tables) == 1 else f"{key}_{n}"
                if isinstance(opts, dict):
                    opts = _with_dependency(name, key, dict(opts), p, out)
                jobs.append(parse_job(name, key, folder, opts, common, out))
        for j in jobs:
            _check_layers(j, models)
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
