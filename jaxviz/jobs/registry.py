"""Every job: its name, module, config class, kind and one-line help; and `run`, which runs any
job from Python with the same outputs as the CLI.

A job module has `run(config) -> int` and, for a scan job (one streaming pass the sweep can share
with other scan jobs), `prepare(config) -> ScanJob`. Its options are one dataclass in the module
(`JobSpec.config`, jobs/config.py). A job not yet converted to a config (`config=None`) has
`add_arguments(parser)` and `run(namespace)` instead; the CLI and the study use it that way.
Only the chosen job's module is imported.
"""

from __future__ import annotations

import argparse
import importlib
import json
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

from jaxviz.errors import UsageError, unknown
from jaxviz.jobs import config as cfg

SCAN, PER_IMAGE, OTHER = "scan", "per-image", "other"


@dataclass(frozen=True)
class JobSpec:
    """One job. kind: SCAN (shares one pass over the data with other scan jobs of the same
    model and data), PER_IMAGE (writes outputs image by image, resumable item by item) or
    OTHER. `config`: the name of
    its config class in `module` (None: not converted yet). `in_study`: a study may name it."""

    name: str
    module: str
    help: str
    kind: str = OTHER
    config: str | None = None
    in_study: bool = True

    def load(self) -> ModuleType:
        return importlib.import_module(self.module)

    def config_class(self) -> type | None:
        return None if self.config is None else getattr(self.load(), self.config)

    @property
    def defaults(self) -> dict[str, Any]:
        """Defaults that depend on the job's name (its output folder)."""
        return {"out": f"out/{self.name}"}

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        cls = self.config_class()
        if cls is None:
            self.load().add_arguments(parser)
        else:
            cfg.add_arguments(parser, cls, self.defaults)

    def from_namespace(self, ns: argparse.Namespace) -> Any:
        """The config of a parsed command line (a legacy job gets the namespace itself)."""
        cls = self.config_class()
        if cls is None:
            ns.command = self.name
            return ns
        return cfg.from_namespace(cls, ns, self.name)

    def option_names(self) -> list[str]:
        """The job's options (config field names, or a legacy parser's dests)."""
        cls = self.config_class()
        if cls is not None:
            return [f.name for f in cfg.options(cls)]
        return [a.dest for a in self._legacy_parser()._actions if a.dest != "help"]

    def from_values(self, values: dict, where: str) -> Any:
        """The config from typed values (a study table, Python keywords), validated."""
        cls = self.config_class()
        if cls is None:
            return self._legacy_namespace(values, where)
        return cfg.from_values(cls, values, command=self.name, where=where, defaults=self.defaults)

    def _legacy_parser(self) -> cfg.Parser:
        parser = cfg.Parser(prog=f"jaxviz {self.name}", add_help=False)
        self.load().add_arguments(parser)
        return parser

    def _legacy_namespace(self, values: dict, where: str) -> argparse.Namespace:
        """A job not converted yet: its own parser checks the values, given as flags."""
        parser = self._legacy_parser()
        known = [a.dest for a in parser._actions if a.dest != "help"]
        bad = [k for k in values if k not in known]
        if bad:
            raise UsageError(f"{where}: unknown option {bad[0]!r}; options: {', '.join(known)}")
        try:
            ns = parser.parse_args(_flags(values))
        except UsageError as e:
            raise UsageError(f"{where}: {e}") from None
        ns.command = self.name
        return ns

    def run(self, config: Any) -> int:
        return int(self.load().run(config) or 0)

    def prepare(self, config: Any):
        """A scan job's ScanJob (to share its pass with others)."""
        return self.load().prepare(config)


def _flags(values: dict) -> list[str]:
    argv = []
    for k, v in values.items():
        if isinstance(v, bool):
            argv += [cfg.flag(k)] if v else []
        elif isinstance(v, list):
            argv += [cfg.flag(k), ",".join(map(str, v))]
        else:
            argv += [cfg.flag(k), str(v)]
    return argv


