"""Reading `.safetensors` files through a validated header parse (no trust in the header).

Layout (huggingface/safetensors): an 8-byte little-endian header length N, N bytes of JSON
`{name: {"dtype", "shape", "data_offsets": [begin, end]}, "__metadata__": {...}}`, then the data,
offsets counted from the end of the header. Before any tensor is read, the header is checked:
N within the file (and at most 100 MB, the format's own limit), valid JSON of that form, known
dtypes, shapes of at most 32 non-negative dims, offsets inside the data with `end - begin` equal to
the shape's bytes, and no two tensors overlapping. Then each wanted tensor is read with exactly
its bytes; unwanted ones are zero-stride placeholders (see `checkpoint.read_state_dict`).
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from typing import Any

import ml_dtypes
import numpy as np

from jaxviz.models.checkpoint import CheckpointError, check_shape, placeholder
from jaxviz.models.safe_pickle import PickleError, describe

MAX_HEADER = 100_000_000

# safetensors dtype tag -> numpy dtype
DTYPES: dict[str, np.dtype] = {
    "F64": np.dtype(np.float64),
    "F32": np.dtype(np.float32),
    "F16": np.dtype(np.float16),
    "BF16": np.dtype(ml_dtypes.bfloat16),
    "I64": np.dtype(np.int64),
    "I32": np.dtype(np.int32),
    "I16": np.dtype(np.int16),
    "I8": np.dtype(np.int8),
    "U8": np.dtype(np.uint8),
    "BOOL": np.dtype(np.bool_),
}


def _entry(name: str, rec: Any, data_len: int) -> tuple[np.dtype, tuple[int, ...], int, int]:
    """(dtype, shape, begin, end) of one header entry, or a ValueError saying what is wrong."""
    if not isinstance(rec, dict):
        raise ValueError(f"tensor {describe(name)} is described by {describe(rec)}")
    dtype = DTYPES.get(rec.get("dtype")) if isinstance(rec.get("dtype"), str) else None
    if dtype is None:
        raise ValueError(
            f"tensor {describe(name)} has the unsupported dtype {describe(rec.get('dtype'))}"
        )
    try:
        shape = check_shape(rec.get("shape"), f"tensor {describe(name)}'s shape")
    except PickleError as e:
        raise ValueError(str(e)) from None
    offsets = rec.get("data_offsets")
    if not (
        isinstance(offsets, list)
        and len(offsets) == 2
        and all(isinstance(o, int) and not isinstance(o, bool) for o in offsets)
        and 0 <= offsets[0] <= offsets[1] <= data_len
    ):
        small = isinstance(offsets, list) and len(offsets) <= 2
        shown = [describe(o) for o in offsets] if small else describe(offsets)
        raise ValueError(
            f"tensor {describe(name)} has data_offsets {shown} outside the {data_len} data bytes"
        )
    begin, end = offsets
    nbytes = math.prod(shape) * dtype.itemsize
    if end - begin != nbytes:
        raise ValueError(
            f"tensor {describe(name)} of shape {shape} needs {nbytes} bytes; "
            f"its offsets span {end - begin}"
        )
    return dtype, shape, begin, end


def read_safetensors(path: str, expect: Mapping[str, tuple[int, ...]] | None) -> dict:
    """{name: array} of a `.safetensors` file (see the module doc); CheckpointError when
    malformed. expect: as in `checkpoint.read_state_dict`."""
    from jaxviz.models.checkpoint import data_parallel_prefix

    with open(path, "rb") as f:
        f.seek(0, 2)
        size = f.tell()
        f.seek(0)
        head = f.read(8)
        if len(head) < 8:
            raise CheckpointError(f"{path}: not a .safetensors file ({size} bytes, no header)")
        n = int.from_bytes(head, "little")
        if n > min(size - 8, MAX_HEADER):
            raise CheckpointError(
                f"{path}: the header length {n} runs past the end of the file ({size} bytes)"
            )
        try:
            header = json.loads(f.read(n))
        except (ValueError, RecursionError):
            raise CheckpointError(f"{path}: the header is not JSON") from None
        if not isinstance(header, dict):
            raise CheckpointError(f"{path}: the header is {describe(header)}, not an object")
        data_len = size - 8 - n
        try:
            entries = {k: _entry(k, v, data_len) for k, v in header.items() if k != "__metadata__"}
        except ValueError as e:
            raise CheckpointError(f"{path}: {e}") from None
        spans = sorted((b, e, k) for k, (_, _, b, e) in entries.items() if e > b)
        for (_, end, a), (begin, _, b) in zip(spans, spans[1:], strict=False):
            if begin < end:
                raise CheckpointError(
                    f"{path}: tensors {describe(a)} and {describe(b)} overlap in the file"
                )
        prefix = data_parallel_prefix(entries)
        out = {}
        for k, (dtype, shape, begin, end) in entries.items():
            if expect is not None and tuple(expect.get(k[len(prefix) :], (-1,))) != shape:
                out[k] = placeholder(dtype, shape)
                continue
            f.seek(8 + n + begin)
            out[k] = np.frombuffer(f.read(end - begin), dtype).reshape(shape)
    return out
