"""Parquet files in the Hugging Face image layout, read at random by row group (pyarrow).

The image column is a struct of `bytes` and `path` (how `datasets` stores an `Image` feature),
or a plain binary column named image, img, jpg or png. The label column (label, labels, cls,
...) holds class indices, named by the `ClassLabel` names in the file's `huggingface` schema
metadata (or a `classes.txt` beside the files), or class names. Ids are `{file}#{row}`. A row
whose image is null is skipped with the reason. Each process keeps the last row group it read
(the image column only) and reads the next when the pipeline moves on.
"""

from __future__ import annotations

import bisect
import json
import os

from jaxviz.data.decode import BadInput
from jaxviz.data.labels import LABEL_COLUMNS, parse_labels, read_class_names
from jaxviz.data.sources import EncodedSource, ItemInfo
from jaxviz.errors import UsageError

IMAGE_COLUMNS = ("image", "img", "jpg", "png", "jpeg")


def _image_column(schema) -> str | None:
    import pyarrow as pa

    for field in schema:
        t = field.type
        if pa.types.is_struct(t) and t.get_field_index("bytes") >= 0:
            return field.name
    for field in schema:
        if field.name.lower() in IMAGE_COLUMNS and (
            pa.types.is_binary(field.type) or pa.types.is_large_binary(field.type)
        ):
            return field.name
    return None


def _hf_names(schema, column: str) -> tuple[str, ...] | None:
    meta = (schema.metadata or {}).get(b"huggingface")
    if not meta:
        return None
    try:
        feature = json.loads(meta)["info"]["features"][column]
        return tuple(feature["names"]) if feature.get("names") else None
    except (ValueError, KeyError, TypeError):
        return None


class ParquetSource(EncodedSource):
    """Rows of Parquet files, in file order."""

    def __init__(self, spec: str, paths: list[str]):
        import pyarrow.parquet as pq

        self.spec, self.paths = spec, paths
        self.starts, self.groups = [0], []  # row offsets of files; per file, of row groups
        raw: list = []
        self.image_column = None
        label_column = None
        for p in paths:
            try:
                pf = pq.ParquetFile(p)
            except Exception as e:  # pyarrow raises several types for a bad file
                raise UsageError(f"cannot read Parquet file {p}: {e}") from None
            schema = pf.schema_arrow
            column = _image_column(schema)
            if column is None:
                raise UsageError(
                    f"Parquet file {p} has no image column (columns: {', '.join(schema.names)}; "
                    "expected a struct of bytes and path, or a binary image column)"
                )
            self.image_column = column
            label_column = next((c for c in schema.names if c.lower() in LABEL_COLUMNS), None)
            meta = pf.metadata
            sizes = [meta.row_group(g).num_rows for g in range(meta.num_row_groups)]
            self.groups.append([sum(sizes[:g]) for g in range(len(sizes) + 1)])
            self.starts.append(self.starts[-1] + meta.num_rows)
            if label_column is not None:
                raw += pf.read(columns=[label_column]).column(0).to_pylist()
            else:
                raw += [None] * meta.num_rows
        names = None
        if label_column is not None:
            names = _hf_names(pq.ParquetFile(paths[0]).schema_arrow, label_column)
        labels, parsed = parse_labels([None if v is None else str(v) for v in raw])
        self.class_names = parsed or names or read_class_names(os.path.dirname(paths[0]))
        self.labels = labels if any(lab >= 0 for lab in labels) else None
        self._cache: tuple | None = None

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_cache": None}

    def __len__(self) -> int:
        return self.starts[-1]

    def _where(self, i: int) -> tuple[int, int]:
        f = bisect.bisect_right(self.starts, i) - 1
        return f, i - self.starts[f]

    def info(self, i: int) -> ItemInfo:
        f, row = self._where(i)
        label = None if self.labels is None or self.labels[i] < 0 else self.labels[i]
        return ItemInfo(f"{self.paths[f]}#{row}", label)

    def _bytes(self, i: int) -> bytes:
        import pyarrow.parquet as pq

        f, row = self._where(i)
        g = bisect.bisect_right(self.groups[f], row) - 1
        if self._cache is None or self._cache[:2] != (f, g):
            try:
                table = pq.ParquetFile(self.paths[f]).read_row_group(g, columns=[self.image_column])
            except Exception as e:  # a damaged row group: its rows are skipped
                raise BadInput(f"row group {g} unreadable: {e}") from None
            self._cache = (f, g, table.column(0).combine_chunks())
        value = self._cache[2][row - self.groups[f][g]].as_py()
        data = value.get("bytes") if isinstance(value, dict) else value
        if not data:
            raise BadInput("no image bytes (null)")
        return data
