"""The atlas site: static HTML pages over the atlas job's PNGs, readable from file:// (no server).

    index.html               the model: stages, shapes, receptive fields; the features stage's
                             t-SNE mosaic and neighbour grids; a link per mined layer
    LAYER/index.html         a grid of channel cards (top patch, feature visualization, stats),
                             sortable by channel, mean, max, sparsity, dead (a few lines of JS)
    LAYER/cNNNN.html         one channel: feature visualization, top patches, full images with
                             the receptive field boxed, statistics, class histogram

Rendering only: the job computes every number and writes every picture; this module draws boxes
and writes pages. Every page reports broken images on <body> (data-images / data-broken).
"""

from __future__ import annotations

import html

import numpy as np
from PIL import Image, ImageDraw

from jaxviz.render.report import BROKEN_IMAGE_CHECK

STYLE = """<style>
body{font-family:sans-serif;margin:1.5em;max-width:1400px}
img{image-rendering:pixelated;border:1px solid #ccc}
table{border-collapse:collapse}td,th{border:1px solid #ddd;padding:2px 8px;font-size:90%}
.cards{display:flex;flex-wrap:wrap;gap:6px}
.card{border:1px solid #ccc;padding:3px;font-size:75%;width:136px;text-align:center}
.card img{width:64px;height:64px}.dead{background:#fdd}.dead img{opacity:.35}
.bar{background:#69c;height:.9em;display:inline-block}
nav a{margin-right:1em}figure{display:inline-block;margin:.4em;vertical-align:top}
</style>"""
SORT_JS = """<script>
function sortCards(key, desc) {
  const g = document.getElementById("cards");
  [...g.children].sort((a, b) => (desc ? -1 : 1) * (a.dataset[key] - b.dataset[key]))
    .forEach((c) => g.appendChild(c));
}
</script>"""
E = html.escape


def boxed(image: np.ndarray, box: tuple[int, int, int, int], size: int) -> np.ndarray:
    """image [H, W, 3] uint8 scaled to fit size x size (nearest), with `box` (y0, x0, y1, x1,
    end exclusive, input pixels) drawn as a 2 px yellow frame: [h', w', 3] uint8."""
    h, w = image.shape[:2]
    scale = size / max(h, w)
    pil = Image.fromarray(image).resize((round(w * scale), round(h * scale)), Image.NEAREST)
    if box[0] >= 0:
        y0, x0, y1, x1 = (round(v * scale) for v in box)
        ImageDraw.Draw(pil).rectangle((x0, y0, x1 - 1, y1 - 1), outline=(255, 220, 0), width=2)
    return np.asarray(pil)


def _page(title: str, body: list[str], script: str = "") -> str:
    parts = [f"<!doctype html><meta charset=utf-8><title>{E(title)}</title>", STYLE, script]
    return "\n".join(parts + body + [BROKEN_IMAGE_CHECK])


def _fmt(v: float) -> str:
    return f"{v:.4g}"


def _stats_table(stats: dict) -> str:
    rows = "".join(f"<tr><td>{E(k)}</td><td>{E(str(v))}</td></tr>" for k, v in stats.items())
    return f"<table>{rows}</table>"


def _histogram(hist: dict[str, int]) -> str:
    """Class histogram of a channel's top images as HTML bars (no picture needed)."""
    if not hist:
        return "<p>the data has no labels</p>"
    most = max(hist.values())
    rows = "".join(
        f"<tr><td>{E(name)}</td><td><span class=bar style='width:{120 * n / most:.0f}px'>"
        f"</span> {n}</td></tr>"
        for name, n in sorted(hist.items(), key=lambda kv: -kv[1])
    )
    return f"<table>{rows}</table>"


def overview_page(site: dict) -> str:
    """index.html. site: {"model", "data", "images", "stages": [{"name", "shape", "rf",
    "layer"?: {"channels", "dead"}}], "features": {"tsne"?: dir, "neighbors"?: [png paths],
    "stage"} or None}; paths relative to the site."""
    body = [
        f"<h1>atlas of {E(site['model'])}</h1>",
        f"<p>{site['images']} images of {E(site['data'])}; "
        "<a href='manifest.json'>manifest</a></p>",
        "<h2>Stages</h2><table><tr><th>stage</th><th>output</th><th>receptive field</th>"
        "<th>stride</th><th>offset</th><th>atlas</th></tr>",
    ]
    for st in site["stages"]:
        rf = st["rf"]
        cells = [E(st["name"]), "x".join(map(str, st["shape"]))]
        cells += ["whole image", "", ""] if rf is None else [
            f"{rf.size[0]}x{rf.size[1]}", str(rf.stride[0]), str(rf.offset[0])
        ]  # fmt: skip
        layer = st.get("layer")
        cells.append(
            f"<a href='{E(st['name'])}/index.html'>{layer['channels']} channels</a>, "
            f"{layer['dead']} dead"
            if layer
            else ""
        )
        body.append("<tr>" + "".join(f"<td>{c}</td>" for c in cells) + "</tr>")
    body.append("</table>")
    feats = site.get("features")
    if feats:
        body.append(f"<h2>Features ({E(feats['stage'])})</h2>")
        if feats.get("tsne"):
            t = E(feats["tsne"])
            body.append(
                f"<figure><a href='{t}/mosaic.png'><img src='{t}/mosaic.png' alt='t-SNE mosaic' "
                f"width=480></a><figcaption>t-SNE mosaic (<a href='{t}/index.html'>t-SNE job</a>)"
                f"</figcaption></figure><figure><a href='{t}/scatter.png'><img "
                f"src='{t}/scatter.png' alt='t-SNE by label' width=480></a>"
                "<figcaption>t-SNE by label</figcaption></figure>"
            )
        else:
            body.append(f"<p>no t-SNE: {E(feats.get('tsne_note', ''))}</p>")
        if feats.get("neighbors"):
            body.append("<h3>Nearest neighbours (query first)</h3>")
            body += [f"<div><img src='{E(p)}' alt='{E(p)}'></div>" for p in feats["neighbors"]]
    return _page(f"atlas: {site['model']}", body)


