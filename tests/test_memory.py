"""Device-memory plan: shares, the environment set before JAX starts, chunk arithmetic."""

import math

import jax
import pytest

from jaxviz.errors import UsageError
from jaxviz.methods.occlusion import FullForward, activation_bytes, auto_chunk
from jaxviz.methods.targets import chunk_for_budget
from jaxviz.models.stage import stage_shapes
from jaxviz.runtime import memory
from jaxviz.runtime.memory import Plan


def _plan(platform="gpu", work=1000, devices=1) -> Plan:
    return Plan(platform, devices, 10_000, 7_000, 0, work, False, 0, 0, "device")


def test_chunk_arithmetic():
    gpu = _plan("gpu", work=1000)
    assert gpu.chunk(100) == 10 and gpu.chunk(101) == 9 and gpu.chunk(100, n=4) == 4
    assert gpu.chunk(5000) == 1  # never below one item
    assert gpu.chunk(100, n=50, override=30) == 30 and gpu.chunk(100, n=20, override=30) == 20
    # CPU bounds apply to forward-only chunks on a CPU only
    cpu = _plan("cpu", work=10 << 30)
    mib = 2**20
    assert cpu.chunk(mib) == (10 << 30) // mib
    assert cpu.chunk(mib, cpu_bounded=True) == memory.CPU_CHUNK_BYTES // mib
    assert cpu.chunk(100 * mib, cpu_bounded=True) == memory.CPU_MIN_CHUNK
    assert gpu.chunk(10, cpu_bounded=True) == 100  # no CPU bound on a GPU


def test_share_with_faiss_sets_env_only_before_jax_and_never_over_the_user():
    env = {}
    assert memory.share_with_faiss(2, env, started=False)
    assert env == {
        "XLA_PYTHON_CLIENT_PREALLOCATE": "false",
        "XLA_PYTHON_CLIENT_MEM_FRACTION": "0.700",
    }
    assert memory.jax_fraction(env) == pytest.approx(1 - memory.FAISS_FRACTION - memory.GPU_MARGIN)
    env = {"XLA_PYTHON_CLIENT_MEM_FRACTION": "0.5", "JAXVIZ_FAISS_FRACTION": "0.4"}
    assert memory.share_with_faiss(1, env, started=False)
    assert env["XLA_PYTHON_CLIENT_MEM_FRACTION"] == "0.5"  # the user's setting wins
    env = {}
    assert not memory.share_with_faiss(1, env, started=True) and env == {}
    assert not memory.share_with_faiss(0, env, started=False) and env == {}
    with pytest.raises(UsageError, match="JAXVIZ_FAISS_FRACTION"):
        memory.faiss_fraction({"JAXVIZ_FAISS_FRACTION": "2"})


def test_faiss_share_splits_scratch_and_index(monkeypatch):
    monkeypatch.setattr(memory, "gpu_total_bytes", lambda: [100 << 30, 80 << 30])
    share = memory.faiss_share(2, {})
    assert share.temp_bytes == memory.FAISS_TEMP_MAX  # 10% of 20 GiB, capped at 2 GiB
    assert share.index_bytes == int(0.25 * (80 << 30)) - share.temp_bytes  # smallest GPU
    assert share.total_index_bytes == 2 * share.index_bytes
    assert memory.faiss_share(0).devices == 0


def test_plan_budgets_and_chunks_follow_it(demo_random):
    model, _ = demo_random
    plan = memory.plan()
    assert plan.platform == "cpu" and plan.devices == jax.local_device_count()
    assert plan.work_bytes == int(memory.CPU_WORK_FRACTION * plan.device_bytes)
    assert memory.plan(budget_mb=3).work_bytes == 3 << 20
    with pytest.raises(UsageError, match="memory-mb"):
        memory.plan(budget_mb=0)
    # attribution: ~3 float32 copies of every stage output per image, the batch over devices
    per_image = 3 * 4 * sum(math.prod(s) for s in stage_shapes(model).values())
    per_device = -(-8 // plan.devices)
    want = (1024 << 20) // (per_image * per_device)
    assert chunk_for_budget(model, 8, None, budget_mb=1024) == want
    one = chunk_for_budget(model, plan.devices, None, budget_mb=64)
    assert one == chunk_for_budget(model, 1, None, budget_mb=64)  # one image per device
    # occlusion: budget / bytes per position, within the CPU bounds
    ev = FullForward(model, (64, 64), (8, 8))
    assert ev.bytes_per_position == activation_bytes(model, (64, 64))
    budget = 5 * ev.bytes_per_position
    assert auto_chunk(ev, 1, 10_000, budget) == 5
    assert auto_chunk(ev, 5, 10_000, budget) == 1
    assert auto_chunk(ev, 1, 3, budget) == 3
