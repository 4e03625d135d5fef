"""Strict JAX and four CPU devices for every test, so sharded code paths are exercised."""

import os

os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=4"
).strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402
import pytest  # noqa: E402

jax.config.update("jax_numpy_rank_promotion", "raise")


@pytest.fixture(scope="session")
def demo_random():
    """(model, params) of the demo architecture with random weights."""
    from jaxviz.models.stage import init_params
    from jaxviz.models.zoo import entry

    model = entry("demo").build()
    return model, init_params(model, jax.random.key(0))


def built_once(tmp_path_factory, name: str, build) -> "os.PathLike":
    """A folder that `build(folder)` fills once per test run and every xdist worker shares: the
    first worker to ask builds it under a file lock, the others wait and reuse it. Tests must
    only read it (copy it to change it)."""
    import fcntl
    import shutil

    base = tmp_path_factory.getbasetemp()
    root = base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base  # this run's own
    folder = root / f"built-once-{name}"
    with open(root / f"built-once-{name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (folder / ".built").exists():
            shutil.rmtree(folder, ignore_errors=True)
            folder.mkdir()
            build(folder)
            (folder / ".built").touch()
    return folder
