"""An exclusive lock on a job's `--out`, so two runs never write into one folder.

`lock_out(out)` takes `fcntl.flock(LOCK_EX | LOCK_NB)` on `out/.lock` and writes the holder's
pid, host and start time into it; a second run on the same `--out` gets `OutLocked` (a
UsageError: exit 2, one line naming the holder's pid and host). The kernel drops a flock when
its process dies, so after `kill -9` the next run simply takes it. A lock still held although
its recorded holder is gone (a forked worker of a killed run kept the file open) is stale: when
the holder's host is this one and its pid is not alive, the lock file is replaced.

- Nesting: within one process the lock is re-entrant (a sweep holds its `--out`, its jobs take
  their own folders below it, and a job may open the same folder twice); it is released when
  the last `OutLock` holding it is released or garbage-collected, and at exit.
- Several processes of one `jax.distributed` run share their `--out`: only process 0 takes the
  lock. The other processes are bound to process 0 by the coordination service (when it exits,
  for instance on this lock, they fail at their next collective), and every one of them writes
  only its share of that run, so a lock keyed by the run would add nothing but a shared-file
  protocol that network file systems implement unevenly. A second run started on the same
  `--out` meets the lock in its own process 0.
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
import sys
import threading
import time
import weakref
from dataclasses import dataclass

from jaxviz.errors import UsageError

LOCK_FILE = ".lock"


class OutLocked(UsageError):
    """`--out` is held by another live run."""


@dataclass
class _Held:
    fd: int
    count: int


_HELD: dict[str, _Held] = {}  # real path of --out -> this process's hold
_GUARD = threading.Lock()


class OutLock:
    """One hold on the lock of `path` (an --out folder); `release()` is idempotent and also runs
    when the object is garbage-collected. `held` is False for a non-zero process of a
    multi-process run (which does not lock)."""

    def __init__(self, key: str | None):
        self.key = key
        self._finalizer = weakref.finalize(self, _release, key)

    @property
    def held(self) -> bool:
        return self.key is not None and self._finalizer.alive

    def release(self) -> None:
        self._finalizer()

    def __enter__(self) -> OutLock:
        return self

    def __exit__(self, *exc) -> None:
        self.release()


def _release(key: str | None) -> None:
    if key is None:
        return
    with _GUARD:
        held = _HELD.get(key)
        if held is None:
            return
        held.count -= 1
        if held.count == 0:
            del _HELD[key]
            os.ftruncate(held.fd, 0)
            os.close(held.fd)  # drops the flock


def _process_index() -> int:
    """This process's index in a jax.distributed run (0 when not in one; jax never imported)."""
    jax = sys.modules.get("jax")
    if jax is not None and jax.distributed.is_initialized():
        return jax.process_index()
    return 0


def holder(out: str | os.PathLike) -> dict | None:
    """The recorded holder of `out`'s lock ({pid, host, started, argv}), None if unreadable."""
    try:
        with open(os.path.join(out, LOCK_FILE)) as f:
            info = json.loads(f.read(4096) or "null")
    except (OSError, ValueError):
        return None
    return info if isinstance(info, dict) else None


def _show(v: object) -> str:
    """A recorded value for a one-line message (cut, control characters escaped)."""
    return str(v)[:64].encode("unicode_escape").decode("ascii")


def _stale(info: dict | None) -> bool:
    """The recorded holder is a process of this host that no longer runs."""
    if not info or info.get("host") != socket.gethostname():
        return False
    pid = info.get("pid")
    if not isinstance(pid, int) or pid <= 0 or pid == os.getpid():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


def _try_lock(path: str) -> int | None:
    """An fd holding the flock on the file now at `path`, or None if another process holds it."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    try:
        same = os.path.samestat(os.fstat(fd), os.stat(path))
    except FileNotFoundError:
        same = False
    if not same:  # replaced as stale while we opened it: lock the new file instead
        os.close(fd)
        return _try_lock(path)
    return fd


def lock_out(out: str | os.PathLike) -> OutLock:
    """Create `out` if needed and hold its lock (see the module doc). Raises OutLocked naming
    the holder when another live run holds it, UsageError when `out` is not a folder."""
    out = os.fspath(out)
    try:
        os.makedirs(out, exist_ok=True)
    except OSError as e:
        raise UsageError(f"--out {out}: cannot create the folder ({e.strerror})") from None
    if _process_index() != 0:
        return OutLock(None)
    key = os.path.realpath(out)
    path = os.path.join(key, LOCK_FILE)
    with _GUARD:
        if key in _HELD:
            _HELD[key].count += 1
            return OutLock(key)
        fd = _try_lock(path)
        if fd is None and _stale(info := holder(key)):
            os.unlink(path)  # its flock lives on in an orphan of the dead holder
            fd = _try_lock(path)
        if fd is None:
            info = holder(key) or {}
            pid, host, started = (_show(info.get(k, "?")) for k in ("pid", "host", "started"))
            raise OutLocked(
                f"--out {out} is in use by another jaxviz run (pid {pid} on {host}, started "
                f"{started}); wait for it to end or choose another --out"
            )
        record = {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "argv": sys.argv[:8],
        }
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(record).encode(), 0)
        _HELD[key] = _Held(fd, 1)
        return OutLock(key)
