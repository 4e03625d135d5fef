"""`jaxviz sweep [STUDY.toml]`: every job of a study as one batch job, resumable, with a report.

Jobs that scan the dataset with the same model and batch settings (evaluate, features,
patches, channels, activations) share ONE forward pass and one model load. A finished job is
recorded in `--out/sweep.json`; rerunning the same command resumes with the jobs not yet done.
A changed study with the same `--out` is refused unless `--restart`. Every start, end and
failure goes to `--out/events.jsonl`; the report is `--out/index.html`.
"""

from __future__ import annotations

import json
import sys
import time
import traceback
from dataclasses import dataclass
from pathlib import Path

import jax

from jaxviz.errors import UsageError
from jaxviz.jobs.common import DistributedOptions, OutOptions, shared_models
from jaxviz.jobs.config import POSITIVE, option
from jaxviz.jobs.output import save_json
from jaxviz.jobs.registry import PER_IMAGE, SCAN, STUDY_JOBS, JobSpec, job
from jaxviz.jobs.scan import run_scan_jobs
from jaxviz.jobs.study import Job, Study, default_study_text, load_study
from jaxviz.render.report import write_study_report
from jaxviz.runtime.distributed import barrier, initialize_from
from jaxviz.runtime.lock import lock_out


@dataclass(kw_only=True)
class SweepConfig(DistributedOptions, OutOptions):
    study: str | None = option(
        None,
        "study TOML file (default: the built-in study: the demo model on the shapes set and "
        "efficientnet_lite0 on the sample photos)",
        positional=True,
    )
    restart: bool = option(
        False, "start over even if --out holds another study's (partial) results"
    )
    checkpoint_every: int = option(
        20, "save the streaming state every N batches", check=POSITIVE, metavar="N"
    )
    dry_run: bool = option(
        False, "validate the study, print the plan and the estimated work, run nothing"
    )


class EventLog:
    """JSON lines appended to --out/events.jsonl (one per event, flushed at once); every
    process of a run appends its own, with its `process` index."""

    def __init__(self, path: Path, process: int = 0):
        self.path, self.process = path, process

    def __call__(self, event: str, **fields) -> None:
        line = {"time": time.time(), "event": event, "process": self.process, **fields}
        with open(self.path, "a") as f:
            f.write(json.dumps(line) + "\n")


def _spec(j: Job) -> JobSpec:
    return job(j.command)


def _units(jobs: list[Job]) -> list[list[Job]]:
    """Jobs in run order; scan jobs with equal scan keys grouped into one shared pass."""
    from jaxviz.jobs.common import scan_key

    units: list[list[Job]] = []
    groups: dict[tuple, list[Job]] = {}
    for j in sorted(jobs, key=lambda j: STUDY_JOBS.index(j.command)):
        if _spec(j).kind == SCAN:
            key = scan_key(j.args)
            if key in groups:
                groups[key].append(j)
                continue
            groups[key] = [j]
            units.append(groups[key])
        else:
            units.append([j])
    return units


