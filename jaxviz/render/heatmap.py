"""Heat maps (occlusion, saliency, Grad-CAM...) drawn over their image, with a colour bar and title.

Rendering only: the attribution map is computed elsewhere and passed in. The colours come from a
256-entry uint8 lookup table of a matplotlib colormap (built once per name): drawing an overlay
is array indexing and one blend, no figure per image, so the PNG sample keeps up with the device.
"""

from __future__ import annotations

import functools

import numpy as np
from PIL import Image, ImageDraw, ImageFont

TITLE_PX = 14  # the title line above the picture
BAR_PX = 10  # the colour bar's width
LABEL_PX = 44  # room for the bar's labels
MIN_SIDE = 256  # small images are enlarged (nearest neighbour) to at least this


@functools.lru_cache(maxsize=8)
def colormap_lut(name: str) -> np.ndarray:
    """[256, 3] uint8: matplotlib colormap `name` sampled at 256 levels."""
    import matplotlib

    rgba = matplotlib.colormaps[name](np.linspace(0.0, 1.0, 256))
    return (rgba[:, :3] * 255 + 0.5).astype(np.uint8)


@functools.lru_cache(maxsize=1)
def _font() -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    return ImageFont.load_default()


def _limits(heat: np.ndarray, symmetric: bool) -> tuple[float, float]:
    finite = heat[np.isfinite(heat)]
    lo, hi = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 1.0)
    if symmetric:
        m = max(abs(lo), abs(hi)) or 1.0
        return -m, m
    if hi <= lo:
        return lo - 0.5, hi + 0.5
    return lo, hi


def overlay(
    image: np.ndarray,
    heat: np.ndarray,
    title: str,
    cmap: str = "jet",
    alpha: float = 0.5,
    symmetric: bool = False,
) -> np.ndarray:
    """`heat` [h, w] float32 over `image` [H, W, 3] uint8, with a colour bar and `title`.

    The heat map is stretched over the image (nearest neighbour, so small maps stay readable);
    both are enlarged by an integer factor to at least MIN_SIDE pixels. symmetric: colour limits
    +-max|heat| (use with a diverging cmap such as "bwr"), otherwise [min, max]. Non-finite values
    are drawn transparent. Returns [H', W', 3] uint8.
    """
    image = np.asarray(image)
    heat = np.asarray(heat, np.float32)
    if image.ndim != 3 or image.shape[-1] != 3:
        raise ValueError(f"image must be [H, W, 3] uint8, got shape {image.shape}")
    if heat.ndim != 2:
        raise ValueError(f"heat must be [H, W], got shape {heat.shape}")
    lo, hi = _limits(heat, symmetric)
    h, w = image.shape[:2]
    f = max(1, -(-MIN_SIDE // max(h, w)))
    rows, cols = np.arange(h * f), np.arange(w * f)
    big = image[(rows // f)[:, None], (cols // f)[None, :]]
    hm = heat[(rows * heat.shape[0] // (h * f))[:, None], (cols * heat.shape[1] // (w * f))[None]]
    finite = np.isfinite(hm)
    level = np.clip((np.where(finite, hm, lo) - lo) * (255.0 / (hi - lo)) + 0.5, 0, 255)
    colour = colormap_lut(cmap)[level.astype(np.uint8)]
    a = np.where(finite, np.float32(alpha), np.float32(0))[..., None]
    blend = (big * (1 - a) + colour * a + 0.5).astype(np.uint8)
    canvas = np.full((TITLE_PX + h * f, w * f + 4 + BAR_PX + LABEL_PX, 3), 255, np.uint8)
    canvas[TITLE_PX:, : w * f] = blend
    bar = colormap_lut(cmap)[np.linspace(255, 0, h * f).astype(np.uint8)]
    canvas[TITLE_PX:, w * f + 4 : w * f + 4 + BAR_PX] = bar[:, None]
    picture = Image.fromarray(canvas)
    draw = ImageDraw.Draw(picture)
    font, x = _font(), w * f + 6 + BAR_PX
    draw.text((2, 1), title, fill=(0, 0, 0), font=font)
    draw.text((x, TITLE_PX), f"{hi:.3g}", fill=(0, 0, 0), font=font)
    draw.text((x, TITLE_PX + h * f - 11), f"{lo:.3g}", fill=(0, 0, 0), font=font)
    return np.asarray(picture)
