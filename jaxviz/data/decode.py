"""Decoding image files and encoded bytes to RGB, refusing unusable inputs with a reason.

Only regular files are opened, and without blocking: a FIFO, socket or device named like an
image is refused from `fstat` before a byte is read. JPEGs are decoded at a reduced DCT scale
(`Image.draft`, 1/2, 1/4 or 1/8) when the caller's target size allows it: the decoded image is
never smaller than the target, only the wasted full-size decode is saved.
"""

from __future__ import annotations

import io
import os
import stat
import warnings
from typing import BinaryIO

import numpy as np
from PIL import Image, UnidentifiedImageError

Size = tuple[int, int]  # (width, height), PIL's order
MAX_FILE_BYTES = 1 << 30  # an image file above 1 GiB is refused unread


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


def file_kind(mode: int) -> str | None:
    """None for a regular file, else what it is ('FIFO', 'socket', 'device', 'directory')."""
    if stat.S_ISREG(mode):
        return None
    if stat.S_ISFIFO(mode):
        return "FIFO"
    if stat.S_ISSOCK(mode):
        return "socket"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "device"
    return "directory" if stat.S_ISDIR(mode) else "special file"


def read_file(path: str) -> bytes:
    """The bytes of a regular, non-empty file; BadInput for anything else, without blocking."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    except FileNotFoundError:
        raise BadInput(f"file not found: {path}") from None
    except OSError as e:
        raise BadInput(f"cannot open: {e.strerror}") from None
    try:
        st = os.fstat(fd)
        kind = file_kind(st.st_mode)
        if kind is not None:
            raise BadInput(f"not a regular file ({kind})")
        if st.st_size == 0:
            raise BadInput("empty file (0 bytes)")
        if st.st_size > MAX_FILE_BYTES:
            raise BadInput(f"file of {st.st_size} bytes is over the {MAX_FILE_BYTES} limit")
        with os.fdopen(fd, "rb", closefd=False) as f:
            return f.read()
    finally:
        os.close(fd)


def image_format(data: bytes) -> str | None:
    """'jpg', 'png' or 'webp' from the first bytes of an encoded image, else None."""
    if data[:3] == b"\xff\xd8\xff":
        return "jpg"
    if data[:8] == b"\x89PNG\r\n\x1a\n":
        return "png"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "webp"
    return None


def decode_file(path: str, draft: Size | None = None) -> Image.Image:
    """Open and fully decode `path` as an RGB image; BadInput with the reason if impossible."""
    return decode_bytes(read_file(path), draft)


def decode_bytes(data: bytes, draft: Size | None = None) -> Image.Image:
    """Encoded image bytes -> RGB image, a JPEG at the smallest DCT scale not below `draft`
    (width, height) when given; BadInput with the reason if impossible."""
    if not data:
        raise BadInput("empty image (0 bytes)")
    return _decode(io.BytesIO(data), draft)


def _decode(fp: BinaryIO, draft: Size | None) -> Image.Image:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(fp) as im:
                if min(im.size) == 0:
                    raise BadInput(f"zero-size image ({im.size[0]}x{im.size[1]})")
                if draft is not None and im.format == "JPEG":
                    im.draft("RGB", draft)
                im.load()
                return to_rgb(im)
    except UnidentifiedImageError:
        raise BadInput("not an image (unidentified format)") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise BadInput(f"too large: {e}") from None
    except (OSError, SyntaxError, ValueError, EOFError) as e:
        raise BadInput(f"unreadable image: {e}") from None


def from_array(a: np.ndarray) -> Image.Image:
    """A uint8 [H, W], [H, W, 1], [H, W, 3] or [H, W, 4] array -> RGB image; BadInput if empty."""
    a = np.asarray(a)
    if a.ndim not in (2, 3) or min(a.shape[:2]) == 0:
        raise BadInput(f"zero-size or malformed image array {a.shape}")
    if a.dtype != np.uint8:
        raise BadInput(f"image array must be uint8, got {a.dtype}")
    if a.ndim == 3 and a.shape[-1] == 1:
        a = a[..., 0]
    if a.ndim == 3 and a.shape[-1] not in (3, 4):
        raise BadInput(f"image array needs 1, 3 or 4 channels, got shape {a.shape}")
    return to_rgb(Image.fromarray(a))
