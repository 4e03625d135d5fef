"""`jaxviz doctor`: which backends this install really uses, and the device-memory plan.

Prints (and with --json writes) JAX's platform and devices, memory per device, the FAISS build
(CPU or GPU, GPUs it sees, version, and which installed distribution the imported `faiss` module
came from), and whether tsnecuda imports. `--plan` adds the memory plan (runtime/memory.py) and
the chunk sizes it gives a model's jobs.

Exit status 1 when an installed GPU extra is not what is imported: a FAISS GPU distribution
installed beside faiss-cpu (both install the module `faiss`; whichever was installed last
overwrote the other's files, so the import is the CPU build or a mix of both), or a JAX CUDA
plugin installed while JAX runs on the CPU.
"""

from __future__ import annotations

import base64
import hashlib
import importlib.metadata as md
import importlib.util
import json
import os
import sys
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from jaxviz.jobs.config import JobConfig, option
from jaxviz.runtime import memory

GPU_FAISS = ("faiss-gpu", "faiss-gpu-cu12", "faiss-gpu-cu11", "faiss-gpu-cu13")
JAX_CUDA = ("jax-cuda12-plugin", "jax-cuda13-plugin")


@dataclass(kw_only=True)
class DoctorConfig(JobConfig):
    plan: bool = option(False, "also print the device-memory plan")
    model: str = option("demo", "model whose chunk sizes --plan shows")
    json: str | None = option(None, "also write the report to this JSON file")


def _norm(name: str) -> str:
    return name.lower().replace("_", "-")


def _matches(dist: md.Distribution, rel: str, root: Path) -> bool:
    """Whether file `rel` on disk under `root` is the one `dist`'s RECORD lists (by hash)."""
    for f in dist.files or ():
        if f.as_posix() != rel or f.hash is None:
            continue
        path = root / rel
        if not path.exists():
            return False
        digest = hashlib.new(f.hash.mode, path.read_bytes()).digest()
        return base64.urlsafe_b64encode(digest).rstrip(b"=").decode() == f.hash.value
    return False


def module_provenance(
    module: str, module_file: str, dists: Iterable[md.Distribution] | None = None
) -> dict:
    """Which installed distributions provide top-level `module`, and whose files are on disk.

    module_file: the imported module's __init__.py. A distribution `owns` the import when every
    file of the module's package that its RECORD lists with a hash is on disk unchanged.
    Returns {providers: [names], owner: name | None (None: a mix or unknown), shadowed: bool}.
    """
    pkg_dir = Path(module_file).parent
    root = pkg_dir.parent
    providers = []
    for d in md.distributions() if dists is None else dists:
        files = [f.as_posix() for f in d.files or () if f.parts and f.parts[0] == module]
        if files:
            providers.append(d)
    owners = []
    for d in providers:
        listed = [
            f.as_posix()
            for f in d.files or ()
            if f.parts and f.parts[0] == module and f.hash is not None
        ]
        if listed and all(_matches(d, rel, root) for rel in listed):
            owners.append(_norm(d.metadata["Name"]))
    names = sorted({_norm(d.metadata["Name"]) for d in providers})
    return {
        "providers": names,
        "owner": owners[0] if len(owners) == 1 else None,
        "shadowed": len(names) > 1,
    }


def faiss_report() -> dict:
    """The imported FAISS: version, build, GPUs, file and distribution."""
    import faiss

    gpu_build = hasattr(faiss, "StandardGpuResources")
    return {
        "version": faiss.__version__,
        "build": "GPU" if gpu_build else "CPU",
        "gpus": faiss.get_num_gpus() if hasattr(faiss, "get_num_gpus") else 0,
        "file": faiss.__file__,
        **module_provenance("faiss", faiss.__file__),
    }


