"""A small pickle machine for untrusted state-dict pickles: bounded time, memory and cost.

Python's own unpickler runs in C: a few hundred bytes can make it hash a dict key built from a
64-level tuple whose levels reuse each other through the memo (2^64 steps, deaf to SIGTERM), or
push millions of objects. This machine walks the opcodes with `pickletools.genops` (pure Python,
so signals are handled between opcodes) and builds only plain data: None, bool, int, float, str,
bytes, tuple, list, dict, plus what `find_class` / `persistent_load` return. Every container
records its expanded size (the number of parts counting repeats through the memo) and depth, so
a value is refused as soon as it would be expensive to hash, compare or walk:

- containers nest at most `MAX_DEPTH` levels and expand to at most `MAX_PARTS` parts;
- a dict key is an atom or a tuple of at most `MAX_KEY_PARTS` parts (hashing it is cheap);
- at most `MAX_PUSHES` values are created in all, and `deadline` (time.monotonic()) is checked
  every 1024 opcodes;
- sets, object construction (NEWOBJ, INST, OBJ), extension codes and out-of-band buffers are
  refused: a state dict never needs them.

Callables from `find_class` are called by REDUCE with checked plain arguments; they must validate
those arguments themselves. Errors are `PickleError` with a one-line reason.
"""

from __future__ import annotations

import pickletools
import time
from collections.abc import Callable
from typing import Any

from jaxviz.errors import UsageError

MAX_DEPTH = 32
MAX_PARTS = 1_000_000
MAX_KEY_PARTS = 256
MAX_PUSHES = 2_000_000

_ATOMS = (type(None), bool, int, float, str, bytes)
_MARK = object()


class PickleError(Exception):
    """The pickle is corrupt, unsupported or too expensive to build (one-line reason)."""


def describe(obj: Any) -> str:
    """A short, bounded description of an untrusted value (never its full repr)."""
    if isinstance(obj, bool) or obj is None:
        return repr(obj)
    if isinstance(obj, int):
        return str(obj) if obj.bit_length() <= 64 else f"an integer of {obj.bit_length()} bits"
    if isinstance(obj, str | bytes):
        return repr(obj[:40]) + ("..." if len(obj) > 40 else "")
    if isinstance(obj, tuple | list | dict):
        return f"a {type(obj).__name__} of {len(obj)} items"
    return f"a {type(obj).__name__}"


