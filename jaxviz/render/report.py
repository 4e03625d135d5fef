"""The study report: one self-contained index.html with every picture, table and metric."""

from __future__ import annotations

import html
import json
from pathlib import Path
from typing import Any

from jaxviz.runtime.files import atomic_write

MAX_PICTURES = 12
# On load, the page counts its images and the ones that failed to load (data-images /
# data-broken on <body>, for headless checks) and warns the reader about broken ones.
BROKEN_IMAGE_CHECK = """<script>
window.addEventListener("load", () => {
  const broken = [...document.images].filter((i) => !i.complete || i.naturalWidth === 0);
  document.body.dataset.images = document.images.length;
  document.body.dataset.broken = broken.length;
  if (broken.length) {
    const p = document.createElement("p");
    p.className = "err";
    p.textContent = broken.length + " pictures could not be loaded";
    document.body.prepend(p);
  }
});
</script>"""
FIRST = ("overview", "mosaic", "scatter", "filters", "grid")


def _flatten(d: Any, prefix: str = "", depth: int = 0) -> list[tuple[str, str]]:
    """Scalar leaves of nested results as (dotted key, text) rows; long lists summarized."""
    if isinstance(d, dict) and depth < 3:
        rows = []
        for k, v in d.items():
            rows += _flatten(v, f"{prefix}.{k}" if prefix else str(k), depth + 1)
        return rows
    if isinstance(d, float):
        return [(prefix, f"{d:.4g}")]
    if isinstance(d, list) and len(d) > 8:
        return [(prefix, f"[{len(d)} items]")]
    text = json.dumps(d) if not isinstance(d, str) else d
    return [(prefix, text if len(text) < 200 else text[:200] + "…")]


def _pictures(files: list[str]) -> list[str]:
    pngs = [f for f in files if f.endswith(".png")]
    ranked = sorted(
        pngs, key=lambda f: next((i for i, k in enumerate(FIRST) if k in Path(f).name), len(FIRST))
    )
    return ranked[:MAX_PICTURES]


def _job_section(out: Path, key: str, state: dict) -> tuple[str, dict]:
    e = html.escape
    path = out / key / "manifest.json"
    row = {
        "job": key,
        "images": 0,
        "skipped": 0,
        "seconds": state["done"].get(key, 0.0),
        "skip_reasons": [],
    }
    if key in state.get("failed", {}):
        return (
            f"<section><h3>{e(key)}</h3><p class=err>failed: {e(state['failed'][key])}</p>"
            "</section>",
            row,
        )
    if not path.exists():
        return f"<section><h3>{e(key)}</h3><p>not run</p></section>", row
    m = json.loads(path.read_text())
    row["images"] = m.get("counts", {}).get("images", 0)
    row["skipped"] = len(m.get("skipped", []))
    row["skip_reasons"] = [s["reason"] for s in m.get("skipped", [])]
    parts = [
        f"<section><h3>{e(key)}</h3>",
        f"<p>{row['images']} images, {row['skipped']} skipped, "
        f"{row['seconds']:.1f} s — <a href='{e(key)}/index.html'>all files</a>, "
        f"<a href='{e(key)}/manifest.json'>manifest</a></p>",
    ]
    results = _flatten(m.get("results", {}))
    if results:
        parts.append(
            "<table>"
            + "".join(f"<tr><td>{e(k)}</td><td>{e(v)}</td></tr>" for k, v in results)
            + "</table>"
        )
    for rel in _pictures(m.get("files", [])):
        src = e(f"{key}/{rel}")
        parts.append(
            f"<figure><a href='{src}'><img src='{src}' alt='{e(rel)}'></a>"
            f"<figcaption>{e(rel)}</figcaption></figure>"
        )
    if m.get("skipped"):
        parts.append(
            "<details><summary>skipped inputs</summary><ul>"
            + "".join(f"<li>{e(s['id'])}: {e(s['reason'])}</li>" for s in m["skipped"][:200])
            + "</ul></details>"
        )
    parts.append("</section>")
    return "\n".join(parts), row


def write_study_report(
    out: Path, name: str, parts: dict[str, list[str]], state: dict
) -> list[dict]:
    """Write out/index.html for a study; return one summary row per job."""
    e = html.escape
    body = [
        f"<!doctype html><meta charset=utf-8><title>jaxviz study {e(name)}</title>",
        "<style>body{font-family:sans-serif;margin:2em;max-width:1400px}"
        "img{max-width:420px;max-height:420px;border:1px solid #ccc}"
        "figure{display:inline-block;margin:.4em;vertical-align:top}"
        "table{border-collapse:collapse;margin:.5em 0}td{border:1px solid #ddd;"
        "padding:2px 8px;font-size:90%}.err{color:#b00}section{margin-bottom:2em}</style>",
        f"<h1>jaxviz study: {e(name)}</h1>",
    ]
    rows = []
    for part, keys in parts.items():
        body.append(f"<h2>{e(part)}</h2>")
        for key in keys:
            section, row = _job_section(out, key, state)
            body.append(section)
            rows.append(row)
    body.append(
        "<h2>Summary</h2><table><tr><th>job</th><th>images</th><th>skipped</th>"
        "<th>seconds</th></tr>"
        + "".join(
            f"<tr><td>{e(r['job'])}</td><td>{r['images']}</td><td>{r['skipped']}</td>"
            f"<td>{r['seconds']:.1f}</td></tr>"
            for r in rows
        )
        + "</table>"
    )
    body.append(BROKEN_IMAGE_CHECK)
    data = "\n".join(body).encode()
    atomic_write(out / "index.html", lambda f: f.write(data))
    return rows