def problems(report: dict, installed: set[str]) -> list[str]:
    """What makes doctor fail: an installed GPU extra that is not the one imported."""
    out = []
    gpu_dists = sorted(installed & set(GPU_FAISS))
    f = report["faiss"]
    if gpu_dists and (f["build"] != "GPU" or f["owner"] not in gpu_dists):
        out.append(
            f"{', '.join(gpu_dists)} installed but the imported faiss is "
            f"{f['owner'] or 'a mix of ' + ', '.join(f['providers'])} ({f['build']} build): "
            "uninstall every faiss distribution, then install only the one you want "
            "(README.gpu.md)"
        )
    cuda = sorted(installed & set(JAX_CUDA))
    if cuda and report["jax"]["platform"] == "cpu":
        out.append(
            f"{', '.join(cuda)} installed but JAX runs on the CPU (no GPU visible, or a CUDA "
            "mismatch: check `python -c 'import jax; jax.devices(\"gpu\")'`)"
        )
    return out


def installed_names() -> set[str]:
    return {_norm(d.metadata["Name"] or "") for d in md.distributions()}


def tsnecuda_report() -> dict:
    if importlib.util.find_spec("tsnecuda") is None:
        return {"available": False, "why": "not installed"}
    try:
        import tsnecuda  # noqa: F401
    except Exception as e:  # an import error or a CUDA library that fails to load
        return {"available": False, "why": f"{type(e).__name__}: {e}"[:200]}
    return {"available": True}


def jax_report() -> dict:
    import jax

    devices = jax.local_devices()
    per_device = []
    for d in devices:
        stats = d.memory_stats() if d.platform != "cpu" else None
        per_device.append(
            {
                "id": d.id,
                "kind": d.device_kind,
                "bytes_limit_mib": round(stats["bytes_limit"] / 2**20)
                if stats and "bytes_limit" in stats
                else None,
            }
        )
    return {
        "version": jax.__version__,
        "platform": jax.default_backend(),
        "process_count": jax.process_count(),
        "devices": per_device,
    }


def plan_report(model_name: str, faiss_gpu: bool) -> dict:
    """The memory plan and the chunk sizes it gives `model_name`'s jobs (at batch 32)."""
    from jaxviz.methods.occlusion import FullForward, auto_chunk, grid_size
    from jaxviz.methods.targets import chunk_for_budget
    from jaxviz.models.zoo import entry

    plan = memory.plan(faiss_gpu=faiss_gpu)
    model = entry(model_name).build()
    hw = model.input_size
    n_pos = grid_size(hw, (16, 16), (8, 8))
    n_pos = n_pos[0] * n_pos[1]
    return {
        **plan.describe(),
        "chunks": {
            "model": model_name,
            "occlusion_positions_window16_stride8": auto_chunk(
                FullForward(model, hw, (16, 16)), 1, n_pos, plan.work_bytes
            ),
            "ig_steps_batch32": chunk_for_budget(model, 32 // plan.devices or 1, hw, None),
            "faiss_share": memory.faiss_share(0 if not faiss_gpu else 1).__dict__,
        },
    }


def run(args: DoctorConfig) -> int:
    import faiss

    faiss_gpus = faiss.get_num_gpus() if hasattr(faiss, "get_num_gpus") else 0
    memory.share_with_faiss(faiss_gpus)  # before JAX starts, as features and neighbors do
    report = {
        "python": sys.version.split()[0],
        "jax": jax_report(),
        "faiss": faiss_report(),
        "tsnecuda": tsnecuda_report(),
        "env": {k: os.environ.get(k) for k in ("CUDA_VISIBLE_DEVICES", "JAX_PLATFORMS")},
    }
    if args.plan:
        report["plan"] = plan_report(args.model, faiss_gpus > 0)
    report["problems"] = problems(report, installed_names())
    print(json.dumps(report, indent=2))
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2))
    for p in report["problems"]:
        print(f"jaxviz doctor: {p}", file=sys.stderr)
    return 1 if report["problems"] else 0