def estimate(job: Job, n_images: int) -> int:
    """Forward (or forward+backward) passes a job needs, roughly."""
    a = job.args
    if getattr(a, "model", None) is None:
        return 0  # works on another job's outputs (t-SNE, neighbours from an index)
    n = min(n_images, a.limit) if getattr(a, "limit", None) else n_images
    if job.command == "occlusion":
        from jaxviz.models.zoo import build

        h, w = build(a.model).input_size
        win, st = a.window, a.stride
        return n * (((h - win) // st + 1) * ((w - win) // st + 1) + 1)
    for attr in ("steps", "samples", "iterations"):
        if isinstance(getattr(a, attr, None), int):
            return n * getattr(a, attr)
    return n


def print_plan(study: Study) -> None:
    from jaxviz.data.sources import open_source

    print(f"study {study.name!r} ({study.digest})")
    total = 0
    for part, jobs in study.parts.items():
        print(f"part {part}:")
        for unit in _units(jobs):
            data = getattr(unit[0].args, "data", None)
            n = len(open_source(data)) if data else 0
            work = sum(estimate(j, n) for j in unit) if len(unit) == 1 else estimate(unit[0], n)
            total += work
            names = " + ".join(j.folder for j in unit)
            shared = " (one shared pass)" if len(unit) > 1 else ""
            print(
                f"  {names}{shared}: ~{work} forward passes"
                + (f", {n} images in {data}" if data else "")
            )
    print(f"estimated work: ~{total} forward passes")


def _run_unit(unit: list[Job], checkpoint_every: int) -> None:
    if len(unit) == 1 and not _is_scan(unit):
        rc = _spec(unit[0]).run(unit[0].args)
        if rc:
            raise RuntimeError(f"job {unit[0].key} exited with {rc}")
        return
    with shared_models():  # one model load for the whole shared pass
        prepared = [_spec(j).prepare(j.args) for j in unit]
    run_scan_jobs(
        prepared,
        desc=" + ".join(j.key for j in unit),
        checkpoint_every=checkpoint_every,
    )


def _is_scan(unit: list[Job]) -> bool:
    return _spec(unit[0]).kind == SCAN


def _everywhere(unit: list[Job]) -> bool:
    """Whether every process runs the unit (it splits its items), not process 0 alone."""
    return _spec(unit[0]).kind in (SCAN, PER_IMAGE)


def run_study(study: Study, out: Path, restart: bool, checkpoint_every: int = 20) -> int:
    """Run (or resume) a study. With several processes every process takes part in the
    dataset scans and per-item jobs, each on its share of the items; process 0 alone runs the
    whole-job jobs (filters, t-SNE, neighbours, classviz) and writes state and report."""
    lead = jax.process_index() == 0
    lock = lock_out(out)  # noqa: F841 - held until this function returns; jobs lock below it
    state_path = out / "sweep.json"
    state = json.loads(state_path.read_text()) if state_path.exists() else None
    if state and state["digest"] != study.digest and not restart:
        raise UsageError(
            f"{out} holds results of another study ({state['name']!r}, "
            f"{state['digest']}); use another --out or pass --restart"
        )
    if not state or restart:
        state = {"name": study.name, "digest": study.digest, "done": {}, "failed": {}}
    barrier("sweep-start")  # every process has read the same state
    if lead:
        (out / "study.toml").write_text(study.text)
    log = EventLog(out / "events.jsonl", jax.process_index())
    log("sweep_start", study=study.name, digest=study.digest, resumed=bool(state["done"]))

    t0 = time.time()
    try:
        for jobs in study.parts.values():
            for unit in _units(jobs):
                todo = [j for j in unit if j.key not in state["done"]]
                for j in unit:
                    if j not in todo:
                        log("job_skipped", job=j.key, reason="done in an earlier run")
                if not todo or not (lead or _everywhere(todo)):
                    continue
                keys = [j.key for j in todo]
                log("job_start", jobs=keys)
                t = time.time()
                try:
                    _run_unit(todo, checkpoint_every)
                except UsageError:
                    raise
                except Exception as e:
                    for k in keys:
                        state["failed"][k] = f"{type(e).__name__}: {e}"
                    log(
                        "job_failed",
                        jobs=keys,
                        error=f"{type(e).__name__}: {e}",
                        traceback=traceback.format_exc(),
                    )
                    print(
                        f"sweep: {' + '.join(keys)} failed: {type(e).__name__}: {e}",
                        file=sys.stderr,
                    )
                    continue
                seconds = time.time() - t
                for k in keys:
                    state["done"][k] = seconds / len(keys)
                    state["failed"].pop(k, None)
                if lead:
                    save_json(state_path, state)
                log("job_done", jobs=keys, seconds=seconds)
    finally:
        if lead:
            save_json(state_path, state)
    log("sweep_done", seconds=time.time() - t0, failed=sorted(state["failed"]))
    if not lead:
        return 1 if state["failed"] else 0
    summary = write_study_report(
        out, study.name, {p: [j.key for j in js] for p, js in study.parts.items()}, state
    )
    _print_summary(summary, state, out)
    return 1 if state["failed"] else 0


def _print_summary(summary: list[dict], state: dict, out: Path) -> None:
    print(f"\n{'job':<28} {'images':>8} {'skipped':>8} {'seconds':>8}  status")
    for row in summary:
        status = "failed" if row["job"] in state["failed"] else "done"
        print(
            f"{row['job']:<28} {row['images']:>8} {row['skipped']:>8} "
            f"{row['seconds']:>8.1f}  {status}"
        )
    reasons = {r for row in summary for r in row["skip_reasons"]}
    if reasons:
        print("skip reasons: " + "; ".join(sorted(reasons)[:5]))
    print(f"report: {out / 'index.html'}")


def run(args: SweepConfig) -> int:
    out = Path(args.out)
    initialize_from(args)
    if args.study:
        path = Path(args.study)
        if not path.is_file():
            raise UsageError(f"study file not found: {path}")
        study = load_study(path.read_text(), out, str(path))
    else:
        study = load_study(default_study_text(), out, "default study")
    if args.dry_run:
        print_plan(study)
        return 0
    return run_study(study, out, args.restart, args.checkpoint_every)
