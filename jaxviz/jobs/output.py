"""The output contract of every job: `--out` holds manifest.json, .npy arrays, .png pictures,
per-item stores and tables (`jobs.items`) and an index.html linking them, plus a `.jaxviz` marker
naming the job and the layout. Every write is atomic (temp file in the same folder, then rename).
"""

from __future__ import annotations

import html
import json
import os
import platform
import sys
import time
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np

from jaxviz.errors import UsageError
from jaxviz.runtime.files import atomic_write
from jaxviz.runtime.lock import lock_out

LAYOUT = 2  # 2: per-item results in array stores and a Parquet table (1: a .npy per item)
MARKER = ".jaxviz"
MAX_FIGURES = 64  # pictures shown in index.html; the others are linked through their folder


def save_npy(path: str | os.PathLike, array: np.ndarray) -> None:
    atomic_write(path, lambda f: np.save(f, np.asarray(array), allow_pickle=False))


def save_json(path: str | os.PathLike, obj: Any) -> None:
    data = json.dumps(obj, indent=2, default=_json_default).encode()
    atomic_write(path, lambda f: f.write(data))


def save_png(path: str | os.PathLike, image: np.ndarray) -> None:
    """[H, W, 3] or [H, W] uint8 -> PNG, zlib level 1 (OpenCV's default): about half the
    encoding time of PIL's default level 6 for ~40% larger files; a sweep writes thousands."""
    from PIL import Image

    img = Image.fromarray(np.asarray(image, dtype=np.uint8))
    atomic_write(path, lambda f: img.save(f, format="PNG", compress_level=1))


def _json_default(o: Any) -> Any:
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serializable: {type(o).__name__}")


def versions() -> dict[str, str]:
    """Versions of Python and the packages whose numbers matter for results."""
    out = {"python": platform.python_version(), "jaxviz": _version("jaxviz")}
    for pkg in ("jax", "jaxlib", "flax", "numpy", "faiss-cpu", "faiss-gpu", "openTSNE"):
        v = _version(pkg)
        if v:
            out[pkg] = v
    return out


def _version(pkg: str) -> str | None:
    try:
        return metadata.version(pkg)
    except metadata.PackageNotFoundError:
        return None


def devices() -> list[str]:
    import jax

    return [f"{d.platform}:{d.id} ({d.device_kind})" for d in jax.devices()]


class JobOutput:
    """Everything one job writes into its `--out` folder, and its manifest.

    Files are named relative to `out`; each saved file is remembered for index.html. Call
    `finish()` at the end: it writes manifest.json (command, config, versions, devices, timings,
    counts, skipped inputs with reasons, results) and index.html. An `out` written by another
    job or an older layout is refused (UsageError), never overwritten.
    """

    def __init__(self, out: str | os.PathLike, job: str, config: dict[str, Any]):
        self.out = Path(out)
        if self.out.exists() and not self.out.is_dir():
            raise UsageError(f"--out {self.out} is a file, not a folder")
        check_marker(self.out, job)
        self.lock = lock_out(self.out)  # held while this object lives; see runtime/lock.py
        self.out.mkdir(parents=True, exist_ok=True)
        save_json(self.out / MARKER, {"job": job, "layout": LAYOUT})
        self.job = job
        self.config = config
        self.counts: dict[str, int] = {}
        self.skipped: list[dict[str, str]] = []
        self.results: dict[str, Any] = {}
        self.timings: dict[str, float] = {}
        self._files: dict[str, None] = {}  # insertion-ordered set
        self._t0 = time.time()

    @property
    def files(self) -> list[str]:
        return list(self._files)

    def path(self, rel: str) -> Path:
        return self.out / rel

    def _record(self, rel: str) -> Path:
        self._files[rel] = None
        return self.out / rel

    def add_files(self, rels: list[str]) -> None:
        """Record files written by other means (array stores, tables)."""
        self._files.update(dict.fromkeys(rels))

    def npy(self, rel: str, array: np.ndarray) -> None:
        save_npy(self._record(rel), array)

    def png(self, rel: str, image: np.ndarray) -> None:
        save_png(self._record(rel), image)

    def json(self, rel: str, obj: Any) -> None:
        save_json(self._record(rel), obj)

    def skip(self, item: str, reason: str) -> None:
        """Record an input that could not be used."""
        self.skipped.append({"id": str(item), "reason": reason})

    def count(self, name: str, n: int = 1) -> None:
        self.counts[name] = self.counts.get(name, 0) + int(n)

    def timing(self, name: str, seconds: float) -> None:
        self.timings[name] = self.timings.get(name, 0.0) + float(seconds)

    def manifest(self) -> dict[str, Any]:
        return {
            "job": self.job,
            "command": sys.argv,
            "config": self.config,
            "versions": versions(),
            "devices": devices(),
            "timings": {**self.timings, "total_s": time.time() - self._t0},
            "counts": self.counts,
            "skipped": self.skipped,
            "results": self.results,
            "files": self.files,
        }

    def finish(self) -> dict[str, Any]:
        m = self.manifest()
        save_json(self.out / "manifest.json", m)
        write_index(self.out, f"jaxviz {self.job}", self.files, m)
        return m