class Machine:
    """Runs one pickle from a binary file object; `load()` returns its value.

    find_class(module, name) -> object or raises; persistent_load(pid) -> object or raises
    (None: persistent ids are refused).
    """

    def __init__(
        self,
        find_class: Callable[[str, str], Any],
        persistent_load: Callable[[Any], Any] | None,
        deadline: float,
    ):
        self.find_class = find_class
        self.persistent_load = persistent_load
        self.deadline = deadline
        self.stack: list[Any] = []
        self.marks: list[int] = []
        self.memo: dict[int, Any] = {}
        self.cost: dict[int, tuple[int, int]] = {}  # id(container) -> (parts, depth)
        self.keep: list[Any] = []  # keeps containers alive so their ids stay theirs
        self.pushes = 0
        self.callables: set[int] = set()

    # -- bookkeeping ----------------------------------------------------------------------

    def _parts(self, obj: Any) -> tuple[int, int]:
        return self.cost.get(id(obj), (1, 0))

    def _push(self, obj: Any) -> None:
        self.pushes += 1
        if self.pushes > MAX_PUSHES:
            raise PickleError(f"creates more than {MAX_PUSHES} values")
        self.stack.append(obj)

    def _container(self, obj: Any, items) -> Any:
        parts, depth = 1, 0
        for it in items:
            p, d = self._parts(it)
            parts, depth = parts + p, max(depth, d + 1)
        self._set_cost(obj, parts, depth)
        return obj

    def _set_cost(self, obj: Any, parts: int, depth: int) -> None:
        if depth > MAX_DEPTH:
            raise PickleError(f"nests containers deeper than {MAX_DEPTH} levels")
        if parts > MAX_PARTS:
            raise PickleError(
                f"builds a value of more than {MAX_PARTS} parts (memo reuse blows it up)"
            )
        if id(obj) not in self.cost:
            self.keep.append(obj)
        self.cost[id(obj)] = (parts, depth)

    def _grow(self, container: Any, items) -> None:
        """Account for items added to a list or dict after it was created."""
        parts, depth = self._parts(container)
        for it in items:
            p, d = self._parts(it)
            parts, depth = parts + p, max(depth, d + 1)
        self._set_cost(container, parts, depth)

    def _check_key(self, key: Any) -> None:
        if isinstance(key, _ATOMS):
            return
        if isinstance(key, tuple) and all(isinstance(k, _ATOMS + (tuple,)) for k in key):
            if self._parts(key)[0] <= MAX_KEY_PARTS:
                return
            raise PickleError(f"has a dict key of more than {MAX_KEY_PARTS} parts")
        raise PickleError(f"has a dict key that is {describe(key)}")

    def _pop_mark(self) -> list[Any]:
        if not self.marks:
            raise PickleError("MARK missing")
        at = self.marks.pop()
        items = self.stack[at:]
        del self.stack[at:]
        return items

    def _pop(self) -> Any:
        if not self.stack or (self.marks and len(self.stack) <= self.marks[-1]):
            raise PickleError("stack underflow")
        return self.stack.pop()

    def _top(self) -> Any:
        if not self.stack or (self.marks and len(self.stack) <= self.marks[-1]):
            raise PickleError("stack underflow")
        return self.stack[-1]

    def _set_items(self, d: Any, items: list[Any]) -> None:
        if not isinstance(d, dict) or len(items) % 2:
            raise PickleError(f"SETITEMS on {describe(d)}")
        for k in items[::2]:
            self._check_key(k)
        for k, v in zip(items[::2], items[1::2], strict=True):
            d[k] = v
        self._grow(d, items)

    def _append(self, lst: Any, items: list[Any]) -> None:
        if not isinstance(lst, list):
            raise PickleError(f"APPENDS on {describe(lst)}")
        lst.extend(items)
        self._grow(lst, items)

    def _global(self, module: Any, name: Any) -> Any:
        if not (isinstance(module, str) and isinstance(name, str)):
            raise PickleError("global named by non-strings")
        obj = self.find_class(module, name)
        if callable(obj):
            self.callables.add(id(obj))
            self.keep.append(obj)
        return obj

    def _reduce(self, func: Any, args: Any) -> Any:
        if id(func) not in self.callables:
            raise PickleError(f"REDUCE calls {describe(func)}, not an allowed global")
        if not isinstance(args, tuple):
            raise PickleError(f"REDUCE arguments are {describe(args)}")
        try:
            return func(*args)
        except (PickleError, UsageError):
            raise
        except Exception as e:  # noqa: BLE001 - a stand-in given arguments it cannot take
            name = getattr(func, "__name__", "a global")
            raise PickleError(f"{name} failed: {str(e)[:120]}") from None

    def _memo_get(self, i: Any) -> Any:
        if i not in self.memo:
            raise PickleError(f"memo key {describe(i)} was never stored")
        return self.memo[i]

    # -- the loop -------------------------------------------------------------------------

    def load(self, f) -> Any:
        n = 0
        try:
            for op, arg, _ in pickletools.genops(f):
                n += 1
                if n & 1023 == 0 and time.monotonic() > self.deadline:
                    raise PickleError("took longer than the time limit")
                if op.name == "STOP":
                    if len(self.stack) != 1 or self.marks:
                        raise PickleError("ends with a malformed stack")
                    return self.stack[0]
                self._step(op.name, arg)
        except (PickleError, UsageError):
            raise
        except (ValueError, EOFError, UnicodeDecodeError, OverflowError, MemoryError) as e:
            raise PickleError(f"corrupt pickle ({type(e).__name__}: {str(e)[:120]})") from None
        raise PickleError("ends without STOP")

    def _step(self, name: str, arg: Any) -> None:
        if name in _CONST:
            self._push(_CONST[name])
        elif name in _ARG_ATOMS:
            self._push(arg)
        elif name in ("PROTO", "FRAME"):
            pass
        elif name == "MARK":
            self.marks.append(len(self.stack))
        elif name == "POP":
            self._pop()
        elif name == "POP_MARK":
            self._pop_mark()
        elif name == "DUP":
            self._push(self._top())
        elif name in ("EMPTY_TUPLE", "TUPLE", "TUPLE1", "TUPLE2", "TUPLE3"):
            k = {"EMPTY_TUPLE": 0, "TUPLE1": 1, "TUPLE2": 2, "TUPLE3": 3}.get(name)
            items = self._pop_mark() if k is None else [self._pop() for _ in range(k)][::-1]
            self._push(self._container(tuple(items), items))
        elif name == "EMPTY_LIST":
            self._push(self._container([], ()))
        elif name == "LIST":
            items = self._pop_mark()
            self._push(self._container(list(items), items))
        elif name == "APPEND":
            v = self._pop()
            self._append(self._top(), [v])
        elif name == "APPENDS":
            items = self._pop_mark()
            self._append(self._top(), items)
        elif name == "EMPTY_DICT":
            self._push(self._container({}, ()))
        elif name == "DICT":
            items = self._pop_mark()
            d = self._container({}, ())
            self._set_items(d, items)
            self._push(d)
        elif name == "SETITEM":
            v, k = self._pop(), self._pop()
            self._set_items(self._top(), [k, v])
        elif name == "SETITEMS":
            items = self._pop_mark()
            self._set_items(self._top(), items)
        elif name == "GLOBAL":
            module, _, attr = arg.partition(" ")
            self._push(self._global(module, attr))
        elif name == "STACK_GLOBAL":
            attr, module = self._pop(), self._pop()
            self._push(self._global(module, attr))
        elif name == "REDUCE":
            args, func = self._pop(), self._pop()
            self._push(self._reduce(func, args))
        elif name == "BUILD":
            state = self._pop()
            if not isinstance(self._top(), dict):  # OrderedDict's __dict__ (_metadata): dropped
                raise PickleError(f"BUILD on {describe(self._top())} with {describe(state)}")
        elif name in ("PERSID", "BINPERSID"):
            if self.persistent_load is None:
                raise PickleError("has a persistent id where none is expected")
            self._push(self.persistent_load(arg if name == "PERSID" else self._pop()))
        elif name in ("PUT", "BINPUT", "LONG_BINPUT", "MEMOIZE"):
            key = len(self.memo) if name == "MEMOIZE" else arg
            self.memo[key] = self._top()
        elif name in ("GET", "BINGET", "LONG_BINGET"):
            self._push(self._memo_get(arg))
        else:
            raise PickleError(f"uses the opcode {name}, which a state dict never needs")


_CONST = {"NONE": None, "NEWTRUE": True, "NEWFALSE": False}
_ARG_ATOMS = {
    "INT",
    "BININT",
    "BININT1",
    "BININT2",
    "LONG",
    "LONG1",
    "LONG4",
    "FLOAT",
    "BINFLOAT",
    "STRING",
    "BINSTRING",
    "SHORT_BINSTRING",
    "UNICODE",
    "BINUNICODE",
    "SHORT_BINUNICODE",
    "BINUNICODE8",
    "BINBYTES",
    "SHORT_BINBYTES",
    "BINBYTES8",
}


def load(
    f,
    find_class: Callable[[str, str], Any],
    persistent_load: Callable[[Any], Any] | None = None,
    deadline: float = float("inf"),
) -> Any:
    """Run the pickle at f's position (binary file object; left just after STOP)."""
    return Machine(find_class, persistent_load, deadline).load(f)
