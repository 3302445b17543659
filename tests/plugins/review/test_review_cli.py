"""`medloop review` end to end on a folder of small NIfTI volumes, through the functions the
main CLI wires in (add_review_parser / cmd_review), with the main CLI's one-line-error parser."""

from __future__ import annotations

import csv
import io
import json
from dataclasses import replace

import numpy as np
import pytest

from medloop.app.cli import _Parser
from medloop.app.errors import ImageMismatchError, MedloopError
from medloop.app.io.read import read_image
from medloop.app.io.write import write_image
from medloop.plugins.review.project import ReviewError, ReviewProject
from medloop.plugins.review.review_cli import add_review_parser, cmd_review
from tests.plugins.review.review_synth import box_labels, shifted, write_cases


def run(*argv: str) -> int:
    parser = _Parser(prog="medloop")
    sub = parser.add_subparsers(dest="command", parser_class=_Parser)
    add_review_parser(sub)
    args = parser.parse_args(list(argv))
    assert args.command == "review"
    return cmd_review(args)


@pytest.fixture
def folder(tmp_path):
    specs = write_cases(tmp_path / "data", n=3, confidences=[0.9, 0.55, 0.99])
    return tmp_path, specs


def _init_args(tmp_path, specs, proj="proj"):
    return [
        "review", "init", str(tmp_path / proj),
        "--images", *[str(s.image) for s in specs],
        "--predictions", *[str(s.predictions[0]) for s in specs],
        "--probabilities", *[str(s.probabilities) for s in specs],
        "--references", *[str(s.reference) for s in specs],
        "--prediction-model", "box-net", "--prediction-model-version", "3",
    ]


def test_init_decide_report_export_end_to_end(folder, capsys):
    tmp_path, specs = folder
    assert run(*_init_args(tmp_path, specs)) == 0
    assert "3 cases" in capsys.readouterr().out

    assert run("review", "status", str(tmp_path / "proj"), "--json") == 0
    listed = json.loads(capsys.readouterr().out)
    assert [c["case"] for c in listed["cases"]] == ["case1", "case0", "case2"]  # most doubtful first
    assert listed["counts"]["to review"] == 3

    project = ReviewProject.open(tmp_path / "proj")  # decisions through the Python API
    pred = np.asarray(project.load_prediction("case1").array)
    edited = pred.copy()
    edited[2:4, 0:2, 0:5] = 1  # add 20 voxels to 144
    project.decide("case1", "alice", "edit", mask=edited, seconds=61.5)
    project.decide("case0", "alice", "accept", seconds=7)
    project.decide("case2", "alice", "reject", seconds=3, comment="wrong organ")

    assert run("review", "report", str(tmp_path / "proj"), "-o", str(tmp_path / "rep")) == 0
    rows = {r["case"]: r for r in csv.DictReader(io.StringIO((tmp_path / "rep" / "report.csv").read_text(encoding="utf-8")))}
    dice = 2 * 144 / (144 + 164)
    assert float(rows["case1"]["edit_dice"]) == pytest.approx(dice, abs=1e-6)
    assert rows["case1"]["voxels_changed"] == "20" and rows["case1"]["seconds"] == "61.5"
    assert float(rows["case1"]["volume_change_ml"]) == pytest.approx(20 * 0.8 * 1.1 * 2.5 / 1000, rel=1e-5)
    assert (rows["case0"]["status"], rows["case2"]["status"]) == ("accepted", "rejected")
    assert rows["case1"]["model"] == "box-net"
    page = (tmp_path / "rep" / "report.html").read_text(encoding="utf-8")
    assert f"{dice:.4f}" in page and "61.5" in page and "wrong organ" in page

    assert run("review", "export", str(tmp_path / "proj"), str(tmp_path / "out"), "--accepted-only") == 0
    assert "exported 2 of 3" in capsys.readouterr().out
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["case0.nii.gz", "case1.nii.gz", "export.csv"]
    for cid, expected in (("case1", edited), ("case0", pred)):
        out, src = read_image(tmp_path / "out" / f"{cid}.nii.gz"), read_image(tmp_path / "data" / f"{cid}.nii.gz")
        np.testing.assert_array_equal(out.array, expected)
        assert out.shape == src.shape and out.spacing == src.spacing and out.origin == src.origin
        np.testing.assert_allclose(out.direction, src.direction, rtol=0, atol=1e-7)  # float32 quaternion


