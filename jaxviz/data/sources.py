"""Data sources: random access to images by index, with ids, labels and boxes where known.

`open_source(spec)` understands every `--data` form (see `formats.py`); this module holds the
`Source` interface and the simple sources: image files, the synthetic shapes set, the bundled
sample photos, and any Python sequence (`as_source`).

A source never raises for one bad item at open time: what cannot be used (a missing file, a
FIFO, a symlink loop, a shard's unreadable tail) becomes an item whose `load` raises `BadInput`
with the reason, so it is skipped and listed like any other bad record.
"""

from __future__ import annotations

import abc
import functools
import io
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image

from jaxviz.data.decode import (
    BadInput,
    Size,
    decode_bytes,
    decode_file,
    from_array,
    image_format,
    read_file,
    to_rgb,
)

IMAGE_EXTENSIONS = {
    ".jpg",
    ".jpeg",
    ".png",
    ".bmp",
    ".gif",
    ".tif",
    ".tiff",
    ".webp",
    ".ppm",
    ".pgm",
    ".pbm",
    ".jfif",
}
SAMPLES = ("astronaut", "chelsea", "coffee", "rocket")

__all__ = ["BadInput", "ItemInfo", "Source", "as_source", "open_source"]


@dataclass(frozen=True)
class ItemInfo:
    """What is known of item i: a stable id, the label (or None), the object box (y0, x0, y1, x1)
    end-exclusive in original-image pixels (or None)."""

    id: str
    label: int | None = None
    box: tuple[int, int, int, int] | None = None


class Source(abc.ABC):
    """Random access to a dataset. Subclasses set `spec` and `class_names` (the label names, in
    label order, when the labels are names).

    Sources are pickled into the pipeline's worker processes: hold paths, not open files (open
    them lazily, per process).
    """

    spec: str = ""
    class_names: tuple[str, ...] | None = None

    @abc.abstractmethod
    def __len__(self) -> int: ...

    @abc.abstractmethod
    def info(self, i: int) -> ItemInfo: ...

    @abc.abstractmethod
    def load(self, i: int, draft: Size | None = None) -> Image.Image:
        """The RGB image of item i; raises BadInput when it cannot be used. `draft`: (width,
        height) the image must cover; encoded JPEGs may be decoded at a reduced scale to it."""

    def sample(self, i: int, draft: Size | None = None) -> tuple[Image.Image, int | None]:
        """(image, label) of item i, what the pipeline's workers call."""
        return self.load(i, draft), self.info(i).label

    def encoded(self, i: int) -> tuple[bytes, str]:
        """Item i as encoded bytes and their format ('jpg', 'png', 'webp'): the stored bytes
        when they are one of those (`jaxviz pack` copies them), else a lossless PNG."""
        return encode_png(self.load(i))


def encode_png(image: Image.Image) -> tuple[bytes, str]:
    buf = io.BytesIO()
    image.save(buf, format="PNG", compress_level=1)
    return buf.getvalue(), "png"


def stored(data: bytes, decode: Callable[[], Image.Image]) -> tuple[bytes, str]:
    """Stored image bytes as they are when jpg/png/webp and decodable, else re-encoded."""
    kind = image_format(data)
    if kind is None:
        return encode_png(decode())
    decode()  # a record that does not decode is refused here, not copied
    return data, kind


class EncodedSource(Source):
    """A source whose items are stored encoded (JPEG/PNG/WebP bytes in a shard, file or row):
    `_bytes(i)` reads item i's bytes, decoding and storing them is common."""

    @abc.abstractmethod
    def _bytes(self, i: int) -> bytes: ...

    def load(self, i: int, draft: Size | None = None) -> Image.Image:
        return decode_bytes(self._bytes(i), draft)

    def encoded(self, i: int) -> tuple[bytes, str]:
        data = self._bytes(i)
        return stored(data, lambda: decode_bytes(data))


