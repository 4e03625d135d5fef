"""The shared streaming pass: consumers see every good image once, results independent of batch
size and of the device count, equal to a direct forward pass."""

import os
import signal

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxviz.data.sources import open_source
from jaxviz.jobs.output import JobOutput
from jaxviz.jobs.scan import scan
from jaxviz.models.stage import forward


class PooledConsumer:
    """Collects the spatial mean of a stage per image, keyed by source index."""

    def __init__(self, stage):
        self.name, self.taps, self.rows = f"pooled_{stage}", (stage,), {}

    def reduce(self, taps, mask):
        return jnp.mean(taps[self.taps[0]], axis=(1, 2))

    def update(self, batch, result):
        for i, row in zip(batch.index[batch.mask], result[batch.mask], strict=True):
            assert int(i) not in self.rows
            self.rows[int(i)] = row

    def finish(self):
        return {"n": len(self.rows)}


@pytest.mark.parametrize("batch_size", [1, 5, 8])
def test_scan_matches_direct_forward(demo_random, tmp_path, batch_size):
    model, params = demo_random
    src = open_source("shapes:13:3")
    a, b = PooledConsumer("conv2"), PooledConsumer("conv4")
    res = scan(model, params, src, [a, b], batch_size=batch_size, out=JobOutput(tmp_path, "t", {}))
    assert res == {"pooled_conv2": {"n": 13}, "pooled_conv4": {"n": 13}}
    imgs = np.stack([model.preprocess.to_uint8(src.load(i)) for i in range(13)])
    _, taps = forward(model, params, model.preprocess.normalize(imgs))
    for c in (a, b):
        want = np.asarray(jnp.mean(taps[c.taps[0]], axis=(1, 2)))
        got = np.stack([c.rows[i] for i in range(13)])
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_scan_uses_all_local_devices(demo_random, tmp_path):
    assert len(jax.local_devices()) == 4
    model, params = demo_random
    c = PooledConsumer("conv1")
    out = JobOutput(tmp_path, "t", {})
    scan(model, params, open_source("shapes:6"), [c], batch_size=3, out=out)
    assert out.counts["images"] == 6 and len(c.rows) == 6


def test_interrupted_scan_resumes_to_identical_results(demo_random, tmp_path):
    """A scan sent SIGTERM mid-way (checkpoint every batch) and resumed equals a clean run."""
    from jaxviz.jobs.scan import ScanCheckpoint

    model, params = demo_random
    src = open_source("shapes:20:8")

    class Stateful(PooledConsumer):
        def state(self):
            keys = sorted(self.rows)
            return {
                "keys": np.asarray(keys, np.int64),
                "rows": np.stack([self.rows[k] for k in keys]) if keys else np.zeros((0, 32)),
            }

        def load_state(self, s):
            self.rows = {int(k): r for k, r in zip(s["keys"], s["rows"], strict=True)} if s else {}

        def update(self, batch, result):
            super().update(batch, result)
            if len(self.rows) >= self.stop_after:
                os.kill(os.getpid(), signal.SIGTERM)  # as a scheduler would

    clean = Stateful("conv1")
    clean.stop_after = 10**9
    scan(model, params, src, [clean], batch_size=4, out=JobOutput(tmp_path / "a", "t", {}))
    ck = ScanCheckpoint(tmp_path / "ck", "sig", every=1)
    broken = Stateful("conv1")
    broken.stop_after = 9
    with pytest.raises(KeyboardInterrupt):
        scan(
            model,
            params,
            src,
            [broken],
            batch_size=4,
            out=JobOutput(tmp_path / "b", "t", {}),
            checkpoint=ck,
        )
    resumed = Stateful("conv1")
    resumed.stop_after = 10**9
    out = JobOutput(tmp_path / "b", "t", {})
    scan(
        model,
        params,
        src,
        [resumed],
        batch_size=4,
        out=out,
        checkpoint=ScanCheckpoint(tmp_path / "ck", "sig", every=1),
    )
    assert sorted(resumed.rows) == list(range(20)) and out.counts["images"] == 20
    for k in range(20):
        np.testing.assert_array_equal(resumed.rows[k], clean.rows[k])
