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
