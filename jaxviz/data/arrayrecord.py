"""ArrayRecord files of encoded images, read through grain's `ArrayRecordDataSource`.

Each record is a serialized `tf.train.Example` (the layout TFDS writes, so TFDS ArrayRecord
exports read as they are), parsed here without TensorFlow: the image bytes under `image`,
`image/encoded`, `jpg` or `png`, the label (int64, or bytes holding a class name) under `label`,
`image/class/label` or `cls`, the id under `__key__`, `key` or `image/filename` (else
`{file}#{record}`). `encode_example` writes the same layout (`jaxviz pack --to arrayrecord`).
"""

from __future__ import annotations

import bisect
import os

from PIL import Image

from jaxviz.data.decode import BadInput, Size, decode_bytes
from jaxviz.data.labels import read_class_names
from jaxviz.data.sources import ItemInfo, Source, stored

EXTENSIONS = (".array_record", ".arrayrecord")
IMAGE_FEATURES = ("image", "image/encoded", "jpg", "jpeg", "png")
LABEL_FEATURES = ("label", "image/class/label", "cls")
KEY_FEATURES = ("__key__", "key", "image/filename")

Feature = list[bytes] | list[int] | list[float]


def _varint(buf: bytes, pos: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        if pos >= len(buf):
            raise ValueError("truncated varint")
        b = buf[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        if b < 0x80:
            return result, pos
        shift += 7
        if shift > 63:
            raise ValueError("varint too long")


def _fields(buf: bytes):
    """(field number, wire type, value) of a protobuf message: ints for varints, bytes else."""
    pos = 0
    while pos < len(buf):
        tag, pos = _varint(buf, pos)
        field, wire = tag >> 3, tag & 7
        if wire == 0:
            value, pos = _varint(buf, pos)
        elif wire == 2:
            n, pos = _varint(buf, pos)
            if pos + n > len(buf):
                raise ValueError("truncated field")
            value, pos = buf[pos : pos + n], pos + n
        elif wire in (1, 5):
            n = 8 if wire == 1 else 4
            value, pos = buf[pos : pos + n], pos + n
        else:
            raise ValueError(f"unsupported wire type {wire}")
        yield field, wire, value


def decode_example(buf: bytes) -> dict[str, Feature]:
    """A serialized tf.train.Example -> {name: list of bytes | ints | floats}."""
    import struct

    out: dict[str, Feature] = {}
    for f, _, features in _fields(buf):
        if f != 1:
            continue
        for g, _, entry in _fields(features):
            if g != 1:
                continue
            name, value = None, []
            for h, _, v in _fields(entry):
                if h == 1:
                    name = v.decode("utf-8", "replace")
                elif h == 2:
                    for kind, _, lst in _fields(v):
                        for _, wire, x in _fields(lst):
                            if kind == 1:
                                value.append(x)
                            elif kind == 3 and wire == 0:
                                value.append(x - (1 << 64) if x >= 1 << 63 else x)
                            elif kind == 3:  # packed int64
                                p = 0
                                while p < len(x):
                                    y, p = _varint(x, p)
                                    value.append(y - (1 << 64) if y >= 1 << 63 else y)
                            elif kind == 2 and wire == 5:
                                value.append(struct.unpack("<f", x)[0])
                            elif kind == 2:  # packed floats
                                value += list(struct.unpack(f"<{len(x) // 4}f", x))
            if name is not None:
                out[name] = value
    return out


def _enc_varint(n: int) -> bytes:
    n &= (1 << 64) - 1
    out = bytearray()
    while True:
        out.append((n & 0x7F) | (0x80 if n > 0x7F else 0))
        n >>= 7
        if not n:
            return bytes(out)


def _field(number: int, payload: bytes) -> bytes:
    return _enc_varint(number << 3 | 2) + _enc_varint(len(payload)) + payload


def encode_example(features: dict[str, bytes | int]) -> bytes:
    """{name: bytes or int} -> a serialized tf.train.Example (bytes_list / int64_list)."""
    entries = b""
    for name, v in features.items():
        if isinstance(v, bytes):
            feature = _field(1, _field(1, v))
        else:
            feature = _field(3, _field(1, _enc_varint(int(v))))
        entries += _field(1, _field(1, name.encode()) + _field(2, feature))
    return _field(1, entries)


def _first(ex: dict[str, Feature], names: tuple[str, ...]):
    return next((ex[n][0] for n in names if ex.get(n)), None)


class ArrayRecordSource(Source):
    """Records of ArrayRecord files, in file order; ids are `{file}#{record}`. Labels are
    class indices (or names listed in a `classes.txt` beside the files, one a line), read
    with the record."""

    def __init__(self, spec: str, paths: list[str]):
        import grain

        self.spec, self.paths = spec, paths
        self._records = grain.sources.ArrayRecordDataSource(paths)
        self._starts = [0]
        for p in paths:
            self._starts.append(self._starts[-1] + _count(p))
        self.class_names = read_class_names(os.path.dirname(paths[0]))

    def __len__(self) -> int:
        return self._starts[-1]

    def _example(self, i: int) -> dict[str, Feature]:
        try:
            return decode_example(self._records[i])
        except (ValueError, IndexError) as e:
            raise BadInput(f"record is not a tf.train.Example: {e}") from None

    def _label(self, ex: dict[str, Feature]) -> int | None:
        label = _first(ex, LABEL_FEATURES)
        if isinstance(label, bytes):
            name = label.decode("utf-8", "replace")
            if not self.class_names or name not in self.class_names:
                raise BadInput(f"label {name!r} is not a class index nor in classes.txt")
            return self.class_names.index(name)
        return None if label is None or label < 0 else int(label)

    def info(self, i: int) -> ItemInfo:
        f = bisect.bisect_right(self._starts, i) - 1
        try:
            label = self._label(self._example(i))
        except BadInput:
            label = None
        return ItemInfo(f"{self.paths[f]}#{i - self._starts[f]}", label)

    def load(self, i: int, draft: Size | None = None) -> Image.Image:
        return self.sample(i, draft)[0]

    def sample(self, i: int, draft: Size | None = None) -> tuple[Image.Image, int | None]:
        ex = self._example(i)
        return decode_bytes(_image(ex), draft), self._label(ex)

    def encoded(self, i: int) -> tuple[bytes, str]:
        data = _image(self._example(i))
        return stored(data, lambda: decode_bytes(data))


def _image(ex: dict[str, Feature]) -> bytes:
    data = _first(ex, IMAGE_FEATURES)
    if not isinstance(data, bytes) or not data:
        raise BadInput(f"record has no image bytes under {', '.join(IMAGE_FEATURES)}")
    return data


def _count(path: str) -> int:
    from array_record.python.array_record_module import ArrayRecordReader

    reader = ArrayRecordReader(path)
    try:
        return reader.num_records()
    finally:
        reader.close()
