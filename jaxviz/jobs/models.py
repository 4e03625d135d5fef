"""`jaxviz models`: the zoo, with every stage's output shape and receptive field."""

from __future__ import annotations

import json
from dataclasses import dataclass

from jaxviz.jobs.config import JobConfig, option
from jaxviz.models.geometry import ReceptiveField
from jaxviz.models.stage import Model, receptive_fields, stage_shapes
from jaxviz.models.zoo import entry, names


def describe(model: Model) -> list[dict]:
    """Per stage: name, output shape [H, W, C] or [D], receptive field (size, stride, offset)."""
    shapes = stage_shapes(model)
    rows = []
    for name, rf in receptive_fields(model).items():
        row = {"stage": name, "shape": list(shapes[name])}
        if isinstance(rf, ReceptiveField):
            row.update(rf_size=list(rf.size), rf_stride=list(rf.stride), rf_offset=list(rf.offset))
        rows.append(row)
    return rows


@dataclass(kw_only=True)
class ModelsConfig(JobConfig):
    name: list[str] = option([], "models to describe (default: all)", positional=True)
    json: bool = option(False, "print JSON instead of tables")


def run(args: ModelsConfig) -> int:
    chosen = args.name or names()
    table = {}
    for n in chosen:
        e = entry(n)
        model = e.build()
        table[n] = {
            "description": e.description,
            "input_size": list(model.input_size),
            "features_stage": model.features_stage,
            "weights": "embedded" if e.embedded else "checkpoint file (NAME=PATH)",
            "stages": describe(model),
        }
    if args.json:
        print(json.dumps(table, indent=2))
        return 0
    for n, t in table.items():
        h, w = t["input_size"]
        print(
            f"{n}: {t['description']} — input {h}x{w}, features {t['features_stage']}, "
            f"weights: {t['weights']}"
        )
        print(f"  {'stage':<10} {'output':<16} {'receptive field':<16} {'stride':<7} offset")
        for r in t["stages"]:
            shape = "x".join(map(str, r["shape"]))
            if "rf_size" in r:
                rf = f"{r['rf_size'][0]}x{r['rf_size'][1]}"
                print(
                    f"  {r['stage']:<10} {shape:<16} {rf:<16} {r['rf_stride'][0]:<7} "
                    f"{r['rf_offset'][0]}"
                )
            else:
                print(f"  {r['stage']:<10} {shape:<16} {'whole image':<16}")
        print()
    return 0
