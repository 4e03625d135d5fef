"""Dataset formats: the same labelled images as a folder, a labels file, tar shards, ArrayRecord
and Parquet stream identically; bad records are skipped and listed; malformed specs exit 2."""

import io
import json
import tarfile

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from jaxviz.cli import main
from jaxviz.data.pipeline import stream
from jaxviz.data.sources import as_source, open_source
from jaxviz.data.wds import expand_braces
from jaxviz.errors import UsageError
from jaxviz.models.preprocess import Preprocess

PRE = Preprocess((32, 32), None, (0.5,) * 3, (0.25,) * 3)
CLASSES = ("emu", "cat", "dog")  # not sorted: labels follow the sorted names
N = 60


def _jpeg(rng, k: int) -> bytes:
    """A smooth photo-like JPEG, some large enough (>= 2x the 32 px target) to be drafted."""
    h, w = (96, 128) if k % 3 == 0 else (40 + k % 7, 50 + k % 5)
    y, x = np.mgrid[0:h, 0:w]
    base = rng.uniform(0, 255, 3)
    img = base + 60 * np.sin(x[..., None] / (3 + k % 4) + y[..., None] / 5 + np.arange(3))
    buf = io.BytesIO()
    Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).save(buf, format="JPEG", quality=90)
    return buf.getvalue()


@pytest.fixture(scope="module")
def formats(tmp_path_factory):
    """{form: spec} of the same N labelled images in every format."""
    root = tmp_path_factory.mktemp("formats")
    rng = np.random.default_rng(0)
    rows = []
    for k in range(N):
        name = CLASSES[k % 3]
        (root / "folder" / name).mkdir(parents=True, exist_ok=True)
        rel = f"{name}/{k:03d}.jpg"
        (root / "folder" / rel).write_bytes(_jpeg(rng, k))
        rows.append((rel, name))
    rows.sort()  # the folder's order: class folders, then file names
    (root / "folder" / "labels.tsv").write_text(
        "path\tlabel\n" + "".join(f"{p}\t{c}\n" for p, c in rows)
    )
    specs = {
        "folder": str(root / "folder"),
        "labels": str(root / "folder" / "labels.tsv"),
    }
    for fmt in ("wds", "arrayrecord", "parquet"):
        argv = ["pack", "--data", specs["folder"], "--to", fmt, "--per-file", "20"]
        assert main([*argv, str(root / fmt)]) == 0
    specs["wds"] = str(root / "wds" / "data-{00000..00002}.tar")
    specs["arrayrecord"] = str(root / "arrayrecord")
    specs["parquet"] = str(root / "parquet" / "*.parquet")
    return specs


def _read(spec, batch_size, **kw):
    skipped = []
    batches = list(
        stream(open_source(spec), PRE, batch_size, on_skip=lambda *s: skipped.append(s), **kw)
    )
    assert skipped == []
    assert all(b.images.shape == (batch_size, 32, 32, 3) for b in batches)
    cat = lambda f: np.concatenate([f(b) for b in batches])  # noqa: E731
    return (
        cat(lambda b: b.index[b.mask]),
        cat(lambda b: b.labels[b.mask]),
        cat(lambda b: b.images[b.mask]),
    )


def test_every_format_streams_the_same_images(formats):
    want = _read(formats["folder"], 32)
    assert list(want[0]) == list(range(N))
    assert sorted(set(want[1].tolist())) == [0, 1, 2]
    for form, spec in formats.items():
        src = open_source(spec)
        assert len(src) == N and src.class_names == tuple(sorted(CLASSES)), form
        for bs in (1, 7, 32):
            got = _read(spec, bs)
            for a, b in zip(got, want, strict=True):
                np.testing.assert_array_equal(a, b, err_msg=f"{form} batch {bs}")


def test_draft_decoding_is_close_to_exact_and_switchable(formats):
    _, _, fast = _read(formats["folder"], 32)
    _, _, exact = _read(formats["folder"], 32, exact_decode=True)
    src = open_source(formats["folder"])
    big = np.asarray([i for i in range(N) if src.load(i).size == (128, 96)])  # at 1/2 scale
    assert 0 < len(big) < N
    assert (fast[big] != exact[big]).any()
    assert np.abs(fast.astype(int) - exact.astype(int)).mean() < 3.0
    small = np.setdiff1d(np.arange(N), big)
    np.testing.assert_array_equal(fast[small], exact[small])


def test_python_sequence_is_a_source():
    imgs = np.random.default_rng(1).integers(0, 255, (9, 32, 32, 3), np.uint8)
    src = as_source(
        [(Image.fromarray(a), k % 2) if k % 3 else (a, k % 2) for k, a in enumerate(imgs)]
    )
    batches = list(stream(src, PRE, 4))
    np.testing.assert_array_equal(np.concatenate([b.images[b.mask] for b in batches]), imgs)
    np.testing.assert_array_equal(
        np.concatenate([b.labels[b.mask] for b in batches]), np.arange(9) % 2
    )


