"""Decoding any image file to RGB, converting odd modes and refusing unusable files clearly."""

from __future__ import annotations

import warnings

import numpy as np
from PIL import Image, UnidentifiedImageError


class BadInput(Exception):
    """An input that cannot be used; the message is the reason recorded in `skipped`."""


def to_rgb(image: Image.Image) -> Image.Image:
    """Any PIL mode -> RGB: alpha composited on white, palettes expanded, CMYK converted,
    16/32-bit integer and float images rescaled to 8 bits."""
    mode = image.mode
    if mode == "RGB":
        return image
    if mode in ("I;16", "I;16B", "I;16L", "I;16N"):
        a = np.asarray(image, dtype=np.uint16)
        return Image.fromarray((a >> 8).astype(np.uint8)).convert("RGB")
    if mode in ("I", "F"):
        a = np.asarray(image, dtype=np.float64)
        hi = 65535.0 if a.max() > 255 else 255.0
        return Image.fromarray(np.clip(a / hi * 255.0, 0, 255).astype(np.uint8)).convert("RGB")
    if mode == "P":
        image = image.convert("RGBA")
        mode = "RGBA"
    if mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = image.convert("RGBA")
        canvas = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(canvas, rgba).convert("RGB")
    return image.convert("RGB")


def decode_file(path: str) -> Image.Image:
    """Open and fully decode `path` as an RGB image; BadInput with the reason if impossible."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as im:
                im.load()
                return to_rgb(im)
    except FileNotFoundError as e:
        raise BadInput(f"file not found: {e.filename}") from None
    except UnidentifiedImageError:
        raise BadInput("not an image (unidentified format)") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise BadInput(f"too large: {e}") from None
    except (OSError, SyntaxError, ValueError) as e:
        raise BadInput(f"unreadable image: {e}") from None
