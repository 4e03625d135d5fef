"""k-nearest-neighbour search over streamed feature vectors (FAISS; on the GPU when it has them).

The index is filled batch by batch as features stream out of the model, so nothing but the index
itself is held in memory. Index choice (Johnson, Douze, Jegou, "Billion-scale similarity search
with GPUs", 2017, and the FAISS wiki's guidelines):

- `auto`: decided by bytes against FAISS's share of the memory plan (`runtime.memory.faiss_share`:
  a share of each GPU, sharded over them, or of host RAM), not by the vector count alone:
  exact `Flat` below ~1M vectors when n x dim float32 fit; else `IVF{nlist},Flat` when the
  vectors with their ids fit; else `IVF{nlist},PQ{m}` (m bytes a vector).
- `Flat`, `IVF`, `IVF,PQ`: those families with nlist/m chosen from the size; any other string is
  a FAISS factory string passed through (`IVF4096,PQ64`, `HNSW32`, `OPQ64,IVF1024,PQ64`, ...).

An index that needs training (IVF, PQ) buffers only its first `train_size` vectors, trains on them
on ONE device, then is distributed over the GPUs (index/placement.py: replicated when it fits on one
GPU, sharded when not) and adds them and everything after. Metrics: `l2` (distances are Euclidean,
not squared) and `cosine` (rows L2-normalized, inner-product search; distances are 1 - cosine
similarity).
Results carry the caller's int64 ids (FAISS's own labels are the insertion order).
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any, Protocol

import numpy as np

try:
    import faiss
except ImportError as e:  # FAISS comes from the cpu or gpu extra, never from both
    raise ImportError(
        "jaxviz's k-NN index needs FAISS: pip install 'jaxviz[cpu]' or 'jaxviz[gpu]' "
        "(README.gpu.md)"
    ) from e

from jaxviz.errors import UsageError
from jaxviz.index.checked_io import read_faiss, read_ids, read_knn_meta
from jaxviz.index.placement import (
    CpuPlacement,
    GpuPlacement,
    Placement,
    first_line,
    ivf_of,
    this_process_gpus,
)
from jaxviz.runtime.memory import faiss_share

METRICS = ("l2", "cosine")
FLAT_BELOW = 1_000_000  # auto: exact search below this many vectors (when they fit)
INDEX_FILE, IDS_FILE, META_FILE = "index.faiss", "ids.npy", "knn.json"


class Writer(Protocol):
    """Where files go: a jobs.output.JobOutput (atomic writes, paths relative to its folder)."""

    def path(self, rel: str) -> Path: ...

    def npy(self, rel: str, array: np.ndarray) -> None: ...

    def json(self, rel: str, obj: Any) -> None: ...


def default_nlist(n: int) -> int:
    """IVF cells for n vectors: 4 sqrt(n) rounded to a power of two, in [16, 65536]."""
    return int(np.clip(2 ** round(math.log2(4 * math.sqrt(max(n, 1)))), 16, 65536))


def default_nprobe(nlist: int) -> int:
    """Cells visited per query: nlist / 64, at least 8 (recall@10 >= 0.95 on clustered data)."""
    return min(nlist, max(8, nlist // 64))


def default_pq_m(dim: int) -> int:
    """PQ sub-quantizers: the largest divisor of dim that is <= min(64, dim / 2)."""
    top = max(1, min(64, dim // 2))
    return next(m for m in range(top, 0, -1) if dim % m == 0)


def choose_factory(spec: str, n: int, dim: int, budget: int | None = None) -> str:
    """The FAISS factory string for `spec` (auto, Flat, IVF, IVF,PQ or a factory string).

    budget: bytes the index may take (default: FAISS's share of the memory plan on the GPUs
    this process would use, or of host RAM)."""
    key = spec.replace(" ", "")
    if key.lower() == "auto":
        if budget is None:
            budget = faiss_share(len(this_process_gpus(gpu_count()))).total_index_bytes
        if n < FLAT_BELOW and n * dim * 4 <= budget:
            return "Flat"
        key = "IVF" if n * (dim * 4 + 8) <= budget else "IVF,PQ"
    if key.lower() == "flat":
        return "Flat"
    if key.upper() == "IVF":
        return f"IVF{default_nlist(n)},Flat"
    if key.upper() == "IVF,PQ":
        return f"IVF{default_nlist(n)},PQ{default_pq_m(dim)}"
    return key


def gpu_count() -> int:
    """GPUs FAISS can use (0 with faiss-cpu)."""
    return faiss.get_num_gpus() if hasattr(faiss, "get_num_gpus") else 0


class KnnIndex:
    """A FAISS index with caller ids, filled incrementally.

    dim: vector length; metric: 'l2' or 'cosine'; factory: a FAISS factory string (see
    `choose_factory`); nprobe: IVF cells visited per query (None: `default_nprobe`); train_size:
    vectors buffered to train an index that needs it (None: 40 per IVF cell, at least 10,000);
    gpu: put the index on the GPUs (None: when FAISS sees any); placement: where it trains and
    lives (default: `default_placement(gpu)`).
    """

    def __init__(
        self,
        dim: int,
        metric: str = "l2",
        factory: str = "Flat",
        nprobe: int | None = None,
        train_size: int | None = None,
        gpu: bool | None = None,
        placement: Placement | None = None,
    ):
        if metric not in METRICS:
            raise UsageError(f"unknown metric {metric!r}; choose from: {', '.join(METRICS)}")
        self.dim, self.metric, self.factory = int(dim), metric, factory
        fmetric = faiss.METRIC_L2 if metric == "l2" else faiss.METRIC_INNER_PRODUCT
        try:
            cpu = faiss.index_factory(self.dim, factory, fmetric)
        except RuntimeError as e:
            raise UsageError(f"bad FAISS index {factory!r} for dim {dim}: {first_line(e)}") from e
        ivf = ivf_of(cpu)
        if ivf is not None:
            ivf.cp.niter = 10  # k-means iterations; FAISS's 25 buys no recall on features
        if hasattr(cpu, "do_polysemous_training"):
            cpu.do_polysemous_training = False  # slow, and only for Hamming-filtered search
        self.nlist = ivf.nlist if ivf is not None else 0
        self.nprobe = (nprobe or default_nprobe(self.nlist)) if ivf is not None else None
        self.train_size = train_size or max(40 * self.nlist, 10_000)
        self.placement = placement or default_placement(gpu)
        self.index = cpu if not cpu.is_trained else self.placement.distribute(cpu)
        self._apply_nprobe()
        self._pending: list[np.ndarray] = []  # vectors waiting for training
        self._pending_ids: list[np.ndarray] = []
        self._ids: list[np.ndarray] = []  # caller ids in insertion order
        self._ids_cat: np.ndarray | None = None

    # -- filling ---------------------------------------------------------------------------

    @property
    def ntotal(self) -> int:
        """Vectors added (including those still buffered for training)."""
        return sum(len(a) for a in self._ids) + sum(len(a) for a in self._pending_ids)

    def add(self, x: np.ndarray, ids: np.ndarray) -> None:
        """Add vectors x: [n, dim] (any float dtype) with ids: [n] int64."""
        x = self._prepare(x)
        ids = np.asarray(ids, np.int64).reshape(-1)
        if len(ids) != len(x):
            raise ValueError(f"{len(x)} vectors but {len(ids)} ids")
        if not self.index.is_trained:
            # train on exactly the first train_size vectors, however they were batched, so
            # the index depends on the sequence of vectors only (resume, multi-process merge)
            room = self.train_size - sum(len(a) for a in self._pending)
            self._pending.append(x[:room])
            self._pending_ids.append(ids[:room])
            if len(x) < room:
                return
            self.train()
            x, ids = x[room:], ids[room:]
            if len(x) == 0:
                return
        self.index.add(x)
        self._ids.append(ids)
        self._ids_cat = None

    def train(self) -> None:
        """Train on the buffered vectors (called by `add` once train_size arrived; call it
        yourself when fewer vectors than that exist), then add them."""
        if self.index.is_trained:
            return
        x = np.concatenate(self._pending) if self._pending else np.zeros((0, self.dim), "f4")
        if len(x) < max(self.nlist, 1):
            raise UsageError(
                f"index {self.factory!r} needs at least {max(self.nlist, 1)} vectors to train, "
                f"got {len(x)}; use --index Flat or fewer IVF cells"
            )
        self.placement.train(self.index, x)  # on one device, before distributing
        self.index = self.placement.distribute(self.index)
        self._apply_nprobe()
        ids = np.concatenate(self._pending_ids)
        self._pending, self._pending_ids = [], []
        self.index.add(x)
        self._ids.append(ids)
        self._ids_cat = None

    @property
    def gpu(self) -> bool:
        """Whether the index is (or will be, once trained) on GPUs."""
        return self.placement.gpu

    # -- searching --------------------------------------------------------------------------

    def ids(self) -> np.ndarray:
        """[ntotal] int64: caller ids in insertion order (FAISS label i -> ids()[i])."""
        self.train()
        if self._ids_cat is None:
            self._ids_cat = np.concatenate(self._ids) if self._ids else np.zeros(0, np.int64)
            self._ids = [self._ids_cat]
        return self._ids_cat

    def search(
        self, q: np.ndarray, k: int, nprobe: int | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """The k nearest neighbours of each query.

        q: [nq, dim] float. Returns (distances [nq, k] float32 ascending: Euclidean for l2,
        1 - cosine similarity for cosine; ids [nq, k] int64, -1 with distance inf where fewer
        than k were found). nprobe overrides the index's for this call.
        """
        table = self.ids()
        if nprobe is not None and nprobe != self.nprobe:
            saved, self.nprobe = self.nprobe, nprobe
            self._apply_nprobe()
            try:
                return self.search(q, k)
            finally:
                self.nprobe = saved
                self._apply_nprobe()
        d, labels = self.index.search(self._prepare(q), int(k))
        found = labels >= 0
        ids = np.where(found, table[np.where(found, labels, 0)], -1)
        d = np.sqrt(np.maximum(d, 0)) if self.metric == "l2" else 1 - d
        return np.where(found, d, np.inf).astype(np.float32), ids.astype(np.int64)

    # -- persistence ------------------------------------------------------------------------

    def save(self, out: Writer) -> None:
        """Write index.faiss, ids.npy and knn.json into the job's output folder (atomically)."""
        ids = self.ids()
        cpu = faiss.index_gpu_to_cpu(self.index) if on_gpu(self.index) else self.index
        final = out.path(INDEX_FILE)
        tmp = final.with_name(f".{INDEX_FILE}.{os.getpid()}.tmp")
        faiss.write_index(cpu, str(tmp))
        os.replace(tmp, final)
        out.npy(IDS_FILE, ids)
        out.json(META_FILE, self.meta())

    def meta(self) -> dict:
        return {
            "dim": self.dim,
            "metric": self.metric,
            "factory": self.factory,
            "nlist": self.nlist,
            "nprobe": self.nprobe,
            "ntotal": self.ntotal,
            "gpu": self.gpu,
        }

    @classmethod
    def load(
        cls, folder: str | os.PathLike, gpu: bool | None = None, placement: Placement | None = None
    ) -> KnnIndex:
        """Read an index written by `save` (onto the GPUs when FAISS sees any, unless gpu=False)."""
        folder = Path(folder)
        if not (folder / META_FILE).exists():
            raise UsageError(f"no k-NN index in {folder} (missing {META_FILE})")
        meta = read_knn_meta(folder / META_FILE)
        self = cls.__new__(cls)
        self.dim, self.metric, self.factory = meta["dim"], meta["metric"], meta["factory"]
        self.nlist, self.nprobe = meta["nlist"], meta["nprobe"]
        self.train_size = 0
        cpu = read_faiss(folder / INDEX_FILE, self.dim)
        self.placement = placement or default_placement(gpu)
        self.index = cpu if not cpu.is_trained else self.placement.distribute(cpu)
        self._apply_nprobe()
        self._pending, self._pending_ids = [], []
        self._ids_cat = read_ids(folder / IDS_FILE)
        self._ids = [self._ids_cat]
        if len(self._ids_cat) != self.index.ntotal:
            raise UsageError(
                f"{folder}: {IDS_FILE} has {len(self._ids_cat)} ids for {self.index.ntotal} vectors"
            )
        return self

    # -- helpers ----------------------------------------------------------------------------

    def _prepare(self, x: np.ndarray) -> np.ndarray:
        x = np.ascontiguousarray(np.asarray(x, np.float32).reshape(-1, self.dim))
        if self.metric == "cosine":
            x = x.copy()
            faiss.normalize_L2(x)
        return x

    def _apply_nprobe(self) -> None:
        if self.nprobe is None:
            return
        space = faiss.GpuParameterSpace() if on_gpu(self.index) else faiss.ParameterSpace()
        space.set_index_parameter(self.index, "nprobe", int(self.nprobe))


def on_gpu(index: faiss.Index) -> bool:
    """Whether `index` is a GPU index (or GPU replicas / shards)."""
    if isinstance(index, faiss.IndexReplicas | faiss.IndexShards):
        return index.count() > 0 and on_gpu(index.at(0))
    return type(index).__name__.startswith("Gpu")


def default_placement(gpu: bool | None = None) -> Placement:
    """GPUs of this process (all FAISS sees, or with one process per GPU its own) with FAISS's
    share of the memory plan; the CPU without GPUs or with gpu=False."""
    gpus = this_process_gpus(gpu_count()) if gpu is not False else []
    if not gpus:
        return CpuPlacement()
    return GpuPlacement(gpus, faiss_share(len(gpus)))
