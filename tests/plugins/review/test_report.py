"""The review report: CSV numbers, a self-contained HTML page, PNG thumbnails, export."""

from __future__ import annotations

import base64
import csv
import io
import re

import numpy as np
import pytest

from medloop.app.io.read import read_image
from medloop.plugins.review.export import export_masks
from medloop.plugins.review.project import ReviewError, ReviewProject
from medloop.plugins.review.report import dice_chart_svg, png_bytes, thumbnail, write_report
from tests.plugins.review.review_synth import write_cases


@pytest.fixture
def reviewed(tmp_path) -> ReviewProject:
    project = ReviewProject.create(tmp_path / "proj", write_cases(tmp_path / "proj" / "data", n=3))
    pred = np.asarray(project.load_prediction("case0").array)
    edited = pred.copy()
    edited[1] = 0  # 36 of 144 voxels removed
    project.decide("case0", "alice", "edit", mask=edited, seconds=30, comment="cut <top> & slice")
    project.decide("case1", "alice", "accept", seconds=4)
    project.decide("case2", "bob", "reject", seconds=2)
    return project


def test_png_encoder_round_trips():
    imageio = pytest.importorskip("imageio.v3")
    rgb = np.random.default_rng(0).integers(0, 256, size=(7, 5, 3), dtype=np.uint8)
    data = png_bytes(rgb)
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    np.testing.assert_array_equal(imageio.imread(data, extension=".png"), rgb)


def test_thumbnail_keeps_physical_aspect_and_colours_the_mask():
    img = np.zeros((10, 40))
    mask = np.zeros((10, 40), np.uint8)
    mask[:, :20] = 1
    t = thumbnail(img, mask, pixel_size=(4.0, 1.0), size=80)  # 40 mm tall, 40 mm wide
    assert t.shape == (80, 80, 3)
    assert (t[:, :40] != t[:, 40:]).any(axis=-1).all()  # the masked half is coloured


def test_csv_and_html_carry_the_numbers(reviewed, tmp_path):
    files = write_report(reviewed, tmp_path / "rep")
    rows = {r["case"]: r for r in csv.DictReader(io.StringIO(files.csv.read_text(encoding="utf-8")))}
    dice = 2 * 108 / (144 + 108)
    assert rows["case0"]["status"] == "edited" and float(rows["case0"]["edit_dice"]) == pytest.approx(dice, abs=1e-6)
    assert rows["case0"]["voxels_changed"] == "36" and rows["case0"]["seconds"] == "30"
    assert float(rows["case0"]["volume_change_ml"]) == pytest.approx(-36 * 0.8 * 1.1 * 2.5 / 1000, rel=1e-5)
    assert rows["case0"]["model"] == "box-net" and rows["case0"]["model_version"] == "3"
    assert rows["case1"]["status"] == "accepted" and float(rows["case1"]["edit_dice"]) == 1.0
    assert rows["case2"]["status"] == "rejected" and rows["case2"]["edit_dice"] == ""
    assert list(rows) == [c.id for c in reviewed.cases_sorted()]  # most uncertain first

    page = files.html.read_text(encoding="utf-8")
    assert "http" not in page.replace('xmlns="http://www.w3.org/2000/svg"', "")  # self-contained
    for status, n in {"to review": 0, "accepted": 1, "rejected": 1, "edited": 1, "second opinion": 0}.items():
        assert f"data-status='{status}'>{n}</td>" in page
    assert f"{dice:.4f}" in page and "<svg" in page and f"Dice {dice:.3f}" in page
    assert "cut &lt;top&gt; &amp; slice" in page  # comments are escaped
    pngs = re.findall(r"data:image/png;base64,([A-Za-z0-9+/=]+)", page)
    assert len(pngs) == 3 and all(base64.b64decode(p)[:4] == b"\x89PNG" for p in pngs)


def test_report_counts_the_click_prompts_behind_an_edit(tmp_path):
    """Issue #19: the audit log's prompt count and time of a click -> object edit reach the report."""
    project = ReviewProject.create(tmp_path / "proj", write_cases(tmp_path / "proj" / "data", n=2))
    edited = np.asarray(project.load_prediction("case0").array).copy()
    edited[1] = 0
    project.decide("case0", "alice", "edit", mask=edited, seconds=40, prompts={"count": 6, "seconds": 21.25})
    project.decide("case1", "alice", "accept", seconds=3)
    files = write_report(project, tmp_path / "rep", thumbnails=False)
    rows = {r["case"]: r for r in csv.DictReader(io.StringIO(files.csv.read_text(encoding="utf-8")))}
    assert (rows["case0"]["prompts"], rows["case0"]["prompt_seconds"]) == ("6", "21.25")
    assert (rows["case1"]["prompts"], rows["case1"]["prompt_seconds"]) == ("", "")
    page = files.html.read_text(encoding="utf-8")
    assert "<th>clicks (s)</th>" in page and "<td>6 (21.2)</td>" in page


