"""Review panel (viewer tier): walk three cases (accept, edit, reject) in a real viewer; the
audit log, the statuses, the exported masks and the restored draft after a crash are checked."""

from __future__ import annotations

import numpy as np
import pytest
from qtpy.QtCore import QSettings

from medloop.app.io.read import read_image
from medloop.plugins.review.project import ReviewProject
from tests.plugins.review.review_synth import box_labels, write_cases

pytestmark = pytest.mark.viewer


@pytest.fixture
def project(tmp_path):
    cases = write_cases(tmp_path / "src", n=3)
    return ReviewProject.create(tmp_path / "proj", cases)


@pytest.fixture
def panel(make_napari_viewer, qtbot, tmp_path, project):
    viewer = make_napari_viewer()
    _, widget = viewer.window.add_plugin_dock_widget("napari-medloop", "Review")
    widget.settings = QSettings(str(tmp_path / "settings.ini"), QSettings.Format.IniFormat)
    widget.reviewer_edit.setText("dr-a")
    widget.open_project(project.folder)
    return viewer, widget


def test_walk_three_cases_accept_edit_reject(panel, project, tmp_path, qtbot):
    viewer, widget = panel
    order = widget.visible_cases()
    assert order == ["case2", "case1", "case0"]  # least confident prediction first
    widget.step(+1)
    assert widget.case_id == "case2"
    image = viewer.layers["case2 image"]
    source = project.load_image("case2")
    np.testing.assert_allclose(image.data_to_world((1, 2, 3)), viewer.layers["case2 review mask"].data_to_world((1, 2, 3)))
    np.testing.assert_allclose(
        image.data_to_world((1, 2, 3))[::-1], source.index_to_physical(np.array([3.0, 2.0, 1.0])), atol=1e-6
    )
    widget.comment_edit.setPlainText("looks right")
    widget.layers["pins"].add(np.array([[2.0, 6.0, 7.0]]))
    widget.layers["pins"].features.loc[0, "text"] = "check this corner"
    widget.decide("accept")
    assert widget.case_id == "case1"  # moved on to the next case to review
    mask = viewer.layers["case1 review mask"]
    edited = np.asarray(mask.data).copy()
    edited[1:5, 3:9, 4:6] = 0  # remove 48 voxels of the 144-voxel box
    mask.data = edited
    widget.decide("accept")  # an accept of a changed mask is recorded as an edit
    assert widget.case_id == "case0"
    widget.decide("reject")
    assert widget.case_id is None and widget.status.text().endswith("No cases left to review.")

    state = ReviewProject.open(project.folder).state()
    assert {c: s.status for c, s in state.cases.items()} == {"case0": "rejected", "case1": "edited", "case2": "accepted"}
    history = [d for s in state.cases.values() for d in s.history]
    assert {d.reviewer for d in history} == {"dr-a"} and all(d.seconds is not None and d.seconds >= 0 for d in history)
    accepted = state.cases["case2"].verdict()
    assert accepted.comment == "looks right"
    assert accepted.pins == ({"position": [2.0, 6.0, 7.0], "frame": "index", "text": "check this corner"},)
    edit = state.cases["case1"].verdict()
    assert edit.action == "edit"
    assert edit.metrics["voxels_changed"] == 48
    assert edit.metrics["dice"] == pytest.approx(2 * 96 / (144 + 96))
    voxel_ml = 0.8 * 1.1 * 2.5 / 1000
    assert edit.metrics["volume_change_ml"] == pytest.approx(-48 * voxel_ml)

    widget.export()
    exported = sorted(p.name for p in (project.folder / "export").glob("*.nii.gz"))
    assert exported == ["case1.nii.gz", "case2.nii.gz"]  # accepted and edited only
    out = read_image(project.folder / "export" / "case1.nii.gz")
    np.testing.assert_array_equal(out.array, edited)
    np.testing.assert_allclose(out.spacing, source.spacing, atol=1e-6)
    np.testing.assert_allclose(out.origin, project.load_image("case1").origin, atol=1e-5)
    np.testing.assert_array_equal(read_image(project.folder / "export" / "case2.nii.gz").array, box_labels())


def test_unsaved_edit_is_restored_after_reopening(panel, project, qtbot):
    viewer, widget = panel
    widget.open_case("case0")
    mask = viewer.layers["case0 review mask"]
    edited = np.asarray(mask.data).copy()
    edited[0, 0, 0] = 1
    mask.data = edited
    widget.saver.flush()
    widget.close_case()
    widget.open_project(project.folder)  # e.g. after a crash: the draft is on disk
    widget.open_case("case0")
    np.testing.assert_array_equal(viewer.layers["case0 review mask"].data, edited)
    assert widget.status.text() == "case0: to review. Restored your unsaved edit."
    widget.filter_combo.setCurrentText("accepted")
    assert widget.visible_cases() == []


