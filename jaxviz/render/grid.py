"""Tile grids of images (filters, channels, patches, neighbours) as uint8 pictures."""

from __future__ import annotations

import math

import numpy as np
from PIL import Image, ImageDraw


def normalize01(x: np.ndarray, axes: tuple[int, ...] | None = None) -> np.ndarray:
    """Min-max scale to [0, 1] over `axes` (all by default); constant inputs map to 0.5."""
    x = np.asarray(x, np.float32)
    lo = x.min(axis=axes, keepdims=True)
    hi = x.max(axis=axes, keepdims=True)
    rng = hi - lo
    return np.where(rng > 0, (x - lo) / np.where(rng > 0, rng, 1), 0.5).astype(np.float32)


def tile_grid(
    tiles: np.ndarray, ncols: int | None = None, border: int = 1, background: int = 255
) -> np.ndarray:
    """[N, h, w] or [N, h, w, 3] float in [0, 1] (or uint8) -> one [H, W, 3] uint8 grid.

    Tiles are laid row by row, `border` pixels of `background` between and around them.
    """
    tiles = np.asarray(tiles)
    if tiles.dtype != np.uint8:
        tiles = (np.clip(tiles, 0, 1) * 255 + 0.5).astype(np.uint8)
    if tiles.ndim == 3:
        tiles = np.repeat(tiles[..., None], 3, axis=-1)
    n, h, w, _ = tiles.shape
    ncols = ncols or math.ceil(math.sqrt(n))
    nrows = math.ceil(n / ncols)
    grid = np.full(
        (nrows * (h + border) + border, ncols * (w + border) + border, 3), background, np.uint8
    )
    for i in range(n):
        r, c = divmod(i, ncols)
        y, x = border + r * (h + border), border + c * (w + border)
        grid[y : y + h, x : x + w] = tiles[i]
    return grid


def upscale(image: np.ndarray, factor: int, axes: tuple[int, int] = (0, 1)) -> np.ndarray:
    """Nearest-neighbour upscaling by an integer factor along the two spatial `axes` (default:
    [H, W(, C)]; use axes=(1, 2) for a stack of tiles [N, h, w(, C)])."""
    return np.repeat(np.repeat(image, factor, axis=axes[0]), factor, axis=axes[1])


def caption(image: np.ndarray, text: str, height: int = 12) -> np.ndarray:
    """[H, W, 3] uint8 with a white strip of `height` px below holding `text` (PIL's font)."""
    h, w = image.shape[:2]
    canvas = Image.new("RGB", (w, h + height), "white")
    canvas.paste(Image.fromarray(image), (0, 0))
    ImageDraw.Draw(canvas).text((1, h), text, fill="black")
    return np.asarray(canvas)
