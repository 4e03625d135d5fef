"""The synthetic shapes set: one coloured shape of 10 classes on a cluttered background.

`ShapesSet(n, seed)` is a virtual dataset: image i is drawn from `np.random.default_rng((seed, i))`
when asked for, so any index is available in any order and nothing is held for the whole set.
Labels are balanced: each block of 10 consecutive indices holds every class once, in an order
shuffled per block. Shapes are drawn with PIL at 2x and downsampled (antialiasing); the object is
alpha-composited over a smooth colour gradient with faint lines and blobs of other colours, so
telling classes apart needs shape, not colour or position.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np
from PIL import Image, ImageDraw

CLASS_NAMES = (
    "circle",
    "square",
    "triangle",
    "cross",
    "star",
    "ring",
    "stripes",
    "diamond",
    "hexagon",
    "crescent",
)

_SS = 2  # supersampling factor
_MIN_CONTRAST = 90.0  # min RGB distance between object colour and background under it
_LABEL_STREAM = 0x1AB  # SeedSequence word separating label shuffles from image draws

Box = tuple[int, int, int, int]


class Layers(NamedTuple):
    """The parts one image is composed of: image = background * (1 - alpha) + colour * alpha.

    background: [S, S, 3] float32 in [0, 255]. alpha: [S, S] float32 in [0, 1], > 0 exactly on the
    object's pixels. colour: [3] float32. label: class index.
    """

    background: np.ndarray
    alpha: np.ndarray
    colour: np.ndarray
    label: int

    def image(self) -> np.ndarray:
        """The composed image: [S, S, 3] uint8."""
        a = self.alpha[..., None]
        image = self.background * (1.0 - a) + self.colour * a
        return np.clip(image + 0.5, 0, 255).astype(np.uint8)


class ShapesSet:
    """`n` images of `size` x `size` pixels, deterministic per (seed, index)."""

    def __init__(self, n: int, seed: int = 0, size: int = 64):
        if n < 0 or size < 16:
            raise ValueError(f"need n >= 0 and size >= 16, got n={n}, size={size}")
        self.n, self.seed, self.size = int(n), int(seed), int(size)

    def __len__(self) -> int:
        return self.n

    def label(self, i: int) -> int:
        """The class of image i (cheap: no drawing)."""
        self._check(i)
        block = np.random.default_rng((self.seed, i // 10, _LABEL_STREAM)).permutation(10)
        return int(block[i % 10])

    def sample(self, i: int) -> tuple[np.ndarray, int, Box]:
        """Image i: ([size, size, 3] uint8, label, box (y0, x0, y1, x1) end-exclusive)."""
        lay = self.layers(i)
        return lay.image(), lay.label, bounding_box(lay.alpha)

    def layers(self, i: int) -> Layers:
        """The background, object alpha and colour image i is composed of."""
        label = self.label(i)
        rng = np.random.default_rng((self.seed, i))
        s = self.size
        background = _background(rng, s)
        # object size (extent in pixels) and centre, kept inside the image with a margin
        extent = rng.uniform(0.4, 0.65) * s
        half = extent / 2
        cy, cx = rng.uniform(half + 1, s - half - 1, size=2)
        alpha = _draw_object(CLASS_NAMES[label], rng, s, cy, cx, extent)
        under = background[alpha > 0].mean(axis=0) if (alpha > 0).any() else background.mean((0, 1))
        colour = _contrasting_colour(rng, under)
        return Layers(background, alpha, colour, label)

    def _check(self, i: int) -> None:
        if not 0 <= i < self.n:
            raise IndexError(f"index {i} out of range for ShapesSet of {self.n} images")


def bounding_box(alpha: np.ndarray) -> Box:
    """Tight (y0, x0, y1, x1) end-exclusive box of the pixels where alpha > 0."""
    ys = np.flatnonzero((alpha > 0).any(axis=1))
    xs = np.flatnonzero((alpha > 0).any(axis=0))
    return int(ys[0]), int(xs[0]), int(ys[-1]) + 1, int(xs[-1]) + 1


def _contrasting_colour(rng: np.random.Generator, under: np.ndarray) -> np.ndarray:
    """A random colour at least _MIN_CONTRAST away from `under` (best of a few tries)."""
    best, best_d = None, -1.0
    for _ in range(16):
        c = rng.uniform(0, 255, size=3).astype(np.float32)
        d = float(np.linalg.norm(c - under))
        if d > best_d:
            best, best_d = c, d
        if d >= _MIN_CONTRAST:
            break
    return best


def _background(rng: np.random.Generator, s: int) -> np.ndarray:
    """[s, s, 3] float32: a bilinear gradient between 4 corner colours, faint lines and blobs."""
    m = s * _SS
    corners = rng.uniform(0, 255, size=(2, 2, 3)).astype(np.float32)
    t = np.linspace(0.0, 1.0, s, dtype=np.float32)
    w = np.stack([1 - t, t])  # [2, s] interpolation weights
    grad = np.einsum("ay,bx,abc->yxc", w, w, corners).astype(np.uint8)
    canvas = Image.fromarray(grad).resize((m, m), Image.NEAREST)
    draw = ImageDraw.Draw(canvas, "RGBA")
    for _ in range(int(rng.integers(3, 8))):
        fill = (*(int(v) for v in rng.integers(0, 256, size=3)), int(rng.uniform(0.15, 0.4) * 255))
        if rng.random() < 0.5:
            pts = rng.uniform(-0.1, 1.1, size=4) * m
            draw.line([tuple(pts[:2]), tuple(pts[2:])], fill=fill, width=int(rng.integers(1, 4)))
        else:
            c = rng.uniform(0, 1, size=2) * m
            r = rng.uniform(0.04, 0.15, size=2) * m
            draw.ellipse([c[0] - r[0], c[1] - r[1], c[0] + r[0], c[1] + r[1]], fill=fill)
    return np.asarray(canvas.reduce(_SS), np.float32)


def _downsample(layer: Image.Image) -> np.ndarray:
    """A supersampled L-mode layer -> [s, s] float32 coverage in [0, 1] (box filter)."""

    return np.asarray(layer.reduce(_SS), np.float32) / 255.0


def _polygon(cy: float, cx: float, radii, angles) -> list[tuple[float, float]]:
    return [
        (cx + r * math.cos(t), cy + r * math.sin(t)) for r, t in zip(radii, angles, strict=True)
    ]


def _regular(cy, cx, r, k, rot) -> list[tuple[float, float]]:
    return _polygon(cy, cx, [r] * k, [rot + 2 * math.pi * j / k for j in range(k)])


def _rotated_rect(cy, cx, h, w, rot) -> list[tuple[float, float]]:
    """Corners of a h x w rectangle centred at (cy, cx), rotated by `rot` radians."""
    c, s = math.cos(rot), math.sin(rot)
    pts = [(-w / 2, -h / 2), (w / 2, -h / 2), (w / 2, h / 2), (-w / 2, h / 2)]
    return [(cx + x * c - y * s, cy + x * s + y * c) for x, y in pts]


def _draw_object(name: str, rng: np.random.Generator, s: int, cy, cx, extent) -> np.ndarray:
    """[s, s] float32 coverage of one shape of class `name`, fitting in a circle of `extent`."""
    k = _SS
    cy, cx, r = cy * k, cx * k, extent * k / 2
    layer = Image.new("L", (s * k, s * k), 0)
    d = ImageDraw.Draw(layer)
    rot = rng.uniform(0, 2 * math.pi)
    small = rng.uniform(-math.radians(15), math.radians(15))
    if name == "circle":
        d.ellipse([cx - r, cy - r, cx + r, cy + r], fill=255)
    elif name == "square":
        side = r * math.sqrt(2) * rng.uniform(0.85, 1.0)
        d.polygon(_rotated_rect(cy, cx, side, side, small), fill=255)
    elif name == "triangle":
        d.polygon(_regular(cy, cx, r, 3, rot), fill=255)
    elif name == "cross":
        t = r * rng.uniform(0.45, 0.65)
        d.polygon(_rotated_rect(cy, cx, 2 * r * 0.95, t, rot), fill=255)
        d.polygon(_rotated_rect(cy, cx, t, 2 * r * 0.95, rot), fill=255)
    elif name == "star":
        inner = rng.uniform(0.38, 0.5)
        radii = [r if j % 2 == 0 else r * inner for j in range(10)]
        d.polygon(_polygon(cy, cx, radii, [rot + math.pi * j / 5 for j in range(10)]), fill=255)
    elif name == "ring":
        d.ellipse([cx - r, cy - r, cx + r, cy + r], fill=255)
        ri = r * rng.uniform(0.45, 0.65)
        d.ellipse([cx - ri, cy - ri, cx + ri, cy + ri], fill=0)
    elif name == "stripes":
        bars = int(rng.integers(3, 5))
        pitch = 2 * r / bars
        width = pitch * rng.uniform(0.45, 0.6)
        length = 2 * r * 0.8
        for j in range(bars):
            off = (j - (bars - 1) / 2) * pitch
            bcx, bcy = cx - off * math.sin(rot), cy + off * math.cos(rot)
            d.polygon(_rotated_rect(bcy, bcx, width, length, rot), fill=255)
    elif name == "diamond":
        # a rhombus on its tip, taller than wide (a square turned 45 degrees, then squeezed)
        w = r * rng.uniform(0.55, 0.75)
        c, si = math.cos(small), math.sin(small)
        pts = [(0, -r), (w, 0), (0, r), (-w, 0)]
        d.polygon([(cx + x * c - y * si, cy + x * si + y * c) for x, y in pts], fill=255)
    elif name == "hexagon":
        # flat top and bottom edges (turned at most 15 degrees) tell it from a circle
        d.polygon(_regular(cy, cx, r, 6, small), fill=255)
    elif name == "crescent":
        d.ellipse([cx - r, cy - r, cx + r, cy + r], fill=255)
        ri = r * rng.uniform(0.75, 0.9)
        off = r * rng.uniform(0.4, 0.6)
        oy, ox = cy + off * math.sin(rot), cx + off * math.cos(rot)
        d.ellipse([ox - ri, oy - ri, ox + ri, oy + ri], fill=0)
    else:
        raise ValueError(f"unknown shape {name!r}")
    return _downsample(layer)
