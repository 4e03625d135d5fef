"""A picture of per-channel statistics of a layer: mean +- std and the maximum per channel, and
the fraction of positive units (dead channels, never positive, marked). Rendering only: the
statistics come from methods/channel_stats.py via the job."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import numpy as np  # noqa: E402
from matplotlib.backends.backend_agg import FigureCanvasAgg  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402


def channel_plot(stats: dict[str, np.ndarray], title: str) -> np.ndarray:
    """stats: {"mean", "std", "max", "frac_positive"} each [C] float32 -> [H, W, 3] uint8.

    Top panel: mean with a +-std band and the maximum, per channel; bottom: fraction of
    positive units per channel, dead channels (fraction 0) in red.
    """
    mean, std, top = (np.asarray(stats[k], np.float32) for k in ("mean", "std", "max"))
    frac = np.asarray(stats["frac_positive"], np.float32)
    c = np.arange(len(mean))
    fig = Figure(figsize=(9, 5), dpi=100)
    canvas = FigureCanvasAgg(fig)
    ax, bx = fig.subplots(2, 1, sharex=True)
    ax.fill_between(c, mean - std, mean + std, color="tab:blue", alpha=0.25, label="mean +- std")
    ax.plot(c, mean, color="tab:blue", lw=1, label="mean")
    ax.plot(c, top, color="tab:orange", lw=0.8, label="max")
    ax.set_ylabel("activation")
    ax.legend(loc="upper right", fontsize=8)
    ax.set_title(title)
    dead = frac <= 0
    bx.bar(c[~dead], frac[~dead], width=1.0, color="tab:green")
    bx.bar(c[dead], np.full(dead.sum(), 0.02), width=1.0, color="tab:red", label="dead")
    if dead.any():
        bx.legend(loc="upper right", fontsize=8)
    bx.set_ylim(0, 1)
    bx.set_ylabel("fraction > 0")
    bx.set_xlabel("channel")
    fig.tight_layout()
    canvas.draw()
    return np.asarray(canvas.buffer_rgba())[..., :3].copy()
