"""The benchmark suite: every benchmark at one size, a Markdown table, one JSON file.

    python -m benchmarks.run [--size smoke|full] [--only forward,sweep] [--out results.json]

Each benchmark runs in its own process (so one's memory and compile caches don't sway another)
and prints JSON lines; the suite collects them with the hardware (CPU model, cores, GPU name,
memory) and the package versions, and prints a table of every case's ratios.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import subprocess
import sys
import time
from importlib import metadata
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.hardware import hardware  # noqa: E402

BENCHMARKS = ("forward", "occlusion", "gradients", "features", "patches", "tsne", "sweep")
PACKAGES = ("jax", "jaxlib", "flax", "faiss-cpu", "faiss-gpu", "openTSNE", "torch", "captum")


def versions() -> dict:
    out = {}
    for p in PACKAGES:
        with contextlib.suppress(metadata.PackageNotFoundError):
            out[p] = metadata.version(p)
    return out


def run_one(name: str, size: str, timeout: float) -> tuple[list[dict], str | None, float]:
    """(JSON records, error or None, seconds) of `benchmarks/<name>.py --size <size>`."""
    t = time.time()
    try:
        r = subprocess.run(
            [sys.executable, str(ROOT / "benchmarks" / f"{name}.py"), "--size", size],
            capture_output=True,
            text=True,
            timeout=timeout,
            cwd=ROOT,
        )
    except subprocess.TimeoutExpired:
        return [], f"timed out after {timeout:.0f} s", time.time() - t
    records = []
    for line in r.stdout.splitlines():
        if line.startswith("{"):
            with contextlib.suppress(json.JSONDecodeError):
                records.append(json.loads(line))
    error = None if r.returncode == 0 else (r.stderr.strip().splitlines() or ["?"])[-1]
    return records, error, time.time() - t


def _cells(rec: dict) -> tuple[str, str]:
    """A case's name and its ratio-like figures, for the table."""
    case = " ".join(
        str(rec[k])
        for k in ("case", "model", "backend", "mode", "n", "method")
        if k in rec and not isinstance(rec[k], dict)
    )
    figures = ", ".join(
        f"{k}={v:.3g}"
        for k, v in rec.items()
        if isinstance(v, int | float)
        and not isinstance(v, bool)
        and any(w in k for w in ("ratio", "speedup", "target", "overhead"))
    )
    return case or "-", figures or "-"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--size", choices=("smoke", "full"), default="smoke")
    ap.add_argument("--only", default=None, help="comma list of benchmarks (default: all)")
    ap.add_argument("--out", default="benchmark-results.json", help="JSON file to write")
    ap.add_argument("--timeout", type=float, default=3600, help="seconds per benchmark")
    args = ap.parse_args()
    names = args.only.split(",") if args.only else list(BENCHMARKS)
    bad = [n for n in names if n not in BENCHMARKS]
    if bad:
        ap.error(f"unknown benchmark {bad[0]!r}; choose from {', '.join(BENCHMARKS)}")
    results, rows = {}, ["| benchmark | case | figures |", "|---|---|---|"]
    for name in names:
        print(f"running {name} ({args.size}) ...", file=sys.stderr, flush=True)
        records, error, seconds = run_one(name, args.size, args.timeout)
        results[name] = {"records": records, "error": error, "seconds": seconds}
        for rec in records:
            case, figures = _cells(rec)
            rows.append(f"| {name} | {case} | {figures} |")
        if error:
            rows.append(f"| {name} | FAILED | {error} |")
    doc = {"size": args.size, "hardware": hardware(), "versions": versions(), "results": results}
    Path(args.out).write_text(json.dumps(doc, indent=2, default=str))
    print("\n".join(rows))
    print(f"\nwritten: {args.out}")
    return 1 if any(r["error"] for r in results.values()) else 0


if __name__ == "__main__":
    sys.exit(main())
