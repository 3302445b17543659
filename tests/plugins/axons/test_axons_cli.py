"""``medloop axons synth | train | trace | evaluate``: through the installed CLI (the plugin as
registered) and through ``add_verbs`` on a local parser; every bad input one line, exit 2."""

from __future__ import annotations

import argparse
import json

import numpy as np
import pytest

from medloop.app.cli import _Parser
from medloop.app.errors import MedloopError
from medloop.plugins.axons.cli import add_verbs
from medloop.plugins.axons.evaluation import evaluate_files
from medloop.plugins.axons.points import write_points_csv
from medloop.plugins.axons.swc import read_swc
from medloop.plugins.axons.synth import make_batch
from medloop.plugins.axons.tracker import plain_json


def run(*argv: str) -> int:
    """The verbs on a parser of our own (as the shell builds it), errors caught like the shell."""
    parser = _Parser(prog="medloop")
    add_verbs(parser.add_subparsers(dest="command", parser_class=_Parser))
    args = parser.parse_args(list(argv))
    return args.handler(args)


def refused(*argv: str) -> str:
    with pytest.raises(MedloopError) as err:
        run(*argv)
    assert "\n" not in str(err.value)
    return str(err.value)


@pytest.fixture(scope="module")
def synth_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("synth")
    assert run("axons", "synth", str(out), "--preset", "SI", "--count", "3", "--size", "64", "--seed", "11") == 0
    return out


def test_synth_writes_images_truth_and_seeds(synth_dir):
    import tifffile

    assert sorted(p.name for p in synth_dir.iterdir()) == [f"axon_{i:04d}.{e}" for i in range(3) for e in ("csv", "swc", "tif")]
    axons = make_batch(3, 64, "SI", 11)
    for i, axon in enumerate(axons):
        np.testing.assert_array_equal(tifffile.imread(synth_dir / f"axon_{i:04d}.tif"), axon.image)
        (truth,) = read_swc(synth_dir / f"axon_{i:04d}.swc").paths
        np.testing.assert_array_equal(truth, axon.centreline)  # subpixel, exact


def test_trace_and_evaluate_through_the_installed_cli(cli, synth_dir, tmp_path):
    out, ends = tmp_path / "t.swc", tmp_path / "ends.csv"
    axon = make_batch(1, 64, "SI", 11)[0]
    write_points_csv(ends, axon.end[None])  # as in the paper's evaluation: the trace stops at the far end
    traced = cli("axons", "trace", str(synth_dir / "axon_0000.tif"), "--seeds", str(synth_dir / "axon_0000.csv"), "-o", str(out),
                 "--end-points", str(ends))
    assert traced.returncode == 0, traced.stderr
    assert "stopped: end" in traced.stdout.splitlines()[0]
    assert traced.stdout.splitlines()[-1] == f"wrote {out} (1 traces in pixels; tracker axon-tracker-si)"
    (path,) = read_swc(out).paths
    np.testing.assert_array_equal(path[0], axon.start)  # the trace starts at its seed
    scored = cli("axons", "evaluate", str(out), str(synth_dir / "axon_0000.swc"), "--json")
    assert scored.returncode == 0, scored.stderr
    result = json.loads(scored.stdout)
    assert result == json.loads(json.dumps(plain_json(evaluate_files(out, synth_dir / "axon_0000.swc"))))
    assert result["all"]["coverage"] >= 95.0 and result["all"]["error"] <= 0.6  # the packaged tracker on an SI image
    text = cli("axons", "evaluate", str(out), str(synth_dir / "axon_0000.swc"), "--radius", "1").stdout
    assert text.splitlines()[-1].startswith("all (1 traces): coverage ") and "(within 1 px)" in text


def test_bad_input_is_one_line_on_stderr_with_exit_2(cli, synth_dir, tmp_path):
    import tifffile

    rgb = tmp_path / "rgb.tif"
    tifffile.imwrite(rgb, np.zeros((32, 32, 3), np.uint8) + np.arange(3, dtype=np.uint8), photometric="rgb")
    seeds = synth_dir / "axon_0000.csv"
    r = cli("axons", "trace", str(rgb), "--seeds", str(seeds), "-o", str(tmp_path / "x.swc"))
    assert (r.returncode, r.stdout) == (2, "")
    assert r.stderr == ("medloop: error: image has shape (32, 32, 3) (RGB); tracing needs one 2-D greyscale image: pick one "
                        "channel or convert to grey\n")
    outside = tmp_path / "outside.csv"
    write_points_csv(outside, [[10.0, 10.0], [70.5, 3.0]])
    r = cli("axons", "trace", str(synth_dir / "axon_0000.tif"), "--seeds", str(outside), "-o", str(tmp_path / "x.swc"))
    assert r.returncode == 2 and r.stderr == ("medloop: error: seed 1 at (row 70.5, col 3) is outside the 64x64 image; move it "
                                              "inside (rows 0-63, cols 0-63)\n")
    assert not (tmp_path / "x.swc").exists()


