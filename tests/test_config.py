"""Typed job configs: one declaration serves the CLI, the study and `jaxviz.run`; every range is
checked (exit 2, one line); `jaxviz.run` writes what the CLI writes."""

import dataclasses
import json

import numpy as np
import pytest

from jaxviz.cli import build_parser, main
from jaxviz.data.sources import open_source
from jaxviz.errors import UsageError
from jaxviz.jobs.config import options
from jaxviz.jobs.registry import JOBS, SCAN, job, run
from jaxviz.jobs.study import load_study


def _cli_error(argv, capsys) -> str:
    """The one line a refused command prints (asserting exit 2 and nothing else)."""
    assert main(argv) == 2
    err = capsys.readouterr().err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


@pytest.fixture(scope="module")
def index(tmp_path_factory):
    """A features index of 12 demo (random) images."""
    out = tmp_path_factory.mktemp("features")
    argv = ["features", "--model", "demo", "--random-init", "--data", "shapes:12:3"]
    assert main([*argv, "--batch-size", "4", "--index", "Flat", "--out", str(out)]) == 0
    return out


@pytest.mark.parametrize(
    "argv,needle",
    [
        (["evaluate", "--data", "shapes:4", "--batch-size", "0"], "--batch-size: must be > 0"),
        (["evaluate", "--data", "shapes:4", "--batch-size", "-2"], "--batch-size: must be > 0"),
        (["classify", "--data", "shapes:4", "--limit", "-1"], "--limit: must be > 0, got -1"),
        (["occlusion", "--data", "shapes:4", "--batch-size", "0"], "--batch-size: must be > 0"),
        (["sweep", "--checkpoint-every", "0"], "--checkpoint-every: must be > 0"),
        (["tsne", "--features", "x", "--perplexity", "0"], "--perplexity: must be > 0"),
        (["filters", "--max-filters", "0"], "--max-filters: must be > 0, got 0"),
        (["filters", "--max-filters", "-1"], "--max-filters: must be > 0, got -1"),
        (["filters", "--tile-px", "0"], "--tile-px: must be > 0, got 0"),
        (["patches", "--data", "shapes:4", "--layer", "conv2", "--top", "x"], "invalid int value"),
        (["features", "--data", "shapes:4", "--metric", "l1"], "invalid choice: 'l1'"),
        (["patches", "--data", "shapes:4"], "required: --layer"),
    ],
)
def test_out_of_range_options_exit_2_with_one_line(argv, needle, capsys):
    line = _cli_error(argv, capsys)
    assert line.startswith(f"jaxviz {argv[0]}: error: ") and needle in line, line


def test_out_naming_an_existing_file_is_refused(tmp_path, capsys):
    (tmp_path / "f").write_text("mine")
    line = _cli_error(["filters", "--random-init", "--out", str(tmp_path / "f")], capsys)
    assert "--out: must be a folder, not an existing file" in line
    assert (tmp_path / "f").read_text() == "mine"


def test_neighbors_refuses_k_beyond_the_index(index, tmp_path, capsys):
    argv = ["neighbors", "--index", str(index), "--out", str(tmp_path / "n")]
    line = _cli_error([*argv, "--query", "ids:0,1", "--k", "12"], capsys)
    assert "--k 12 is more than the 11 vectors" in line  # 12 rows, the query itself left out
    assert not (tmp_path / "n").exists()  # refused before anything is written
    assert main([*argv, "--query", "ids:0,1", "--k", "11"]) == 0
    assert np.load(tmp_path / "n" / "neighbor_index.npy").min() >= 0  # no -1 padding


def test_one_declaration_gives_the_same_config_from_argv_and_from_a_table():
    argv = ["patches", "--layer", "conv2", "--data", "shapes:4", "--top", "3", "--per-image-max"]
    from_cli = job("patches").from_namespace(build_parser("patches").parse_args(argv))
    table = {"layer": "conv2", "data": "shapes:4", "top": 3, "per_image_max": True}
    from_table = job("patches").from_values(table, "test")
    assert from_cli == from_table and from_cli.out == "out/patches"
    assert from_cli.command == "patches" and from_cli.batch_size == 32
    # a list for a string option is its comma-separated form, as the CLI spells it
    assert job("patches").from_values({**table, "channels": [0, 3]}, "t").channels == "0,3"
    occlusion = job("occlusion").from_values({"data": "shapes:4", "fill": 0.5, "png": 4}, "t")
    assert (occlusion.fill, occlusion.png) == ("0.5", "4")  # a number for a string option
    # every job builds its parser and validates its defaults
    for spec in JOBS.values():
        spec.add_arguments(build_parser(None))
    assert {s.name for s in JOBS.values() if s.kind == SCAN} >= {"evaluate", "features", "patches"}


