"""Pictures of a 2-D embedding: a scatter plot coloured by label (legend with class names) and the
image-grid mosaic (one thumbnail per grid cell, as laid out by index.mosaic)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from jaxviz.render.grid import tile_grid


def scatter_plot(
    coords: np.ndarray,
    labels: np.ndarray | None = None,
    class_names: Sequence[str] | None = None,
    title: str = "",
    size_px: int = 900,
) -> np.ndarray:
    """coords [N, 2], labels [N] int (-1 unknown) -> [size_px, size_px, 3] uint8 scatter plot.

    Each label gets a colour (tab10 / tab20, a continuous map above 20 classes); the legend names
    the classes (class_names[label] when given) when there are at most 30 of them.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    coords = np.asarray(coords)
    n = len(coords)
    labels = np.full(n, -1) if labels is None else np.asarray(labels)
    classes = np.unique(labels[labels >= 0])
    cmap = plt.get_cmap(
        "tab10" if len(classes) <= 10 else "tab20" if len(classes) <= 20 else "turbo"
    )
    dot = float(np.clip(3e4 / max(n, 1), 0.2, 20))
    dpi = 100
    fig, ax = plt.subplots(figsize=(size_px / dpi, size_px / dpi), dpi=dpi)
    try:
        unknown = labels < 0
        if unknown.any():
            ax.scatter(*coords[unknown].T, s=dot, c="0.6", lw=0, label="unlabelled")
        for k, c in enumerate(classes):
            m = labels == c
            colour = cmap(k % cmap.N if len(classes) <= 20 else k / max(len(classes) - 1, 1))
            name = class_names[c] if class_names is not None and c < len(class_names) else f"{c}"
            ax.scatter(*coords[m].T, s=dot, color=colour, lw=0, label=name)
        if 0 < len(classes) <= 30:
            ax.legend(
                markerscale=max(1.0, 6 / np.sqrt(dot)), fontsize=8, loc="best", framealpha=0.8
            )
        ax.set_title(title, fontsize=10)
        ax.set_xticks([])
        ax.set_yticks([])
        fig.tight_layout()
        fig.canvas.draw()
        image = np.asarray(fig.canvas.buffer_rgba())[..., :3].copy()
    finally:
        plt.close(fig)
    return image


def mosaic_image(tiles: np.ndarray, present: np.ndarray, cols: int) -> np.ndarray:
    """tiles [rows * cols, t, t, 3] uint8 in row-major cell order, present [rows * cols] bool
    (empty cells drawn white) -> [rows * t, cols * t, 3] uint8, no borders."""
    tiles = np.where(present[:, None, None, None], tiles, np.uint8(255)).astype(np.uint8)
    return tile_grid(tiles, ncols=cols, border=0)