def test_trace_errors_before_any_work(synth_dir, tmp_path):
    image, seeds = str(synth_dir / "axon_0000.tif"), str(synth_dir / "axon_0000.csv")
    stack = tmp_path / "stack.tif"
    import tifffile

    tifffile.imwrite(stack, np.random.default_rng(0).random((5, 32, 32), dtype=np.float32))
    assert refused("axons", "trace", str(stack), "--seeds", seeds, "-o", str(tmp_path / "s.swc")).startswith(
        "image has shape (5, 32, 32); tracing needs one 2-D greyscale image: for a 3-D stack use its maximum projection")
    empty = tmp_path / "none.csv"
    empty.write_text("index,axis-0,axis-1\n")
    assert refused("axons", "trace", image, "--seeds", str(empty), "-o", str(tmp_path / "s.swc")).startswith("no seed given")
    assert refused("axons", "trace", image, "--seeds", seeds, "-o", str(tmp_path / "s.swc"), "--max-steps", "0") == (
        "max_steps must be positive, got 0; choose a value above 0")
    assert refused("axons", "trace", image, "--seeds", seeds, "-o", str(tmp_path / "s.txt")).startswith("-o ")
    assert refused("axons", "trace", image, "--seeds", seeds, "-o", str(tmp_path / "no" / "s.swc")) == (
        f"cannot write {tmp_path / 'no' / 's.swc'}: folder {tmp_path / 'no'} does not exist; create it first")
    assert refused("axons", "trace", image, "--seeds", seeds, "-o", str(tmp_path / "s.swc"), "--model", "nope").startswith(
        "no tracker 'nope': not a file or folder, nor a packaged tracker (axon-tracker-si)")
    foreign = tmp_path / "foreign.pt"
    import torch

    torch.save({"conv.weight": torch.zeros(3)}, foreign)
    assert refused("axons", "trace", image, "--seeds", seeds, "-o", str(tmp_path / "s.swc"), "--model", str(foreign)).startswith(
        "checkpoint is not an axon-tracker actor: missing keys")
    assert not list(tmp_path.glob("*.swc"))


def test_other_verbs_refuse_bad_input(synth_dir, tmp_path):
    assert refused("axons", "synth", str(tmp_path / "s"), "--preset", "SI-XX").startswith("unknown synthetic preset 'SI-XX'")
    assert refused("axons", "synth", str(tmp_path / "s"), "--size", "16") == "image size (16, 16) is below 21 px; choose at least 21"
    assert refused("axons", "synth", str(tmp_path / "s"), "--count", "0") == "count must be positive, got 0; choose a value above 0"
    assert not (tmp_path / "s").exists()
    short = tmp_path / "short.swc"
    short.write_text("1 2 3 4 0 1 -1\n")
    assert refused("axons", "evaluate", str(synth_dir / "axon_0000.swc"), str(short)) == (
        f"{short}: ground-truth path 0 has 1 vertex; draw at least 2 vertices along the axon")
    assert refused("axons", "evaluate", str(synth_dir / "axon_0000.swc"), str(synth_dir / "axon_0001.swc"), "--radius", "-1") == (
        "radius must be positive, got -1.0; choose a value above 0")
    assert refused("axons", "train", "--out", str(tmp_path / "o")).startswith("axons train needs --recipe NAME|FILE")
    assert refused("axons", "train", "--out", str(tmp_path / "o"), "--images", str(synth_dir / "axon_0000.tif")) == (
        "1 images but 0 SWC files; give one --traces file per --images file, same order")
    with pytest.raises(SystemExit) as exit_:  # no action: a usage error (exit 2), as argparse reports them
        run("axons")
    assert exit_.value.code == 2


