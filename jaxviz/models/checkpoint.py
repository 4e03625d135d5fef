"""Reading PyTorch `.pth` and `.safetensors` state dicts into numpy, without importing torch.

`.pth` files are pickles, and unpickling runs whatever callables the file names. `read_state_dict`
runs them through `safe_pickle` (a bounded pickle machine) whose `find_class` admits only the
globals a state dict needs (OrderedDict, torch's tensor-rebuild helpers, storage types, dtypes,
`torch.device`), each mapped to a small numpy stand-in defined here; any other global
(`os.system`, `builtins.eval`...) raises `CheckpointError` naming it before anything is called.
Both layouts torch writes are read:

- zip (torch >= 1.6): `<prefix>/data.pkl`, the storages as `<prefix>/data/<key>`, and an optional
  `<prefix>/byteorder`;
- legacy (torch < 1.6, or `_use_new_zipfile_serialization=False`): pickled magic number, protocol
  version and sys-info, then the pickled object, then the list of storage keys, then for each key
  an int64 element count followed by the raw storage bytes (torch/serialization.py, `_legacy_load`).

Bounded reading (a hostile file costs little time and memory): the pickle is read first and only
describes tensors; every size, stride, offset and count is checked against its storage and the
storage against the file's real bytes before anything is allocated. With `expect` (the model's
tensor shapes) only tensors of an expected name and shape are read; every other one comes back as
a zero-stride placeholder of its shape (no memory) for error messages. The bytes read and copied
in all stay under a budget (twice the model's size in float64 with `expect`; else four times the
file's size, plus slack), compressed zip records are inflated in chunks up to the bytes needed,
and the whole read stops after `timeout_s` (signals are handled throughout).

Tensors keep their dtype (float32/float16/bfloat16 via ml_dtypes/int64...); strided views and
storage offsets are honoured.
"""

from __future__ import annotations

import math
import os
import stat
import time
import zipfile
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import ml_dtypes
import numpy as np

from jaxviz.errors import UsageError
from jaxviz.models import safe_pickle
from jaxviz.models.safe_pickle import PickleError, describe

_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
_LEGACY_PROTOCOL = 1001
READ_TIMEOUT_S = 300.0  # a whole checkpoint read
MAX_NDIM = 32
MAX_DIM = 1 << 40
MAX_NUMEL = 1 << 48
PICKLE_CAP = 64 << 20  # bytes of a zip checkpoint's data.pkl
_CHUNK = 1 << 20

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


class CheckpointError(UsageError):
    """A checkpoint file that cannot or must not be read (unsafe, corrupt, unsupported, or not
    matching the model); the CLI reports it as bad usage (exit 2, one line)."""


def data_parallel_prefix(names) -> str:
    """'module.' when every name carries DataParallel's prefix, else ''."""
    names = list(names)
    return "module." if names and all(n.startswith("module.") for n in names) else ""


def check_shape(shape: Any, what: str) -> tuple[int, ...]:
    """`shape` as a tuple of ints, refused (PickleError) unless every dim is in [0, 2^40), there
    are at most MAX_NDIM of them and they hold at most 2^48 elements."""
    if not isinstance(shape, tuple | list) or len(shape) > MAX_NDIM:
        raise PickleError(f"{what} is {describe(shape)}, not a shape of at most {MAX_NDIM} dims")
    if not all(isinstance(d, int) and not isinstance(d, bool) and 0 <= d < MAX_DIM for d in shape):
        bad = next(d for d in shape if not (isinstance(d, int) and 0 <= d < MAX_DIM))
        raise PickleError(f"{what} has the dimension {describe(bad)}")
    if math.prod(shape) > MAX_NUMEL:
        raise PickleError(f"{what} {tuple(shape)} has more than 2^48 elements")
    return tuple(shape)


def placeholder(dtype: np.dtype, shape: tuple[int, ...]) -> np.ndarray:
    """A read-only zero-stride array of `shape` (no memory): a tensor whose data was not read."""
    return np.broadcast_to(np.zeros((), dtype), shape)


def _int(x: Any, what: str) -> int:
    if not isinstance(x, int) or isinstance(x, bool) or not 0 <= x < MAX_NUMEL:
        raise PickleError(f"{what} is {describe(x)}")
    return x


def _printable(s: str) -> str:
    """s cut to 60 characters with control characters escaped (messages stay one line)."""
    return s[:60].encode("unicode_escape").decode("ascii")


