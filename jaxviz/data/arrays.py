"""uint8 NHWC images from a `.npy` or `.npz` file, read lazily, image by image.

A `.npy` is memory-mapped. In a `.npz` only the headers are read at open time: a stored
(uncompressed) member is memory-mapped at its offset inside the zip; a compressed one is read
through a seekable inflating stream, so image i costs inflating up to image i (streams move
forward; the pipeline reads in order), never the whole array. `--limit 2` on a 3.5 GiB array
compressed into a few MB reads two images. The small `labels` [N] and `boxes` [N, 4] arrays are
read whole, after their headers were checked against N.
"""

from __future__ import annotations

import threading
import zipfile
from typing import BinaryIO

import numpy as np
from numpy.lib import format as npformat
from PIL import Image

from jaxviz.data.decode import BadInput, Size, from_array
from jaxviz.data.sources import ItemInfo, Source
from jaxviz.errors import UsageError


def _header(f: BinaryIO, where: str) -> tuple[tuple[int, ...], np.dtype, bool]:
    try:
        version = npformat.read_magic(f)
        read = (
            npformat.read_array_header_1_0 if version == (1, 0) else npformat.read_array_header_2_0
        )
        shape, fortran, dtype = read(f, max_header_size=1 << 16)
    except (ValueError, OSError, EOFError) as e:
        raise UsageError(f"{where}: not a .npy array ({e})") from None
    return shape, dtype, fortran


class _ZipMember:
    """One array of a .npz: shape and dtype from its header, rows read on demand."""

    def __init__(self, path: str, name: str):
        self.path, self.name = path, name
        with zipfile.ZipFile(path) as z:
            info = z.getinfo(name)
            self.compressed = info.compress_type != zipfile.ZIP_STORED
            with z.open(info) as f:
                self.shape, self.dtype, fortran = _header(f, f"{path}:{name}")
                self.data_start = f.tell()
            if fortran and len(self.shape) > 1:
                raise UsageError(f"{path}:{name}: Fortran-ordered arrays are not supported")
            if not self.compressed:
                # the member's bytes start after its local header (name and extra field)
                with open(path, "rb") as raw:
                    raw.seek(info.header_offset + 26)
                    n, m = np.frombuffer(raw.read(4), "<u2")
                self.offset = info.header_offset + 30 + int(n) + int(m) + self.data_start
        self._z = self._f = self._mmap = None
        self._lock = threading.Lock()  # one inflating stream, shared by the decoding threads

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_z": None, "_f": None, "_mmap": None, "_lock": None}

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state, _lock=threading.Lock())

    @property
    def row_bytes(self) -> int:
        return int(np.prod(self.shape[1:], dtype=np.int64)) * self.dtype.itemsize

    def row(self, i: int) -> np.ndarray:
        if not self.compressed:
            if self._mmap is None:
                self._mmap = np.memmap(
                    self.path, self.dtype, "r", offset=self.offset, shape=self.shape
                )
            return np.asarray(self._mmap[i])
        with self._lock:
            if self._f is None:
                self._z = zipfile.ZipFile(self.path)
                self._f = self._z.open(self.name)
            self._f.seek(self.data_start + i * self.row_bytes)
            buf = self._f.read(self.row_bytes)
        if len(buf) != self.row_bytes:
            raise BadInput(f"array data ends before image {i} (truncated file)")
        return np.frombuffer(buf, self.dtype).reshape(self.shape[1:])

    def whole(self, limit: int) -> np.ndarray:
        if int(np.prod(self.shape, dtype=np.int64)) * self.dtype.itemsize > limit:
            raise UsageError(f"{self.path}: '{self.name}' is {self.shape}, more than expected")
        with zipfile.ZipFile(self.path) as z, z.open(self.name) as f:
            return np.load(f)


class ArraySource(Source):
    """uint8 [N, H, W, 3] (or [N, H, W], [N, H, W, 1|4]) images from a .npy or .npz file
    (.npz keys: images, optional labels [N], boxes [N, 4])."""

    def __init__(self, spec: str, path: str):
        self.spec, self.path = spec, path
        self.labels = self.boxes = None
        try:
            if path.endswith(".npz"):
                dtype = self._open_npz(path)
            else:
                self.images = np.load(path, mmap_mode="r")
                self.shape, dtype = self.images.shape, self.images.dtype
        except (OSError, ValueError, zipfile.BadZipFile, EOFError) as e:
            raise UsageError(f"cannot read array file {path}: {e}") from None
        shape = self.shape
        channels_ok = len(shape) == 3 or (len(shape) == 4 and shape[-1] in (1, 3, 4))
        if dtype != np.uint8 or not channels_ok:
            raise UsageError(f"{path}: expected uint8 NHWC images, got {dtype} {shape}")

    def __getstate__(self) -> dict:
        # a memory map would be pickled as its whole contents: reopen it in the worker instead
        if isinstance(self.images, np.memmap):
            return {**self.__dict__, "images": None}
        return self.__dict__

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        if self.images is None:
            self.images = np.load(self.path, mmap_mode="r")

    def _open_npz(self, path: str) -> np.dtype:
        with zipfile.ZipFile(path) as z:
            names = {n.removesuffix(".npy"): n for n in z.namelist()}
        if "images" not in names:
            raise UsageError(f"{path}: .npz needs an 'images' array; it has {sorted(names)}")
        self.images = _ZipMember(path, names["images"])
        self.shape, dtype = self.images.shape, self.images.dtype
        n = self.shape[0] if self.shape else 0
        if "labels" in names:
            self.labels = _ZipMember(path, names["labels"]).whole(8 * n).reshape(-1)
            if len(self.labels) != n:
                raise UsageError(f"{path}: {len(self.labels)} labels for {n} images")
        if "boxes" in names:
            self.boxes = _ZipMember(path, names["boxes"]).whole(32 * n).reshape(-1, 4)
            if len(self.boxes) != n:
                raise UsageError(f"{path}: {len(self.boxes)} boxes for {n} images")
        return dtype

    def __len__(self) -> int:
        return int(self.shape[0])

    def info(self, i: int) -> ItemInfo:
        label = None if self.labels is None else int(self.labels[i])
        box = None if self.boxes is None else tuple(int(v) for v in self.boxes[i])
        return ItemInfo(f"{self.spec}#{i}", label, box)

    def load(self, i: int, draft: Size | None = None) -> Image.Image:
        if min(self.shape[1:3]) == 0:
            raise BadInput(f"zero-size image ({self.shape[2]}x{self.shape[1]})")
        if isinstance(self.images, _ZipMember):
            return from_array(self.images.row(i))
        return from_array(np.asarray(self.images[i]))
