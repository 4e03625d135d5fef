"""The `jaxviz` command: arguments in, a job call out.

Each subcommand lives in a job module with `add_arguments(parser)` and `run(args) -> int`; only the
chosen one is imported. Exit codes: 0 done, 2 bad usage or config (one line, no traceback), 1 other.
"""

from __future__ import annotations

import argparse
import importlib
import signal
import sys

from jaxviz import __version__
from jaxviz.errors import UsageError

# subcommand -> (module, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "sweep": ("jaxviz.jobs.sweep", "run a study (TOML) of many jobs as one resumable batch job"),
    "models": ("jaxviz.jobs.models", "list the zoo: stages, output shapes, receptive fields"),
    "evaluate": ("jaxviz.jobs.evaluate", "top-1 accuracy of a model on a labelled source"),
    "filters": ("jaxviz.jobs.filters", "a layer's filters as a tile grid PNG (+ raw .npy)"),
    "activations": ("jaxviz.jobs.activations", "all channels of a layer for each image"),
    "patches": ("jaxviz.jobs.patches", "maximally activating patches of a layer's channels"),
    "channels": ("jaxviz.jobs.channels", "per-channel mean/std/max/fraction > 0 of a layer"),
    "classify": ("jaxviz.jobs.classify", "top-k classes with names and probabilities per image"),
    "occlusion": ("jaxviz.jobs.occlusion", "occlusion: class-score heat maps as a patch slides"),
    "saliency": ("jaxviz.jobs.attribution", "vanilla gradient saliency maps (Simonyan 2014)"),
    "guided": ("jaxviz.jobs.attribution", "guided backpropagation (Springenberg 2015)"),
    "gradcam": ("jaxviz.jobs.attribution", "Grad-CAM / Guided Grad-CAM at any stage (Selvaraju)"),
    "ig": ("jaxviz.jobs.attribution", "integrated gradients with completeness (Sundararajan)"),
    "smoothgrad": ("jaxviz.jobs.attribution", "SmoothGrad: noise-averaged gradients (Smilkov)"),
    "classviz": ("jaxviz.jobs.synthesis", "class-model images by gradient ascent (Simonyan 2014)"),
    "invert": ("jaxviz.jobs.synthesis", "feature inversion with a TV prior (Mahendran 2015)"),
    "dream": ("jaxviz.jobs.synthesis", "DeepDream: amplify a layer's activations, with octaves"),
    "features": ("jaxviz.jobs.features", "features of a dataset to .npy shards + a FAISS index"),
    "neighbors": ("jaxviz.jobs.neighbors", "k nearest images of queries in a features index"),
    "doctor": (
        "jaxviz.jobs.doctor",
        "backends in use (JAX, FAISS), shadowed installs, memory plan",
    ),
    "tsne": ("jaxviz.jobs.tsne", "t-SNE of stored features: scatter by label + image-grid mosaic"),
    "pack": ("jaxviz.jobs.pack", "write any --data source as tar shards, ArrayRecord or Parquet"),
    "atlas": (
        "jaxviz.jobs.atlas",
        "browsable site of every channel: top patches, stats, feature viz",
    ),
}


def build_parser(command: str | None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="jaxviz",
        description="Visualize and understand CNNs over whole datasets (JAX). "
        "Every job writes manifest.json, .npy arrays, .png pictures and index.html into --out.",
    )
    parser.add_argument("--version", action="version", version=f"jaxviz {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, (module, help_) in COMMANDS.items():
        p = sub.add_parser(name, help=help_, description=help_)
        if name == command:
            importlib.import_module(module).add_arguments(p)
    return parser


def _interrupt(signum, frame):
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    command = next((a for a in argv if not a.startswith("-")), None)
    parser = build_parser(command if command in COMMANDS else None)
    args = parser.parse_args(argv)
    signal.signal(signal.SIGTERM, _interrupt)  # schedulers stop jobs with SIGTERM: checkpoint
    try:
        return int(importlib.import_module(COMMANDS[args.command][0]).run(args) or 0)
    except UsageError as e:
        print(f"jaxviz {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"jaxviz {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
