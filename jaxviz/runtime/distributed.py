"""Several processes (hosts) on one job: jax.distributed set-up, barriers, and the exchange of
per-process scan states through the shared output folder."""

from __future__ import annotations

import os
import pickle
from pathlib import Path
from typing import Any

import jax

from jaxviz.errors import UsageError


def initialize_from(args: Any) -> tuple[int, int]:
    """`initialize` from a job's config (its `coordinator`, `num_processes`, `process_id`:
    jobs/common.py DistributedOptions)."""
    return initialize(
        getattr(args, "coordinator", None),
        getattr(args, "num_processes", None),
        getattr(args, "process_id", None),
    )


def initialize(
    coordinator: str | None = None, num_processes: int | None = None, process_id: int | None = None
) -> tuple[int, int]:
    """Join a multi-process job: explicit coordinator flags, or SLURM's environment (srun with
    several tasks), else a single process. Returns (process_index, process_count). Calling it
    again (a sweep's jobs) keeps the run already joined."""
    explicit = coordinator is not None
    slurm = int(os.environ.get("SLURM_NTASKS", "1")) > 1
    if explicit and (num_processes is None or process_id is None):
        raise UsageError("--coordinator needs --num-processes and --process-id")
    if (explicit or slurm) and not jax.distributed.is_initialized():
        # CPU devices need a collectives implementation across processes (affects CPU only;
        # asking for the backend here would start it before initialize(), which must be first)
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
        if explicit:
            jax.distributed.initialize(coordinator, num_processes, process_id)
        else:
            jax.distributed.initialize()
    return jax.process_index(), jax.process_count()


def barrier(name: str) -> None:
    """Wait until every process reaches this point (no-op with one process)."""
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices(name)


def exchange(folder: Path, name: str, payload: Any) -> list[Any] | None:
    """Every process writes `payload`; process 0 gets all of them in process order (others
    None). `folder` must be shared by the processes (the job's output folder).

    The files are this job's own intermediate state, written and read by the same program, so
    pickle is acceptable here; they are removed after reading.
    """
    folder.mkdir(parents=True, exist_ok=True)
    me, n = jax.process_index(), jax.process_count()
    path = folder / f"{name}.p{me}.pkl"
    tmp = path.with_suffix(".tmp")
    tmp.write_bytes(pickle.dumps(payload))
    os.replace(tmp, path)
    barrier(f"exchange-{name}")
    if me != 0:
        barrier(f"exchange-{name}-read")
        return None
    payloads = [pickle.loads((folder / f"{name}.p{p}.pkl").read_bytes()) for p in range(n)]
    barrier(f"exchange-{name}-read")
    for p in range(n):
        (folder / f"{name}.p{p}.pkl").unlink()
    return payloads