def test_trace_in_physical_units(synth_dir, tmp_path):
    from medloop.app.io.image import MedImage
    from medloop.app.io.write import write_image

    axon = make_batch(1, 64, "SI", 11)[0]
    micro = write_image(MedImage.from_array(axon.image, spacing=(0.5, 0.5), unit="um"), tmp_path / "um.tif")
    assert run("axons", "trace", str(micro), "--seeds", str(synth_dir / "axon_0000.csv"), "-o", str(tmp_path / "um.swc")) == 0
    assert run("axons", "trace", str(synth_dir / "axon_0000.tif"), "--seeds", str(synth_dir / "axon_0000.csv"),
               "-o", str(tmp_path / "px.swc")) == 0
    text = (tmp_path / "um.swc").read_text()
    assert "# All positions and radii in micrometers" in text and "# Voxel separation (x,y,z): 0.5, 0.5, 1.0" in text
    um, px = read_swc(tmp_path / "um.swc"), read_swc(tmp_path / "px.swc")
    np.testing.assert_allclose(um.paths[0], px.paths[0], atol=1e-9)  # same trace, x2 smaller numbers in the file
    first = [line.split() for line in text.splitlines() if not line.startswith("#")][0]
    assert float(first[2]) == pytest.approx(axon.start[1] * 0.5) and float(first[3]) == pytest.approx(axon.start[0] * 0.5)


def test_trace_a_folder_through_the_cohort_runner(synth_dir, tmp_path, capsys):
    out = tmp_path / "traces"
    assert run("axons", "trace", str(synth_dir), "--seeds", str(synth_dir), "-o", str(out)) == 0
    assert sorted(p.name for p in out.iterdir()) == [f"axon_{i:04d}.{e}" for i in range(3) for e in ("json", "swc")]
    single = tmp_path / "one.swc"
    run("axons", "trace", str(synth_dir / "axon_0002.tif"), "--seeds", str(synth_dir / "axon_0002.csv"), "-o", str(single))
    np.testing.assert_array_equal(read_swc(out / "axon_0002.swc").paths[0], read_swc(single).paths[0])  # same as one by one
    capsys.readouterr()
    assert run("axons", "trace", str(synth_dir), "--seeds", str(synth_dir), "-o", str(out)) == 0
    assert capsys.readouterr().out.splitlines()[-1].startswith("3 cases: 0 computed, 3 already done, 0 failed")
    (synth_dir / "axon_0001.csv").rename(tmp_path / "moved.csv")
    try:
        assert run("axons", "trace", str(synth_dir), "--seeds", str(synth_dir), "-o", str(tmp_path / "t2")) == 2
    finally:
        (tmp_path / "moved.csv").rename(synth_dir / "axon_0001.csv")
    assert "axon_0001: failed: no seeds for axon_0001.tif: neither axon_0001.csv nor axon_0001.csv in" in capsys.readouterr().err


def test_fine_tune_on_user_traces(synth_dir, tmp_path, capsys):
    images = [str(synth_dir / f"axon_{i:04d}.tif") for i in range(2)]
    traces = [str(synth_dir / f"axon_{i:04d}.swc") for i in range(2)]
    out = tmp_path / "tuned"
    assert run("axons", "train", "--images", *images, "--traces", *traces, "--out", str(out), "--iterations", "2",
               "--episodes", "2", "--name", "my-tracker") == 0
    card = json.loads((out / "card.json").read_text())
    assert card["name"] == "my-tracker" and card["parent"]["name"] == "axon-tracker-si"
    assert card["training"]["fine_tune"]["traces"] == ["axon_0000.swc#1", "axon_0001.swc#1"]
    assert capsys.readouterr().out.startswith("fine-tuned on 2 images: coverage ")
    from medloop.plugins.axons.tracker import load_tracker

    assert load_tracker(out).name == "my-tracker"


def test_add_verbs_on_any_parser():
    parser = argparse.ArgumentParser(prog="x")
    add_verbs(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["axons", "trace", "a.tif", "--seeds", "s.csv", "-o", "t.swc", "--max-steps", "50"])
    assert (args.max_steps, args.model, args.window_scale, args.handler.__name__) == (50, "axon-tracker-si", 1.0, "cmd_trace")


def test_the_shells_train_verb_points_to_axons_train():
    from medloop.models.recipes import RecipeError, load_recipe

    with pytest.raises(RecipeError) as err:
        load_recipe("axon-tracker-si")
    assert str(err.value).endswith(
        "axon-tracker-si.json is a recipe for 'medloop axons train --recipe axon-tracker-si --out DIR', not for 'medloop train'; "
        "run that command")