def test_sample_end_to_end_cli_init_panel_cli_report(make_napari_viewer, qtbot, tmp_path, cli):
    """`medloop review init --model` on the brain sample (two cases: the sample and a rescaled
    copy) -> review in the panel -> `medloop review report`."""
    import csv

    from medloop.app.io.write import write_image
    from medloop.app.samples import load_brain_sample, sample_path

    t1, tissue = load_brain_sample()
    write_image(t1.with_array(np.asarray(t1.array, np.float32) * 2.5 + 300), tmp_path / "brighter.nii.gz")
    out = cli("review", "init", str(tmp_path / "proj"), "--images", str(sample_path("t1")), str(tmp_path / "brighter.nii.gz"),
              "--ids", "mni", "brighter", "--model", "brain-tissue-t1", "--references", str(sample_path("tissue")),
              str(sample_path("tissue")), timeout=300)
    assert out.returncode == 0, out.stderr
    viewer = make_napari_viewer()
    _, widget = viewer.window.add_plugin_dock_widget("napari-medloop", "Review")
    widget.settings = QSettings(str(tmp_path / "settings.ini"), QSettings.Format.IniFormat)
    widget.reviewer_edit.setText("dr-b")
    widget.open_project(tmp_path / "proj")
    assert sorted(widget.visible_cases()) == ["brighter", "mni"]
    widget.step(+1)
    first = widget.case_id
    mask = viewer.layers[f"{first} review mask"]
    assert mask.metadata["medloop_classes"] == {0: "background", 1: "grey matter", 2: "white matter"}
    assert f"{first} uncertainty" in viewer.layers and f"{first} reference" in viewer.layers
    widget.decide("accept")
    widget.decide("reject")
    report = cli("review", "report", str(tmp_path / "proj"), "-o", str(tmp_path / "rep"), timeout=120)
    assert report.returncode == 0, report.stderr
    rows = {r["case"]: r for r in csv.DictReader(open(tmp_path / "rep" / "report.csv", encoding="utf-8"))}
    assert {rows[c]["status"] for c in rows} == {"accepted", "rejected"}
    assert rows[first]["status"] == "accepted" and rows[first]["last_reviewer"] == "dr-b"
    assert "dr-b" in (tmp_path / "rep" / "report.html").read_text(encoding="utf-8")


def test_new_project_from_the_panel_runs_the_model(make_napari_viewer, qtbot, tmp_path):
    import torch

    from medloop.app.samples import sample_path

    torch.set_num_threads(1)
    viewer = make_napari_viewer()
    _, widget = viewer.window.add_plugin_dock_widget("napari-medloop", "Review")
    widget.settings = QSettings(str(tmp_path / "settings.ini"), QSettings.Format.IniFormat)
    widget.reviewer_edit.setText("dr-c")
    widget.new_project(tmp_path / "new", [sample_path("t1")], "brain-tissue-t1")
    qtbot.waitUntil(lambda: widget.job is None, timeout=120_000)
    assert widget.project is not None and widget.visible_cases() == ["mni152_t1_2mm"]
    case = widget.project.case("mni152_t1_2mm")
    assert case.predictions[0].model["model"] == "brain-tissue-t1" and case.uncertainty_score is not None
    prediction = widget.project.load_prediction("mni152_t1_2mm")
    assert set(np.unique(prediction.array)) == {0, 1, 2}


def test_new_project_cancels_between_cases_without_stalling(make_napari_viewer, qtbot, tmp_path, brain_sample):
    """Making a project is the panel's MethodPanel job: progress per case, Cancel between cases
    (no manifest: no project; the finished case is kept), and the event loop never stalls."""
    from dataclasses import replace

    import torch

    from medloop.app.io.write import write_image
    from medloop.plugins.review.project import MANIFEST_NAME
    from tests.plugins.segmentation.test_widget import StallMeter

    torch.set_num_threads(1)
    t1, _ = brain_sample
    paths = [
        write_image(replace(t1, array=np.ascontiguousarray(np.asarray(t1.array)[z : z + 6]), path=None), tmp_path / f"s{k}.nii.gz")
        for k, z in enumerate((30, 45, 60))
    ]
    viewer = make_napari_viewer()
    _, widget = viewer.window.add_plugin_dock_widget("napari-medloop", "Review")
    widget.settings = QSettings(str(tmp_path / "settings.ini"), QSettings.Format.IniFormat)
    widget.reviewer_edit.setText("dr-d")
    meter = StallMeter()
    widget.new_project(tmp_path / "proj", paths, "brain-tissue-t1")
    assert not widget.new_button.isEnabled() and widget.cancel_button.isEnabled()
    qtbot.waitUntil(lambda: widget.progress.value() >= 1, timeout=120_000)
    widget.cancel()
    qtbot.waitUntil(lambda: widget.job is None, timeout=120_000)
    meter.timer.stop()
    assert meter.worst < 0.2, f"event loop blocked for {meter.worst * 1000:.0f} ms"
    assert widget.status.text() == "Cancelled; no project was made."
    assert widget.project is None and not (tmp_path / "proj" / MANIFEST_NAME).exists()
    assert (tmp_path / "proj" / "predictions" / "s0.nii.gz").is_file()
    assert widget.new_button.isEnabled() and not widget.cancel_button.isEnabled()


