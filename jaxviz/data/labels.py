"""Labels files (`.tsv`/`.csv` of image paths and labels) and labels mapped by class name.

A labels file has a header naming its columns (a path column: path, file, filename, image,
file_name; a label column: label, class, cls, target, class_name) or no header, then two columns
(path, label), recognised by the first field ending in an image extension. Paths are relative to
the file's folder. Labels are class indices when all are integers, else class names (their
sorted order is the source's label order). ImageNet val is a flat folder plus such a file.

`relabel(source, names)` maps a source's named labels onto a model's class names, in any order:
shapes images sorted into `circle/ square/ ...`, a labels file of names. Items whose class the
model does not know are skipped with the reason. ImageNet wnid folders (`n01440764/ ...`) map
onto a 1000-class model by the ImageNet convention (class index = rank of the wnid in sorted
order), which needs all 1000 of them: no wnid list ships with jaxviz or its dependencies.
"""

from __future__ import annotations

import csv
import os
import re

import numpy as np
from PIL import Image

from jaxviz.data.decode import BadInput, Size
from jaxviz.data.sources import IMAGE_EXTENSIONS, FileSource, ItemInfo, Source
from jaxviz.errors import UsageError

PATH_COLUMNS = ("path", "file", "filename", "file_name", "image", "image_path", "relpath")
LABEL_COLUMNS = ("label", "labels", "class", "cls", "target", "class_name", "class_id")
WNID = re.compile(r"n\d{8}")
CLASSES_FILE = "classes.txt"  # beside shards or record files: class names, one a line


def read_class_names(folder: str) -> tuple[str, ...] | None:
    """The class names listed in `folder`/classes.txt (label k is line k), or None."""
    try:
        with open(os.path.join(folder, CLASSES_FILE), encoding="utf-8") as f:
            names = tuple(line.rstrip("\n") for line in f if line.strip())
    except (OSError, UnicodeDecodeError):
        return None
    return names or None


def parse_labels(raw: list[str | None]) -> tuple[list[int], tuple[str, ...] | None]:
    """Label strings -> (class index per item, -1 when empty; class names or None)."""
    given = [s.strip() for s in raw if s is not None and s.strip()]
    if all(re.fullmatch(r"-?\d+", s) for s in given):
        return [int(s) if s is not None and s.strip() else -1 for s in raw], None
    names = sorted(set(given))
    where = {n: k for k, n in enumerate(names)}
    return [where[s.strip()] if s is not None and s.strip() else -1 for s in raw], tuple(names)


def read_labels_file(path: str) -> FileSource:
    """The images a labels file lists, with their labels; UsageError if it is malformed."""
    delimiter = "\t" if path.lower().endswith(".tsv") else ","
    try:
        with open(path, newline="") as f:
            rows = [
                r for r in csv.reader(f, delimiter=delimiter) if r and any(c.strip() for c in r)
            ]
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise UsageError(f"cannot read labels file {path}: {e}") from None
    if not rows:
        raise UsageError(f"labels file {path} is empty")
    head = [c.strip().lower() for c in rows[0]]
    if os.path.splitext(head[0])[1] in IMAGE_EXTENSIONS:
        if len(head) < 2:
            raise UsageError(f"labels file {path}: rows need a path and a label, got {rows[0]}")
        p, lab, body = 0, 1, rows
    else:
        p = next((head.index(c) for c in PATH_COLUMNS if c in head), None)
        lab = next((head.index(c) for c in LABEL_COLUMNS if c in head), None)
        if p is None:
            raise UsageError(
                f"labels file {path} has no path column (columns: {', '.join(rows[0])}; "
                f"expected one of {', '.join(PATH_COLUMNS)})"
            )
        if lab is None:
            raise UsageError(
                f"labels file {path} has no label column (columns: {', '.join(rows[0])}; "
                f"expected one of {', '.join(LABEL_COLUMNS)})"
            )
        body = rows[1:]
    if not body:
        raise UsageError(f"labels file {path} lists no images")
    base = os.path.dirname(os.path.abspath(path))
    paths = [os.path.join(base, r[p].strip()) if len(r) > p else "" for r in body]
    problems = {k: f"row {k + 2} has no path" for k, q in enumerate(paths) if not q}
    labels, names = parse_labels([r[lab] if len(r) > lab else None for r in body])
    return FileSource(path, paths, labels, names, problems)


def folder_labels(root: str, paths: list[str]) -> tuple[list[int] | None, tuple[str, ...] | None]:
    """ImageFolder labels: the first folder under `root` of every file, when all have one and
    there are at least two; else (None, None)."""
    parts = [os.path.relpath(q, root).split(os.sep) for q in paths]
    if not paths or any(len(q) < 2 for q in parts):
        return None, None
    names = sorted({q[0] for q in parts})
    if len(names) < 2:
        return None, None
    where = {n: k for k, n in enumerate(names)}
    return [where[q[0]] for q in parts], tuple(names)


def class_mapping(have: tuple[str, ...], want: tuple[str, ...], spec: str) -> np.ndarray:
    """[len(have)] int64: the index in `want` of each name in `have`, -1 when absent;
    UsageError when no name matches (the labels would mean nothing to the model)."""
    if len(want) == 1000 and all(WNID.fullmatch(n) for n in have):
        if len(have) != 1000:
            raise UsageError(
                f"--data {spec} has {len(have)} ImageNet wnid classes; wnids map to the "
                "model's classes only as the full set of 1000 (no wnid list is installed): "
                "give a labels file with class indices instead"
            )
        return np.argsort(np.argsort(have)).astype(np.int64)  # rank in sorted order
    where = {n: k for k, n in enumerate(want)}
    mapping = np.asarray([where.get(n, -1) for n in have], np.int64)
    if len(have) and (mapping < 0).all():
        raise UsageError(
            f"--data {spec} has classes {_names(have)}, none of the model's "
            f"{_names(want)}; its labels would not match"
        )
    return mapping


def _names(names: tuple[str, ...], most: int = 6) -> str:
    return ", ".join(names[:most]) + (f", ... ({len(names)} classes)" if len(names) > most else "")


class Relabeled(Source):
    """`source` with its named labels mapped onto `class_names`; items of classes not among
    them are unusable (skipped with the reason)."""

    def __init__(self, source: Source, class_names: tuple[str, ...]):
        self.source, self.spec = source, source.spec
        self.class_names = tuple(class_names)
        self.mapping = class_mapping(source.class_names, self.class_names, source.spec)

    def __len__(self) -> int:
        return len(self.source)

    def _map(self, label: int | None) -> int | None:
        if label is None:
            return None
        got = int(self.mapping[label])
        if got < 0:
            name = self.source.class_names[label]
            raise BadInput(f"class {name!r} is not one of the model's classes")
        return got

    def info(self, i: int) -> ItemInfo:
        item = self.source.info(i)
        try:
            label = self._map(item.label)
        except BadInput:
            label = None
        return ItemInfo(item.id, label, item.box)

    def load(self, i: int, draft: Size | None = None) -> Image.Image:
        return self.sample(i, draft)[0]

    def sample(self, i: int, draft: Size | None = None) -> tuple[Image.Image, int | None]:
        label = self._map(self.source.info(i).label)
        return self.source.load(i, draft), label


def relabel(source: Source, class_names: tuple[str, ...] | None) -> Source:
    """`source` with labels in the order of `class_names` when both have names and they
    differ; else `source` itself (integer labels are taken as class indices)."""
    if not source.class_names or not class_names or source.class_names == tuple(class_names):
        return source
    return Relabeled(source, tuple(class_names))
