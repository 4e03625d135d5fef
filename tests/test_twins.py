"""The torch twin of the demo model computes the same taps as jaxviz (the basis of parity tests)."""

import jax
import numpy as np

from jaxviz.models.stage import forward
from tests.twins import demo_twin, from_torch, to_torch


def test_demo_twin_matches_every_tap(demo_random):
    model, params = demo_random
    x = np.asarray(jax.random.normal(jax.random.key(0), (3, 64, 64, 3)))
    _, taps = forward(model, params, x)
    ref = demo_twin(params).taps(to_torch(x))
    for name, v in taps.items():
        r = from_torch(ref[name])
        scale = max(np.abs(r).max(), 1e-6)
        assert np.abs(np.asarray(v) - r).max() / scale < 1e-4, name
