"""The device-memory plan: JAX's and FAISS's shares of each device, and every chunk size.

One place decides how a device's memory is split and how big each chunk of work is:

- **JAX's share.** On a GPU, JAX preallocates 75% of the device at its first computation. When a
  FAISS GPU index lives in the same process, `share_with_faiss` must run before JAX starts its
  backend: it turns preallocation off (`XLA_PYTHON_CLIENT_PREALLOCATE=false`, so JAX grows on
  demand) and caps JAX at `1 - faiss_fraction - GPU_MARGIN` of each device
  (`XLA_PYTHON_CLIENT_MEM_FRACTION`). XLA reads both once, so after the backend has started the
  call changes nothing and says so. A user's own setting of either variable wins.
- **FAISS's share.** `faiss_fraction` of each GPU (`FAISS_FRACTION`, or `JAXVIZ_FAISS_FRACTION`),
  of which `faiss_temp_bytes` are FAISS's scratch memory, set explicitly on every
  `StandardGpuResources` (FAISS's own default is a fixed 1.5 GiB); the rest holds the index (or
  its shard). With CPU FAISS the index lives in host RAM: `FAISS_HOST_FRACTION` of what is
  available.
- **Chunks.** `Plan.chunk(bytes_per_item, n)` is how many items (occlusion positions x images,
  IG steps x batch, t-SNE tile rows, feature images) fit in `work_bytes`: `WORK_FRACTION` of
  JAX's free share of a device, or of a `CPU_WORK_FRACTION` slice of the available host RAM per
  CPU device. A CLI flag overrides the count (`override=`) or the budget (`plan(budget_mb=)`).
  On a CPU one more bound applies (`cpu_bounded=True`, for forward-only chunks): the chunk's
  activations stay near the cache-friendly `CPU_CHUNK_BYTES` (at least `CPU_MIN_CHUNK` items).

`jaxviz doctor --plan` prints the plan of this machine.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import jax
import psutil

from jaxviz.errors import UsageError

FAISS_FRACTION = 0.25  # of each GPU, when a FAISS GPU index shares it with JAX
FAISS_HOST_FRACTION = 0.5  # of available host RAM, for a CPU FAISS index
GPU_MARGIN = 0.05  # of each GPU left to neither (CUDA context, cuBLAS workspaces, fragmentation)
FAISS_TEMP_MAX = 2 << 30  # FAISS scratch memory per GPU: 10% of FAISS's share, at most this
WORK_FRACTION = 0.5  # of JAX's free share of a GPU that chunks may use
CPU_WORK_FRACTION = 0.1  # of the available host RAM (split over CPU devices) that chunks may use
JAX_DEFAULT_FRACTION = 0.75  # JAX's own preallocation when nobody sets it
CPU_CHUNK_BYTES = 128 << 20  # a CPU chunk's activations: batches of ~128 MiB ran fastest
CPU_MIN_CHUNK = 4  # ... but at least this many items

ENV_FRACTION = "XLA_PYTHON_CLIENT_MEM_FRACTION"
ENV_PREALLOCATE = "XLA_PYTHON_CLIENT_PREALLOCATE"
ENV_FAISS = "JAXVIZ_FAISS_FRACTION"


def faiss_fraction(environ=os.environ) -> float:
    """FAISS's share of each GPU: JAXVIZ_FAISS_FRACTION or FAISS_FRACTION."""
    raw = environ.get(ENV_FAISS)
    if raw is None:
        return FAISS_FRACTION
    try:
        value = float(raw)
    except ValueError:
        raise UsageError(f"{ENV_FAISS} must be a number in (0, 0.9), got {raw!r}") from None
    if not 0 < value < 0.9:
        raise UsageError(f"{ENV_FAISS} must be a number in (0, 0.9), got {raw!r}")
    return value


def backend_started() -> bool:
    """Whether JAX has started its backends (after which XLA's memory settings are fixed)."""
    from jax._src import xla_bridge

    return xla_bridge.backends_are_initialized()


def share_with_faiss(faiss_gpus: int, environ=os.environ, started: bool | None = None) -> bool:
    """Before JAX starts, when FAISS sees `faiss_gpus` > 0 GPUs: leave FAISS its share of each.

    Sets XLA_PYTHON_CLIENT_PREALLOCATE=false and XLA_PYTHON_CLIENT_MEM_FRACTION=1 - faiss share
    - GPU_MARGIN unless the user set them. Returns False when there is no FAISS GPU or JAX's
    backend has already started (nothing can change then)."""
    if faiss_gpus <= 0 or (backend_started() if started is None else started):
        return False
    environ.setdefault(ENV_PREALLOCATE, "false")
    environ.setdefault(ENV_FRACTION, f"{1 - faiss_fraction(environ) - GPU_MARGIN:.3f}")
    return True


def jax_fraction(environ=os.environ) -> float:
    """JAX's share of each GPU as XLA will read it."""
    return float(environ.get(ENV_FRACTION, JAX_DEFAULT_FRACTION))


def gpu_total_bytes() -> list[int]:
    """Total memory of each visible NVIDIA GPU from nvidia-smi, without starting JAX or CUDA
    ([] without nvidia-smi)."""
    cmd = ["nvidia-smi", "--query-gpu=memory.total", "--format=csv,noheader,nounits"]
    try:
        text = subprocess.run(cmd, capture_output=True, text=True, timeout=20, check=True).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    return [int(float(v)) << 20 for v in text.split()]


UNKNOWN_GPU_BYTES = 16 << 30  # assumed size of a GPU that nvidia-smi cannot report


