"""The hardware a benchmark ran on, for its JSON lines (numbers mean little without it)."""

from __future__ import annotations

import os
import platform

import jax


def hardware() -> dict:
    """CPU model, usable cores, memory, load, JAX devices (GPU names when present)."""
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if "model name" in line)
    except (OSError, StopIteration):
        pass
    try:
        mem_gib = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    except (ValueError, OSError):
        mem_gib = None
    return {
        "cpu": cpu,
        "cores": len(os.sched_getaffinity(0)),
        "memory_gib": None if mem_gib is None else round(mem_gib, 1),
        "load_avg_1m": os.getloadavg()[0],
        "jax": jax.__version__,
        "devices": [f"{d.platform}:{d.device_kind}" for d in jax.devices()],
    }
