"""`medloop segment DIR|LIST -o OUTDIR`: a cohort from the command line, through the runner."""

from __future__ import annotations

import json

import numpy as np
import pytest

from medloop.app.io.read import read_image
from medloop.plugins.segmentation.method import SegmentParams, segment
from tests.app.engine.cohort_synth import write_volumes


@pytest.fixture
def inputs(tmp_path):
    return write_volumes(tmp_path / "in", n=3)


def segment_args(zoo, *args):
    return ("segment", *args, "--model", "tiny-threshold", "--models-dir", str(zoo), "--device", "cpu")


def test_folder_in_folder_out_equals_single_runs_and_resumes(cli, zoo, inputs, tmp_path):
    out = tmp_path / "out"
    result = cli(*segment_args(zoo, str(tmp_path / "in"), "-o", str(out)))
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[:3] == ["[1/3] case0: done", "[2/3] case1: done", "[3/3] case2: done"]
    assert result.stdout.splitlines()[3].startswith("3 cases: 3 computed, 0 already done, 0 failed")
    params = SegmentParams("tiny-threshold", models_dir=zoo, device="cpu")
    for path in inputs:
        written, alone = read_image(out / path.name), segment(read_image(path), params).labels
        np.testing.assert_array_equal(written.array, alone.array)
        assert written.spacing == alone.spacing and np.allclose(written.direction, alone.direction)
        assert json.loads((out / path.name.replace(".nii.gz", ".json")).read_text())["status"] == "done"
    stamps = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    again = cli(*segment_args(zoo, str(tmp_path / "in"), "-o", str(out)))
    assert again.returncode == 0 and "3 cases: 0 computed, 3 already done, 0 failed" in again.stdout
    assert {p.name: p.stat().st_mtime_ns for p in out.iterdir()} == stamps  # nothing rewritten


def test_list_file_and_a_corrupt_case(cli, zoo, inputs, tmp_path):
    bad = tmp_path / "in" / "broken.nii.gz"
    bad.write_bytes(np.random.default_rng(0).bytes(300))
    listing = tmp_path / "cases.txt"
    listing.write_text(f"# two cases and a broken file\n{inputs[0]}\nin/case2.nii.gz\n{bad}\n")
    result = cli(*segment_args(zoo, str(listing), "-o", str(tmp_path / "out")))
    assert result.returncode == 2
    assert result.stderr == (
        f"[3/3] broken: failed: cannot read {bad}: not a NIfTI file (unrecognised or corrupt header); "
        "check that this is an image and that it is not damaged\n"
    )
    assert sorted(p.name for p in (tmp_path / "out").glob("*.nii.gz")) == ["case0.nii.gz", "case2.nii.gz"]


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (("--tile", "16"), "--tile and --upscale depend on each image's dimensions; in a cohort run leave them out (the model card's tile is used)"),
        (("--probabilities", "p.nii.gz"), "--probabilities names one file; in a cohort run leave it out (each case writes <id>.nii.gz)"),
        (("--workers", "2", "--scheduler", "tcp://127.0.0.1:1"), "give --workers N (local processes) or --scheduler ADDRESS (an existing cluster), not both"),
        (("--workers", "0"), "--workers must be at least 1, got 0"),
        (("--threads", "0"), "--threads must be at least 1, got 0"),
    ],
)
def test_cohort_refusals_are_one_line(cli, zoo, inputs, tmp_path, extra, message):
    result = cli(*segment_args(zoo, str(tmp_path / "in"), "-o", str(tmp_path / "out"), *extra))
    assert (result.returncode, result.stderr) == (2, f"medloop: error: {message}\n")
    assert not (tmp_path / "out").exists()


def test_folder_to_an_image_file_is_refused(cli, zoo, inputs, tmp_path):
    result = cli(*segment_args(zoo, str(tmp_path / "in"), "-o", str(tmp_path / "x.nii.gz"), "--workers", "2"))
    assert result.returncode == 2
    assert result.stderr == (
        f"medloop: error: {tmp_path / 'in'} is a cohort (a folder or list of images); give -o an output folder, "
        f"not the image file {tmp_path / 'x.nii.gz'}\n"
    )