def _skipped(out):
    return {
        s["id"]: s["reason"] for s in json.loads((out / "manifest.json").read_text())["skipped"]
    }


def _features(spec, out):
    return main(["features", "--model", "demo", "--random-init", "--data", spec, "--batch-size",
                 "4", "--out", str(out)])  # fmt: skip


def test_bad_records_in_tar_and_parquet_are_skipped_and_listed(tmp_path, formats):
    good = tmp_path / "g.png"
    Image.new("RGB", (20, 20), (9, 99, 199)).save(good)
    jpg = _jpeg(np.random.default_rng(3), 0)
    members = [("a.png", good.read_bytes()), ("a.cls", b"1"), ("b.jpg", jpg[: len(jpg) // 3]),
               ("c.txt", b"just words"), ("d.png", good.read_bytes())]  # fmt: skip
    with tarfile.open(tmp_path / "s.tar", "w") as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    assert _features(str(tmp_path / "s.tar"), tmp_path / "t") == 0
    skipped = _skipped(tmp_path / "t")
    assert set(skipped) == {f"{tmp_path / 's.tar'}#b", f"{tmp_path / 's.tar'}#c"}
    assert "no image member" in skipped[f"{tmp_path / 's.tar'}#c"]
    image = pa.array(
        [{"bytes": good.read_bytes(), "path": "a"}, {"bytes": None, "path": "b"}, None],
        pa.struct([("bytes", pa.binary()), ("path", pa.string())]),
    )
    pq.write_table(pa.table({"image": image, "label": [0, 1, 2]}), tmp_path / "p.parquet")
    skipped = []
    batches = list(stream(open_source(str(tmp_path / "p.parquet")), PRE, 2,
                          on_skip=lambda *s: skipped.append(s)))  # fmt: skip
    assert [b.index[b.mask].tolist() for b in batches] == [[0]]
    assert [s[:2] for s in skipped] == [(1, f"{tmp_path / 'p.parquet'}#1"),
                                        (2, f"{tmp_path / 'p.parquet'}#2")]  # fmt: skip
    assert all("null" in s[2] for s in skipped)


def test_evaluate_maps_class_names_and_skips_unknown_ones(tmp_path):
    """Shapes images sorted into class folders (alphabetical != the model's order) and a labels
    file of names give the accuracy of the same images as shapes:N; a missing path and an
    unknown class name are skipped and listed."""
    src = open_source("shapes:20:4")
    lines = ["file\tclass"]
    for i in range(20):
        name = src.class_names[src.info(i).label]
        (tmp_path / "f" / name).mkdir(parents=True, exist_ok=True)
        src.load(i).save(tmp_path / "f" / name / f"{i:02d}.png")
        lines.append(f"{name}/{i:02d}.png\t{name}")
    lines += ["gone.png\tcircle", "circle/00.png\tunicorn"]  # a missing file, an unknown class
    (tmp_path / "f" / "labels.tsv").write_text("\n".join(lines) + "\n")
    res = {}
    for key, spec in (("shapes", "shapes:20:4"), ("folder", str(tmp_path / "f")),
                      ("labels", str(tmp_path / "f" / "labels.tsv"))):  # fmt: skip
        out = tmp_path / key
        assert main(["evaluate", "--data", spec, "--out", str(out), "--batch-size", "8"]) == 0
        res[key] = json.loads((out / "manifest.json").read_text())
    for key in ("folder", "labels"):
        assert res[key]["results"]["images"] == 20
        assert res[key]["results"]["per_class"] == res["shapes"]["results"]["per_class"]
    skipped = _skipped(tmp_path / "labels")
    assert len(skipped) == 2 and any("unicorn" in r for r in skipped.values())
    assert any("not found" in r for r in skipped.values())


@pytest.mark.parametrize(
    "spec, needle",
    [
        ("shards/train-{0..}.tar", "bad brace group"),
        ("{HERE}/data-{00000..00003}.tar", "missing shard"),
        ("{HERE}/noimage.parquet", "no image column"),
        ("{HERE}/nopath.csv", "no path column"),
    ],
)
def test_malformed_specs_exit_2_with_one_line(formats, tmp_path, capsys, spec, needle):
    here = str(tmp_path)
    for k in range(3):  # three of four shards
        (tmp_path / f"data-{k:05d}.tar").write_bytes(b"")
    pq.write_table(pa.table({"x": [1, 2]}), tmp_path / "noimage.parquet")
    (tmp_path / "nopath.csv").write_text("name,label\na.jpg,1\n")
    spec = spec.replace("{HERE}", here)
    assert _features(spec, tmp_path / "out") == 2
    err = capsys.readouterr().err.strip()
    assert needle in err and len(err.splitlines()) == 1 and "Traceback" not in err


def test_brace_expansion():
    assert expand_braces("a-{08..11}-{x,y}.tar") == [
        f"a-{n}-{c}.tar" for n in ("08", "09", "10", "11") for c in "xy"
    ]
    with pytest.raises(UsageError, match="end before start"):
        expand_braces("{5..1}")