def test_report_shows_log_problems(reviewed, tmp_path):
    with open(reviewed.log.path, "ab") as f:
        f.write(b'{"case": "case1", "act')
    with pytest.warns(Warning, match="torn last line"):
        page = write_report(reviewed, tmp_path / "rep", thumbnails=False).html.read_text(encoding="utf-8")
    assert "torn last line" in page and "<img" not in page


def test_chart_without_edits_has_no_bars():
    svg = dice_chart_svg([{"case": "a", "edit_dice": None}])
    assert svg.startswith("<svg") and "<rect" not in svg


def test_export_accepted_only_keeps_source_geometry(reviewed, tmp_path):
    rows = export_masks(reviewed, tmp_path / "out", accepted_only=True)
    assert {r.case_id: r.path is not None for r in rows} == {"case0": True, "case1": True, "case2": False}
    for r in rows:
        if r.path is None:
            continue
        exported, image = read_image(r.path), reviewed.load_image(r.case_id)
        assert exported.shape == image.shape
        np.testing.assert_allclose(exported.spacing, image.spacing, rtol=0, atol=1e-9)
        np.testing.assert_allclose(exported.origin, image.origin, rtol=0, atol=1e-9)
        # NIfTI stores an oblique direction as a float32 quaternion: exact to its precision
        np.testing.assert_allclose(exported.direction, image.direction, rtol=0, atol=1e-7)
    np.testing.assert_array_equal(read_image(tmp_path / "out" / "case0.nii.gz").array, reviewed.reviewed_mask("case0")[0])
    index = (tmp_path / "out" / "export.csv").read_text(encoding="utf-8")
    assert "case2,rejected,not accepted," in index
    everything = export_masks(reviewed, tmp_path / "all")
    assert [r.case_id for r in everything if r.path] == ["case0", "case1"]  # the rejected case is never exported
    by_bob = export_masks(reviewed, tmp_path / "bob", accepted_only=True, reviewer="bob")
    assert [r.path for r in by_bob] == [None, None, None]
    (tmp_path / "file").write_text("x")
    with pytest.raises(ReviewError, match="is a file"):
        export_masks(reviewed, tmp_path / "file")


def test_chart_shows_what_was_changed_and_pins_reach_csv_and_html(tmp_path):
    """Issue 14: the chart's bars are voxels changed (an accept is 0, an edit its count), not an
    edit Dice that looks alike for both; pinned comments are in the CSV and the HTML."""
    project = ReviewProject.create(tmp_path / "proj", write_cases(tmp_path / "proj" / "data", n=3))
    edited = np.asarray(project.load_prediction("case0").array).copy()
    edited[1] = 0  # 36 voxels
    pin = {"position": [2.0, 6.0, 7.0], "frame": "index", "text": "bleed <here>?"}
    project.decide("case0", "Dr. A. Smith", "edit", mask=edited, pins=[pin])
    project.decide("case1", "alice", "accept")
    project.decide("case2", "bob", "reject")
    files = write_report(project, tmp_path / "rep", thumbnails=False)
    rows = {r["case"]: r for r in csv.DictReader(io.StringIO(files.csv.read_text(encoding="utf-8")))}
    assert rows["case0"]["pins"] == "bleed <here>? @ (2, 6, 7) index"
    assert rows["case1"]["pins"] == "" and rows["case0"]["reviewers"] == "Dr. A. Smith"
    page = files.html.read_text(encoding="utf-8")
    assert "bleed &lt;here&gt;? @ (2, 6, 7) index" in page
    bars = dict(re.findall(r'<rect class="changed" data-case="(\w+)" data-voxels="(\d+)"', page))
    assert bars == {"case0": "36", "case1": "0"}  # rejected case2: no bar, a label
    assert "voxels changed</text>" in page and ">rejected</text>" in page
    assert f"36 ({-36 * 0.8 * 1.1 * 2.5 / 1000:+.3f} mL)" in page
