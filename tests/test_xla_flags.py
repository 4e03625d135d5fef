"""jaxviz turns YNNPACK off for XLA:CPU convolutions (runtime/xla_flags.py), and only that."""

import jax
import jax.numpy as jnp
import jaxlib

from jaxviz.runtime import xla_flags


def test_flag_added_beside_existing_flags():
    env = {"XLA_FLAGS": "--xla_force_host_platform_device_count=4"}
    assert xla_flags.prefer_eigen_convolutions(env, "0.10.2")
    assert env["XLA_FLAGS"] == (
        "--xla_force_host_platform_device_count=4 " + xla_flags.CONVOLUTIONS_WITHOUT_YNNPACK
    )
    empty: dict[str, str] = {}
    assert xla_flags.prefer_eigen_convolutions(empty, "0.10.0")
    assert empty["XLA_FLAGS"] == xla_flags.CONVOLUTIONS_WITHOUT_YNNPACK


def test_user_choice_and_unmeasured_jaxlib_left_alone():
    mine = {"XLA_FLAGS": "--xla_cpu_experimental_ynn_fusion_type=LIBRARY_FUSION_TYPE_DOT"}
    before = dict(mine)
    assert not xla_flags.prefer_eigen_convolutions(mine, "0.10.2")
    assert mine == before
    for version in ("0.9.1", "0.11.0", "1.0.0"):
        env: dict[str, str] = {}
        assert not xla_flags.prefer_eigen_convolutions(env, version)
        assert env == {}


def test_this_process_compiles_convolutions_without_ynnpack_and_dots_with_it():
    """jaxviz was imported before the first computation, so the flag is in effect. (The HLO text
    holds the stack frames, hence this test's name: match the fusion kind, not "ynn".)"""
    nhwc = ("NHWC", "HWIO", "NHWC")
    conv = jax.jit(
        lambda x, w: jax.lax.conv_general_dilated(x, w, (1, 1), "SAME", None, None, nhwc)
    )
    dot = jax.jit(lambda a, b: a @ b)
    conv_hlo = conv.lower(jnp.ones((2, 16, 16, 32)), jnp.ones((3, 3, 32, 32))).compile().as_text()
    dot_hlo = dot.lower(jnp.ones((64, 128)), jnp.ones((128, 32))).compile().as_text()
    measured = xla_flags.prefer_eigen_convolutions({}, jaxlib.__version__)
    assert ("__ynn_fusion" in conv_hlo) != measured
    assert "__ynn_fusion" in dot_hlo or not measured
