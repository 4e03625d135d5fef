"""Mid-job resume of per-item jobs (occlusion, attribution, invert, dream, see `jobs.items`).

The progress of a run lives in `--out/.progress`: `job.json` (the run's signature: the job's
config, the item count, the chunk rows and the process count) and one small `pK.json` per
process (how many of its items are done, its counts, timings and job state). Each is a few
hundred bytes rewritten atomically at a checkpoint: nothing saved before is rewritten, whatever
the number of items. The rows themselves are in the stores and table parts, written in whole
chunk blocks, so replaying the items after the last checkpoint rewrites the same bytes.

A rerun with the same signature continues where each process stopped; another config starts
over; another process count is refused (the items are split by process).
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from jaxviz.errors import UsageError
from jaxviz.jobs.config import POSITIVE, JobConfig, option
from jaxviz.jobs.output import _json_default, save_json

PROGRESS = ".progress"


@dataclass(kw_only=True)
class CheckpointOptions(JobConfig):
    """When a per-item job saves its progress."""

    GROUP = "outputs"

    checkpoint_every: int = option(
        10,
        "save progress every N batches (and on Ctrl-C/SIGTERM); rerunning the same command with "
        "the same --out resumes after the last save",
        check=POSITIVE,
        metavar="N",
    )


def signature(config: dict, **run: Any) -> dict:
    """What a resumed run must share with the one it continues (JSON-able)."""
    return json.loads(json.dumps({"config": config, **run}, sort_keys=True, default=_json_default))


class ProgressRecord:
    """`--out/.progress` of one run (see the module doc)."""

    def __init__(self, out: Path, sig: dict, process_index: int):
        self.folder, self.sig, self.me = out / PROGRESS, sig, process_index

    def resumable(self) -> bool:
        """True when `--out` holds an unfinished run of this signature. Raises UsageError when
        it holds the same run with another process count."""
        path = self.folder / "job.json"
        if not path.is_file():
            return False
        found = json.loads(path.read_text())
        theirs = found.get("process_count")
        if theirs != self.sig["process_count"] and {**found, "process_count": 0} == {
            **self.sig,
            "process_count": 0,
        }:
            raise UsageError(
                f"{self.folder.parent} holds an unfinished run of {theirs} process(es); resume "
                f"it with {theirs} or use another --out"
            )
        return found == self.sig

    def start(self) -> None:
        """Forget any earlier progress and record this run's signature (process 0)."""
        shutil.rmtree(self.folder, ignore_errors=True)
        save_json(self.folder / "job.json", self.sig)

    def load(self) -> dict | None:
        """This process's last saved progress, or None."""
        path = self.folder / f"p{self.me}.json"
        return json.loads(path.read_text()) if path.is_file() else None

    def save(self, progress: dict) -> None:
        save_json(self.folder / f"p{self.me}.json", progress)

    def everyone(self, count: int) -> list[dict]:
        """Every process's final progress (process 0, at the end)."""
        return [json.loads((self.folder / f"p{k}.json").read_text()) for k in range(count)]

    def remove(self) -> None:
        shutil.rmtree(self.folder, ignore_errors=True)