_SPECS = (
    JobSpec(
        "sweep",
        "jaxviz.jobs.sweep",
        "run a study (TOML) of many jobs as one resumable batch job",
        in_study=False,
    ),
    JobSpec(
        "models",
        "jaxviz.jobs.models",
        "list the zoo: stages, output shapes, receptive fields",
        config="ModelsConfig",
        in_study=False,
    ),
    # in the order a study runs them within a part: producers before the jobs reading their outputs
    JobSpec(
        "filters",
        "jaxviz.jobs.filters",
        "a layer's filters as a tile grid PNG (+ raw .npy)",
        config="FiltersConfig",
    ),
    JobSpec(
        "evaluate",
        "jaxviz.jobs.evaluate",
        "top-1 accuracy of a model on a labelled source",
        SCAN,
        "EvaluateConfig",
    ),
    JobSpec(
        "classify",
        "jaxviz.jobs.classify",
        "top-k classes with names and probabilities per image",
        OTHER,
        "ClassifyConfig",
    ),
    JobSpec(
        "features",
        "jaxviz.jobs.features",
        "features of a dataset to .npy shards + a FAISS index",
        SCAN,
        "FeaturesConfig",
    ),
    JobSpec(
        "patches",
        "jaxviz.jobs.patches",
        "maximally activating patches of a layer's channels",
        SCAN,
        "PatchesConfig",
    ),
    JobSpec(
        "channels",
        "jaxviz.jobs.channels",
        "per-channel mean/std/max/fraction > 0 of a layer",
        SCAN,
        "ChannelsConfig",
    ),
    JobSpec(
        "activations", "jaxviz.jobs.activations", "all channels of a layer for each image", SCAN
    ),
    JobSpec(
        "tsne",
        "jaxviz.jobs.tsne",
        "t-SNE of stored features: scatter by label + image-grid mosaic",
        config="TsneConfig",
    ),
    JobSpec(
        "neighbors",
        "jaxviz.jobs.neighbors",
        "k nearest images of queries in a features index",
        config="NeighborsConfig",
    ),
    JobSpec(
        "occlusion",
        "jaxviz.jobs.occlusion",
        "occlusion: class-score heat maps as a patch slides",
        PER_IMAGE,
    ),
    JobSpec(
        "saliency",
        "jaxviz.jobs.attribution",
        "vanilla gradient saliency maps (Simonyan 2014)",
        PER_IMAGE,
    ),
    JobSpec(
        "guided", "jaxviz.jobs.attribution", "guided backpropagation (Springenberg 2015)", PER_IMAGE
    ),
    JobSpec(
        "gradcam",
        "jaxviz.jobs.attribution",
        "Grad-CAM / Guided Grad-CAM at any stage (Selvaraju)",
        PER_IMAGE,
    ),
    JobSpec(
        "ig",
        "jaxviz.jobs.attribution",
        "integrated gradients with completeness (Sundararajan)",
        PER_IMAGE,
    ),
    JobSpec(
        "smoothgrad",
        "jaxviz.jobs.attribution",
        "SmoothGrad: noise-averaged gradients (Smilkov)",
        PER_IMAGE,
    ),
    JobSpec(
        "classviz", "jaxviz.jobs.synthesis", "class-model images by gradient ascent (Simonyan 2014)"
    ),
    JobSpec(
        "invert",
        "jaxviz.jobs.synthesis",
        "feature inversion with a TV prior (Mahendran 2015)",
        PER_IMAGE,
    ),
    JobSpec(
        "dream",
        "jaxviz.jobs.synthesis",
        "DeepDream: amplify a layer's activations, with octaves",
        PER_IMAGE,
    ),
    JobSpec(
        "atlas",
        "jaxviz.jobs.atlas",
        "browsable site of every channel: top patches, stats, feature viz",
        SCAN,
        in_study=False,
    ),
    JobSpec(
        "doctor",
        "jaxviz.jobs.doctor",
        "backends in use (JAX, FAISS), shadowed installs, memory plan",
        in_study=False,
    ),
    JobSpec(
        "pack",
        "jaxviz.jobs.pack",
        "write any --data source as tar shards, ArrayRecord or Parquet",
        in_study=False,
    ),
)
JOBS: dict[str, JobSpec] = {s.name: s for s in _SPECS}
STUDY_JOBS: tuple[str, ...] = tuple(s.name for s in _SPECS if s.in_study)


def job(name: str) -> JobSpec:
    if name not in JOBS:
        raise unknown("job", name, JOBS)
    return JOBS[name]


def run(
    job_name: str,
    *,
    model: Any = None,
    params: Any = None,
    data: Any = None,
    out: str | Path | None = None,
    **config: Any,
) -> dict:
    """Run job `job_name` from Python, as `jaxviz JOB` would; returns its manifest ({} for a
    job that writes none: models, sweep).

    model: a --model spec string, a `(Model, params)` pair, or a `Model` with `params=`.
    data: a --data spec string or a `jaxviz.data.sources.Source`.
    out: the output folder (default: out/JOB). config: the job's options by field name
    (`batch_size=8`, `layer="conv2"`), checked as the CLI and a study check them.
    """
    from jaxviz.jobs.common import given_inputs
    from jaxviz.models.stage import Model

    spec = job(job_name)
    where = f"jaxviz.run({job_name!r})"
    given_model = given_source = None
    if isinstance(model, tuple):
        model, params = model
    if isinstance(model, Model):
        if params is None:
            raise UsageError(f"{where}: a Model needs its params (params=... or (model, params))")
        given_model = (model, params)
        config["model"] = f"<{model.name} from Python>"
    elif params is not None:
        raise UsageError(f"{where}: params= goes with a Model object, not model={model!r}")
    elif model is not None:
        config["model"] = model
    if data is not None:
        if not isinstance(data, str):
            given_source = _source(data, where, spec)
            data = given_source.spec or f"<{type(data).__name__} of {len(given_source)} items>"
        config["data"] = data
    if out is not None:
        config["out"] = str(out)
    conf = spec.from_values(config, where)
    with given_inputs(given_model, given_source):
        spec.run(conf)
    folder = getattr(conf, "out", None)
    manifest = Path(folder) / "manifest.json" if folder else None
    return json.loads(manifest.read_text()) if manifest and manifest.is_file() else {}


def _source(data: Any, where: str, spec: JobSpec):
    from jaxviz.data.sources import Source

    if not isinstance(data, Source):
        raise UsageError(
            f"{where}: data must be a --data spec string or a Source, got {type(data).__name__}"
        )
    if spec.config is None:
        raise UsageError(f"{where}: this job takes data only as a --data spec string for now")
    return data
