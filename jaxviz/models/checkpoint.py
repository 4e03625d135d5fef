"""Reading PyTorch `.pth` and `.safetensors` state dicts into numpy, without importing torch.

`.pth` files are pickles, and unpickling runs whatever callables the file names. `read_state_dict`
unpickles through `_RestrictedUnpickler`, whose `find_class` admits only the globals a state dict
needs (OrderedDict, torch's tensor-rebuild helpers, storage types, dtypes, `torch.device`), each
mapped to a small numpy stand-in defined here; any other global (`os.system`, `builtins.eval`...)
raises `CheckpointError` naming it before anything is called. Both layouts torch writes are read:

- zip (torch >= 1.6): `<prefix>/data.pkl`, the storages as `<prefix>/data/<key>`, and an optional
  `<prefix>/byteorder`;
- legacy (torch < 1.6, or `_use_new_zipfile_serialization=False`): pickled magic number, protocol
  version and sys-info, then the pickled object, then the list of storage keys, then for each key
  an int64 element count followed by the raw storage bytes (torch/serialization.py, `_legacy_load`).

Tensors keep their dtype (float32/float16/bfloat16 via ml_dtypes/int64...); strided views and
storage offsets are honoured, with bounds checked against the storage.
"""

from __future__ import annotations

import os
import pickle
import struct
import zipfile
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

import ml_dtypes
import numpy as np

from jaxviz.errors import UsageError

_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
_LEGACY_PROTOCOL = 1001