DEAD_NOTE = (
    "<p class=dead>This channel is never &gt; 0 on the data: its top units are ties at 0 in "
    "scan order, not what it detects, and it has no feature visualization (its gradient is 0).</p>"
)


def layer_pages(model: str, layer: dict, channels: list[dict]) -> dict[str, str]:
    """{relative path: page}: LAYER/index.html and LAYER/cNNNN.html per channel.

    layer: {"name", "shape", "rf", "units"}. channels: per channel {"channel", "mean", "std",
    "max", "frac_positive", "dead", "top": [{"rank", "value", "id", "label", "box"}],
    "hist": {class: count}}; pictures are LAYER/cNNNN_{viz,top,patches,images}.png.
    """
    name = layer["name"]
    cards = []
    for c in channels:
        stem = f"c{c['channel']:04d}"
        cards.append(
            f"<a class='card{' dead' if c['dead'] else ''}' href='{stem}.html' "
            f"data-channel={c['channel']} data-mean={c['mean']:.6g} data-max={c['max']:.6g} "
            f"data-frac={c['frac_positive']:.6g} data-dead={int(c['dead'])}>"
            f"<img src='{stem}_top.png' alt='top patch {c['channel']}'>"
            f"<img src='{stem}_viz.png' alt='feature visualization {c['channel']}'><br>"
            f"ch {c['channel']}{' dead' if c['dead'] else ''}<br>mean {_fmt(c['mean'])} "
            f"max {_fmt(c['max'])}<br>&gt;0: {c['frac_positive']:.1%}</a>"
        )
    rf = layer["rf"]
    body = [
        "<nav><a href='../index.html'>model overview</a></nav>",
        f"<h1>{E(model)} {E(name)}</h1>",
        f"<p>output {'x'.join(map(str, layer['shape']))}, receptive field {rf.size[0]}x"
        f"{rf.size[1]} stride {rf.stride[0]}; {len(channels)} channels, "
        f"{sum(c['dead'] for c in channels)} dead (never &gt; 0 on the data); each card: top "
        "patch, feature visualization</p>",
        "<p>sort: <button onclick=\"sortCards('channel', false)\">channel</button> "
        "<button onclick=\"sortCards('mean', true)\">mean activation</button> "
        "<button onclick=\"sortCards('max', true)\">max activation</button> "
        "<button onclick=\"sortCards('frac', false)\">sparsity</button> "
        "<button onclick=\"sortCards('dead', true)\">dead first</button></p>",
        "<div id=cards class=cards>",
        *cards,
        "</div>",
    ]
    pages = {f"{name}/index.html": _page(f"{model} {name}", body, SORT_JS)}
    for j, c in enumerate(channels):
        prev = channels[j - 1]["channel"] if j > 0 else None
        nxt = channels[j + 1]["channel"] if j + 1 < len(channels) else None
        page = _channel_page(model, name, c, prev, nxt)
        pages[f"{name}/c{c['channel']:04d}.html"] = page
    return pages


def _channel_page(model: str, layer: str, c: dict, prev: int | None, nxt: int | None) -> str:
    stem = f"c{c['channel']:04d}"
    nav = ["<a href='../index.html'>model overview</a>", f"<a href='index.html'>{E(layer)}</a>"]
    if prev is not None:
        nav.append(f"<a href='c{prev:04d}.html'>previous (ch {prev})</a>")
    if nxt is not None:
        nav.append(f"<a href='c{nxt:04d}.html'>next (ch {nxt})</a>")
    stats = {
        "mean": _fmt(c["mean"]),
        "std": _fmt(c["std"]),
        "max": _fmt(c["max"]),
        "fraction > 0": f"{c['frac_positive']:.2%}",
        "dead": "yes (never > 0 on the data)" if c["dead"] else "no",
    }
    top = "".join(
        f"<tr><td>{t['rank']}</td><td>{_fmt(t['value'])}</td><td>{E(t['id'])}</td>"
        f"<td>{E(str(t['label']))}</td><td>{E(str(t['box']))}</td></tr>"
        for t in c["top"]
    )
    body = [
        "<nav>" + "".join(nav) + "</nav>",
        f"<h1>{E(model)} {E(layer)} channel {c['channel']}</h1>",
        f"<figure><img src='{stem}_viz.png' alt='feature visualization' width=192>"
        "<figcaption>feature visualization</figcaption></figure>",
        *([DEAD_NOTE] if c["dead"] else []),
        f"<figure><img src='{stem}_patches.png' alt='top patches'>"
        "<figcaption>top patches (receptive fields), strongest first</figcaption></figure>",
        f"<figure><img src='{stem}_images.png' alt='top images'>"
        "<figcaption>their images, receptive field boxed</figcaption></figure>",
        "<h2>Statistics</h2>",
        _stats_table(stats),
        "<h2>Labels of the top images</h2>",
        _histogram(c["hist"]),
        "<h2>Top units</h2><table><tr><th>rank</th><th>value</th><th>image</th><th>label</th>"
        f"<th>box (y0, x0, y1, x1)</th></tr>{top}</table>",
    ]
    return _page(f"{model} {layer} ch {c['channel']}", body)
