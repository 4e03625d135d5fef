"""Benchmark: the input pipeline (data/). One JSON line a case; run by hand.

Cases (`--case`, default all):

- decode: decode + resize (shorter side 256, centre crop 224) images/s on one core, of
  500x375 and 1600x1200 JPEGs (quality 90, from the scikit-image photos): a plain PIL loop
  (open, convert, resize) vs the pipeline's per-image work (`Image.draft` DCT scaling, then the
  same resize), alternated in one process; and the mean pixel difference between the two.
- workers: images/s of `stream` over a folder of 1600x1200 JPEGs with 1 and with 2 worker
  processes (steady state, from the first batch on; alternated).
- end_to_end: images/s of the `features` scan (resnet18, random init) from a WebDataset tar set
  of 500x375 JPEGs vs from the same images decoded and resized in memory (.npy).
- rss: peak RSS of a child process streaming 2k and 20k images (tar shards of small JPEGs).

    nice -n 5 python benchmarks/input.py [--case decode] [--quick]
"""

from __future__ import annotations

import argparse
import io
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from benchmarks.hardware import hardware
from jaxviz.data.decode import decode_bytes
from jaxviz.data.pipeline import stream
from jaxviz.data.sources import SAMPLES, open_source
from jaxviz.data.transform import draft_target
from jaxviz.data.writers import ShardWriter
from jaxviz.models.preprocess import Preprocess

PRE = Preprocess((224, 224), 256)


def _photo(k: int, size: tuple[int, int]) -> bytes:
    import skimage.data

    img = Image.fromarray(getattr(skimage.data, SAMPLES[k % len(SAMPLES)])()).convert("RGB")
    img = img.resize(size, Image.BICUBIC).rotate(k % 7, expand=False)
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=90)
    return buf.getvalue()


def _emit(case: str, **fields) -> None:
    print(json.dumps({"case": case, **fields, "hardware": hardware()}), flush=True)


def case_decode(quick: bool) -> None:
    reps = 3 if quick else 10
    for size in ((500, 375), (1600, 1200)):
        blobs = [_photo(k, size) for k in range(8)]

        def plain(blobs=blobs) -> list[np.ndarray]:
            return [PRE.to_uint8(Image.open(io.BytesIO(b)).convert("RGB")) for b in blobs]

        def ours(blobs=blobs) -> list[np.ndarray]:
            return [PRE.to_uint8(decode_bytes(b, draft_target(PRE))) for b in blobs]

        times = {"plain": [], "pipeline": []}
        for _ in range(reps):  # alternated, best of reps
            for name, fn in (("plain", plain), ("pipeline", ours)):
                t = time.perf_counter()
                fn()
                times[name].append(time.perf_counter() - t)
        a, b = plain(), ours()
        diff = float(
            np.mean(
                [np.abs(x.astype(int) - y.astype(int)).mean() for x, y in zip(a, b, strict=True)]
            )
        )
        rate = {k: len(blobs) / min(v) for k, v in times.items()}
        _emit("decode", image=f"{size[0]}x{size[1]}", plain_img_s=round(rate["plain"], 1),
              pipeline_img_s=round(rate["pipeline"], 1),
              speedup=round(rate["pipeline"] / rate["plain"], 2),
              mean_abs_diff_255=round(diff, 2))  # fmt: skip


def _rate(spec: str, workers: int, batch: int = 16) -> float:
    it = stream(open_source(spec), PRE, batch, workers=workers)
    first = next(it)
    t, n = time.perf_counter(), 0
    for b in it:
        n += b.count
    del first
    return n / (time.perf_counter() - t)


def case_workers(quick: bool, tmp: Path) -> None:
    n = 96 if quick else 320
    folder = tmp / "big"
    folder.mkdir(exist_ok=True)
    blob = [_photo(k, (1600, 1200)) for k in range(8)]
    for k in range(n):
        (folder / f"{k:05d}.jpg").write_bytes(blob[k % 8])
    rates = {1: [], 2: []}
    for _ in range(1 if quick else 2):
        for w in (1, 2):
            rates[w].append(_rate(str(folder), w))
    best = {w: max(v) for w, v in rates.items()}
    _emit("workers", images=n, img_s_1=round(best[1], 1), img_s_2=round(best[2], 1),
          speedup=round(best[2] / best[1], 2), load_avg_1m=os.getloadavg()[0])  # fmt: skip


