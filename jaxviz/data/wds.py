"""WebDataset tar shards, read at random through a member index built once per shard.

`'shards/train-{000000..000127}.tar'` names 128 shards (brace ranges keep their zero padding;
`{a,b}` lists work too). A sample is the run of members sharing a key (the member name up to
the first dot of its base name, WebDataset's `__key__`); its image is the `jpg`, `jpeg`, `png`
or `webp` member, its label the `cls` member (an integer or a class name). A sample without an
image member, and the unreadable tail of a damaged shard, become items skipped with the reason.

The index of a shard (key, image offset and size, label) is built by reading the tar headers and
the small `cls` members once, then cached as JSON under the cache folder (`$JAXVIZ_CACHE`, else
`$XDG_CACHE_HOME/jaxviz`, else `~/.cache/jaxviz`; `wds-index/`), keyed by the shard's absolute
path, size and modification time. If the cache cannot be written the index is kept in memory.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import os
import re
import tarfile
import threading
from dataclasses import dataclass

from jaxviz.data.decode import BadInput
from jaxviz.data.labels import parse_labels, read_class_names
from jaxviz.data.sources import EncodedSource, ItemInfo
from jaxviz.errors import UsageError

IMAGE_KEYS = ("jpg", "jpeg", "png", "webp")
INDEX_VERSION = 1
_BRACE = re.compile(r"\{([^{}]*)\}")


def expand_braces(pattern: str) -> list[str]:
    """All names of a brace pattern, in order: `{000..012}` ranges (padding kept) and `{a,b}`
    lists, any number of groups; UsageError for a malformed group."""
    groups = []
    for m in _BRACE.finditer(pattern):
        body = m.group(1)
        r = re.fullmatch(r"(\d+)\.\.(\d+)", body)
        if r:
            lo, hi = r.groups()
            if int(hi) < int(lo):
                raise UsageError(f"bad brace range {{{body}}} in {pattern!r}: end before start")
            width = len(lo) if lo.startswith("0") or len(lo) == len(hi) else 0
            groups.append([str(k).zfill(width) for k in range(int(lo), int(hi) + 1)])
        elif "," in body and ".." not in body:
            groups.append(body.split(","))
        else:
            raise UsageError(
                f"bad brace group {{{body}}} in {pattern!r}; expected {{000..127}} or {{a,b}}"
            )
    rest = _BRACE.sub("\0", pattern)
    if "{" in rest or "}" in rest:
        raise UsageError(f"unbalanced braces in {pattern!r}")
    pieces = rest.split("\0")
    return [
        "".join(p + c for p, c in zip(pieces, (*combo, ""), strict=True))
        for combo in itertools.product(*groups)
    ]


def cache_dir() -> str:
    """The folder jaxviz caches derived data in (tar member indexes)."""
    base = os.environ.get("JAXVIZ_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "jaxviz"
    )
    return base


@dataclass
class ShardIndex:
    """Samples of one shard: key, image member (offset, size, extension) or None, label text,
    and the reason the shard could not be read to its end (or None)."""

    keys: list[str]
    images: list[tuple[int, int, str] | None]
    labels: list[str | None]
    broken: str | None = None


def _build_index(path: str) -> ShardIndex:
    samples: dict[str, dict] = {}
    broken = None
    try:
        with tarfile.open(path, "r:") as tar:
            for m in tar:
                if not m.isfile():
                    continue
                folder, base = os.path.split(m.name)
                if base.startswith("."):
                    continue
                stem, _, ext = base.partition(".")
                s = samples.setdefault(os.path.join(folder, stem), {})
                s[ext.lower()] = (m.offset_data, m.size)
                if ext.lower() == "cls":
                    f = tar.extractfile(m)
                    s["_cls"] = f.read(64).decode("utf-8", "replace").strip() if f else None
    except (tarfile.TarError, OSError, EOFError) as e:
        broken = f"shard unreadable after {len(samples)} samples: {e}"
    keys, images, labels = [], [], []
    for key, s in samples.items():
        keys.append(key)
        ext = next((k for k in IMAGE_KEYS if k in s), None)
        images.append(None if ext is None else (*s[ext], ext))
        labels.append(s.get("_cls"))
    return ShardIndex(keys, images, labels, broken)


def shard_index(path: str) -> ShardIndex:
    """The member index of a shard, from the cache when the shard has not changed."""
    st = os.stat(path)
    key = f"{INDEX_VERSION}:{os.path.abspath(path)}:{st.st_size}:{st.st_mtime_ns}"
    cached = os.path.join(
        cache_dir(), "wds-index", hashlib.sha1(key.encode()).hexdigest() + ".json"
    )
    try:
        with open(cached) as f:
            return ShardIndex(**json.load(f))
    except (OSError, ValueError, TypeError):
        pass
    index = _build_index(path)
    try:
        os.makedirs(os.path.dirname(cached), exist_ok=True)
        tmp = f"{cached}.{os.getpid()}.tmp"
        with open(tmp, "w") as f:
            json.dump(index.__dict__, f)
        os.replace(tmp, cached)
    except OSError:
        pass
    return index


class TarShardSource(EncodedSource):
    """Samples of WebDataset tar shards in shard order; ids are `{shard}#{key}`."""

    def __init__(self, spec: str, shards: list[str]):
        self.spec, self.shards = spec, shards
        self.entries: list[tuple[int, str, tuple[int, int, str] | None]] = []
        self.problems: dict[int, str] = {}
        raw_labels: list[str | None] = []
        for k, path in enumerate(shards):
            idx = shard_index(path)
            for key, image, label in zip(idx.keys, idx.images, idx.labels, strict=True):
                if image is None:
                    self.problems[len(self.entries)] = "no image member (jpg, jpeg, png, webp)"
                self.entries.append((k, key, image))
                raw_labels.append(label)
            if idx.broken:
                self.problems[len(self.entries)] = idx.broken
                self.entries.append((k, "(tail)", None))
                raw_labels.append(None)
        labels, self.class_names = parse_labels(raw_labels)
        if self.class_names is None:
            self.class_names = read_class_names(os.path.dirname(shards[0]))
        self.labels = labels if any(lab >= 0 for lab in labels) else None
        self._files: dict[int, int] = {}  # open file descriptors, per process
        self._lock = threading.Lock()

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_files": {}, "_lock": None}

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state, _lock=threading.Lock())

    def __len__(self) -> int:
        return len(self.entries)

    def info(self, i: int) -> ItemInfo:
        k, key, _ = self.entries[i]
        label = None if self.labels is None or self.labels[i] < 0 else self.labels[i]
        return ItemInfo(f"{self.shards[k]}#{key}", label)

    def _bytes(self, i: int) -> bytes:
        if i in self.problems:
            raise BadInput(self.problems[i])
        k, _, (offset, size, _) = self.entries[i]
        with self._lock:
            fd = self._files.get(k)
            if fd is None:
                if len(self._files) >= 8:
                    os.close(self._files.pop(next(iter(self._files))))
                fd = self._files[k] = os.open(self.shards[k], os.O_RDONLY)
            data = os.pread(fd, size, offset)  # positional: safe from several threads
        if len(data) != size:
            raise BadInput(f"member truncated: {len(data)} of {size} bytes")
        return data
