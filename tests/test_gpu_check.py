"""scripts/gpu_check.py: the dry run lists every step; the k-NN step end to end at a small size."""

import importlib.util
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("gpu_check", ROOT / "scripts" / "gpu_check.py")
gpu_check = importlib.util.module_from_spec(spec)
spec.loader.exec_module(gpu_check)


def test_dry_run_lists_every_step_with_time_and_memory(capsys):
    assert gpu_check.main(["--dry-run"]) == 0
    lines = capsys.readouterr().out.splitlines()
    for step in gpu_check.STEPS:
        (line,) = [x for x in lines if x.startswith(step + " ")]
        assert " s on one H200" in line and "memory:" in line
    total = sum(s for s, _ in gpu_check.EXPECTED.values())
    assert total <= 480 and set(gpu_check.EXPECTED) == set(gpu_check.STEPS)


def test_knn_step_exact_flat_and_the_neighbors_cli(tmp_path):
    size = {"knn_n": 3000, "knn_d": 16, "knn_queries": 30}
    res = gpu_check.step_knn(size, tmp_path)
    assert res["Flat"]["factory"] == "Flat" and res["Flat"]["recall_at_10_vs_cpu_exact"] == 1.0
    ivf = res["IVF"]  # 3,000 vectors in 256 cells, 8 probed: approximate
    assert ivf["factory"] == "IVF256,Flat" and 0.5 < ivf["recall_at_10_vs_cpu_exact"] <= 1
    for spec_ in ("Flat", "IVF"):
        cli = res[spec_]["neighbors_cli"]
        assert cli["rc"] == 0, cli.get("stderr")
        assert cli["results"]["precision_at_5"] is not None