def _features_rate(spec: str, batch: int, model, params) -> float:
    from jaxviz.index.feature_store import FeatureWriter
    from jaxviz.jobs.features import FeatureConsumer
    from jaxviz.jobs.output import JobOutput
    from jaxviz.jobs.scan import Consumer, scan
    from jaxviz.models.stage import stage_shapes

    class Clock:
        name, taps = "clock", ()
        t0 = None

        def reduce(self, taps, mask):
            return mask

        def update(self, batch, result):
            self.t0 = self.t0 or time.perf_counter()

        def finish(self):
            return {}

    with tempfile.TemporaryDirectory() as d:
        out = JobOutput(d, "features", {})
        clock: Consumer = Clock()
        layer = model.features_stage
        dim = int(np.prod(stage_shapes(model)[layer]))
        writer = FeatureWriter(out, dim, "float32", {})
        consumer = FeatureConsumer(layer, open_source(spec), writer, None)
        t = time.perf_counter()
        scan(model, params, open_source(spec), [clock, consumer], batch_size=batch, out=out)
        total = time.perf_counter() - (clock.t0 or t)
        n = out.counts["images"]
    return (n - batch) / total


def case_end_to_end(quick: bool, tmp: Path) -> None:
    from jaxviz.models.zoo import load_model

    n = 64 if quick else 192
    model, params = load_model("resnet18", random_init=True)
    src_dir = tmp / "e2e"
    writer = ShardWriter(src_dir, "wds", 64)
    decoded = []
    for k in range(n):
        data = _photo(k, (500, 375))
        writer.add((f"{k:06d}", data, "jpg", k % 10))
        decoded.append(PRE.to_uint8(decode_bytes(data, draft_target(PRE))))
    files = writer.close()
    np.save(tmp / "e2e.npy", np.stack(decoded))
    tar = str(src_dir / f"data-{{00000..{len(files) - 1:05d}}}.tar")
    rates = {"tar": [], "memory": []}
    for _ in range(2):
        rates["tar"].append(_features_rate(tar, 32, model, params))
        rates["memory"].append(_features_rate(str(tmp / "e2e.npy"), 32, model, params))
    best = {k: max(v) for k, v in rates.items()}
    ratio = round(best["tar"] / best["memory"], 3)
    tar_s, mem_s = round(best["tar"], 1), round(best["memory"], 1)
    _emit(
        "end_to_end", model="resnet18", images=n, tar_img_s=tar_s, memory_img_s=mem_s, ratio=ratio
    )


def _rss_child(spec: str) -> None:
    """Stream `spec` and print the peak RSS of this process (VmHWM: ru_maxrss would include
    the parent's peak, kept across fork and exec)."""
    n = sum(b.count for b in stream(open_source(spec), PRE, 32))
    with open("/proc/self/status") as f:
        hwm = next(int(line.split()[1]) for line in f if line.startswith("VmHWM:"))
    print(json.dumps({"images": n, "peak_rss_mib": round(hwm / 1024, 1)}))


def case_rss(quick: bool, tmp: Path) -> None:
    small = _photo(0, (320, 240))
    for n in (2_000, 20_000) if not quick else (200, 2_000):
        folder = tmp / f"rss{n}"
        writer = ShardWriter(folder, "wds", 1000)
        for k in range(n):
            writer.add((f"{k:07d}", small, "jpg", k % 10))
        files = writer.close()
        spec = str(folder / f"data-{{00000..{len(files) - 1:05d}}}.tar")
        code = f"from benchmarks.input import _rss_child; _rss_child({spec!r})"
        res = subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, check=True
        )
        _emit("rss", **json.loads(res.stdout.strip().splitlines()[-1]))


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--case", choices=["decode", "workers", "end_to_end", "rss"], default=None)
    p.add_argument("--quick", action="store_true", help="small sizes, to check it runs")
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        os.environ["JAXVIZ_CACHE"] = str(tmp / "cache")
        cases = [args.case] if args.case else ["decode", "workers", "end_to_end", "rss"]
        for case in cases:
            if case == "decode":
                case_decode(args.quick)
            else:
                globals()[f"case_{case}"](args.quick, tmp)


if __name__ == "__main__":
    main()
