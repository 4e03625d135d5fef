"""Data sources: random access to images by index, with ids, labels and boxes where known.

`open_source(spec)` understands: a directory (recursive; ImageFolder labels when every image sits
in a class subfolder), a text file listing paths, a glob, a `.npy`/`.npz` of uint8 NHWC images
(`.npz` keys: images, optional labels, boxes), `shapes:N[:SEED]` and `samples`.
"""

from __future__ import annotations

import abc
import functools
import glob as globlib
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from jaxviz.data.decode import BadInput, decode_file
from jaxviz.errors import UsageError

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

__all__ = ["BadInput", "ItemInfo", "Source", "open_source"]


@dataclass(frozen=True)
class ItemInfo:
    """What is known of item i: a stable id, the label (or None), the object box (y0, x0, y1, x1)
    end-exclusive in original-image pixels (or None)."""

    id: str
    label: int | None = None
    box: tuple[int, int, int, int] | None = None


class Source(abc.ABC):
    """Random access to a dataset. Subclasses set `spec` and `class_names`."""

    spec: str = ""
    class_names: tuple[str, ...] | None = None

    @abc.abstractmethod
    def __len__(self) -> int: ...

    @abc.abstractmethod
    def info(self, i: int) -> ItemInfo: ...

    @abc.abstractmethod
    def load(self, i: int) -> Image.Image:
        """The RGB image of item i; raises BadInput when it cannot be used."""


class FileSource(Source):
    """Image files; labels from class subfolders when `root` is given and all files have one."""

    def __init__(self, spec: str, paths: list[str], root: str | None = None):
        self.spec, self.paths = spec, paths
        self.labels: list[int] | None = None
        if root is not None:
            parts = [Path(os.path.relpath(p, root)).parts for p in paths]
            if paths and all(len(q) >= 2 for q in parts):
                names = sorted({q[0] for q in parts})
                if len(names) >= 2:
                    self.class_names = tuple(names)
                    self.labels = [names.index(q[0]) for q in parts]

    def __len__(self) -> int:
        return len(self.paths)

    def info(self, i: int) -> ItemInfo:
        return ItemInfo(self.paths[i], None if self.labels is None else self.labels[i])

    def load(self, i: int) -> Image.Image:
        return decode_file(self.paths[i])


class ArraySource(Source):
    """uint8 [N, H, W, 3] (or [N, H, W]) images from a .npy (memory-mapped) or .npz file."""

    def __init__(self, spec: str, path: str):
        self.spec = spec
        self.labels = self.boxes = None
        try:
            if path.endswith(".npz"):
                f = np.load(path)
                if "images" not in f.files:
                    raise UsageError(f"{path}: .npz needs an 'images' array; it has {f.files}")
                self.images = f["images"]
                self.labels = f["labels"] if "labels" in f.files else None
                self.boxes = f["boxes"] if "boxes" in f.files else None
            else:
                self.images = np.load(path, mmap_mode="r")
        except (OSError, ValueError) as e:
            raise UsageError(f"cannot read array file {path}: {e}") from None
        a = self.images
        if (
            a.dtype != np.uint8
            or a.ndim not in (3, 4)
            or (a.ndim == 4 and a.shape[-1] not in (1, 3, 4))
        ):
            raise UsageError(f"{path}: expected uint8 NHWC images, got {a.dtype} {a.shape}")

    def __len__(self) -> int:
        return len(self.images)

    def info(self, i: int) -> ItemInfo:
        label = None if self.labels is None else int(self.labels[i])
        box = None if self.boxes is None else tuple(int(v) for v in self.boxes[i])
        return ItemInfo(f"{self.spec}#{i}", label, box)

    def load(self, i: int) -> Image.Image:
        a = np.asarray(self.images[i])
        if a.ndim == 3 and a.shape[-1] == 1:
            a = a[..., 0]
        return Image.fromarray(a).convert("RGB")


