"""Per-item outputs at dataset scale (one JSON line a case).

- `saliency`: `jaxviz saliency --model demo` on `shapes:N` for N = 1k and 20k (a fresh process
  each, PNG sample of 32), seconds per 1k images beyond a 64-image run's fixed cost (start-up,
  compile) and the child's peak RSS. Flat host overhead: the 20k figure within 1.2x of the 1k one.
- `overlay`: heat-map overlays PNG-encoded per second, the vectorised colormap lookup
  (`render.heatmap.overlay`) vs the matplotlib figure per image it replaced, alternated in one
  process on 64x64 images (the demo model's size) and 224x224 ones.

    python benchmarks/outputs.py                 # both cases, 1k and 20k images
    python benchmarks/outputs.py --sizes 1000    # the 1k saliency case only
"""

from __future__ import annotations

import argparse
import io
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.hardware import hardware  # noqa: E402
from jaxviz.render.heatmap import overlay  # noqa: E402

CHILD = """
import json, resource, sys, time
from jaxviz.cli import main
t0 = time.perf_counter()
rc = main(sys.argv[1:])
print(json.dumps({"rc": rc, "seconds": time.perf_counter() - t0,
                  "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def saliency_run(n: int, out: Path) -> dict:
    argv = ["saliency", "--model", "demo", "--data", f"shapes:{n}", "--batch-size", "64"]
    done = subprocess.run(
        [sys.executable, "-c", CHILD, *argv, "--out", str(out)],
        capture_output=True,
        text=True,
        check=True,
        cwd=ROOT,
    )
    return json.loads(done.stdout.strip().splitlines()[-1])


def saliency_cases(sizes: list[int]) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        base = saliency_run(64, Path(tmp) / "base")
        for n in sizes:
            r = saliency_run(n, Path(tmp) / f"n{n}")
            files = sum(1 for p in (Path(tmp) / f"n{n}").rglob("*") if p.is_file())
            line = {
                "case": "saliency",
                "images": n,
                "seconds": round(r["seconds"], 2),
                "fixed_seconds": round(base["seconds"], 2),
                "s_per_1k": round((r["seconds"] - base["seconds"]) / (n - 64) * 1000, 3),
                "peak_rss_mib": round(r["peak_rss_mib"]),
                "files": files,
                "hardware": hardware(),
            }
            print(json.dumps(line), flush=True)


def matplotlib_overlay(image: np.ndarray, heat: np.ndarray, title: str) -> np.ndarray:
    """The overlay as drawn before: a matplotlib figure per image (imshow twice, colour bar)."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.cm import ScalarMappable
    from matplotlib.colors import Normalize
    from matplotlib.figure import Figure

    h, w = image.shape[:2]
    fig = Figure(figsize=(5.0, 4.0 * h / w + 0.5), dpi=max(100, int(w / 4) + 1))
    canvas = FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    ax.imshow(image, interpolation="nearest")
    norm = Normalize(vmin=float(heat.min()), vmax=float(heat.max()))
    extent = (-0.5, w - 0.5, h - 0.5, -0.5)
    ax.imshow(heat, cmap="jet", norm=norm, alpha=0.5, extent=extent, interpolation="nearest")
    ax.set_title(title, fontsize=10)
    ax.set_axis_off()
    fig.colorbar(ScalarMappable(norm=norm, cmap="jet"), ax=ax, fraction=0.046, pad=0.04)
    fig.tight_layout()
    canvas.draw()
    return np.asarray(canvas.buffer_rgba())[..., :3].copy()


def png_bytes(picture: np.ndarray) -> int:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(picture).save(buf, format="PNG", compress_level=1)
    return len(buf.getvalue())


def overlay_cases(reps: int = 3, count: int = 40) -> None:
    rng = np.random.default_rng(0)
    for hw in (64, 224):
        image = rng.integers(0, 255, (hw, hw, 3), np.uint8)
        heat = rng.normal(size=(hw, hw)).astype(np.float32)
        sides = {"vectorised": overlay, "matplotlib": matplotlib_overlay}
        best = dict.fromkeys(sides, float("inf"))
        for _ in range(reps):
            for name, fn in sides.items():  # alternated, best of reps
                t0 = time.perf_counter()
                for _ in range(count):
                    png_bytes(fn(image, heat, "circle (p=0.912): saliency"))
                best[name] = min(best[name], (time.perf_counter() - t0) / count)
        line = {
            "case": "overlay",
            "image_px": hw,
            "vectorised_png_per_s": round(1 / best["vectorised"], 1),
            "matplotlib_png_per_s": round(1 / best["matplotlib"], 1),
            "ratio": round(best["matplotlib"] / best["vectorised"], 1),
            "hardware": hardware(),
        }
        print(json.dumps(line), flush=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sizes", default="1000,20000", help="saliency image counts")
    p.add_argument("--skip-saliency", action="store_true")
    args = p.parse_args()
    overlay_cases()
    if not args.skip_saliency:
        saliency_cases([int(s) for s in args.sizes.split(",")])


if __name__ == "__main__":
    main()