def _outputs(root):
    """{relative path: array or bytes} of a job's outputs, without the manifest and index.html
    (which hold timings and the command line)."""
    files = {}
    for p in sorted(root.rglob("*")):
        rel = str(p.relative_to(root))
        if p.is_dir() or rel in ("manifest.json", "index.html", ".jaxviz", ".lock"):
            continue
        files[rel] = np.load(p) if p.suffix == ".npy" else p.read_bytes()
    return files


def test_run_from_python_writes_what_the_cli_writes(index, tmp_path, demo_random):
    # a scan job: a (Model, params) pair and a Source object instead of spec strings
    out = tmp_path / "features"
    manifest = run(
        "features",
        model=demo_random,
        data=open_source("shapes:12:3"),
        out=out,
        batch_size=4,
        index="Flat",
    )
    a, b = _outputs(index), _outputs(out)
    assert a.keys() == b.keys() and "index.faiss" in a and len(a) > 5
    for k in a:
        if k.endswith(".npy"):
            np.testing.assert_array_equal(a[k], b[k], err_msg=k)
        elif k != "features.json":  # names the model: "demo" vs the Python object
            assert a[k] == b[k], k
    cli = json.loads((index / "manifest.json").read_text())
    assert manifest["files"] == cli["files"] and manifest["counts"] == cli["counts"]
    assert manifest["results"]["precision_at_5"] == cli["results"]["precision_at_5"]
    # another job, with spec strings
    assert main(["filters", "--random-init", "--out", str(tmp_path / "cli")]) == 0
    run("filters", model="demo", random_init=True, out=tmp_path / "py")
    a, b = _outputs(tmp_path / "cli"), _outputs(tmp_path / "py")
    assert a.keys() == b.keys() == {"conv1_weights.npy", "conv1_filters.png"}
    np.testing.assert_array_equal(a["conv1_weights.npy"], b["conv1_weights.npy"])
    assert a["conv1_filters.png"] == b["conv1_filters.png"]


@pytest.mark.parametrize(
    "kwargs,needle",
    [
        ({"max_filters": 0}, "jaxviz.run('filters'): max_filters must be > 0, got 0"),
        ({"max_filters": "8"}, "max_filters: invalid int value '8'"),
        ({"tile_px": True}, "tile_px: invalid int value True"),
        ({"layers": "conv1"}, "unknown option 'layers'"),
        ({"params": {}}, "params= goes with a Model object"),
    ],
)
def test_run_checks_its_keywords(kwargs, needle, tmp_path):
    with pytest.raises(UsageError, match=needle.replace("(", r"\(").replace(")", r"\)")):
        run("filters", model="demo", random_init=True, out=tmp_path, **kwargs)
    assert not (tmp_path / "manifest.json").exists()


STUDY = """
[[part]]
name = "d"
model = "demo"
random_init = true
data = "shapes:12:4"
batch_size = 4

[part.filters]
[part.patches]
layer = "conv2"
top = 2
"""


@pytest.mark.parametrize(
    "edit,needle",
    [
        (("[part.filters]", "filters = 5"), "part 'd', job 'filters': expected a table"),
        (("batch_size = 4", "batch_size = 0"), "part 'd': batch_size must be > 0, got 0"),
        (("top = 2", "top = 0"), "part 'd', job 'patches': top must be > 0, got 0"),
        (("top = 2", "top = 2.5"), "part 'd', job 'patches': top: invalid int value 2.5"),
        (("top = 2", "top = [1, 2]"), "top: invalid int value [1, 2]"),
        (("random_init = true", 'random_init = "yes"'), "random_init: invalid boolean value"),
        (('name = "d"', 'name = "../../x"'), "'../../x' is not a plain name"),
        (('name = "d"', 'name = "/abs/path"'), "'/abs/path' is not a plain name"),
        (('name = "d"', 'name = "demo/."'), "'demo/.' is not a plain name"),
        (('name = "d"', 'name = ".."'), "'..' is not a plain name"),
        (('name = "d"', 'name = ""'), "'' is not a plain name"),
        (('name = "d"', 'name = "a\\u0000b"'), "is not a plain name"),
        (('name = "d"', "name = 7"), "7 is not a plain name"),
    ],
)
def test_bad_study_values_give_one_line_naming_part_job_key(tmp_path, edit, needle):
    with pytest.raises(UsageError, match=".*") as e:
        load_study(STUDY.replace(*edit), tmp_path)
    assert needle in str(e.value) and "\n" not in str(e.value), str(e.value)
    assert list(tmp_path.iterdir()) == []