# torch storage type name -> numpy dtype
_STORAGE_DTYPES: dict[str, np.dtype] = {
    "DoubleStorage": np.dtype(np.float64),
    "FloatStorage": np.dtype(np.float32),
    "HalfStorage": np.dtype(np.float16),
    "BFloat16Storage": np.dtype(ml_dtypes.bfloat16),
    "LongStorage": np.dtype(np.int64),
    "IntStorage": np.dtype(np.int32),
    "ShortStorage": np.dtype(np.int16),
    "CharStorage": np.dtype(np.int8),
    "ByteStorage": np.dtype(np.uint8),
    "BoolStorage": np.dtype(np.bool_),
}
# torch dtype attribute name -> numpy dtype (dtypes can appear in pickled metadata)
_TORCH_DTYPES: dict[str, np.dtype] = {
    "float64": np.dtype(np.float64),
    "float32": np.dtype(np.float32),
    "float16": np.dtype(np.float16),
    "bfloat16": np.dtype(ml_dtypes.bfloat16),
    "int64": np.dtype(np.int64),
    "int32": np.dtype(np.int32),
    "int16": np.dtype(np.int16),
    "int8": np.dtype(np.int8),
    "uint8": np.dtype(np.uint8),
    "bool": np.dtype(np.bool_),
}
# safetensors dtype tag -> numpy dtype
_SAFETENSORS_DTYPES: dict[str, np.dtype] = {
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


class CheckpointError(UsageError):
    """A checkpoint file that cannot or must not be read (unsafe, corrupt, unsupported, or not
    matching the model); the CLI reports it as bad usage (exit 2, one line)."""


@dataclass(frozen=True)
class _StorageType:
    """Stand-in for `torch.FloatStorage` etc.: only its dtype matters."""

    name: str
    dtype: np.dtype


@dataclass
class _Storage:
    """A storage read from the file: `numel` elements of `dtype`, bytes filled in by the reader."""

    dtype: np.dtype
    numel: int
    data: bytes | None = None
    root: _Storage | None = None  # legacy storage views: the root storage and element offset
    offset: int = 0

    def array(self) -> np.ndarray:
        """The storage as a flat [numel] array of its dtype."""
        if self.root is not None:
            return self.root.array()[self.offset : self.offset + self.numel]
        if self.data is None or len(self.data) < self.numel * self.dtype.itemsize:
            raise CheckpointError("storage data missing or truncated")
        return np.frombuffer(self.data, self.dtype, count=self.numel)


@dataclass
class _Tensor:
    """A tensor waiting for its storage bytes (legacy files store them after the pickle)."""

    storage: _Storage
    offset: int
    size: tuple[int, ...]
    stride: tuple[int, ...]

    def materialize(self) -> np.ndarray:
        flat = self.storage.array()
        if len(self.size) != len(self.stride) or any(s < 0 for s in (*self.size, *self.stride)):
            raise CheckpointError(f"bad tensor size {self.size} / stride {self.stride}")
        if 0 in self.size:
            return np.zeros(self.size, flat.dtype)
        last = self.offset + sum((n - 1) * s for n, s in zip(self.size, self.stride, strict=True))
        if self.offset < 0 or last >= flat.size:
            raise CheckpointError(
                f"tensor (offset {self.offset}, size {self.size}, stride {self.stride}) "
                f"reads past its storage of {flat.size} elements"
            )
        contiguous = np.cumprod((1, *self.size[:0:-1]))[::-1]
        if tuple(int(c) for c in contiguous) == self.stride:  # no copy: a view on the file bytes
            return flat[self.offset : self.offset + int(np.prod(self.size))].reshape(self.size)
        view = np.lib.stride_tricks.as_strided(
            flat[self.offset :],
            shape=self.size,
            strides=tuple(s * flat.itemsize for s in self.stride),
            writeable=False,
        )
        return np.array(view)


def _rebuild_tensor(storage, storage_offset, size, stride, *_ignored) -> _Tensor:
    """torch._utils._rebuild_tensor(_v2): (storage, offset, size, stride, requires_grad, ...)."""
    if not isinstance(storage, _Storage):
        raise CheckpointError(f"tensor rebuilt from a {type(storage).__name__}, not a storage")
    return _Tensor(storage, int(storage_offset), tuple(size), tuple(stride))


def _rebuild_parameter(data, *_ignored):
    """torch._utils._rebuild_parameter(_with_state): a Parameter is its data here."""
    return data


def _device(*args):
    """torch.device('cpu') etc.: kept as its string."""
    return ":".join(str(a) for a in args)


def _size(*args):
    """torch.Size(...) -> tuple."""
    return tuple(*args)


def _allowed(module: str, name: str) -> Callable | _StorageType | np.dtype | type | None:
    if (module, name) == ("collections", "OrderedDict"):
        return OrderedDict
    if module == "torch._utils":
        return {
            "_rebuild_tensor": _rebuild_tensor,
            "_rebuild_tensor_v2": _rebuild_tensor,
            "_rebuild_parameter": _rebuild_parameter,
            "_rebuild_parameter_with_state": _rebuild_parameter,
        }.get(name)
    if module == "torch":
        if name in _STORAGE_DTYPES:
            return _StorageType(name, _STORAGE_DTYPES[name])
        if name in _TORCH_DTYPES:
            return _TORCH_DTYPES[name]
        return {"device": _device, "Size": _size}.get(name)
    return None


class _RestrictedUnpickler(pickle.Unpickler):
    """Unpickler that admits only state-dict globals and resolves torch's persistent ids."""

    def __init__(self, file, persistent_load: Callable[[tuple], object] | None, source: str):
        super().__init__(file)
        self._persistent = persistent_load
        self._source = source

    def find_class(self, module: str, name: str):
        obj = _allowed(module, name)
        if obj is None:
            raise CheckpointError(
                f"refusing to load {self._source}: its pickle names the global "
                f"'{module}.{name}', which a state dict never needs (only tensors, OrderedDict "
                "and torch storage types are allowed); nothing from the file was run"
            )
        return obj

    def persistent_load(self, pid):
        if self._persistent is None:
            raise CheckpointError(f"unexpected persistent id in {self._source}: {pid!r}")
        return self._persistent(pid)


def _unpickle(f, source: str, persistent_load=None):
    try:
        return _RestrictedUnpickler(f, persistent_load, source).load()
    except CheckpointError:
        raise
    except Exception as e:  # corrupt pickles raise many different types
        raise CheckpointError(f"cannot read {source}: {type(e).__name__}: {e}") from e


def _storage_pid(pid, source: str) -> tuple[_StorageType, str, int, tuple | None]:
    """Parse ('storage', type, key, location, numel[, view_metadata])."""
    if not (isinstance(pid, tuple) and len(pid) in (5, 6) and pid[0] in ("storage", b"storage")):
        raise CheckpointError(f"unexpected persistent id in {source}: {pid!r}")
    stype, key, numel = pid[1], pid[2], pid[4]
    if not isinstance(stype, _StorageType):
        raise CheckpointError(f"persistent id in {source} has no storage type: {pid!r}")
    view = pid[5] if len(pid) == 6 else None
    return stype, str(key), int(numel), view


def _read_zip(path: str) -> object:
    with zipfile.ZipFile(path) as zf:
        pkls = [n for n in zf.namelist() if n.endswith("data.pkl") and n.count("/") == 1]
        if len(pkls) != 1:
            raise CheckpointError(f"{path}: zip checkpoint without exactly one <prefix>/data.pkl")
        prefix = pkls[0][: -len("data.pkl")]
        names = set(zf.namelist())
        if prefix + "byteorder" in names and zf.read(prefix + "byteorder").strip() != b"little":
            raise CheckpointError(f"{path}: big-endian checkpoints are not supported")
        storages: dict[str, _Storage] = {}

        def persistent_load(pid):
            stype, key, numel, _ = _storage_pid(pid, path)
            if key not in storages:
                record = f"{prefix}data/{key}"
                if record not in names:
                    raise CheckpointError(f"{path}: storage record {record} is missing")
                storages[key] = _Storage(stype.dtype, numel, zf.read(record))
            return storages[key]

        with zf.open(pkls[0]) as f:
            return _unpickle(f, path, persistent_load)


def _read_legacy(path: str) -> object:
    with open(path, "rb") as f:
        if _unpickle(f, path) != _LEGACY_MAGIC:
            raise CheckpointError(f"{path}: not a PyTorch checkpoint (bad magic number)")
        if _unpickle(f, path) != _LEGACY_PROTOCOL:
            raise CheckpointError(f"{path}: unsupported legacy protocol version")
        info = _unpickle(f, path)
        if not (isinstance(info, dict) and info.get("little_endian", True)):
            raise CheckpointError(f"{path}: big-endian checkpoints are not supported")
        storages: dict[str, _Storage] = {}

        def persistent_load(pid):
            if isinstance(pid, tuple) and pid and pid[0] in ("module", b"module"):
                raise CheckpointError(f"{path} pickles a whole nn.Module; save its state_dict()")
            stype, key, numel, view = _storage_pid(pid, path)
            root = storages.setdefault(key, _Storage(stype.dtype, numel))
            if view is None:
                return root
            view_key, offset, view_numel = view
            return storages.setdefault(
                str(view_key), _Storage(stype.dtype, int(view_numel), root=root, offset=int(offset))
            )

        result = _unpickle(f, path, persistent_load)
        keys = _unpickle(f, path)
        for key in keys:
            st = storages.get(str(key))
            if st is None:
                raise CheckpointError(f"{path}: data for unknown storage {key!r}")
            (numel,) = struct.unpack("<q", f.read(8))
            st.data = f.read(numel * st.dtype.itemsize)
            if numel != st.numel or len(st.data) != numel * st.dtype.itemsize:
                raise CheckpointError(f"{path}: storage {key!r} is truncated")
        return result


def _tensors(obj: object, path: str) -> dict[str, np.ndarray]:
    """The state dict in `obj` (unwrapping {'state_dict': ...} / {'model': ...}), materialized."""
    if not isinstance(obj, dict):
        raise CheckpointError(f"{path} holds a {type(obj).__name__}, not a state dict")
    if not any(isinstance(v, _Tensor) for v in obj.values()):
        for key in ("state_dict", "model", "model_state_dict"):
            if isinstance(obj.get(key), dict):
                return _tensors(obj[key], path)
    out = {}
    for k, v in obj.items():
        if isinstance(v, _Tensor):
            out[str(k)] = v.materialize()
    if not out:
        raise CheckpointError(f"{path} contains no tensors")
    return out


def _read_safetensors(path: str) -> dict[str, np.ndarray]:
    from safetensors import deserialize

    with open(path, "rb") as f:
        records = deserialize(f.read())
    out = {}
    for name, rec in records:
        if rec["dtype"] not in _SAFETENSORS_DTYPES:
            raise CheckpointError(f"{path}: tensor {name} has unsupported dtype {rec['dtype']}")
        dtype = _SAFETENSORS_DTYPES[rec["dtype"]]
        out[name] = np.frombuffer(bytes(rec["data"]), dtype).reshape(rec["shape"])
    return out


def read_state_dict(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """{parameter name: array} from a `.pth`/`.pt` (zip or legacy) or `.safetensors` file.

    Arrays keep the file's dtype and torch's layout (conv weights OIHW); they may be read-only
    views on the file's bytes (copy before writing into them). Raises CheckpointError
    for a pickle naming any global outside the allow-list, a corrupt or unsupported file.
    """
    path = os.fspath(path)
    if path.endswith(".safetensors"):
        return _read_safetensors(path)
    with open(path, "rb") as f:
        head = f.read(4)
    if head.startswith(b"PK"):
        obj = _read_zip(path)
    elif head[:1] == b"\x80":
        obj = _read_legacy(path)
    else:
        raise CheckpointError(
            f"{path} is neither a PyTorch checkpoint (zip or pickle) nor .safetensors"
        )
    return _tensors(obj, path)
