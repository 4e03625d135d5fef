"""The synthetic shapes set: determinism, random access, tight boxes, balance, speed."""

import time

import numpy as np
import pytest

from jaxviz.data.shapes import CLASS_NAMES, ShapesSet, bounding_box


def test_deterministic_per_seed_and_index():
    a, b, c = ShapesSet(50, seed=7), ShapesSet(50, seed=7), ShapesSet(50, seed=8)
    for i in (0, 13, 49):
        img_a, lab_a, box_a = a.sample(i)
        img_b, lab_b, box_b = b.sample(i)
        assert img_a.dtype == np.uint8 and img_a.shape == (64, 64, 3)
        assert img_a.tobytes() == img_b.tobytes() and (lab_a, box_a) == (lab_b, box_b)
        assert img_a.tobytes() != c.sample(i)[0].tobytes()
    assert a.sample(1)[0].tobytes() != a.sample(2)[0].tobytes()


def test_random_access_equals_sequential():
    ds = ShapesSet(30, seed=3)
    seq = [ds.sample(i) for i in range(30)]
    for i in np.random.default_rng(0).permutation(30):
        img, label, box = ShapesSet(30, seed=3).sample(int(i))
        assert img.tobytes() == seq[i][0].tobytes() and (label, box) == seq[i][1:]


def test_image_does_not_depend_on_n():
    assert ShapesSet(10, seed=2).sample(5)[0].tobytes() == (
        ShapesSet(100_000, seed=2).sample(5)[0].tobytes()
    )


@pytest.mark.parametrize("size", [64, 96])
def test_box_is_tight_around_the_object_and_the_rest_is_background(size):
    ds = ShapesSet(40, seed=11, size=size)
    for i in range(40):
        img, label, (y0, x0, y1, x1) = ds.sample(i)
        lay = ds.layers(i)
        assert label == lay.label == ds.label(i)
        assert 0 <= y0 < y1 <= size and 0 <= x0 < x1 <= size
        on = lay.alpha > 0
        inside = np.zeros_like(on)
        inside[y0:y1, x0:x1] = True
        assert not (on & ~inside).any()  # every object pixel is in the box
        # tight: the object touches all four edges of the box
        assert on[y0].any() and on[y1 - 1].any() and on[:, x0].any() and on[:, x1 - 1].any()
        # off the object, the image is exactly the background; on it, it is not
        bg = np.clip(lay.background + 0.5, 0, 255).astype(np.uint8)
        assert np.array_equal(img[~on], bg[~on])
        full = lay.alpha == 1.0
        assert np.abs(img[full].astype(int) - bg[full].astype(int)).sum(-1).mean() > 30


def test_bounding_box_by_hand():
    a = np.zeros((8, 8), np.float32)
    a[2, 3] = 0.25
    a[5, 6] = 1.0
    assert bounding_box(a) == (2, 3, 6, 7)


def test_classes_balanced_and_all_drawn():
    ds = ShapesSet(1000, seed=0)
    labels = np.array([ds.label(i) for i in range(1000)])
    assert np.array_equal(np.bincount(labels, minlength=10), np.full(10, 100))
    # shuffled within blocks, not i % 10
    assert (labels != np.arange(1000) % 10).mean() > 0.5
    assert len(CLASS_NAMES) == 10
    seen = {ds.sample(i)[1] for i in range(30)}
    assert seen == set(range(10))


def test_index_out_of_range():
    with pytest.raises(IndexError):
        ShapesSet(5).sample(5)


def test_generation_speed():
    # CPU time, not wall time: the shared test machine is loaded
    ds = ShapesSet(100_000, seed=1)
    t, c = time.perf_counter(), time.process_time()
    for i in range(200):
        ds.sample(i)
    ms = (time.process_time() - c) / 200 * 1e3
    wall = (time.perf_counter() - t) / 200 * 1e3
    print(f"\nshapes: {ms:.2f} ms CPU ({wall:.2f} ms wall) per 64x64 image, one thread")
    assert ms < 10
