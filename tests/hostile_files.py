"""Crafted checkpoint files for the hostile-input tests: a tiny pickle assembler, zip and legacy
`.pth` writers, `.safetensors` writers, and the `hostile_demo` zoo entry (the demo architecture
read from a torch-layout state dict) so the CLI's `NAME=PATH` path can be driven in-process."""

from __future__ import annotations

import io
import json
import pickle
import struct
import zipfile
import zlib

import numpy as np

from jaxviz.models import demo, zoo
from jaxviz.models.convert import NameTable, conv_rules, linear_rules, load_converted
from jaxviz.models.zoo import ZooEntry


def name_table() -> NameTable:
    t: NameTable = {}
    for s in ("conv1", "conv2", "conv3", "conv4"):
        conv_rules(t, s, s, "conv")
    for s in ("fc", "logits"):
        linear_rules(t, s, s, "dense")
    return t


ENTRY = ZooEntry(
    name="hostile_demo",
    description="the demo architecture from a torch-layout checkpoint (tests only)",
    build=demo.build,
    load_checkpoint=lambda model, path: load_converted(model, path, name_table()),
)


def register() -> None:
    zoo.register("hostile_demo", "tests.hostile_files:ENTRY")


def torch_state(seed: int = 0) -> dict[str, np.ndarray]:
    """A valid float32 torch-layout state dict for `hostile_demo` (random)."""
    from jaxviz.models.convert import expected_shapes

    rng = np.random.default_rng(seed)
    shapes = expected_shapes(demo.build(), name_table())
    return {k: rng.standard_normal(s).astype(np.float32) * 0.1 for k, s in shapes.items()}


# -- a pickle assembler (protocol 2 opcodes) -----------------------------------------------


def g(module: str, name: str) -> bytes:
    return b"c" + f"{module}\n{name}\n".encode()