def _printable_key(key: str | int) -> bool:
    return len(str(key)) <= 64 and str(key).isprintable()


@dataclass(frozen=True)
class _StorageType:
    """Stand-in for `torch.FloatStorage` etc.: only its dtype matters."""

    name: str
    dtype: np.dtype


@dataclass(eq=False)
class _Storage:
    """A storage described by the pickle: `numel` elements of `dtype` in record `key`; legacy
    views point into `root` from element `offset`."""

    dtype: np.dtype
    numel: int
    key: str
    root: _Storage | None = None
    offset: int = 0


@dataclass(eq=False)
class _Tensor:
    """A tensor described by the pickle; its bytes are read later, if at all."""

    storage: _Storage
    offset: int
    size: tuple[int, ...]
    stride: tuple[int, ...]

    def extent(self) -> int:
        """Elements of the root storage this tensor spans from the root's start."""
        if 0 in self.size:
            return 0
        base = self.storage.offset if self.storage.root is not None else 0
        return (
            base
            + self.offset
            + 1
            + sum((n - 1) * s for n, s in zip(self.size, self.stride, strict=True))
        )

    def copy_bytes(self) -> int:
        """Bytes materializing it allocates (0 for a contiguous view on the storage bytes)."""
        return 0 if self.contiguous() else math.prod(self.size) * self.storage.dtype.itemsize

    def contiguous(self) -> bool:
        want = np.cumprod((1, *self.size[:0:-1]))[::-1]
        return tuple(int(c) for c in want) == self.stride or 0 in self.size

    def array(self, root_bytes: bytes | bytearray) -> np.ndarray:
        """The tensor from the first extent() elements of its root storage."""
        dtype = self.storage.dtype
        if 0 in self.size:
            return np.zeros(self.size, dtype)
        flat = np.frombuffer(root_bytes, dtype, count=self.extent())
        start = (self.storage.offset if self.storage.root is not None else 0) + self.offset
        if self.contiguous():  # no copy: a view on the file bytes
            return flat[start : start + math.prod(self.size)].reshape(self.size)
        view = np.lib.stride_tricks.as_strided(
            flat[start:],
            shape=self.size,
            strides=tuple(s * dtype.itemsize for s in self.stride),
            writeable=False,
        )
        return np.array(view)


def _rebuild_tensor(storage, storage_offset, size, stride, *_ignored) -> _Tensor:
    """torch._utils._rebuild_tensor(_v2): (storage, offset, size, stride, requires_grad, ...)."""
    if not isinstance(storage, _Storage):
        raise PickleError(f"a tensor is rebuilt from {describe(storage)}, not a storage")
    size, stride = check_shape(size, "a tensor size"), check_shape(stride, "a tensor stride")
    if len(size) != len(stride):
        raise PickleError(f"a tensor has size {size} but stride {stride}")
    t = _Tensor(storage, _int(storage_offset, "a storage offset"), size, stride)
    root = storage.root or storage
    if t.extent() > root.numel:
        raise PickleError(
            f"a tensor (offset {t.offset}, size {size}, stride {stride}) reads past its storage "
            f"of {storage.numel} elements"
        )
    return t


def _rebuild_parameter(data, *_ignored):
    """torch._utils._rebuild_parameter(_with_state): a Parameter is its data here."""
    return data


def _device(*args):
    """torch.device('cpu') etc.: kept as its string."""
    if not all(isinstance(a, str | int) for a in args) or len(args) > 2:
        raise PickleError("torch.device with arguments that are not a device")
    return ":".join(str(a)[:40] for a in args)


def _size(*args):
    """torch.Size(...) -> tuple."""
    if len(args) != 1:
        raise PickleError("torch.Size with other than one argument")
    return check_shape(args[0], "a torch.Size")


def _ordered_dict(*args):
    """collections.OrderedDict(): items come from SETITEMS, which checks the keys."""
    if args:
        raise PickleError("OrderedDict built from arguments")
    return OrderedDict()


def _allowed(module: str, name: str) -> Callable | _StorageType | np.dtype | None:
    if (module, name) == ("collections", "OrderedDict"):
        return _ordered_dict
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


