"""Maximally activating patches: exact vs a brute-force global sort (1 and 4 devices, several
batch sizes, ties), receptive-field crops contain every input pixel the unit depends on, the
running state checkpoints, and the `jaxviz patches` job writes what it promises."""

import dataclasses
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import Mesh

from jaxviz.cli import main
from jaxviz.data.sources import open_source
from jaxviz.jobs import scan as scan_module
from jaxviz.jobs.output import JobOutput
from jaxviz.methods.channel_stats import ChannelStats
from jaxviz.methods.patches import PatchMiner, crop_patch, merge_top_k
from jaxviz.models.stage import forward, init_params, receptive_fields
from jaxviz.models.zoo import entry, load_model

LAYER = "conv2"
K = 9
SUBSET = [0, 3, 5, 17, 40, 63]


class StoreAll:
    """Brute force: keeps every activation of a stage, keyed by source index."""

    def __init__(self, layer):
        self.name, self.taps, self.layer, self.rows = "store_all", (layer,), layer, {}

    def reduce(self, taps, mask):
        return taps[self.layer]

    def update(self, batch, result):
        for i, a in zip(batch.index[batch.mask], result[batch.mask], strict=True):
            self.rows[int(i)] = a

    def finish(self):
        ids = np.array(sorted(self.rows), np.int64)
        return {"ids": ids, "acts": np.stack([self.rows[i] for i in ids])}