def test_decide_from_the_command_line(folder, capsys, monkeypatch):
    tmp_path, specs = folder
    run(*_init_args(tmp_path, specs))
    mask = tmp_path / "mask.nii.gz"
    write_image(read_image(specs[0].image).with_array(box_labels(label=2)), mask)
    assert run("review", "decide", str(tmp_path / "proj"), "case0", "edit", "--reviewer", "bob", "--mask", str(mask),
               "--seconds", "12") == 0
    monkeypatch.setenv("MEDLOOP_REVIEWER", "carol")
    assert run("review", "decide", str(tmp_path / "proj"), "case0", "accept") == 0
    st = ReviewProject.open(tmp_path / "proj").state().cases["case0"]
    assert set(st.reviews) == {"bob", "carol"} and st.status == "second opinion"
    assert st.reviews["bob"].metrics["voxels_changed"] == 144


def test_prediction_on_another_grid_is_one_line_and_writes_nothing(folder):
    tmp_path, specs = folder
    bad = tmp_path / "data" / "moved.nii.gz"
    write_image(shifted(read_image(specs[2].image), 3.0).with_array(box_labels()), bad)
    args = _init_args(tmp_path, [specs[0], specs[1], replace(specs[2], predictions=[bad])])
    with pytest.raises(ImageMismatchError, match=r"moved.nii.gz does not match image .*case2.nii.gz: origin") as info:
        run(*args)
    assert "\n" not in str(info.value)
    assert not (tmp_path / "proj").exists()


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--predictions", "a.nii.gz"], r"1 --predictions for 3 --images"),
        (["--ids", "x", "y"], r"2 --ids for 3 images"),
        (["--model", "brain-tissue-t1"], r"either --model .* or --predictions"),
    ],
)
def test_inconsistent_arguments_are_clear_errors(folder, extra, message):
    tmp_path, specs = folder
    with pytest.raises(MedloopError, match=message):
        run(*_init_args(tmp_path, specs), *extra)
    assert not (tmp_path / "proj").exists()


def test_duplicate_ids_unknown_model_and_missing_project(folder):
    tmp_path, specs = folder
    images = [str(specs[0].image)] * 2
    with pytest.raises(ReviewError, match="duplicate case id 'case0'"):
        run("review", "init", str(tmp_path / "proj"), "--images", *images, "--predictions", *images)
    with pytest.raises(MedloopError, match="no-such-model"):
        run("review", "init", str(tmp_path / "proj"), "--images", images[0], "--model", "no-such-model")
    assert not (tmp_path / "proj").exists()
    with pytest.raises(ReviewError, match="not a review project"):
        run("review", "report", str(tmp_path / "nothing"))
    with pytest.raises(ReviewError, match="needs an action"):
        run("review")


def test_usage_errors_are_one_line_exit_2(capsys):
    with pytest.raises(SystemExit) as info:
        run("review", "export", "only-one-arg")
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("medloop: error:") and err.count("\n") == 1


def test_init_with_model_on_small_volumes(tmp_path, brain_sample, capsys):
    t1, _ = brain_sample
    paths = []
    for k, z in enumerate((35, 55)):
        slab = replace(t1, array=np.ascontiguousarray(np.asarray(t1.array)[z : z + 2]), path=None)
        paths.append(str(write_image(slab, tmp_path / f"brain{k}.nii.gz")))
    assert run("review", "init", str(tmp_path / "proj"), "--images", *paths, "--model", "brain-tissue-t1", "--device", "cpu") == 0
    project = ReviewProject.open(tmp_path / "proj")
    assert [c.predictions[0].path for c in project.cases] == ["predictions/brain0.nii.gz", "predictions/brain1.nii.gz"]
    d = project.decide("brain0", "alice", "accept", seconds=2)
    assert d.model["model"] == "brain-tissue-t1" and d.model["model_version"] == "1" and len(d.model["weights_sha256"]) == 64
    assert project.manifest["model"]["model"] == "brain-tissue-t1"