class _Bounded:
    """A read-only view of a binary file that never reads past `limit` bytes from where it
    starts (reads are clamped, so a length field cannot make the reader allocate more)."""

    def __init__(self, f, limit: int):
        self.f, self.left, self.pos = f, limit, 0

    def read(self, n: int = -1) -> bytes:
        n = self.left if n is None or n < 0 else min(n, self.left)
        data = self.f.read(n)
        self.left -= len(data)
        self.pos += len(data)
        return data

    def readline(self, n: int = -1) -> bytes:
        n = self.left if n is None or n < 0 else min(n, self.left)
        data = self.f.readline(n)
        self.left -= len(data)
        self.pos += len(data)
        return data

    def tell(self) -> int:
        return self.pos


class _Reader:
    """One checkpoint being read: its path, deadline and the pickle machinery."""

    def __init__(self, path: str, timeout_s: float):
        self.path = path
        self.deadline = time.monotonic() + timeout_s
        self.size = os.path.getsize(path)

    def error(self, problem: str) -> CheckpointError:
        return CheckpointError(f"cannot read {self.path}: {problem}")

    def check_time(self) -> None:
        if time.monotonic() > self.deadline:
            raise self.error("reading took longer than the time limit")

    def find_class(self, module: str, name: str):
        obj = _allowed(module, name)
        if obj is None:
            raise CheckpointError(
                f"refusing to load {self.path}: its pickle names the global "
                f"'{_printable(module)}.{_printable(name)}', which a state dict never needs (only "
                "tensors, OrderedDict and torch storage types are allowed); nothing from the file "
                "was run"
            )
        return obj

    def unpickle(self, f, persistent_load=None) -> Any:
        try:
            return safe_pickle.load(f, self.find_class, persistent_load, self.deadline)
        except PickleError as e:
            raise self.error(f"its pickle is refused ({e})") from None

    def storage_pid(self, pid: Any) -> tuple[_StorageType, str, int, Any]:
        """Parse ('storage', type, key, location, numel[, view_metadata])."""
        if not (
            isinstance(pid, tuple) and len(pid) in (5, 6) and pid[0] in ("storage", b"storage")
        ):
            raise PickleError(f"has an unexpected persistent id ({describe(pid)})")
        stype, key, numel = pid[1], pid[2], pid[4]
        if not isinstance(stype, _StorageType):
            raise PickleError("has a persistent id without a storage type")
        if not isinstance(key, str | int) or isinstance(key, bool) or not _printable_key(key):
            raise PickleError(f"names a storage {describe(key)}")
        return stype, str(key), _int(numel, "a storage size"), pid[5] if len(pid) == 6 else None


class _Zip(_Reader):
    """zip checkpoints: storages are records `<prefix>data/<key>`, read lazily."""

    def __init__(self, path: str, zf: zipfile.ZipFile, timeout_s: float):
        super().__init__(path, timeout_s)
        self.zf = zf
        names = zf.namelist()
        pkls = [n for n in names if n.endswith("data.pkl") and n.count("/") == 1]
        if len(pkls) != 1:
            raise CheckpointError(f"{path}: zip checkpoint without exactly one <prefix>/data.pkl")
        self.pkl = pkls[0]
        self.prefix = self.pkl[: -len("data.pkl")]
        self.names = set(names)
        self.storages: dict[str, _Storage] = {}

    def load(self) -> Any:
        order = self.prefix + "byteorder"
        if order in self.names:
            with self.zf.open(order) as f:
                if f.read(16).strip() != b"little":
                    raise CheckpointError(f"{self.path}: big-endian checkpoints are not supported")
        with self.zf.open(self.pkl) as f:
            return self.unpickle(_Bounded(f, PICKLE_CAP), self.persistent_load)

    def persistent_load(self, pid: Any) -> _Storage:
        stype, key, numel, _ = self.storage_pid(pid)
        if key in self.storages:
            return self.storages[key]
        record = f"{self.prefix}data/{key}"
        if record not in self.names:
            raise PickleError(f"names the storage record {record}, which is missing")
        have, want = self.zf.getinfo(record).file_size, numel * stype.dtype.itemsize
        if have != want:
            raise PickleError(f"says storage {key} holds {want} bytes; its record holds {have}")
        self.storages[key] = _Storage(stype.dtype, numel, key)
        return self.storages[key]

    def read(self, storage: _Storage, nbytes: int) -> bytes | bytearray:
        """The first nbytes of a storage's record (compressed ones inflated chunk by chunk,
        never more)."""
        name = f"{self.prefix}data/{storage.key}"
        if self.zf.getinfo(name).compress_type == zipfile.ZIP_STORED:  # bounded by the file
            with self.zf.open(name) as f:
                data = f.read(nbytes)
            if len(data) != nbytes:
                raise self.error(f"storage record {storage.key} is truncated")
            return data
        buf = bytearray(nbytes)
        view, got = memoryview(buf), 0
        with self.zf.open(name) as f:
            while got < nbytes:
                self.check_time()
                n = f.readinto(view[got : got + _CHUNK])
                if not n:
                    raise self.error(f"storage record {storage.key} is truncated")
                got += n
        return buf


