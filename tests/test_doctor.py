"""`jaxviz doctor`: which distribution the imported faiss came from, and the shadowing failure."""

import base64
import hashlib
import importlib.metadata as md
import json

from jaxviz.cli import main
from jaxviz.jobs.doctor import module_provenance, problems


def _dist(site, name, files):
    """A dist-info folder for `name` whose RECORD lists `files` {path: bytes} with hashes."""
    info = site / f"{name.replace('-', '_')}-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 1.0\n")
    rows = []
    for rel, data in files.items():
        h = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
        rows.append(f"{rel},sha256={h},{len(data)}")
    (info / "RECORD").write_text("\n".join(rows) + "\n")


def test_provenance_names_the_distribution_whose_files_are_on_disk(tmp_path):
    site = tmp_path / "site"
    (site / "faiss").mkdir(parents=True)
    cpu = {"faiss/__init__.py": b"cpu", "faiss/_swig.so": b"cpu-so"}
    gpu = {"faiss/__init__.py": b"gpu", "faiss/_swig.so": b"gpu-so"}
    _dist(site, "faiss-cpu", cpu)
    _dist(site, "faiss-gpu", gpu)
    init = site / "faiss" / "__init__.py"
    dists = lambda: md.distributions(path=[str(site)])  # noqa: E731
    for files, owner in ((gpu, "faiss-gpu"), (cpu, "faiss-cpu")):  # installed last wins
        for rel, data in files.items():
            (site / rel).write_bytes(data)
        got = module_provenance("faiss", str(init), dists())
        assert got == {"providers": ["faiss-cpu", "faiss-gpu"], "owner": owner, "shadowed": True}
    (site / "faiss" / "_swig.so").write_bytes(b"gpu-so")  # a mix of both: nobody owns it
    assert module_provenance("faiss", str(init), dists())["owner"] is None


def test_problems_flag_an_installed_gpu_extra_that_is_not_imported():
    report = {
        "faiss": {"build": "CPU", "owner": "faiss-cpu", "providers": ["faiss-cpu", "faiss-gpu"]},
        "jax": {"platform": "cpu"},
    }
    assert problems(report, {"faiss-cpu", "jax"}) == []
    (msg,) = problems(report, {"faiss-cpu", "faiss-gpu"})
    assert "faiss-gpu installed but the imported faiss is faiss-cpu (CPU build)" in msg
    ok = {"faiss": {"build": "GPU", "owner": "faiss-gpu", "providers": ["faiss-gpu"]}}
    assert problems({**ok, "jax": {"platform": "gpu"}}, {"faiss-gpu", "jax-cuda12-plugin"}) == []
    (msg,) = problems({**ok, "jax": {"platform": "cpu"}}, {"faiss-gpu", "jax-cuda12-plugin"})
    assert "jax-cuda12-plugin installed but JAX runs on the CPU" in msg


def test_doctor_on_this_machine(tmp_path, capsys):
    out = tmp_path / "doctor.json"
    assert main(["doctor", "--plan", "--json", str(out)]) == 0
    report = json.loads(out.read_text())
    assert report["jax"]["platform"] == "cpu" and report["faiss"]["build"] == "CPU"
    assert report["faiss"]["owner"] == "faiss-cpu" and not report["faiss"]["shadowed"]
    plan = report["plan"]
    assert plan["platform"] == "cpu" and plan["chunks"]["occlusion_positions_window16_stride8"] >= 1
    assert report["problems"] == []
