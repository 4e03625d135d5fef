"""Per-channel activation statistics of a stage over a dataset (a scan consumer).

Per batch, on the device: each channel's sum, sum of squares, maximum and count of positive
units over the valid rows and all positions; on the host these accumulate in float64. `finish()`
gives the mean, standard deviation, maximum and fraction of positive units per channel (a
channel that is never positive is dead on this data).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

Stats = dict[str, np.ndarray]  # {"sum", "sumsq" f64 [C], "max" f32 [C], "positive" i64 [C], "n"}


class ChannelStats:
    """Scan consumer: statistics of every channel of stage `layer`.

    Works for spatial maps [B, H, W, C] (over images and positions) and vectors [B, C].
    `state()` / `load_state()` expose the accumulators for checkpointing.
    """

    def __init__(self, layer: str, name: str = "channel_stats"):
        self.name = name
        self.layer = layer
        self.taps = (layer,)
        self._acc: Stats | None = None

    def reduce(self, taps: dict[str, jax.Array], mask: jax.Array) -> dict[str, jax.Array]:
        """Sums over valid rows and positions: {"sum", "sumsq", "max": [C] f32, "positive",
        "n": int32 ([C] and scalar)}."""
        a = taps[self.layer].astype(jnp.float32)
        a = jnp.reshape(a, (a.shape[0], -1, a.shape[-1]))  # [B, P, C]
        # per image, one variadic reduction over the positions: XLA:CPU ran four separate
        # reductions over the stage's map (or sums as dots) several times slower
        per_image = jax.lax.reduce(
            (a, a * a, (a > 0).astype(jnp.float32), a),
            (0.0, 0.0, 0.0, -jnp.inf),
            lambda x, y: (x[0] + y[0], x[1] + y[1], x[2] + y[2], jnp.maximum(x[3], y[3])),
            (1,),
        )  # 4 x [B, C]
        m = mask[:, None]
        total, squares, positive, peak = per_image
        out = {
            "sum": jnp.sum(jnp.where(m, total, 0.0), axis=0),
            "sumsq": jnp.sum(jnp.where(m, squares, 0.0), axis=0),
            # a count per image is exact in float32 (below 2^24 positions)
            "positive": jnp.sum(jnp.where(m, positive.astype(jnp.int32), 0), axis=0),
            "max": jnp.max(jnp.where(m, peak, -jnp.inf), axis=0),
        }
        out["n"] = jnp.sum(mask, dtype=jnp.int32) * a.shape[1]
        return out

    def update(self, batch, result: dict[str, np.ndarray]) -> None:
        r = {n: np.asarray(v) for n, v in result.items()}
        if self._acc is None:
            c = r["sum"].shape[0]
            self._acc = {
                "sum": np.zeros(c, np.float64),
                "sumsq": np.zeros(c, np.float64),
                "max": np.full(c, -np.inf, np.float32),
                "positive": np.zeros(c, np.int64),
                "n": np.zeros((), np.int64),
            }
        acc = self._acc
        acc["sum"] += r["sum"]
        acc["sumsq"] += r["sumsq"]
        acc["max"] = np.maximum(acc["max"], r["max"])
        acc["positive"] += r["positive"]
        acc["n"] += r["n"]

    def state(self) -> Stats | None:
        return None if self._acc is None else {n: v.copy() for n, v in self._acc.items()}

    def load_state(self, state: Stats | None) -> None:
        self._acc = None if state is None else {n: np.array(v) for n, v in state.items()}

    def merge(self, state: Stats | None) -> None:
        """Add another process's accumulators."""
        if state is None:
            return
        if self._acc is None:
            self.load_state(state)
            return
        for n in ("sum", "sumsq", "positive", "n"):
            self._acc[n] = self._acc[n] + state[n]
        self._acc["max"] = np.maximum(self._acc["max"], state["max"])

    def finish(self) -> dict:
        """{"layer", "mean", "std", "max" [C] float32, "frac_positive" [C] float32, "units"}."""
        if self._acc is None or self._acc["n"] == 0:
            return {"layer": self.layer, "units": 0}
        acc = self._acc
        n = float(acc["n"])
        mean = acc["sum"] / n
        var = np.maximum(acc["sumsq"] / n - mean * mean, 0.0)
        return {
            "layer": self.layer,
            "mean": mean.astype(np.float32),
            "std": np.sqrt(var).astype(np.float32),
            "max": acc["max"],
            "frac_positive": (acc["positive"] / n).astype(np.float32),
            "units": int(acc["n"]),
        }