class _Legacy(_Reader):
    """Legacy checkpoints: storages follow the pickles as (int64 numel, raw bytes) per key."""

    def __init__(self, path: str, f, timeout_s: float):
        super().__init__(path, timeout_s)
        self.f = f
        self.storages: dict[str, _Storage] = {}
        self.data_at: dict[str, int] = {}

    def load(self) -> Any:
        f = _Bounded(self.f, self.size)
        if self.unpickle(f) != _LEGACY_MAGIC:
            raise CheckpointError(f"{self.path}: not a PyTorch checkpoint (bad magic number)")
        if self.unpickle(f) != _LEGACY_PROTOCOL:
            raise CheckpointError(f"{self.path}: unsupported legacy protocol version")
        info = self.unpickle(f)
        if not (isinstance(info, dict) and info.get("little_endian", True) is True):
            raise CheckpointError(f"{self.path}: big-endian checkpoints are not supported")
        result = self.unpickle(f, self.persistent_load)
        keys = self.unpickle(f)
        if not isinstance(keys, list | tuple) or len(keys) > len(self.storages):
            raise self.error(f"its storage key list is {describe(keys)}")
        self._locate(keys)
        return result

    def persistent_load(self, pid: Any) -> _Storage:
        if isinstance(pid, tuple) and pid and pid[0] in ("module", b"module"):
            raise CheckpointError(f"{self.path} pickles a whole nn.Module; save its state_dict()")
        stype, key, numel, view = self.storage_pid(pid)
        root = self.storages.setdefault(key, _Storage(stype.dtype, numel, key))
        if root.dtype != stype.dtype or root.numel != numel:
            raise PickleError(f"describes storage {key} in two ways")
        if view is None:
            return root
        if not (isinstance(view, tuple) and len(view) == 3 and isinstance(view[0], str | int)):
            raise PickleError(f"has a storage view {describe(view)}")
        if not _printable_key(view[0]):
            raise PickleError(f"names a storage view {describe(view[0])}")
        vkey = str(view[0])
        offset, vnumel = _int(view[1], "a view offset"), _int(view[2], "a view size")
        if offset + vnumel > numel:
            raise PickleError(f"has a view past the end of storage {key}")
        return self.storages.setdefault(
            f"view:{vkey}", _Storage(stype.dtype, vnumel, key, root=root, offset=offset)
        )

    def _locate(self, keys) -> None:
        """Where each storage's bytes start; checked against the file's length, not read."""
        pos = self.f.tell()
        for key in keys:
            self.check_time()
            st = self.storages.get(str(key)) if isinstance(key, str | int) else None
            if st is None or st.root is not None:
                raise self.error(f"data for unknown storage {describe(key)}")
            self.f.seek(pos)
            head = self.f.read(8)
            numel = int.from_bytes(head, "little", signed=True) if len(head) == 8 else -1
            if numel != st.numel:
                raise self.error(f"storage {st.key} is truncated or its count is wrong")
            pos += 8 + numel * st.dtype.itemsize
            if pos > self.size:
                raise self.error(f"storage {st.key} is truncated")
            self.data_at[st.key] = pos - numel * st.dtype.itemsize

    def read(self, storage: _Storage, nbytes: int) -> bytes:
        if storage.key not in self.data_at:
            raise self.error(f"the data of storage {storage.key} is missing")
        self.f.seek(self.data_at[storage.key])
        return self.f.read(nbytes)