def brute_force(acts, ids, k, per_image_max):
    """Global sort of every unit (value desc, image id, y, x): {"values", "image", "y", "x"}."""
    n, h, w, c = acts.shape
    flat = acts.reshape(n, h * w, c).astype(np.float32)
    if per_image_max:
        pos = np.argmax(flat, axis=1)  # first maximum in row-major order
        vals = np.take_along_axis(flat, pos[:, None, :], axis=1)[:, 0]  # [N, C]
        img = np.repeat(ids[:, None], c, axis=1)
    else:
        vals = flat.reshape(n * h * w, c)
        pos = np.tile(np.arange(h * w)[:, None], (n, c))
        img = np.repeat(ids, h * w)[:, None].repeat(c, axis=1)
    out = {n_: [] for n_ in ("values", "image", "y", "x")}
    for ch in range(c):
        order = np.lexsort((pos[:, ch], img[:, ch], -vals[:, ch].astype(np.float64)))[:k]
        out["values"].append(vals[order, ch])
        out["image"].append(img[order, ch])
        out["y"].append(pos[order, ch] // w)
        out["x"].append(pos[order, ch] % w)
    return {n_: np.stack(v) for n_, v in out.items()}


@pytest.fixture(scope="module")
def tie_data(tmp_path_factory):
    """23 shapes images where 17 and 20 repeat 3, 22 repeats 10 (exact ties across and within
    batches) and 12 is flat grey (ties between positions)."""
    src = open_source("shapes:23:5")
    images = np.stack([np.asarray(src.load(i)) for i in range(23)])
    images[17] = images[20] = images[3]
    images[22] = images[10]
    images[12] = 128
    path = tmp_path_factory.mktemp("ties") / "ties.npz"
    np.savez(path, images=images)
    return str(path)


def _mesh(n):
    return Mesh(np.array(jax.local_devices()[:n]), ("batch",))


def _run(model, params, spec, consumers, batch_size, out_dir, devices, monkeypatch, **kw):
    monkeypatch.setattr(scan_module, "local_mesh", lambda: _mesh(devices))
    out = JobOutput(out_dir, "t", {})
    return scan_module.scan(
        model, params, open_source(spec), consumers, batch_size=batch_size, out=out, **kw
    )


@pytest.fixture(scope="module")
def reference(demo_random, tie_data):
    """Activations of every image from one plain forward pass."""
    model, params = demo_random
    src = open_source(tie_data)
    imgs = np.stack([model.preprocess.to_uint8(src.load(i)) for i in range(len(src))])
    _, taps = forward(model, params, model.preprocess.normalize(imgs), stop=LAYER)
    return np.asarray(taps[LAYER])


@pytest.mark.parametrize("devices", [1, 4])
@pytest.mark.parametrize("batch_size", [1, 5, 32])
def test_mining_equals_brute_force(
    demo_random, tie_data, reference, tmp_path, monkeypatch, devices, batch_size
):
    model, params = demo_random
    mesh = _mesh(devices)
    store = StoreAll(LAYER)
    every = PatchMiner(LAYER, SUBSET, K, mesh=mesh, name="every")
    per_image = PatchMiner(LAYER, None, K, per_image_max=True, mesh=mesh, name="per_image")
    stats = ChannelStats(LAYER)
    res = _run(
        model,
        params,
        tie_data,
        [store, every, per_image, stats],
        batch_size,
        tmp_path,
        devices,
        monkeypatch,
    )
    ids, acts = res["store_all"]["ids"], res["store_all"]["acts"]
    assert list(ids) == list(range(23))
    # exact: the same numbers sorted globally give the same ids, positions and values
    for name, sel, pim in (("every", SUBSET, False), ("per_image", slice(None), True)):
        want = brute_force(acts[..., sel], ids, K, pim)
        for field in ("image", "y", "x", "values"):
            np.testing.assert_array_equal(res[name][field], want[field], err_msg=field)
        # and the same as one forward pass over the whole set (values to float tolerance)
        ref = brute_force(reference[..., sel], ids, K, pim)
        np.testing.assert_allclose(res[name]["values"], ref["values"], rtol=1e-5, atol=1e-6)
    # the duplicated images really tie: per-image winners hold 3 before 17 before 20
    top = res["per_image"]
    for ch in range(top["image"].shape[0]):
        row = [i for i in top["image"][ch] if i in (3, 17, 20)]
        assert row == sorted(row)
    assert np.any(np.isin(top["image"], [17, 20]))
    st = res["channel_stats"]
    np.testing.assert_allclose(st["mean"], reference.mean(axis=(0, 1, 2)), rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(st["max"], reference.max(axis=(0, 1, 2)), rtol=1e-6)
    np.testing.assert_allclose(st["frac_positive"], (reference > 0).mean(axis=(0, 1, 2)))


def test_state_resumes(demo_random, tie_data, tmp_path, monkeypatch):
    """Mining [0, 11) then, from the saved state, [11, 23) equals mining [0, 23) at once."""
    model, params = demo_random
    whole = PatchMiner(LAYER, SUBSET, K, mesh=_mesh(4))
    first = PatchMiner(LAYER, SUBSET, K, mesh=_mesh(4))
    full = _run(model, params, tie_data, [whole], 8, tmp_path / "a", 4, monkeypatch)
    _run(model, params, tie_data, [first], 8, tmp_path / "b", 4, monkeypatch, stop=11)
    second = PatchMiner(LAYER, SUBSET, K, mesh=_mesh(4))
    second.load_state(first.state())
    part = _run(model, params, tie_data, [second], 8, tmp_path / "c", 4, monkeypatch, start=11)
    for field in ("image", "y", "x", "values"):
        np.testing.assert_array_equal(part["patches"][field], full["patches"][field])


def test_merge_ranks_ties_by_image_then_position():
    a = {
        "values": np.array([[2.0, 1.0, 1.0]], np.float32),
        "image": np.array([[7, 7, 9]]),
        "y": np.array([[0, 3, 0]], np.int32),
        "x": np.array([[0, 1, 0]], np.int32),
    }
    b = {
        "values": np.array([[1.0, 1.0, -np.inf]], np.float32),
        "image": np.array([[7, 2, -1]]),
        "y": np.array([[3, 5, 0]], np.int32),
        "x": np.array([[0, 5, 0]], np.int32),
    }
    m = merge_top_k(a, b, 5)
    assert m["image"].tolist() == [[7, 2, 7, 7, 9]]
    assert m["y"].tolist() == [[0, 5, 3, 3, 0]] and m["x"].tolist() == [[0, 5, 0, 1, 0]]
    m = merge_top_k(a, b, 7)  # more slots than entries: the empty one and padding rank last
    assert m["image"][0, 5:].tolist() == [-1, -1] and np.all(np.isneginf(m["values"][0, 5:]))


def test_crop_patch_pads_outside_with_grey():
    image = np.arange(10 * 12 * 3, dtype=np.uint8).reshape(10, 12, 3)
    p = crop_patch(image, (-2, 8, 5, 15), 7)
    np.testing.assert_array_equal(p[2:, :4], image[0:5, 8:12])
    assert np.all(p[:2] == 128) and np.all(p[:, 4:] == 128)
    assert crop_patch(image, (-2, 8, 5, 15), 14).shape == (14, 14, 3)


def _assert_gradients_inside(model, params, layer, images, chans, ys, xs):
    """Every unit's input gradient is zero outside its clipped receptive-field box, and non-zero
    inside it when the unit is active (most of them must be, or the check would be vacuous)."""
    rf = receptive_fields(model)[layer]
    rows = jnp.arange(len(chans))

    def units(x):
        acts = forward(model, params, x, stop=layer)[0]
        return acts[rows, jnp.asarray(ys), jnp.asarray(xs), jnp.asarray(chans)]

    x = model.preprocess.normalize(jnp.asarray(images))
    value = np.asarray(jax.jit(units)(x))
    g = np.abs(np.asarray(jax.jit(jax.grad(lambda v: jnp.sum(units(v))))(x))).sum(-1)
    assert np.mean(value > 0) >= 0.5, value
    for p in range(len(chans)):
        y0, x0, y1, x1 = rf.box(int(ys[p]), int(xs[p]), g.shape[1:])
        if value[p] > 0:
            assert g[p, y0:y1, x0:x1].max() > 0, f"active unit {p} ignores its patch"
        outside = g[p].copy()
        outside[y0:y1, x0:x1] = 0
        assert not outside.any(), f"unit {p} depends on pixels outside {(y0, x0, y1, x1)}"


def _mined_units(model, params, layer, chans, spec, tmp_path, monkeypatch):
    miner = PatchMiner(layer, chans, 3, per_image_max=True, mesh=_mesh(4))
    top = _run(model, params, spec, [miner], 4, tmp_path, 4, monkeypatch)["patches"]
    src = open_source(spec)
    c, k = top["image"].shape
    images = np.stack(
        [model.preprocess.to_uint8(src.load(int(i))) for i in top["image"].reshape(-1)]
    )
    chans = np.repeat(np.asarray(chans), k)
    return images, chans, top["y"].reshape(-1), top["x"].reshape(-1)


@pytest.mark.parametrize("layer", ["conv1", "conv2", "conv3"])
def test_receptive_field_boxes_demo(demo_random, tmp_path, monkeypatch, layer):
    model, params = demo_random
    units = _mined_units(model, params, layer, [0, 1, 7], "shapes:12:1", tmp_path, monkeypatch)
    _assert_gradients_inside(model, params, layer, *units)


def test_receptive_field_boxes_alexnet(tmp_path, monkeypatch):
    # load_model("alexnet", random_init=True) truncated after conv5: the 58M fc weights are
    # not needed and their random init alone costs ~15 CPU seconds
    full = entry("alexnet").build()
    model = dataclasses.replace(full, stages=full.stages[: full.index("conv5") + 1])
    params = init_params(model, jax.random.key(0))
    images, chans, ys, xs = _mined_units(
        model, params, "conv5", [0, 17, 100], "shapes:4:2", tmp_path, monkeypatch
    )
    # also corner units (fields leaving the image), each in the channel most active there
    _, taps = forward(model, params, model.preprocess.normalize(images[:2]), stop="conv5")
    corner = [(0, 0), (12, 12)]
    best = [int(np.argmax(np.asarray(taps["conv5"])[i, y, x])) for i, (y, x) in enumerate(corner)]
    images = np.concatenate([images, images[:2]])
    chans = np.concatenate([chans, best])
    ys = np.concatenate([ys, [y for y, _ in corner]])
    xs = np.concatenate([xs, [x for _, x in corner]])
    _assert_gradients_inside(model, params, "conv5", images, chans, ys, xs)


def test_job_writes_patches(tmp_path):
    out = tmp_path / "out"
    argv = [
        "patches",
        "--model",
        "demo",
        "--random-init",
        "--layer",
        "conv2",
        "--channels",
        "0-2,9",
        "--top",
        "4",
        "--per-image-max",
        "--data",
        "shapes:30",
        "--batch-size",
        "8",
        "--out",
        str(out),
    ]
    assert main(argv) == 0
    m = json.loads((out / "manifest.json").read_text())
    assert m["counts"]["images"] == 30 and m["results"]["channels"] == 4
    recs = json.loads((out / "patches.json").read_text())["patches"]
    assert [r["channel"] for r in recs] == [c for c in (0, 1, 2, 9) for _ in range(4)]
    values, image = np.load(out / "top_values.npy"), np.load(out / "top_image.npy")
    assert [r["value"] for r in recs] == pytest.approx(values.reshape(-1).tolist())
    for ch in range(4):  # one patch per image, strongest first
        assert len(set(image[ch])) == 4 and np.all(np.diff(values[ch]) <= 0)
    patches = np.load(out / "patches.npy")
    src = open_source("shapes:30")
    r = recs[5]
    rf = receptive_fields(load_model("demo", random_init=True)[0])["conv2"]
    want = crop_patch(np.asarray(src.load(r["image"])), rf.box(r["y"], r["x"]), patches.shape[2])
    np.testing.assert_array_equal(patches[1, 1], want)
    assert r["box"] == list(rf.box(r["y"], r["x"], (64, 64)))
    assert len(np.load(out / "channel_mean.npy")) == 64
    for ch in (0, 1, 2, 9):
        assert (out / "grids" / f"channel_{ch:04d}.png").exists()
    assert (out / "overview.png").exists() and (out / "index.html").exists()


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--layer", "fc"], "no spatial map"),
        (["--layer", "conv9"], "unknown layer"),
        (["--layer", "conv2", "--channels", "60-70"], "channels 0-63"),
        (["--layer", "conv2", "--channels", "a-b"], "bad --channels"),
    ],
)
def test_job_usage_errors(tmp_path, capsys, extra, message):
    argv = ["patches", "--random-init", "--data", "shapes:4", "--out", str(tmp_path), *extra]
    assert main(argv) == 2
    assert message in capsys.readouterr().err


def test_trained_demo_conv2_patches_fall_on_objects(tmp_path):
    """With the shipped demo weights, most conv2 channels' top patches lie on the shape (chance:
    about a quarter of conv2's units have half their field on the object); a box or coordinate
    mix-up would drop this to chance."""
    out = tmp_path / "trained"
    argv = ["patches", "--layer", "conv2", "--top", "9", "--per-image-max", "--data",
            "shapes:300", "--batch-size", "50", "--out", str(out)]  # fmt: skip
    assert main(argv) == 0
    on = json.loads((out / "manifest.json").read_text())["results"]["on_object"]
    assert on["channel_fraction"] >= 0.5 and on["patch_fraction"] >= 0.5, on
