"""Reading a per-item job's results back: the item table and lazy arrays.

r = jaxviz.results.open("out/gradcam")
r.table                      # pyarrow.Table, a row per item (r.to_pandas() with pandas)
r.arrays["maps"]             # tensorstore array [N, ...]: nothing read yet
r.read("maps", [3, 17, 42])  # numpy [3, ...]: reads only those rows' chunks
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from jaxviz.errors import UsageError
from jaxviz.jobs.blocks import TABLE, open_store
from jaxviz.jobs.output import LAYOUT, MARKER


class Results:
    """One job's `--out`: `job`, `manifest`, `table` and `arrays` ({store name: tensorstore})."""

    def __init__(self, out: Path):
        self.out = out
        self.manifest = json.loads((out / "manifest.json").read_text())
        self.job = self.manifest["job"]
        self.table: pa.Table = pq.read_table(out / TABLE)
        self.arrays = {p.name[: -len(".zarr")]: open_store(p) for p in sorted(out.glob("*.zarr"))}

    def to_pandas(self):
        """The item table as a pandas DataFrame (needs pandas)."""
        return self.table.to_pandas()

    def read(self, name: str, rows: Sequence[int] | np.ndarray) -> np.ndarray:
        """Rows `rows` (source indices) of store `name`, in that order: [len(rows), ...]."""
        return np.asarray(self.arrays[name][np.asarray(rows, np.int64)].read().result())


def open(out: str | os.PathLike) -> Results:  # noqa: A001 - the module's verb, like io.open
    """The results of the per-item job that wrote `out` (raises UsageError otherwise)."""
    out = Path(out)
    marker = out / MARKER
    if not marker.is_file() or not (out / TABLE).is_file():
        raise UsageError(f"{out} holds no per-item job results (no {MARKER} and {TABLE})")
    layout = json.loads(marker.read_text()).get("layout")
    if layout != LAYOUT:
        raise UsageError(f"{out} has output layout {layout}; this jaxviz reads layout {LAYOUT}")
    return Results(out)