def _named_tensors(obj: Any, path: str) -> dict[str, _Tensor]:
    """The state dict in `obj` (unwrapping {'state_dict': ...} / {'model': ...} twice at most)."""
    for _ in range(3):
        if not isinstance(obj, dict):
            raise CheckpointError(f"{path} holds {describe(obj)}, not a state dict")
        if any(isinstance(v, _Tensor) for v in obj.values()):
            break
        inner = next(
            (obj[k] for k in ("state_dict", "model", "model_state_dict") if k in obj), None
        )
        if not isinstance(inner, dict):
            break
        obj = inner
    out = {str(k): v for k, v in obj.items() if isinstance(v, _Tensor) and isinstance(k, str | int)}
    if not out:
        raise CheckpointError(f"{path} contains no tensors")
    return out


def _budget(path: str, expect: Mapping[str, tuple[int, ...]] | None, size: int) -> tuple[int, str]:
    if expect is not None:
        numel = sum(math.prod(s) for s in expect.values())
        return 16 * numel + (16 << 20), f"a model of {numel} parameters"
    return 4 * size + (64 << 20), f"a file of {size} bytes"


def _materialize(
    reader: _Zip | _Legacy, tensors: dict[str, _Tensor], expect: Mapping | None
) -> dict[str, np.ndarray]:
    """Read the wanted tensors (expected name and shape; all without `expect`) within budget."""
    prefix = data_parallel_prefix(tensors)
    wanted = {
        k: t
        for k, t in tensors.items()
        if expect is None or tuple(expect.get(k[len(prefix) :], (-1,))) == t.size
    }
    need: dict[int, tuple[_Storage, int]] = {}
    for t in wanted.values():
        root = t.storage.root or t.storage
        nbytes = t.extent() * root.dtype.itemsize
        if nbytes > need.get(id(root), (root, 0))[1]:
            need[id(root)] = (root, nbytes)
    total = sum(n for _, n in need.values()) + sum(t.copy_bytes() for t in wanted.values())
    budget, what = _budget(reader.path, expect, reader.size)
    if total > budget:
        raise reader.error(
            f"its tensors would take {total} bytes of memory, more than the {budget} allowed for "
            f"{what}"
        )
    data = {key: reader.read(root, n) for key, (root, n) in need.items()}
    out = {}
    for k, t in tensors.items():
        root = t.storage.root or t.storage
        if k in wanted:
            reader.check_time()
            out[k] = t.array(data.get(id(root), b""))
        else:
            out[k] = placeholder(t.storage.dtype, t.size)
    return out


def read_state_dict(
    path: str | os.PathLike,
    expect: Mapping[str, tuple[int, ...]] | None = None,
    timeout_s: float = READ_TIMEOUT_S,
) -> dict[str, np.ndarray]:
    """{parameter name: array} from a `.pth`/`.pt` (zip or legacy) or `.safetensors` file.

    expect: {name (without a DataParallel 'module.' prefix): torch-layout shape} of the tensors
    the caller will use; others (and those of another shape) come back as zero-stride
    placeholders of their shape, their data unread. Arrays keep the file's dtype and torch's
    layout (conv weights OIHW); they may be read-only views on the file's bytes (copy before
    writing into them). Raises CheckpointError (one line naming the file) for a pickle naming
    any global outside the allow-list, a corrupt, oversized, slow or unsupported file.
    """
    path = os.fspath(path)
    try:
        mode = os.stat(path).st_mode
    except OSError as e:
        raise CheckpointError(f"cannot read {path}: {e.strerror}") from None
    if not stat.S_ISREG(mode):
        raise CheckpointError(f"cannot read {path}: not a regular file")
    try:
        if path.endswith(".safetensors"):
            from jaxviz.models.safetensors_io import read_safetensors

            return read_safetensors(path, expect)
        with open(path, "rb") as f:
            head = f.read(4)
            if head.startswith(b"PK"):
                with zipfile.ZipFile(f) as zf:
                    reader = _Zip(path, zf, timeout_s)
                    return _materialize(reader, _named_tensors(reader.load(), path), expect)
            if head[:1] == b"\x80":
                f.seek(0)
                reader = _Legacy(path, f, timeout_s)
                return _materialize(reader, _named_tensors(reader.load(), path), expect)
    except CheckpointError:
        raise
    except Exception as e:  # noqa: BLE001 - any failure on an untrusted file is bad input
        raise CheckpointError(f"cannot read {path}: {type(e).__name__}: {str(e)[:160]}") from None
    raise CheckpointError(
        f"{path} is neither a PyTorch checkpoint (zip or pickle) nor .safetensors"
    )
