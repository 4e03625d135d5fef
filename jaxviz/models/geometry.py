"""Spatial geometry of a stage and the receptive-field algebra built on it.

A stage's geometry is what a convolution or pooling window does to coordinates along each spatial
axis: output unit `o` reads input positions `o*stride - pad_lo + d*j` for `j in range(kernel)`.
Composing geometries of a chain (first stage first) gives again a geometry, whose kernel is the
receptive-field size, stride the effective stride and pad_lo the offset of unit 0's field
(Araujo et al., "Computing Receptive Fields of Convolutional Neural Networks", Distill 2019).
"""

from __future__ import annotations

from dataclasses import dataclass

Pair = tuple[int, int]
Padding = tuple[Pair, Pair]  # ((top, bottom), (left, right))


def _pair(v: int | Pair) -> Pair:
    return (v, v) if isinstance(v, int) else (int(v[0]), int(v[1]))


@dataclass(frozen=True)
class Geometry:
    """Window geometry along (H, W).

    kernel, stride, dilation: per axis. pad_lo / pad_hi: zero (or -inf) padding added before and
    after each axis. A stage that keeps the map as is (ReLU, BN) has the identity geometry.
    """

    kernel: Pair = (1, 1)
    stride: Pair = (1, 1)
    pad_lo: Pair = (0, 0)
    pad_hi: Pair = (0, 0)
    dilation: Pair = (1, 1)

    @staticmethod
    def window(
        kernel: int | Pair,
        stride: int | Pair = 1,
        padding: int | Pair | tuple[Pair, Pair] = 0,
        dilation: int | Pair = 1,
    ) -> Geometry:
        """Geometry of a conv/pool window; `padding` is symmetric per axis or ((lo,hi),(lo,hi))."""
        if isinstance(padding, tuple) and isinstance(padding[0], tuple):
            lo = (padding[0][0], padding[1][0])
            hi = (padding[0][1], padding[1][1])
        else:
            lo = hi = _pair(padding)  # type: ignore[arg-type]
        return Geometry(_pair(kernel), _pair(stride), lo, hi, _pair(dilation))

    @property
    def span(self) -> Pair:
        """Input extent read by one output unit: dilation * (kernel - 1) + 1."""
        return tuple(d * (k - 1) + 1 for k, d in zip(self.kernel, self.dilation, strict=True))

    def then(self, nxt: Geometry) -> Geometry:
        """The geometry of applying `self` and then `nxt` (as one window on self's input)."""
        span = tuple(
            a + (b - 1) * s for a, b, s in zip(self.span, nxt.span, self.stride, strict=True)
        )
        stride = tuple(a * b for a, b in zip(self.stride, nxt.stride, strict=True))
        lo = tuple(a + b * s for a, b, s in zip(self.pad_lo, nxt.pad_lo, self.stride, strict=True))
        hi = tuple(a + b * s for a, b, s in zip(self.pad_hi, nxt.pad_hi, self.stride, strict=True))
        return Geometry(span, stride, lo, hi, (1, 1))

    def out_size(self, size: Pair) -> Pair:
        """Output spatial size for an input of `size` (floor mode)."""
        return tuple(
            (n + lo + hi - sp) // s + 1
            for n, lo, hi, sp, s in zip(
                size, self.pad_lo, self.pad_hi, self.span, self.stride, strict=True
            )
        )

    def input_box(self, y: int, x: int) -> tuple[int, int, int, int]:
        """Unclipped input box (y0, x0, y1, x1), end exclusive, read by output unit (y, x)."""
        y0 = y * self.stride[0] - self.pad_lo[0]
        x0 = x * self.stride[1] - self.pad_lo[1]
        return (y0, x0, y0 + self.span[0], x0 + self.span[1])


IDENTITY = Geometry()


class _Unknown:
    """The geometry of a stage that cannot be derived (see `UNKNOWN`)."""

    def __repr__(self) -> str:
        return "UNKNOWN"


UNKNOWN = _Unknown()
"""A stage geometry that is not known: methods that need geometry (receptive fields, patch
crops, incremental occlusion) refuse the stage; None, by contrast, means "every output reads
the whole input" (global pooling, fully connected)."""


def union(a: Geometry, b: Geometry) -> Geometry | None:
    """The smallest window that covers both `a`'s and `b`'s windows of the same output unit
    (an elementwise op on two branches, e.g. a residual sum); None if their strides differ."""
    if a.stride != b.stride:
        return None
    lo = tuple(max(p, q) for p, q in zip(a.pad_lo, b.pad_lo, strict=True))
    end = tuple(
        max(sa - pa, sb - pb)
        for sa, pa, sb, pb in zip(a.span, a.pad_lo, b.span, b.pad_lo, strict=True)
    )
    span = tuple(e + p for e, p in zip(end, lo, strict=True))
    hi = tuple(
        max(ha + e - (sa - pa), hb + e - (sb - pb))
        for ha, sa, pa, hb, sb, pb, e in zip(
            a.pad_hi, a.span, a.pad_lo, b.pad_hi, b.span, b.pad_lo, end, strict=True
        )
    )
    return Geometry(span, a.stride, lo, hi, (1, 1))


@dataclass(frozen=True)
class ReceptiveField:
    """Receptive field of the units of one stage, in input-image pixels.

    size: field size per axis; stride: effective stride (input pixels between neighbouring units);
    offset: input coordinate where unit (0, 0)'s field starts (negative when it starts in padding).
    """

    size: Pair
    stride: Pair
    offset: Pair

    @staticmethod
    def of(geometry: Geometry) -> ReceptiveField:
        return ReceptiveField(
            geometry.span, geometry.stride, (-geometry.pad_lo[0], -geometry.pad_lo[1])
        )

    def box(self, y: int, x: int, image_hw: Pair | None = None) -> tuple[int, int, int, int]:
        """Input box (y0, x0, y1, x1), end exclusive, of unit (y, x); clipped if image_hw given."""
        y0 = self.offset[0] + y * self.stride[0]
        x0 = self.offset[1] + x * self.stride[1]
        y1, x1 = y0 + self.size[0], x0 + self.size[1]
        if image_hw is None:
            return (y0, x0, y1, x1)
        h, w = image_hw
        return (max(y0, 0), max(x0, 0), min(y1, h), min(x1, w))
