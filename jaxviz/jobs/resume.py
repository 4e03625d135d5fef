"""Mid-job resume for jobs that write outputs image by image (occlusion, attribution).

A scan job keeps its state in consumers (`jobs.scan`); these jobs keep theirs on the host: a
JSON-able dict of per-image summaries (items, pointing hits, metric lists) next to the files
they write. `ItemCheckpoint` saves that dict, the next source index, the job's counts, timings,
file list and skipped inputs with orbax every few batches and on interrupt, under
`--out/.item-checkpoint`. A rerun with the same `--out` and config continues after the last
saved batch; images processed after it are processed again and their files rewritten with the
same content, so the final outputs equal an uninterrupted run. A different config starts over.

    ck = ItemCheckpoint(out, initial={"items": []})  # ck.state: restored, else initial
    with ck:                                  # saves on Ctrl-C / SIGTERM, then re-raises
        for batch in ck.stream(source, preprocess, batch_size, stop=n):
            result = compute(batch)           # interruptible
            with ck.commit(batch):            # signals deferred; batch marked done at exit
                ck.state["items"] += ...
    ck.finish()                               # skipped inputs into `out`; checkpoint removed
"""

from __future__ import annotations

import argparse
import contextlib
import json
from collections.abc import Iterator
from typing import Any

from jaxviz.data.pipeline import Batch, stream
from jaxviz.data.sources import Source
from jaxviz.jobs.output import JobOutput, _json_default
from jaxviz.jobs.scan import ScanCheckpoint
from jaxviz.models.preprocess import Preprocess
from jaxviz.runtime.signals import deferred_interrupts


def add_checkpoint_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--checkpoint-every",
        type=int,
        default=10,
        metavar="N",
        help="save progress every N batches (and on Ctrl-C/SIGTERM); rerunning the same "
        "command with the same --out resumes after the last save (default: 10)",
    )


class ItemCheckpoint:
    """The resumable progress of one per-image job writing into `out` (see the module doc)."""

    def __init__(self, out: JobOutput, initial: dict[str, Any], every: int = 10):
        signature = json.dumps(out.config, sort_keys=True, default=_json_default)
        self._ckpt = ScanCheckpoint(out.path(".item-checkpoint"), signature, every)
        self.out, self.every = out, every
        restored = self._ckpt.restore()
        meta = restored["meta"] if restored else {}
        self.state: dict[str, Any] = meta.get("state", initial)
        self.next_index: int = meta.get("next_index", 0)
        self._skips: list[tuple[int, str, str]] = [tuple(s) for s in meta.get("skips", [])]
        self._batches = 0
        if restored:
            out.counts.update(meta["counts"])
            out.timings.update(meta["timings"])
            out.files[:] = meta["files"]
            out.results["resumed_at_index"] = self.next_index

    @property
    def images_done(self) -> int:
        return self.out.counts.get("images", 0)

    def stream(
        self, source: Source, preprocess: Preprocess, batch_size: int, stop: int | None
    ) -> Iterator[Batch]:
        """Batches of source[next_index:stop]; skipped inputs are recorded here."""
        yield from stream(
            source,
            preprocess,
            batch_size,
            start=self.next_index,
            stop=stop,
            on_skip=lambda i, item, reason: self._skips.append((i, str(item), reason)),
        )

    @contextlib.contextmanager
    def commit(self, batch: Batch) -> Iterator[None]:
        """Update `self.state` for `batch` inside the block: interrupts wait until it is done; then
        the batch counts as done and every `every` batches the checkpoint is saved."""
        with deferred_interrupts():
            yield
            self.next_index = batch.next_index
            self._batches += 1
            if self._batches % self.every == 0:
                self._save()

    def __enter__(self) -> ItemCheckpoint:
        return self

    def __exit__(self, kind, value, tb) -> bool:
        if kind is not None and issubclass(kind, KeyboardInterrupt):
            self._save()
        return False

    def _save(self) -> None:
        meta = {
            "state": self.state,
            "next_index": self.next_index,
            "skips": [s for s in self._skips if s[0] < self.next_index],
            "counts": self.out.counts,
            "timings": self.out.timings,
            "files": self.out.files,
        }
        self._ckpt.save(json.loads(json.dumps(meta, default=_json_default)), {})

    def finish(self) -> None:
        """Record the skipped inputs in `out` (source order) and remove the checkpoint."""
        for _, item, reason in sorted(self._skips):
            self.out.skip(item, reason)
        self._ckpt.remove()