def _header_click(qtbot, widget, column: int) -> None:
    from qtpy.QtCore import QPoint, Qt

    header = widget.table.horizontalHeader()
    x = header.sectionViewportPosition(column) + header.sectionSize(column) // 2
    qtbot.mouseClick(header.viewport(), Qt.MouseButton.LeftButton, pos=QPoint(x, header.height() // 2))


def test_queue_is_most_uncertain_first_and_next_follows_the_screen(make_napari_viewer, qtbot, tmp_path):
    """Issue 14: uncertainty order is not case-id order here (case0 least confident, then case2),
    the table keeps it after a verdict; sorted by a column, Next/Previous follow the rows shown."""
    project = ReviewProject.create(tmp_path / "proj", write_cases(tmp_path / "src", n=3, confidences=[0.55, 0.95, 0.75]))
    viewer = make_napari_viewer()
    _, widget = viewer.window.add_plugin_dock_widget("napari-medloop", "Review")
    widget.settings = QSettings(str(tmp_path / "settings.ini"), QSettings.Format.IniFormat)
    widget.reviewer_edit.setText("dr-a")
    widget.open_project(project.folder)
    assert widget.visible_cases() == ["case0", "case2", "case1"]
    widget.step(+1)
    assert widget.case_id == "case0"
    widget.decide("accept")
    assert widget.case_id == "case2" and widget.visible_cases() == ["case0", "case2", "case1"]
    assert widget.table.item(0, 1).text() == "accepted (dr-a)"

    _header_click(qtbot, widget, 0)  # the user sorts by case id
    shown = widget.visible_cases()
    assert shown in (["case0", "case1", "case2"], ["case2", "case1", "case0"])
    widget.open_case(shown[0])
    widget.step(+1)
    assert widget.case_id == shown[1]
    widget.step(+1)
    assert widget.case_id == shown[2]
    widget.step(-1)
    assert widget.case_id == shown[1]
    widget.decide("reject")  # the refresh after a verdict keeps the user's order
    assert widget.visible_cases() == shown
    widget.queue_button.click()
    assert widget.visible_cases() == ["case0", "case2", "case1"]


def test_verdict_history_counts_pins_export_and_reviewer_field(panel, project, qtbot):
    viewer, widget = panel
    assert widget.project_label.text() == "proj: 3 cases (3 to review)."
    widget.open_case("case2")
    assert widget.history_list.item(0).text() == "(none yet)"
    mask = viewer.layers["case2 review mask"]  # box-net is not installed: its labels still show
    assert mask.metadata["medloop_classes"] == {0: "background", 1: "class 1"}  # the one table's name for an unknown class
    assert np.asarray(mask.colormap.map(np.array([1])))[0, 3] > 0 and np.asarray(mask.colormap.map(np.array([0])))[0, 3] == 0
    widget.pin_edit.setText("check the rim")
    widget.layers["pins"].add(np.array([[2.0, 6.0, 7.0]]))
    assert list(widget.layers["pins"].features["text"]) == ["check the rim"]
    widget.comment_edit.setPlainText("fine")
    widget.decide("accept")
    assert widget.status.text() == "case2: accepted by dr-a. Now case1 (to review)."  # not overwritten
    assert widget.project_label.text() == "proj: 3 cases (2 to review, 1 accepted)."
    assert widget.table.item(widget.visible_cases().index("case2"), 1).text() == "accepted (dr-a)"
    assert widget.pin_edit.text() == ""

    widget.open_case("case2")  # a re-opened case shows its earlier decisions
    assert widget.case_label.text().startswith("Open: case2 — accepted (last verdict: accept by dr-a, ")
    items = [widget.history_list.item(i).text() for i in range(widget.history_list.count())]
    assert len(items) == 1 and items[0].endswith("dr-a: accept — “fine” [pin: check the rim]")
    verdict = ReviewProject.open(project.folder).state().cases["case2"].verdict()
    assert verdict.pins == ({"position": [2.0, 6.0, 7.0], "frame": "index", "text": "check the rim"},)

    widget.reviewer_edit.setText("dr/a")
    assert widget.reviewer_hint.text() == "This name cannot be used: these characters cannot be used: '/'."
    widget.reviewer_edit.setText("Dr. A. Smith")
    assert widget.reviewer_hint.text() == ""
    widget.decide("accept")
    assert widget.status.text() == "case2: accepted by Dr. A. Smith. Now case1 (to review)."  # unchanged mask
    assert widget.project_label.text() == "proj: 3 cases (2 to review, 1 accepted)."
    widget.open_case("case2")
    assert widget.history_list.count() == 2 and widget.history_list.item(1).text().endswith("Dr. A. Smith: accept")

    widget.export()
    assert widget.status.text() == f"Exported 1 mask file(s) of 3 case(s), and the index export.csv, to {project.folder / 'export'}."
    assert sorted(p.name for p in (project.folder / "export").iterdir()) == ["case2.nii.gz", "export.csv"]