class ShapesSource(Source):
    """The synthetic shapes set, generated on demand."""

    def __init__(self, spec: str, n: int, seed: int):
        from jaxviz.data.shapes import CLASS_NAMES, ShapesSet

        self.spec, self.class_names = spec, tuple(CLASS_NAMES)
        self.shapes = ShapesSet(n, seed)
        self.seed = seed

        # info(i) and load(i) come in pairs: draw each image once, not twice
        self._sample = functools.lru_cache(maxsize=4096)(self.shapes.sample)

    def __len__(self) -> int:
        return len(self.shapes)

    def info(self, i: int) -> ItemInfo:
        _, label, box = self._sample(i)
        return ItemInfo(f"shapes:{self.seed}:{i}", int(label), tuple(int(v) for v in box))

    def load(self, i: int) -> Image.Image:
        return Image.fromarray(self._sample(i)[0])


class SamplesSource(Source):
    """Real photos shipped inside scikit-image (no download)."""

    spec = "samples"

    def __len__(self) -> int:
        return len(SAMPLES)

    def info(self, i: int) -> ItemInfo:
        return ItemInfo(f"samples:{SAMPLES[i]}")

    def load(self, i: int) -> Image.Image:
        import skimage.data

        return Image.fromarray(getattr(skimage.data, SAMPLES[i])()).convert("RGB")


def _files_under(root: str) -> list[str]:
    out = []
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
        dirnames.sort()
        out += [
            os.path.join(dirpath, f)
            for f in sorted(filenames)
            if os.path.splitext(f)[1].lower() in IMAGE_EXTENSIONS
        ]
    return out


def _parse_shapes(spec: str) -> ShapesSource:
    parts = spec.split(":")
    try:
        if len(parts) not in (2, 3):
            raise ValueError
        n = int(parts[1])
        seed = int(parts[2]) if len(parts) == 3 else 0
        if n <= 0 or seed < 0:
            raise ValueError
    except ValueError:
        raise UsageError(
            f"bad shapes spec {spec!r}; expected shapes:N[:SEED] with N > 0, "
            "e.g. shapes:1000 or shapes:2000:123"
        ) from None
    return ShapesSource(spec, n, seed)


def open_source(spec: str) -> Source:
    """The Source named by a `--data` spec; UsageError for a bad spec or an empty/missing path."""
    if spec.startswith("shapes:") or spec == "shapes":
        return _parse_shapes(spec)
    if spec == "samples":
        return SamplesSource()
    if os.path.isdir(spec):
        paths = _files_under(spec)
        if not paths:
            raise UsageError(
                f"no image files under directory {spec} "
                f"(extensions: {', '.join(sorted(IMAGE_EXTENSIONS))})"
            )
        return FileSource(spec, paths, root=spec)
    if spec.endswith((".npy", ".npz")):
        if not os.path.exists(spec):
            raise UsageError(f"array file not found: {spec}")
        return ArraySource(spec, spec)
    if os.path.isfile(spec) and os.path.splitext(spec)[1].lower() in (".txt", ".lst", ".list"):
        base = os.path.dirname(spec)
        with open(spec) as f:
            lines = [ln.strip() for ln in f if ln.strip() and not ln.startswith("#")]
        if not lines:
            raise UsageError(f"list file {spec} names no paths")
        return FileSource(spec, [p if os.path.isabs(p) else os.path.join(base, p) for p in lines])
    if os.path.isfile(spec):
        return FileSource(spec, [spec])
    if any(c in spec for c in "*?["):
        paths = sorted(p for p in globlib.glob(spec, recursive=True) if os.path.isfile(p))
        if not paths:
            raise UsageError(f"glob {spec!r} matches no files")
        return FileSource(spec, paths)
    raise UsageError(
        f"--data {spec!r}: no such file or directory; expected a directory, a .txt "
        "list of paths, a glob, a .npy/.npz array, shapes:N[:SEED] or samples"
    )
