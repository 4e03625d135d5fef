"""Writing any source as WebDataset tar shards, ArrayRecord files or Parquet files.

Each writer takes samples (key, encoded image bytes, format, label or None) in order and starts
a new file every `per_file` samples: `data-00000.tar` (members `{key}.{jpg|png|webp}` and
`{key}.cls`), `data-00000.array_record` (tf.train.Example records: image, label, __key__) or
`data-00000.parquet` (the Hugging Face image layout: a struct of bytes and path, a label column,
`ClassLabel` names in the schema metadata). Class names, when the source has them, also go to
`classes.txt` (line k names label k), which the readers use. Files are written under a temporary
name and renamed when complete.
"""

from __future__ import annotations

import io
import json
import os
import tarfile
from pathlib import Path

from jaxviz.data.labels import CLASSES_FILE

FORMATS = ("wds", "arrayrecord", "parquet")
EXTENSION = {"wds": "tar", "arrayrecord": "array_record", "parquet": "parquet"}
Sample = tuple[str, bytes, str, int | None]  # key, encoded bytes, format, label


class ShardWriter:
    """Writes samples into numbered files of one format under `folder`."""

    def __init__(self, folder: str | Path, fmt: str, per_file: int, class_names=None):
        if fmt not in FORMATS:
            raise ValueError(f"unknown format {fmt!r}; expected one of {FORMATS}")
        self.folder, self.fmt, self.per_file = Path(folder), fmt, per_file
        self.class_names = class_names
        self.folder.mkdir(parents=True, exist_ok=True)
        self.files: list[str] = []
        self._buffer: list[Sample] = []
        if class_names:
            (self.folder / CLASSES_FILE).write_text("".join(f"{n}\n" for n in class_names))

    def add(self, sample: Sample) -> None:
        self._buffer.append(sample)
        if len(self._buffer) == self.per_file:
            self._flush()

    def close(self) -> list[str]:
        """Write the last file; the names of every file written."""
        if self._buffer or not self.files:
            self._flush()
        return self.files

    def _flush(self) -> None:
        name = f"data-{len(self.files):05d}.{EXTENSION[self.fmt]}"
        tmp, final = self.folder / f".{name}.tmp", self.folder / name
        {"wds": self._tar, "arrayrecord": self._arrayrecord, "parquet": self._parquet}[self.fmt](
            str(tmp)
        )
        os.replace(tmp, final)
        self.files.append(name)
        self._buffer = []

    def _tar(self, path: str) -> None:
        with tarfile.open(path, "w", format=tarfile.USTAR_FORMAT) as tar:
            for key, data, fmt, label in self._buffer:
                members = [(f"{key}.{fmt}", data)]
                if label is not None:
                    members.append((f"{key}.cls", str(label).encode()))
                for name, payload in members:
                    info = tarfile.TarInfo(name)
                    info.size, info.mode, info.mtime = len(payload), 0o644, 0
                    tar.addfile(info, io.BytesIO(payload))

    def _arrayrecord(self, path: str) -> None:
        from array_record.python.array_record_module import ArrayRecordWriter

        from jaxviz.data.arrayrecord import encode_example

        writer = ArrayRecordWriter(path, "group_size:1")
        try:
            for key, data, _, label in self._buffer:
                features: dict[str, bytes | int] = {"image": data, "__key__": key.encode()}
                if label is not None:
                    features["label"] = label
                writer.write(encode_example(features))
        finally:
            writer.close()

    def _parquet(self, path: str) -> None:
        import pyarrow as pa
        import pyarrow.parquet as pq

        image = pa.array(
            [{"bytes": data, "path": f"{key}.{fmt}"} for key, data, fmt, _ in self._buffer],
            pa.struct([("bytes", pa.binary()), ("path", pa.string())]),
        )
        label = pa.array([s[3] for s in self._buffer], pa.int64())
        features = {"image": {"_type": "Image"}, "label": {"_type": "Value", "dtype": "int64"}}
        if self.class_names:
            features["label"] = {"_type": "ClassLabel", "names": list(self.class_names)}
        meta = {b"huggingface": json.dumps({"info": {"features": features}}).encode()}
        table = pa.table({"image": image, "label": label}).replace_schema_metadata(meta)
        pq.write_table(table, path, row_group_size=256)
