"""Pictures of maximally activating patches: one captioned grid per channel, an overview with a
row per channel. Rendering only: patches and values come from methods/patches.py via the job."""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw

from jaxviz.render.grid import caption, tile_grid

EMPTY = 200  # grey of a slot with no patch (fewer units than k in the data)


def _strip(text: str, width: int, height: int) -> np.ndarray:
    canvas = Image.new("RGB", (width, height), "white")
    ImageDraw.Draw(canvas).text((2, max(0, (height - 11) // 2)), text, fill="black")
    return np.asarray(canvas)


def _fill_empty(patches: np.ndarray, valid: np.ndarray) -> np.ndarray:
    out = np.array(patches, np.uint8)
    out[~valid] = EMPTY
    return out


def patch_grid(
    patches: np.ndarray,
    values: np.ndarray,
    valid: np.ndarray,
    title: str,
    ncols: int | None = None,
) -> np.ndarray:
    """One channel's top patches, strongest first, each captioned with its activation.

    patches: [k, s, s, 3] uint8; values: [k] float; valid: [k] bool (False: an empty slot).
    Returns [H, W, 3] uint8 with `title` above the grid.
    """
    tiles = _fill_empty(patches, valid)
    tiles = np.stack(
        [
            caption(t, f"{v:.3g}" if ok else "-")
            for t, v, ok in zip(tiles, np.asarray(values, np.float32), valid, strict=True)
        ]
    )
    grid = tile_grid(tiles, ncols=ncols)
    return np.concatenate([_strip(title, grid.shape[1], 14), grid], axis=0)


def _thumbnails(patches: np.ndarray, size: int) -> np.ndarray:
    """[k, s, s, 3] uint8 -> [k, size, size, 3] (box filter; unchanged when s <= size)."""
    if patches.shape[1] <= size:
        return patches
    small = [Image.fromarray(p).resize((size, size), Image.BOX) for p in patches]
    return np.stack([np.asarray(p) for p in small])


def overview(
    patches: np.ndarray, valid: np.ndarray, labels: list[str], tile: int = 64
) -> np.ndarray:
    """A row per channel: its label, then its top patches left to right (strongest first).

    patches: [C, k, s, s, 3] uint8; valid: [C, k] bool; labels: C strings; tile: patches larger
    than this are shown as tile x tile thumbnails (the per-channel grids keep full size), so a
    layer of hundreds of channels stays a picture a browser shows. Returns uint8 RGB.
    """
    rows = []
    for p, ok, label in zip(patches, valid, labels, strict=True):
        row = tile_grid(_thumbnails(_fill_empty(p, ok), tile), ncols=len(p))
        rows.append(np.concatenate([_strip(label, 48, row.shape[0]), row], axis=1))
    return np.concatenate(rows, axis=0)
