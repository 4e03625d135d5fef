"""`--data` specs -> sources. The forms, tried in this order:

shapes:N[:SEED]                  the synthetic shapes set (labels: 10 shape classes)
samples                          four photos bundled with scikit-image
'shards/train-{000000..000127}.tar'   WebDataset tar shards (brace ranges or {a,b} lists)
folder/                          images under it, recursive; class subfolders are labels
                                 (a folder of only .tar / .parquet / .array_record files
                                 reads as that format)
images.npy | images.npz          uint8 NHWC arrays (.npz: images, labels, boxes)
labels.tsv | labels.csv          image paths (relative to the file) and labels
shard.tar                        one WebDataset shard
data.parquet                     Parquet in the Hugging Face image layout
data.array_record                ArrayRecord of tf.train.Example records
list.txt | .lst | .list          image paths, one a line (relative to the file)
photo.jpg                        one image file
'glob/*.jpg'                     a glob: image files, or all .tar / .parquet / .array_record
"""

from __future__ import annotations

import glob as globlib
import os

from jaxviz.data.sources import (
    IMAGE_EXTENSIONS,
    FileSource,
    SamplesSource,
    ShapesSource,
    Source,
)
from jaxviz.errors import UsageError

TAR, PARQUET = (".tar",), (".parquet",)
ARRAY_RECORD = (".array_record", ".arrayrecord")
LABELS = (".tsv", ".csv")
LISTS = (".txt", ".lst", ".list")


def _parse_shapes(spec: str) -> ShapesSource:
    parts = spec.split(":")
    try:
        if len(parts) not in (2, 3):
            raise ValueError
        n = int(parts[1])
        seed = int(parts[2]) if len(parts) == 3 else 0
        if n <= 0 or seed < 0:
            raise ValueError
    except ValueError:
        raise UsageError(
            f"bad shapes spec {spec!r}; expected shapes:N[:SEED] with N > 0, "
            "e.g. shapes:1000 or shapes:2000:123"
        ) from None
    return ShapesSource(spec, n, seed)


def _ext(path: str) -> str:
    return os.path.splitext(path)[1].lower()


def _of_files(spec: str, paths: list[str]) -> Source | None:
    """The container format all `paths` share (tar, Parquet, ArrayRecord), else None."""
    exts = {_ext(p) for p in paths}
    if exts <= set(TAR):
        from jaxviz.data.wds import TarShardSource

        return TarShardSource(spec, paths)
    if exts <= set(PARQUET):
        from jaxviz.data.parquet import ParquetSource

        return ParquetSource(spec, paths)
    if exts <= set(ARRAY_RECORD):
        from jaxviz.data.arrayrecord import ArrayRecordSource

        try:
            return ArrayRecordSource(spec, paths)
        except (OSError, RuntimeError, ValueError) as e:
            raise UsageError(f"cannot read ArrayRecord {spec}: {e}") from None
    return None


def _folder(spec: str) -> Source:
    from jaxviz.data.labels import folder_labels
    from jaxviz.data.walk import image_files

    paths, problems = image_files(spec, IMAGE_EXTENSIONS)
    if len(problems) < len(paths):
        labels, names = folder_labels(spec, paths)
        return FileSource(spec, paths, labels, names, problems)
    containers = sorted(
        os.path.join(spec, f) for f in os.listdir(spec) if _ext(f) in TAR + PARQUET + ARRAY_RECORD
    )
    found = _of_files(spec, containers) if containers else None
    if found is None:
        raise UsageError(
            f"no image files under directory {spec} "
            f"(extensions: {', '.join(sorted(IMAGE_EXTENSIONS))})"
        )
    return found


def _list_file(spec: str) -> Source:
    base = os.path.dirname(spec)
    try:
        with open(spec) as f:
            lines = [ln.strip() for ln in f if ln.strip() and not ln.startswith("#")]
    except (OSError, UnicodeDecodeError) as e:
        raise UsageError(f"cannot read list file {spec}: {e}") from None
    if not lines:
        raise UsageError(f"list file {spec} names no paths")
    return FileSource(spec, [p if os.path.isabs(p) else os.path.join(base, p) for p in lines])


def open_spec(spec: str) -> Source:
    """The Source named by a `--data` spec (module doc); UsageError for a bad or empty spec."""
    if spec.startswith("shapes:") or spec == "shapes":
        return _parse_shapes(spec)
    if spec == "samples":
        return SamplesSource()
    if "{" in spec or "}" in spec:
        from jaxviz.data.wds import expand_braces

        paths = expand_braces(spec)
        missing = [p for p in paths if not os.path.isfile(p)]
        if missing:
            raise UsageError(
                f"missing shard {missing[0]} ({len(paths) - len(missing)} of {len(paths)} "
                f"files of {spec!r} exist)"
            )
        found = _of_files(spec, paths)
        return found if found is not None else FileSource(spec, paths)
    if os.path.isdir(spec):
        return _folder(spec)
    ext = _ext(spec)
    if ext in (".npy", ".npz"):
        if not os.path.exists(spec):
            raise UsageError(f"array file not found: {spec}")
        from jaxviz.data.arrays import ArraySource

        return ArraySource(spec, spec)
    if os.path.isfile(spec):
        if ext in LABELS:
            from jaxviz.data.labels import read_labels_file

            return read_labels_file(spec)
        found = _of_files(spec, [spec])
        if found is not None:
            return found
        if ext in LISTS:
            return _list_file(spec)
        return FileSource(spec, [spec])
    if any(c in spec for c in "*?["):
        paths = sorted(p for p in globlib.glob(spec, recursive=True) if os.path.isfile(p))
        if not paths:
            raise UsageError(f"glob {spec!r} matches no files")
        found = _of_files(spec, paths)
        return found if found is not None else FileSource(spec, paths)
    raise UsageError(
        f"--data {spec!r}: no such file or directory; expected a directory, a labels file "
        "(.tsv/.csv), tar shards, .parquet, .array_record, a .txt list of paths, a glob, a "
        ".npy/.npz array, shapes:N[:SEED] or samples"
    )