def check_marker(out: Path, job: str) -> None:
    """Refuse an `out` holding another job's results or an older layout's."""
    marker = out / MARKER
    if marker.is_file():
        found = json.loads(marker.read_text())
        if found.get("job") != job:
            raise UsageError(f"--out {out} holds results of job {found.get('job')!r}, not {job!r}")
        if found.get("layout") != LAYOUT:
            raise UsageError(f"--out {out} holds an older output layout; use another --out")
    elif (out / "manifest.json").is_file():
        raise UsageError(f"--out {out} holds an older output layout; use another --out")


def _entries(files: list[str]) -> list[str]:
    """Files to link: each array store (a folder of chunks) and the PNG sample's folder once."""
    seen: dict[str, None] = {}
    for rel in files:
        head = rel.split("/", 1)[0]
        seen[f"{head}/" if head.endswith(".zarr") or head == "png" else rel] = None
    return list(seen)


def write_index(out: Path, title: str, files: list[str], manifest: dict[str, Any]) -> None:
    """A self-contained index.html: the first MAX_FIGURES PNGs shown, the other files linked
    (a store as its folder), the manifest below (without its file list, skips cut at 200); its
    size does not grow with the number of items of a per-item job."""
    parts = [
        f"<!doctype html><meta charset=utf-8><title>{html.escape(title)}</title>",
        "<style>body{font-family:sans-serif;margin:2em}img{max-width:100%;"
        "image-rendering:pixelated;border:1px solid #ccc}figure{display:inline-block;"
        "margin:.5em;vertical-align:top}</style>",
        f"<h1>{html.escape(title)}</h1>",
    ]
    pngs = [rel for rel in files if rel.endswith(".png")]
    for rel in pngs[:MAX_FIGURES]:
        esc = html.escape(rel)
        parts.append(
            f"<figure><img src='{esc}' alt='{esc}'><figcaption>{esc}</figcaption></figure>"
        )
    shown = set(pngs[:MAX_FIGURES])
    links = _entries([f for f in files if f not in shown])
    parts.append("<h2>Files</h2><ul>")
    parts += [f"<li><a href='{html.escape(r)}'>{html.escape(r)}</a></li>" for r in links]
    brief = {k: v for k, v in manifest.items() if k != "files"}
    brief["skipped"] = manifest.get("skipped", [])[:200]
    parts.append("</ul><h2>Manifest</h2><pre>")
    parts.append(html.escape(json.dumps(brief, indent=2, default=_json_default)))
    parts.append("</pre>")
    data = "\n".join(parts).encode()
    atomic_write(out / "index.html", lambda f: f.write(data))