class FileSource(Source):
    """Image files. labels: per file (class index into class_names) or None; problems: {item:
    reason} for entries known to be unusable (loading them raises BadInput)."""

    def __init__(
        self,
        spec: str,
        paths: list[str],
        labels: list[int] | None = None,
        class_names: tuple[str, ...] | None = None,
        problems: dict[int, str] | None = None,
    ):
        self.spec, self.paths, self.labels = spec, paths, labels
        self.class_names = class_names
        self.problems = problems or {}

    def __len__(self) -> int:
        return len(self.paths)

    def info(self, i: int) -> ItemInfo:
        label = None if self.labels is None else self.labels[i]
        return ItemInfo(self.paths[i], None if label is None or label < 0 else label)

    def load(self, i: int, draft: Size | None = None) -> Image.Image:
        if i in self.problems:
            raise BadInput(self.problems[i])
        return decode_file(self.paths[i], draft)

    def encoded(self, i: int) -> tuple[bytes, str]:
        if i in self.problems:
            raise BadInput(self.problems[i])
        data = read_file(self.paths[i])
        return stored(data, lambda: decode_bytes(data))


class ShapesSource(Source):
    """The synthetic shapes set, generated on demand."""

    def __init__(self, spec: str, n: int, seed: int):
        from jaxviz.data.shapes import CLASS_NAMES, ShapesSet

        self.spec, self.class_names = spec, tuple(CLASS_NAMES)
        self.shapes = ShapesSet(n, seed)
        self.seed = seed
        # info(i) and load(i) come in pairs: draw each image once, not twice
        self._sample = functools.lru_cache(maxsize=4096)(self.shapes.sample)

    def __getstate__(self) -> dict:
        return {k: v for k, v in self.__dict__.items() if k != "_sample"}

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._sample = functools.lru_cache(maxsize=4096)(self.shapes.sample)

    def __len__(self) -> int:
        return len(self.shapes)

    def info(self, i: int) -> ItemInfo:
        _, label, box = self._sample(i)
        return ItemInfo(f"shapes:{self.seed}:{i}", int(label), tuple(int(v) for v in box))

    def load(self, i: int, draft: Size | None = None) -> Image.Image:
        return Image.fromarray(self._sample(i)[0])

    def sample(self, i: int, draft: Size | None = None) -> tuple[Image.Image, int | None]:
        image, label, _ = self.shapes.sample(i)
        return Image.fromarray(image), int(label)


class SamplesSource(Source):
    """Real photos shipped inside scikit-image (no download)."""

    spec = "samples"

    def __len__(self) -> int:
        return len(SAMPLES)

    def info(self, i: int) -> ItemInfo:
        return ItemInfo(f"samples:{SAMPLES[i]}")

    def load(self, i: int, draft: Size | None = None) -> Image.Image:
        import skimage.data

        return Image.fromarray(getattr(skimage.data, SAMPLES[i])()).convert("RGB")


class SequenceSource(Source):
    """Any object with `__len__` and `__getitem__(i)` returning an image (PIL image or uint8
    [H, W(, C)] array) or an (image, label) pair; ids are `{name}#{i}`."""

    def __init__(self, data: Any, name: str | None = None, class_names=None):
        self.data, self.spec = data, name or type(data).__name__
        self.class_names = None if class_names is None else tuple(class_names)

    def __len__(self) -> int:
        return len(self.data)

    def _get(self, i: int) -> tuple[Any, int | None]:
        item = self.data[i]
        if isinstance(item, tuple):
            if len(item) != 2:
                raise BadInput(f"item is a tuple of {len(item)}; expected (image, label)")
            return item[0], None if item[1] is None else int(item[1])
        return item, None

    def info(self, i: int) -> ItemInfo:
        return ItemInfo(f"{self.spec}#{i}")

    def load(self, i: int, draft: Size | None = None) -> Image.Image:
        return self.sample(i, draft)[0]

    def sample(self, i: int, draft: Size | None = None) -> tuple[Image.Image, int | None]:
        image, label = self._get(i)
        if isinstance(image, Image.Image):
            if min(image.size) == 0:
                raise BadInput(f"zero-size image ({image.size[0]}x{image.size[1]})")
            return to_rgb(image), label
        return from_array(np.asarray(image)), label


def as_source(data: Any, name: str | None = None) -> Source:
    """A Source from a `--data` spec string, a Source, or any sized, indexable Python object."""
    if isinstance(data, Source):
        return data
    if isinstance(data, (str, os.PathLike)):
        return open_source(os.fspath(data))
    if hasattr(data, "__len__") and hasattr(data, "__getitem__"):
        return SequenceSource(data, name, getattr(data, "class_names", None))
    raise TypeError(f"cannot use a {type(data).__name__} as data: need __len__ and __getitem__")


def open_source(spec: str) -> Source:
    """The Source named by a `--data` spec; UsageError for a bad spec or an empty/missing path."""
    from jaxviz.data.formats import open_spec

    return open_spec(spec)
