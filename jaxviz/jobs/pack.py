"""`jaxviz pack`: any `--data` source written as WebDataset tar shards, ArrayRecord or Parquet.

Stored JPEG/PNG/WebP bytes are copied as they are (after checking they decode), other images
are encoded as PNG, so the packed set decodes to the same pixels. Labels and class names are
kept (`classes.txt`). Unusable inputs are skipped and listed in the manifest.

Writes into DIR: data-NNNNN.{tar|array_record|parquet}, classes.txt (named classes),
manifest.json (counts, files, skipped).
"""

from __future__ import annotations

from dataclasses import dataclass

from jaxviz.data.decode import BadInput
from jaxviz.data.writers import FORMATS, ShardWriter
from jaxviz.jobs.common import source_from_args
from jaxviz.jobs.config import NON_NEGATIVE, NOT_A_FILE, POSITIVE, JobConfig, option
from jaxviz.jobs.output import JobOutput


@dataclass(kw_only=True)
class PackConfig(JobConfig):
    data: str = option(help="the source to pack (any --data form)")
    to: str = option(help="output format", choices=FORMATS)
    out: str = option(help="output folder", check=NOT_A_FILE, metavar="DIR", positional=True)
    per_file: int = option(1000, "samples per output file", check=POSITIVE)
    limit: int | None = option(None, "pack at most this many images", check=NON_NEGATIVE)


def run(args: PackConfig) -> int:
    source = source_from_args(args)
    out = JobOutput(args.out, "pack", {"data": args.data, "to": args.to})
    writer = ShardWriter(out.path(""), args.to, args.per_file, source.class_names)
    n = len(source) if args.limit is None else min(args.limit, len(source))
    for i in range(n):
        item = source.info(i)
        try:
            data, fmt = source.encoded(i)
        except BadInput as e:
            out.skip(item.id, str(e))
            continue
        writer.add((f"{i:09d}", data, fmt, item.label))
        out.count("images")
    out.count("skipped", len(out.skipped))
    out.results["files"] = writer.close()
    out.finish()
    print(f"packed {out.counts.get('images', 0)} images of {args.data} into {args.out}")
    return 0
