"""Exact incremental occlusion equals brute force: demo (every position) and every zoo model."""

import flax.linen
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import Mesh

from jaxviz.methods.incremental import IncrementalForward, choose, make_plan, plan_axis
from jaxviz.methods.occlusion import FullForward, grid_size, occlusion, positions
from jaxviz.models import ops
from jaxviz.models.stage import forward, forward_fn, init_params
from jaxviz.models.zoo import entry, names


@pytest.mark.parametrize("window,stride", [(8, 3), (8, 4), (16, 5), (16, 8), (32, 7), (32, 16)])
def test_demo_every_position_matches_brute_force(demo_random, window, stride):
    model, params = demo_random
    x = jax.random.normal(jax.random.key(2), (2, 64, 64, 3))
    choice = choose(model, (64, 64), (window, window), (stride, stride), "incremental")
    assert choice.incremental and choice.plan.flops < choice.plan.flops_full
    kw = dict(targets=[[1, 4], [0, 9]], fill="mean", output="prob")
    ref = occlusion(model, params, x, window, stride, **kw)
    got = occlusion(model, params, x, window, stride, evaluator=choice.evaluator, chunk=5, **kw)
    np.testing.assert_allclose(got.grid, ref.grid, atol=1e-5, rtol=0)


def test_incremental_invariant_to_devices_and_chunks(demo_random):
    model, params = demo_random
    x = jax.random.normal(jax.random.key(3), (3, 64, 64, 3))
    ev = choose(model, (64, 64), (16, 16), (16, 16), "incremental").evaluator
    one = Mesh(np.array(jax.local_devices()[:1]), ("batch",))
    a = occlusion(model, params, x, 16, 16, evaluator=ev, chunk=1)
    b = occlusion(model, params, x, 16, 16, evaluator=ev, mesh=one)
    np.testing.assert_allclose(a.grid, b.grid, atol=1e-5, rtol=0)


def _occluded(x: np.ndarray, corners: np.ndarray, window: int, value: float) -> np.ndarray:
    out = np.repeat(x[None], len(corners), 0)
    for k, (y, z) in enumerate(corners):
        out[k, y : y + window, z : z + window] = value
    return out


@pytest.mark.parametrize("name", [n for n in names() if n != "demo"])
def test_zoo_models_match_brute_force(name):
    """Windows 8/16/32 with strides 3/5/7 on 96x96 inputs; the four corner positions (borders,
    partial windows) and interior ones."""
    model = entry(name).build()
    hw = (96, 96)
    params = init_params(model, jax.random.key(0), hw)
    x = np.asarray(jax.random.normal(jax.random.key(1), (*hw, 3)))
    cases, refs = [], []
    for window, stride in ((8, 3), (16, 5), (32, 7)):
        grid = positions(hw, (window, window), (stride, stride)) * stride
        hp, wp = grid_size(hw, (window, window), (stride, stride))
        pick = [0, wp - 1, (hp - 1) * wp, hp * wp - 1, hp * wp // 2 + 1, wp + 2]
        corners = grid[pick]
        cases.append((window, stride, corners))
        refs.append(_occluded(x, corners, window, 0.5))
    full = jax.jit(forward_fn(model))(params, jnp.asarray(np.concatenate(refs)))
    full = np.asarray(full).reshape(len(cases), -1, full.shape[-1])
    for (window, stride, corners), want in zip(cases, full, strict=True):
        plan = make_plan(model, hw, (window, window), (stride, stride))
        assert plan.switch > 0, f"{name}: no stage runs incrementally for window {window}"
        ev = IncrementalForward(model, hw, (window, window), (stride, stride), plan)
        xs = jnp.asarray(x[None])
        got = jax.jit(
            lambda p, v, ev=ev, c=corners: ev.logits(p, ev.prepare(p, v, v * 0 + 0.5), c)
        )(params, xs)[0]
        scale = np.abs(want).max()
        np.testing.assert_allclose(got, want, atol=1e-5 * max(1.0, scale), rtol=0)
        np.testing.assert_allclose(jax.nn.softmax(got), jax.nn.softmax(want), atol=1e-5, rtol=0)


def test_plan_axis_is_tight_for_a_plain_conv():
    a = np.arange(10) * 4
    b = np.minimum(a + 8, 40)
    p = plan_axis(a, b, n_in=40, n_out=40, k=3, s=1, lo=1, hi=1, unpadded=True)
    np.testing.assert_array_equal(p.c0, np.maximum(a - 1, 0))
    np.testing.assert_array_equal(p.c1, np.minimum(b + 1, 40))
    assert p.M == 10 and p.L == 12  # 8 + 2 changed units, no slack


def test_auto_prefers_full_when_nothing_is_saved(demo_random):
    model, _ = demo_random
    assert not choose(model, (64, 64), (64, 64), (1, 1), "auto").incremental
    assert choose(model, (64, 64), (8, 8), (4, 4), "auto").incremental
    # a small job is done sooner by brute force than by compiling the incremental paths
    assert not choose(model, (64, 64), (8, 8), (4, 4), "auto", total_positions=1000).incremental
    assert choose(model, (64, 64), (8, 8), (4, 4), "auto", total_positions=10**9).incremental
    assert isinstance(choose(model, (64, 64), (8, 8), (4, 4), "full").evaluator, FullForward)


@pytest.mark.parametrize("window,stride", [(8, 4), (16, 5)])
def test_changed_windows_are_tight(demo_random, window, stride):
    """Brute force "which outputs changed": a NaN patch marks exactly the units that depend on it
    (max-pool replaced by sum-pool, which propagates NaN); their bounding box at every incremental
    stage is the plan's [c0, c1), and with every alignment class kept a stride-1 conv's slice
    gives exactly the changed units (no slack)."""
    model, params = demo_random
    hw = (64, 64)
    plan = make_plan(model, hw, (window, window), (stride, stride), max_classes=None)
    grid = positions(hw, (window, window), (stride, stride))
    x = np.asarray(jax.random.normal(jax.random.key(4), (*hw, 3)))

    def sum_pool(v, window, strides, padding):  # max-pool's dependencies; NaN propagates
        return flax.linen.pool(v, 0.0, jax.lax.add, window, strides, padding)

    with ops.activation_override(max_pool=sum_pool):
        _, taps = forward(
            model,
            params,
            jnp.asarray(_occluded(x, grid * stride, window, np.nan)),
            stop=model.stages[plan.switch - 1].name,
        )
    for gid, group in enumerate(plan.groups):
        assert group.switch > 0
        for pos in np.flatnonzero(plan.group_ids(grid) == gid):
            gy, gx = grid[pos]
            for p in group.stages:
                nan = np.isnan(np.asarray(taps[model.stages[p.index].name][pos])).any(-1)
                for ax, g in enumerate((gy, gx)):
                    hit = np.flatnonzero(nan.any(axis=1 - ax))
                    a = p.axes[ax]
                    assert (hit[0], hit[-1] + 1) == (a.c0[g], a.c1[g]), (p.index, ax, g)
                    geo = model.stages[p.index].geometry
                    if geo.stride[ax] == 1 and p.unpadded:
                        assert a.c1[g] - a.c0[g] == a.M, (p.index, ax, g)