@dataclass(frozen=True)
class FaissShare:
    """FAISS's memory: devices: GPUs it uses (0: on the CPU); index_bytes: for the index on each
    GPU (CPU: host RAM for all of it); temp_bytes: scratch memory per GPU."""

    devices: int
    index_bytes: int
    temp_bytes: int

    @property
    def total_index_bytes(self) -> int:
        """Room for one index sharded over every device."""
        return self.index_bytes * max(1, self.devices)


def faiss_share(n_gpus: int, environ=os.environ) -> FaissShare:
    """FAISS's share on n_gpus GPUs (0: CPU FAISS, host RAM), without starting JAX."""
    if n_gpus <= 0:
        return FaissShare(0, int(FAISS_HOST_FRACTION * psutil.virtual_memory().available), 0)
    totals = gpu_total_bytes()[:n_gpus] or [UNKNOWN_GPU_BYTES]
    share = int(faiss_fraction(environ) * min(totals))
    temp = min(FAISS_TEMP_MAX, share // 10)
    return FaissShare(n_gpus, share - temp, temp)


@dataclass(frozen=True)
class Plan:
    """Memory per device (all bytes; every field is per device unless it says otherwise).

    platform: 'cpu', 'gpu' or 'tpu'; devices: local devices planned for. device_bytes: one
    device's memory (CPU: available host RAM / devices). jax_bytes: JAX's share (GPU: its
    allocator's limit). in_use_bytes: already held by JAX (parameters, ...). work_bytes: what
    one chunk may use. faiss_gpu: a FAISS GPU index shares the devices. faiss_bytes: FAISS's
    share (index + scratch; CPU FAISS: host RAM for the whole index). faiss_temp_bytes: FAISS's
    scratch memory per GPU. budget: where work_bytes came from ('device' or 'override').
    """

    platform: str
    devices: int
    device_bytes: int
    jax_bytes: int
    in_use_bytes: int
    work_bytes: int
    faiss_gpu: bool
    faiss_bytes: int
    faiss_temp_bytes: int
    budget: str

    @property
    def faiss_index_bytes(self) -> int:
        """Bytes of FAISS's share left for the index (or its shard) on one device."""
        return max(0, self.faiss_bytes - self.faiss_temp_bytes)

    def chunk(
        self,
        bytes_per_item: int,
        n: int | None = None,
        *,
        override: int | None = None,
        cpu_bounded: bool = False,
    ) -> int:
        """Items per chunk: as many as fit in work_bytes, between 1 and n.

        bytes_per_item: device memory one item needs (all its live buffers); override: the
        user's count (a CLI flag), taken as is (up to n). cpu_bounded (forward-only work on a
        CPU): also keep the chunk near CPU_CHUNK_BYTES (at least CPU_MIN_CHUNK items).
        """
        top = n if n is not None else 2**31 - 1
        if override is not None:
            return int(max(1, min(override, top)))
        per = max(1, int(bytes_per_item))
        c = self.work_bytes // per
        if cpu_bounded and self.platform == "cpu":
            c = min(c, max(CPU_MIN_CHUNK, CPU_CHUNK_BYTES // per))
        return int(max(1, min(top, c)))

    def describe(self) -> dict:
        """The plan as JSON-ready numbers (MiB) for `jaxviz doctor --plan` and manifests."""
        mib = lambda b: round(b / 2**20, 1)  # noqa: E731
        out = asdict(self)
        for k in ("device_bytes", "jax_bytes", "in_use_bytes", "work_bytes", "faiss_bytes"):
            out[k.replace("_bytes", "_mib")] = mib(out.pop(k))
        out["faiss_temp_mib"] = mib(out.pop("faiss_temp_bytes"))
        out["faiss_index_mib"] = mib(self.faiss_index_bytes)
        out["env"] = {k: os.environ.get(k) for k in (ENV_FRACTION, ENV_PREALLOCATE, ENV_FAISS)}
        return out


def plan(
    devices: Sequence[jax.Device] | None = None,
    *,
    faiss_gpu: bool = False,
    budget_mb: float | None = None,
) -> Plan:
    """The plan for `devices` (default: this process's local devices; starts JAX's backend).

    faiss_gpu: a FAISS GPU index shares the devices (its share as `share_with_faiss` left it).
    budget_mb: override work_bytes (per device, MiB), e.g. `--memory-mb`.
    """
    devices = list(devices) if devices is not None else jax.local_devices()
    if budget_mb is not None and budget_mb <= 0:
        raise UsageError(f"--memory-mb must be positive, got {budget_mb}")
    dev = devices[0]
    stats = dev.memory_stats() if dev.platform != "cpu" else None
    if stats and "bytes_limit" in stats:
        jax_bytes, in_use = int(stats["bytes_limit"]), int(stats.get("bytes_in_use", 0))
        totals = gpu_total_bytes() if dev.platform == "gpu" else []
        device_bytes = totals[0] if totals else int(jax_bytes / jax_fraction())
        work = int(WORK_FRACTION * max(0, jax_bytes - in_use))
        faiss = int(faiss_fraction() * device_bytes) if faiss_gpu else 0
        temp = min(FAISS_TEMP_MAX, faiss // 10)  # as faiss_share
    else:  # CPU (or an accelerator without memory stats): host RAM
        available = psutil.virtual_memory().available
        device_bytes = jax_bytes = available // len(devices)
        in_use = 0
        work = int(CPU_WORK_FRACTION * device_bytes)
        faiss, temp = int(FAISS_HOST_FRACTION * available), 0
    if budget_mb is not None:
        work = int(budget_mb * 2**20)
    return Plan(
        platform=dev.platform,
        devices=len(devices),
        device_bytes=int(device_bytes),
        jax_bytes=jax_bytes,
        in_use_bytes=in_use,
        work_bytes=work,
        faiss_gpu=bool(faiss_gpu and stats),
        faiss_bytes=faiss,
        faiss_temp_bytes=temp,
        budget="override" if budget_mb is not None else "device",
    )
