"""Where a FAISS index lives: trained on one device, then distributed (Johnson et al. 2017).

`KnnIndex` holds its index on the CPU until it is trained, and hands it to a `Placement` twice:
`train(index, x)` runs the k-means of an IVF index on ONE device (the coarse quantizer's
`clustering_index` on the first GPU, or the CPU), so the trained index is the same whatever the
number of GPUs; `distribute(index)` then puts the trained index on its devices:

- `CpuPlacement`: stays where it is.
- `GpuPlacement(gpus, share)`: one `StandardGpuResources` per GPU, each with the plan's scratch
  memory (`setTempMemory`); the index is replicated on every GPU when it fits in one GPU's FAISS
  share (queries split over the replicas), sharded across them when it does not
  (`GpuMultipleClonerOptions.shard`), and left on the CPU when it does not fit even sharded or
  FAISS cannot put that index type on a GPU.

`this_process_gpus()`: with several processes (one per GPU), each one pins the GPUs of its own
JAX devices instead of cloning onto every GPU of the host.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from typing import Any, Protocol

import faiss
import numpy as np

from jaxviz.runtime.memory import FaissShare


class Placement(Protocol):
    """Trains an index on one device and distributes the trained index (see module docstring)."""

    gpu: bool

    def train(self, index: faiss.Index, x: np.ndarray) -> None: ...

    def distribute(self, index: faiss.Index) -> faiss.Index: ...


class CpuPlacement:
    """Everything on the CPU."""

    gpu = False

    def train(self, index: faiss.Index, x: np.ndarray) -> None:
        index.train(x)

    def distribute(self, index: faiss.Index) -> faiss.Index:
        return index


def index_bytes(index: faiss.Index) -> int:
    """Bytes the index's vectors take (the codes and ids of an IVF index; d floats a vector of
    a flat one), for the replicate-or-shard decision."""
    ivf = ivf_of(index)
    n = index.ntotal
    if ivf is not None:
        return int(n * (ivf.code_size + 8) + ivf.nlist * ivf.d * 4)
    return int(n * getattr(index, "code_size", 4 * index.d))


def ivf_of(index: faiss.Index) -> faiss.IndexIVF | None:
    """The IVF part of an index (None for non-IVF indexes)."""
    try:
        return faiss.extract_index_ivf(index)
    except RuntimeError:
        return None


def should_shard(nbytes: int, n_gpus: int, per_gpu: int) -> bool | None:
    """True: shard over n_gpus; False: replicate (fits on one GPU); None: does not fit at all."""
    if nbytes <= per_gpu:
        return False
    if n_gpus > 1 and nbytes <= per_gpu * n_gpus:
        return True
    return None


@dataclass
class GpuPlacement:
    """FAISS on `gpus` (device ordinals) with `share` of each (index + scratch bytes)."""

    gpus: list[int]
    share: FaissShare
    gpu: bool = True
    resources: list[Any] = field(default_factory=list)

    def __post_init__(self) -> None:
        for _ in self.gpus:
            res = faiss.StandardGpuResources()
            res.setTempMemory(int(self.share.temp_bytes))
            self.resources.append(res)

    def train(self, index: faiss.Index, x: np.ndarray) -> None:
        ivf = ivf_of(index)
        if ivf is None:
            index.train(x)
            return
        # k-means on the first GPU; the index itself stays on the CPU. `on_gpu` must outlive
        # train(): the IVF holds only a C++ pointer to it.
        flat = faiss.IndexFlat(ivf.d, ivf.metric_type)
        on_gpu = faiss.index_cpu_to_gpu(self.resources[0], self.gpus[0], flat)
        ivf.clustering_index = on_gpu
        try:
            index.train(x)
        finally:
            ivf.clustering_index = None
            del on_gpu

    def distribute(self, index: faiss.Index) -> faiss.Index:
        shard = should_shard(index_bytes(index), len(self.gpus), self.share.index_bytes)
        if shard is None:
            print("jaxviz: index stays on the CPU (larger than FAISS's GPU share)", file=sys.stderr)
            self.gpu = False
            return index
        co = faiss.GpuMultipleClonerOptions()
        co.shard = shard
        try:
            return faiss.index_cpu_to_gpu_multiple_py(self.resources, index, co, self.gpus)
        except (RuntimeError, AttributeError) as e:
            print(f"jaxviz: index stays on the CPU ({first_line(e)})", file=sys.stderr)
            self.gpu = False
            return index


def this_process_gpus(n_faiss_gpus: int) -> list[int]:
    """GPU ordinals FAISS may use in this process: with several JAX processes, those of this
    process's own JAX devices (one process per GPU); else every GPU FAISS sees."""
    import jax

    if jax.process_count() > 1:
        mine = [d.local_hardware_id for d in jax.local_devices() if d.platform == "gpu"]
        return [g for g in mine if g is not None and g < n_faiss_gpus]
    return list(range(n_faiss_gpus))


def first_line(e: BaseException) -> str:
    import re

    text = re.sub(r"\s+", " ", str(e)).strip()
    return text.split("Error in")[0].strip() or text[:200]
