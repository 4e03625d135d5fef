"""Heat maps (occlusion, saliency, Grad-CAM...) drawn over their image, with a colour bar and title.

Rendering only: the attribution map is computed elsewhere and passed in. Uses matplotlib's Agg
canvas (no display needed) and returns the figure as a uint8 array for the PNG writers.
"""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import numpy as np  # noqa: E402
from matplotlib.backends.backend_agg import FigureCanvasAgg  # noqa: E402
from matplotlib.cm import ScalarMappable  # noqa: E402
from matplotlib.colors import Normalize  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402


def overlay(
    image: np.ndarray,
    heat: np.ndarray,
    title: str,
    cmap: str = "jet",
    alpha: float = 0.5,
    symmetric: bool = False,
) -> np.ndarray:
    """`heat` [H, W] float32 over `image` [H, W, 3] uint8, with a colour bar and `title`.

    The heat map is drawn at the image's resolution (nearest neighbour, so small maps stay
    readable). symmetric: colour limits +-max|heat| (use with a diverging cmap such as "bwr"),
    otherwise [min, max]. Non-finite values are drawn transparent. Returns [H', W', 3] uint8.
    """
    image = np.asarray(image)
    heat = np.asarray(heat, np.float32)
    if image.ndim != 3 or image.shape[-1] != 3:
        raise ValueError(f"image must be [H, W, 3] uint8, got shape {image.shape}")
    if heat.ndim != 2:
        raise ValueError(f"heat must be [H, W], got shape {heat.shape}")
    finite = heat[np.isfinite(heat)]
    lo, hi = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 1.0)
    if symmetric:
        m = max(abs(lo), abs(hi)) or 1.0
        lo, hi = -m, m
    elif hi <= lo:
        lo, hi = lo - 0.5, hi + 0.5
    h, w = image.shape[:2]
    inches = 4.0
    fig = Figure(figsize=(inches * 1.25, inches * h / w + 0.5), dpi=max(100, int(w / inches) + 1))
    canvas = FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    ax.imshow(image, interpolation="nearest")
    norm = Normalize(vmin=lo, vmax=hi)
    ax.imshow(
        np.ma.masked_invalid(heat),
        cmap=cmap,
        norm=norm,
        alpha=alpha,
        extent=(-0.5, w - 0.5, h - 0.5, -0.5),
        interpolation="nearest",
    )
    ax.set_title(title, fontsize=10)
    ax.set_axis_off()
    fig.colorbar(ScalarMappable(norm=norm, cmap=cmap), ax=ax, fraction=0.046, pad=0.04)
    fig.tight_layout()
    canvas.draw()
    return np.asarray(canvas.buffer_rgba())[..., :3].copy()
