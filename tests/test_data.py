"""Sources and the streaming batcher: good images exactly once, bad ones skipped with reasons."""

import io

import numpy as np
import pytest
from PIL import Image

from jaxviz.data.pipeline import stream
from jaxviz.data.sources import open_source
from jaxviz.errors import UsageError
from jaxviz.models.preprocess import Preprocess

PRE = Preprocess((32, 32), None, (0.5,) * 3, (0.25,) * 3)


def _write_mixed_folder(root):
    """Good RGB, grayscale, RGBA, palette, CMYK, 16-bit; bad: empty, text as png, truncated."""
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 255, (40, 50, 3), np.uint8)
    good = {
        "a_rgb.png": Image.fromarray(rgb),
        "b_gray.png": Image.fromarray(rgb[..., 0]),
        "c_rgba.png": Image.fromarray(np.dstack([rgb, rgb[..., :1]])),
        "d_palette.png": Image.fromarray(rgb).convert("P"),
        "e_cmyk.jpg": Image.fromarray(rgb).convert("CMYK"),
        "f_16bit.png": Image.fromarray(rgb[..., 0].astype(np.uint16) * 257),
    }
    for name, im in good.items():
        im.save(root / name)
    (root / "g_empty.jpg").write_bytes(b"")
    (root / "h_text.png").write_text("this is not an image")
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="JPEG")
    (root / "i_truncated.jpg").write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    (root / "notes.txt").write_text("ignored: not an image extension")
    return sorted(good), ["g_empty.jpg", "h_text.png", "i_truncated.jpg"]


def test_folder_with_bad_files_streams_every_good_image_once(tmp_path):
    good, bad = _write_mixed_folder(tmp_path)
    src = open_source(str(tmp_path))
    skipped = []
    batches = list(stream(src, PRE, 4, on_skip=lambda i, id_, why: skipped.append((id_, why))))
    seen = np.concatenate([b.index[b.mask] for b in batches])
    assert sorted(src.info(i).id.rsplit("/", 1)[1] for i in seen) == good
    assert sorted(s[0].rsplit("/", 1)[1] for s in skipped) == bad
    assert all(why for _, why in skipped)
    assert all(b.images.shape == (4, 32, 32, 3) and b.images.dtype == np.uint8 for b in batches)
    last = batches[-1]
    assert (last.index[~last.mask] == -1).all() and (last.images[~last.mask] == 0).all()


def test_batches_invariant_to_batch_size_and_sharded_by_process():
    src = open_source("shapes:23:5")
    a = np.concatenate([b.images[b.mask] for b in stream(src, PRE, 1)])
    b = np.concatenate([b.images[b.mask] for b in stream(src, PRE, 7)])
    np.testing.assert_array_equal(a, b)
    parts = [
        np.concatenate(
            [b.index[b.mask] for b in stream(src, PRE, 4, process_index=p, process_count=3)]
        )
        for p in range(3)
    ]
    assert sorted(np.concatenate(parts).tolist()) == list(range(23))
    assert all(set(p) & set(q) == set() for p in parts for q in parts if p is not q)


def test_resume_from_next_index_continues_exactly():
    src = open_source("shapes:20:1")
    full = [b.index[b.mask] for b in stream(src, PRE, 6)]
    first = next(iter(stream(src, PRE, 6)))
    rest = [b.index[b.mask] for b in stream(src, PRE, 6, start=first.next_index)]
    np.testing.assert_array_equal(np.concatenate([first.index] + rest), np.concatenate(full))


def test_array_sources_and_labels(tmp_path):
    imgs = np.random.default_rng(0).integers(0, 255, (5, 32, 32, 3), np.uint8)
    np.save(tmp_path / "x.npy", imgs)
    np.savez(tmp_path / "y.npz", images=imgs, labels=np.arange(5))
    for spec in (str(tmp_path / "x.npy"), str(tmp_path / "y.npz")):
        got = np.concatenate([b.images[b.mask] for b in stream(open_source(spec), PRE, 2)])
        np.testing.assert_array_equal(got, imgs)
    assert open_source(str(tmp_path / "y.npz")).info(3).label == 3


def test_list_glob_and_imagefolder_labels(tmp_path):
    for cls in ("cat", "dog"):
        (tmp_path / cls).mkdir()
        for k in range(2):
            Image.new("RGB", (8, 8), (k, 0, 0)).save(tmp_path / cls / f"{k}.png")
    src = open_source(str(tmp_path))
    assert src.class_names == ("cat", "dog")
    assert [src.info(i).label for i in range(4)] == [0, 0, 1, 1]
    (tmp_path / "list.txt").write_text("cat/0.png\ndog/1.png\n")
    assert len(open_source(str(tmp_path / "list.txt"))) == 2
    assert len(open_source(str(tmp_path / "*" / "*.png"))) == 4


@pytest.mark.parametrize(
    "spec,needle",
    [
        ("shapes:abc", "shapes:N"),
        ("shapes:0", "shapes:N"),
        ("/no/such/dir", "no such file"),
        ("missing.npy", "not found"),
        ("/tmp/*.nothing-matches", "matches no files"),
    ],
)
def test_bad_specs_are_usage_errors(spec, needle):
    with pytest.raises(UsageError, match=needle):
        open_source(spec)


def test_samples_are_real_photos():
    src = open_source("samples")
    assert "samples:chelsea" in [src.info(i).id for i in range(len(src))]
    assert src.load(0).mode == "RGB" and min(src.load(0).size) >= 256


def test_explicit_indices_resume_by_position_and_shard():
    src = open_source("shapes:20:2")
    order = [7, 3, 3, 19, 0, 11, 5]
    full = [b for b in stream(src, PRE, 3, indices=order)]
    assert np.concatenate([b.index[b.mask] for b in full]).tolist() == order
    assert [b.next_index for b in full] == [3, 6, 7]  # positions in `order`
    rest = [b.index[b.mask] for b in stream(src, PRE, 3, indices=order, start=full[0].next_index)]
    assert np.concatenate(rest).tolist() == order[3:]
    parts = [
        np.concatenate([b.index[b.mask] for b in stream(src, PRE, 2, indices=order,
                                                        process_index=p, process_count=2)])
        for p in range(2)
    ]  # fmt: skip
    assert parts[0].tolist() + parts[1].tolist() == order  # contiguous blocks (grain's split)


class Hostile:
    """Item 5 raises; item 11 kills the worker process that reads it."""

    def __len__(self):
        return 24

    def __getitem__(self, i):
        import multiprocessing
        import os
        import signal

        if i == 11 and multiprocessing.parent_process() is not None:
            os.kill(os.getpid(), signal.SIGKILL)
        if i == 5:
            raise ValueError("bad five")
        return np.full((8, 8, 3), i, np.uint8), i % 3


def test_failures_inside_worker_processes_skip_the_item_only():
    from jaxviz.data.sources import as_source

    skipped = []
    batches = list(stream(as_source(Hostile()), PRE, 7, workers=2,
                          on_skip=lambda *s: skipped.append(s)))  # fmt: skip
    got = np.concatenate([b.index[b.mask] for b in batches])
    assert got.tolist() == [i for i in range(24) if i not in (5, 11)]
    assert [s[0] for s in skipped] == [5, 11]
    assert "bad five" in skipped[0][2] and "worker process died" in skipped[1][2]
    images = np.concatenate([b.images[b.mask] for b in batches])
    np.testing.assert_array_equal(images[:, 0, 0, 0], got)
    assert batches[-1].next_index == 24