def i(x: int) -> bytes:
    if -(1 << 31) <= x < 1 << 31:
        return b"J" + struct.pack("<i", x)
    raw = x.to_bytes((x.bit_length() + 8) // 8, "little", signed=True)
    return b"\x8a" + bytes([len(raw)]) + raw


def s(x: str) -> bytes:
    raw = x.encode()
    return b"X" + struct.pack("<I", len(raw)) + raw


def tup(*parts: bytes) -> bytes:
    return b"(" + b"".join(parts) + b"t"


def any_(x) -> bytes:
    if isinstance(x, bytes):
        return x
    if isinstance(x, int):
        return i(x)
    if isinstance(x, str):
        return s(x)
    return tup(*map(any_, x))


def tensor(key: str, numel: int, offset, size, stride, stype: str = "FloatStorage") -> bytes:
    """torch._utils._rebuild_tensor_v2 on storage `key` (BINPERSID of a storage pid)."""
    pid = tup(s("storage"), g("torch", stype), s(key), s("cpu"), any_(numel))
    args = tup(
        pid + b"Q",
        any_(offset),
        any_(size),
        any_(stride),
        b"\x89",
        g("collections", "OrderedDict") + b")R",
    )
    return g("torch._utils", "_rebuild_tensor_v2") + args + b"R"


def state_pickle(items: list[tuple[bytes, bytes]]) -> bytes:
    """OrderedDict of (key opcodes, value opcodes), protocol 2."""
    body = b"".join(k + v for k, v in items)
    return b"\x80\x02" + g("collections", "OrderedDict") + b")R(" + body + b"u."


def exp_hash_pickle(levels: int = 64) -> bytes:
    """A dict whose key is a `levels`-deep tuple that reuses its halves via the memo: 887 bytes
    of this hang CPython's unpickler hashing 2^levels leaves."""
    out = b"\x80\x02}q\x00)q\x01"
    for lv in range(1, levels + 1):
        out += b"h" + bytes([lv]) + b"h" + bytes([lv]) + b"\x86q" + bytes([lv + 1])
    return out + b"Ns."


def write_zip(path, pkl: bytes, records: dict[str, bytes] | None = None, deflate=()) -> None:
    """A torch zip checkpoint: archive/data.pkl + archive/data/<key> records (stored, or
    deflated for the keys in `deflate`)."""
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("archive/data.pkl", pkl)
        zf.writestr("archive/byteorder", "little")
        for key, data in (records or {}).items():
            method = zipfile.ZIP_DEFLATED if key in deflate else zipfile.ZIP_STORED
            zf.writestr(f"archive/data/{key}", data, compress_type=method)


def deflated_zeros(nbytes: int, head: bytes = b"") -> tuple[bytes, int]:
    """(raw deflate stream of `head` then `nbytes` zeros, its CRC-32), nbytes a multiple of
    16 MiB. The same 16 MiB block repeats after each full flush, so it is compressed once."""
    chunk = bytes(1 << 24)
    c = zlib.compressobj(9, zlib.DEFLATED, -15)
    first = c.compress(head) + c.flush(zlib.Z_FULL_FLUSH)
    block = c.compress(chunk) + c.flush(zlib.Z_FULL_FLUSH)
    crc = zlib.crc32(head)
    for _ in range(nbytes >> 24):
        crc = zlib.crc32(chunk, crc)
    return first + block * (nbytes >> 24) + c.flush(), crc


def write_raw_zip(path, members: list[tuple[str, bytes, int, int, int]]) -> None:
    """A zip of (name, data, method, crc, uncompressed size) members, data already compressed
    (sizes below 4 GiB: no zip64)."""
    out, central = bytearray(), bytearray()
    for name, data, method, crc, usize in members:
        raw = name.encode()
        fields = struct.pack("<HHHHHIIIHH", 20, 0, method, 0, 0, crc, len(data), usize, len(raw), 0)
        central += b"PK\x01\x02" + struct.pack("<H", 20) + fields
        central += struct.pack("<HHHII", 0, 0, 0, 0, len(out)) + raw
        out += b"PK\x03\x04" + fields + raw + data
    n = len(members)
    end = struct.pack("<HHHHIIH", 0, 0, n, n, len(central), len(out), 0)
    with open(path, "wb") as f:
        f.write(bytes(out) + bytes(central) + b"PK\x05\x06" + end)


def write_zip_bomb(path, pkl: bytes, key: str, nbytes: int) -> None:
    """A zip checkpoint whose one storage record inflates to `nbytes` zeros."""
    bomb, crc = deflated_zeros(nbytes)
    write_raw_zip(
        path,
        [
            ("archive/data.pkl", pkl, 0, zlib.crc32(pkl), len(pkl)),
            (f"archive/data/{key}", bomb, 8, crc, nbytes),
        ],
    )


def write_legacy(path, obj_pkl: bytes, keys: list[str], storages: list[tuple[int, bytes]]) -> None:
    """A legacy checkpoint: magic, protocol, sys info, the object pickle, the key list, then
    (int64 count, raw bytes) per storage."""
    head = pickle.dumps(0x1950A86A20F9469CFC6C, protocol=2) + pickle.dumps(1001, protocol=2)
    head += pickle.dumps({"protocol_version": 1001, "little_endian": True}, protocol=2)
    tail = pickle.dumps(keys, protocol=2)
    tail += b"".join(struct.pack("<q", n) + data for n, data in storages)
    with open(path, "wb") as f:
        f.write(head + obj_pkl + tail)


def write_safetensors(path, header: dict | bytes, data: bytes = b"", length: int | None = None):
    raw = header if isinstance(header, bytes) else json.dumps(header).encode()
    n = len(raw) if length is None else length
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", n) + raw + data)


# -- random mutations for the fuzz pass ----------------------------------------------------

HOSTILE_VALUES = [-1, 0, 1 << 40, 1 << 70, "x", [], [1] * 100, None, 3.5, {"a": 1}]


def valid_files(folder, seed: int = 0) -> dict[str, bytes]:
    """{'zip.pth', 'legacy.pth', 'model.safetensors': bytes} of a valid hostile_demo state."""
    import torch
    from safetensors.numpy import save_file

    state = torch_state(seed)
    sd = {k: torch.from_numpy(v) for k, v in state.items()}
    torch.save(sd, folder / "zip.pth")
    torch.save(sd, folder / "legacy.pth", _use_new_zipfile_serialization=False)
    save_file(state, str(folder / "model.safetensors"))
    return {n: (folder / n).read_bytes() for n in ("zip.pth", "legacy.pth", "model.safetensors")}


def _flip(rng, data: bytes, lo: int = 0, hi: int | None = None) -> bytes:
    b = bytearray(data)
    hi = len(b) if hi is None else min(hi, len(b))
    for _ in range(int(rng.integers(1, 9))):
        b[int(rng.integers(lo, max(hi, lo + 1)))] = int(rng.integers(256))
    return bytes(b)


def _rezip(data: bytes, edit) -> bytes:
    """The zip `data` with archive/data.pkl replaced by edit(its bytes), CRCs valid."""
    src = zipfile.ZipFile(io.BytesIO(data))
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as dst:
        for info in src.infolist():
            raw = src.read(info)
            dst.writestr(info, edit(raw) if info.filename.endswith("data.pkl") else raw)
    return buf.getvalue()


def _st_edit(rng, data: bytes) -> bytes:
    n = struct.unpack("<Q", data[:8])[0]
    header = json.loads(data[8 : 8 + n])
    name = sorted(k for k in header if k != "__metadata__")[int(rng.integers(len(header) - 1))]
    field = ["dtype", "shape", "data_offsets"][int(rng.integers(3))]
    value = HOSTILE_VALUES[int(rng.integers(len(HOSTILE_VALUES)))]
    if field == "data_offsets" and rng.random() < 0.5:  # plausible but shifted offsets
        b, e = header[name][field]
        value = [b + int(rng.integers(-64, 64)), e + int(rng.integers(-64, 64))]
    header[name][field] = value
    raw = json.dumps(header).encode()
    return struct.pack("<Q", len(raw)) + raw + data[8 + n :]


def mutate(rng, kind: str, data: bytes) -> tuple[str, bytes]:
    """One random mutation of a valid file of `kind` ('zip.pth', 'legacy.pth',
    'model.safetensors'): (what was done, the mutated bytes)."""
    how = ["flip", "truncate", "structure", "insert"][int(rng.integers(4))]
    if how == "flip":
        return how, _flip(rng, data)
    if how == "truncate":
        return how, data[: int(rng.integers(len(data)))]
    if how == "insert":
        at = int(rng.integers(len(data)))
        return how, data[:at] + bytes(
            rng.integers(0, 256, int(rng.integers(1, 16)), np.uint8)
        ) + data[at:]
    if kind == "zip.pth":
        return "pickle", _rezip(data, lambda pkl: _flip(rng, pkl))
    if kind == "legacy.pth":
        return "pickle", _flip(rng, data, 0, 4096)
    if rng.random() < 0.3:
        return "length", struct.pack("<Q", int(rng.integers(1 << 62))) + data[8:]
    return "header", _st_edit(rng, data)


def fuzz(folder, n: int, seed: int = 0, cli: bool = False) -> dict:
    """Run n random mutations of the three valid files. cli=False: through the readers and the
    converter (read_state_dict + from_state_dict, as `--model hostile_demo=PATH` does);
    cli=True: through `jaxviz filters` itself. Returns counts by outcome, the slowest case and
    every failure (an exception other than CheckpointError, a traceback, an exit other than
    0/2, more than one line, or over 5 s)."""
    import contextlib
    import time
    from pathlib import Path

    from jaxviz import cli as jcli
    from jaxviz.models.checkpoint import CheckpointError, read_state_dict
    from jaxviz.models.convert import expected_shapes, from_state_dict

    folder = Path(folder)
    rng = np.random.default_rng(seed)
    files = valid_files(folder)
    model = demo.build()
    expect = expected_shapes(model, name_table())
    counts = {"ok": 0, "refused": 0}
    failures, slowest = [], (0.0, "")
    for k in range(n):
        kind = sorted(files)[k % 3]
        how, data = mutate(rng, kind, files[kind])
        path = folder / f"m{k}.{kind}"
        path.write_bytes(data)
        t = time.perf_counter()
        if cli:
            err = io.StringIO()
            argv = ["filters", "--model", f"hostile_demo={path}", "--out", str(folder / f"o{k}")]
            with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
                rc = jcli.main(argv)
            lines = err.getvalue().strip().splitlines()
            ok = rc == 0 or (rc == 2 and len(lines) == 1 and "Traceback" not in err.getvalue())
            outcome, detail = {0: "ok", 2: "refused"}.get(rc, "failed"), err.getvalue()[-300:]
        else:
            try:
                from_state_dict(model, read_state_dict(path, expect), name_table(), str(path))
                outcome, ok, detail = "ok", True, ""
            except CheckpointError as e:
                outcome, ok, detail = "refused", "\n" not in str(e), str(e)
            except Exception as e:  # noqa: BLE001 - what the fuzz pass looks for
                outcome, ok, detail = "failed", False, f"{type(e).__name__}: {e}"[:300]
        seconds = time.perf_counter() - t
        slowest = max(slowest, (seconds, f"{kind} {how}"))
        if not ok or seconds > 5:
            failures.append(f"#{k} {kind} {how}: {outcome} in {seconds:.1f} s: {detail}")
        counts[outcome] = counts.get(outcome, 0) + 1
        path.unlink()
    return {
        "counts": counts,
        "slowest_s": round(slowest[0], 3),
        "slowest": slowest[1],
        "failures": failures,
    }