def test_part_list_of_non_tables_is_refused(tmp_path):
    with pytest.raises(UsageError, match=r"part must be a list of tables \(\[\[part\]\]\)"):
        load_study("part = [1, 2]\n", tmp_path)


def test_parts_that_would_share_a_folder_are_refused(tmp_path):
    second = STUDY.replace('name = "d"', 'name = "D"')
    with pytest.raises(UsageError, match="parts 'd' and 'D' would share a folder"):
        load_study(STUDY + second, tmp_path)


def test_a_part_folder_linking_outside_out_is_refused(tmp_path):
    out, elsewhere = tmp_path / "out", tmp_path / "elsewhere"
    out.mkdir()
    elsewhere.mkdir()
    (out / "d").symlink_to(elsewhere)
    with pytest.raises(UsageError, match="outside --out"):
        load_study(STUDY, out)


def test_the_default_study_validates_into_configs(tmp_path):
    from jaxviz.jobs.study import default_study_text

    study = load_study(default_study_text(), tmp_path, "default study")
    jobs = {j.key: j for js in study.parts.values() for j in js}
    assert len(jobs) == 21 and jobs["demo/patches"].args.batch_size == 64
    assert jobs["demo/tsne"].args.features == str(tmp_path / "demo" / "features")
    assert jobs["lite0/occlusion"].args.window == 56 and jobs["demo/ig"].args.steps == 16
    assert all(j.args.out == str(tmp_path / k) for k, j in jobs.items())


def test_run_gives_a_per_item_store_job_objects_and_writes_what_the_cli_writes(
    tmp_path, demo_random
):
    """activations (item stores, StoreOptions): jaxviz.run with the model and the data as
    objects writes the stores the CLI writes; its store options are checked like any other."""
    argv = ["activations", "--random-init", "--layer", "conv1", "--data", "shapes:2:1"]
    assert main([*argv, "--rows-per-chunk", "1", "--out", str(tmp_path / "cli")]) == 0
    source = open_source("shapes:2:1")
    run("activations", model=demo_random, data=source, layer="conv1", rows_per_chunk=1,
        out=tmp_path / "py")  # fmt: skip
    a, b = _outputs(tmp_path / "cli"), _outputs(tmp_path / "py")
    assert a.keys() == b.keys() and sum(k.startswith("activations.zarr/") for k in a) > 2
    for k in a:
        if k.startswith("activations.zarr/"):
            assert a[k] == b[k], k
    for bad, needle in (({"png": "some"}, "png must be a count or 'all'"),
                        ({"rows_per_chunk": 0}, "rows_per_chunk must be > 0")):  # fmt: skip
        with pytest.raises(UsageError, match=needle):
            run("activations", model="demo", data=source, layer="conv1", **bad)


def test_every_job_has_a_config_and_gets_its_name_from_it():
    """No job is left with a hand-written parser; jobs sharing a module (attribution,
    synthesis) tell themselves apart by the config's command and their defaults differ."""
    for spec in JOBS.values():
        cls = spec.config_class()
        assert dataclasses.is_dataclass(cls) and not hasattr(spec.load(), "add_arguments")
        assert all(f.metadata["help"] for f in options(cls)), spec.name
    ig = job("ig").from_values({"data": "shapes:2"}, "t")
    assert (ig.command, ig.out, ig.steps) == ("ig", "out/ig", 50)
    dream = job("dream").from_values({"data": "shapes:2", "layer": "conv1"}, "t")
    assert (dream.command, dream.steps, dream.lr) == ("dream", 20, 0.02)
    with pytest.raises(UsageError, match="unknown option 'layer'"):
        job("saliency").from_values({"data": "shapes:2", "layer": "conv1"}, "t")
    pack = build_parser("pack").parse_args(["pack", "--data", "shapes:2", "--to", "wds", "d"])
    assert job("pack").from_namespace(pack).out == "d"
    with pytest.raises(UsageError, match="required: DIR"):
        build_parser("pack").parse_args(["pack", "--data", "shapes:2", "--to", "wds"])
