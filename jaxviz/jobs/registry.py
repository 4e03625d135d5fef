"""Every job: its name, module, config class, kind and one-line help; and `run`, which runs any
job from Python with the same outputs as the CLI.

A job module has `run(config) -> int` and, for a scan job (one streaming pass the sweep can share
with other scan jobs), `prepare(config) -> ScanJob`. Its options are one dataclass in the module
(`JobSpec.config`, jobs/config.py); the config's `command` tells a module serving several jobs
(attribution, synthesis) which one it runs. Only the chosen job's module is imported.
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
    """One job. `config`: the name of its config class in `module`. kind: SCAN (shares one
    pass over the data with other scan jobs of the same model and data), PER_IMAGE (writes
    outputs image by image, resumable item by item) or OTHER. `in_study`: a study may name it."""

    name: str
    module: str
    config: str
    help: str
    kind: str = OTHER
    in_study: bool = True

    def load(self) -> ModuleType:
        return importlib.import_module(self.module)

    def config_class(self) -> type:
        return getattr(self.load(), self.config)

    @property
    def defaults(self) -> dict[str, Any]:
        """Defaults that depend on the job's name: its output folder, where the config leaves
        it open (None; `jaxviz pack DIR` requires it)."""
        out = self.config_class().__dataclass_fields__.get("out")
        return {"out": f"out/{self.name}"} if out is not None and out.default is None else {}

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        cfg.add_arguments(parser, self.config_class(), self.defaults)

    def from_namespace(self, ns: argparse.Namespace) -> Any:
        """The config of a parsed command line."""
        return cfg.from_namespace(self.config_class(), ns, self.name)

    def option_names(self) -> list[str]:
        """The job's options (its config's field names)."""
        return [f.name for f in cfg.options(self.config_class())]

    def from_values(self, values: dict, where: str) -> Any:
        """The config from typed values (a study table, Python keywords), validated."""
        return cfg.from_values(
            self.config_class(), values, command=self.name, where=where, defaults=self.defaults
        )

    def run(self, config: Any) -> int:
        return int(self.load().run(config) or 0)

    def prepare(self, config: Any):
        """A scan job's ScanJob (to share its pass with others)."""
        return self.load().prepare(config)


_SPECS = (
    JobSpec(
        "sweep",
        "jaxviz.jobs.sweep",
        "SweepConfig",
        "run a study (TOML) of many jobs as one resumable batch job",
        in_study=False,
    ),
    JobSpec(
        "models",
        "jaxviz.jobs.models",
        "ModelsConfig",
        "list the zoo: stages, output shapes, receptive fields",
        in_study=False,
    ),
    # in the order a study runs them within a part: producers before the jobs reading their outputs
    JobSpec(
        "filters",
        "jaxviz.jobs.filters",
        "FiltersConfig",
        "a layer's filters as a tile grid PNG (+ raw .npy)",
    ),
    JobSpec(
        "evaluate",
        "jaxviz.jobs.evaluate",
        "EvaluateConfig",
        "top-1 accuracy of a model on a labelled source",
        SCAN,
    ),
    JobSpec(
        "classify",
        "jaxviz.jobs.classify",
        "ClassifyConfig",
        "top-k classes with names and probabilities per image",
    ),
    JobSpec(
        "features",
        "jaxviz.jobs.features",
        "FeaturesConfig",
        "features of a dataset to .npy shards + a FAISS index",
        SCAN,
    ),
    JobSpec(
        "patches",
        "jaxviz.jobs.patches",
        "PatchesConfig",
        "maximally activating patches of a layer's channels",
        SCAN,
    ),
    JobSpec(
        "channels",
        "jaxviz.jobs.channels",
        "ChannelsConfig",
        "per-channel mean/std/max/fraction > 0 of a layer",
        SCAN,
    ),
    JobSpec(
        "activations",
        "jaxviz.jobs.activations",
        "ActivationsConfig",
        "all channels of a layer for each image",
        SCAN,
    ),
    JobSpec(
        "tsne",
        "jaxviz.jobs.tsne",
        "TsneConfig",
        "t-SNE of stored features: scatter by label + image-grid mosaic",
    ),
    JobSpec(
        "neighbors",
        "jaxviz.jobs.neighbors",
        "NeighborsConfig",
        "k nearest images of queries in a features index",
    ),
    JobSpec(
        "occlusion",
        "jaxviz.jobs.occlusion",
        "OcclusionConfig",
        "occlusion: class-score heat maps as a patch slides",
        PER_IMAGE,
    ),
    JobSpec(
        "saliency",
        "jaxviz.jobs.attribution",
        "AttributionConfig",
        "vanilla gradient saliency maps (Simonyan 2014)",
        PER_IMAGE,
    ),
    JobSpec(
        "guided",
        "jaxviz.jobs.attribution",
        "AttributionConfig",
        "guided backpropagation (Springenberg 2015)",
        PER_IMAGE,
    ),
    JobSpec(
        "gradcam",
        "jaxviz.jobs.attribution",
        "GradcamConfig",
        "Grad-CAM / Guided Grad-CAM at any stage (Selvaraju)",
        PER_IMAGE,
    ),
    JobSpec(
        "ig",
        "jaxviz.jobs.attribution",
        "IgConfig",
        "integrated gradients with completeness (Sundararajan)",
        PER_IMAGE,
    ),
    JobSpec(
        "smoothgrad",
        "jaxviz.jobs.attribution",
        "SmoothgradConfig",
        "SmoothGrad: noise-averaged gradients (Smilkov)",
        PER_IMAGE,
    ),
    JobSpec(
        "classviz",
        "jaxviz.jobs.synthesis",
        "ClassvizConfig",
        "class-model images by gradient ascent (Simonyan 2014)",
    ),
    JobSpec(
        "invert",
        "jaxviz.jobs.synthesis",
        "InvertConfig",
        "feature inversion with a TV prior (Mahendran 2015)",
        PER_IMAGE,
    ),
    JobSpec(
        "dream",
        "jaxviz.jobs.synthesis",
        "DreamConfig",
        "DeepDream: amplify a layer's activations, with octaves",
        PER_IMAGE,
    ),
    JobSpec(
        "atlas",
        "jaxviz.jobs.atlas",
        "AtlasConfig",
        "browsable site of every channel: top patches, stats, feature viz",
        SCAN,
        in_study=False,
    ),
    JobSpec(
        "doctor",
        "jaxviz.jobs.doctor",
        "DoctorConfig",
        "backends in use (JAX, FAISS), shadowed installs, memory plan",
        in_study=False,
    ),
    JobSpec(
        "pack",
        "jaxviz.jobs.pack",
        "PackConfig",
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
            given_source = _source(data, where)
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


def _source(data: Any, where: str):
    from jaxviz.data.sources import Source

    if not isinstance(data, Source):
        raise UsageError(
            f"{where}: data must be a --data spec string or a Source, got {type(data).__name__}"
        )
    return data
