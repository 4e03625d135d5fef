"""`jaxviz pack`: any `--data` source written as WebDataset tar shards, ArrayRecord or Parquet.

Stored JPEG/PNG/WebP bytes are copied as they are (after checking they decode), other images
are encoded as PNG, so the packed set decodes to the same pixels. Labels and class names are
kept (`classes.txt`). Unusable inputs are skipped and listed in the manifest.

Writes into DIR: data-NNNNN.{tar|array_record|parquet}, classes.txt (named classes),
manifest.json (counts, files, skipped).
"""

from __future__ import annotations

import argparse

from jaxviz.data.decode import BadInput
from jaxviz.data.sources import open_source
from jaxviz.data.writers import FORMATS, ShardWriter
from jaxviz.errors import UsageError
from jaxviz.jobs.output import JobOutput


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", required=True, help="the source to pack (any --data form)")
    p.add_argument("--to", required=True, choices=FORMATS, help="output format")
    p.add_argument("out", metavar="DIR", help="output folder")
    p.add_argument(
        "--per-file", type=int, default=1000, help="samples per output file (default: 1000)"
    )
    p.add_argument("--limit", type=int, default=None, help="pack at most this many images")


def run(args: argparse.Namespace) -> int:
    if args.per_file < 1:
        raise UsageError(f"--per-file must be >= 1, got {args.per_file}")
    if args.limit is not None and args.limit < 0:
        raise UsageError(f"--limit must be >= 0, got {args.limit}")
    source = open_source(args.data)
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
