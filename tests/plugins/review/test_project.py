"""The review project: validated creation, decisions, statuses from the log, two reviewers,
autosaved drafts, and a writer killed with SIGKILL while deciding."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from medloop.app.errors import ImageMismatchError, MedloopWarning
from medloop.app.io.read import read_image
from medloop.app.io.write import write_image
from medloop.plugins.review.audit import AuditLog
from medloop.plugins.review.project import (
    AUDIT_NAME,
    MANIFEST_NAME,
    ReviewError,
    ReviewProject,
    check_name,
    sha256_file,
)
from tests.plugins.review.review_synth import box_labels, shifted, write_cases

REPO = Path(__file__).resolve().parents[3]


@pytest.fixture
def project(tmp_path) -> ReviewProject:
    return ReviewProject.create(tmp_path / "proj", write_cases(tmp_path / "proj" / "data"), created_by="tester")


# -- creation ------------------------------------------------------------------------------------


def test_manifest_keeps_paths_relative_inside_the_project(tmp_path, project):
    manifest = json.loads((project.folder / MANIFEST_NAME).read_text(encoding="utf-8"))
    assert manifest["created_by"] == "tester"
    case = manifest["cases"][0]
    assert case["image"] == "data/case0.nii.gz" and case["predictions"][0]["path"] == "data/case0_pred.nii.gz"
    assert case["predictions"][0]["model"]["model_version"] == "3"
    outside = ReviewProject.create(tmp_path / "other", write_cases(tmp_path / "elsewhere", n=1))
    assert Path(outside.case("case0").image).is_absolute()
    assert project.image_path("case0") == project.folder / "data" / "case0.nii.gz"
    assert project.reference_path("case0").name == "case0_ref.nii.gz"


def _nothing_written(folder: Path) -> bool:
    return not folder.exists() or not any(folder.iterdir())


def test_prediction_on_another_grid_is_refused_and_nothing_written(tmp_path):
    specs = write_cases(tmp_path / "in", n=2, probabilities=False)
    image = read_image(specs[1].image)
    bad = tmp_path / "in" / "moved_pred.nii.gz"
    write_image(shifted(image, 5.0).with_array(box_labels()), bad)
    with pytest.raises(ImageMismatchError, match="moved_pred.nii.gz.*origin"):
        ReviewProject.create(tmp_path / "proj", [specs[0], replace(specs[1], predictions=[bad])])
    assert _nothing_written(tmp_path / "proj")


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda s, d: [s[0], replace(s[1], image=d / "missing.nii.gz")], r"image .*missing.nii.gz.* does not exist"),
        (lambda s, d: [s[0], replace(s[1], predictions=[d / "nope.nii.gz"])], r"prediction .*nope.nii.gz.* does not exist"),
        (lambda s, d: [s[0], replace(s[1], id="case0")], r"duplicate case id 'case0'"),
        (lambda s, d: [s[0], s[0]], r"duplicate case id 'case0'"),
        (lambda s, d: [replace(s[0], id="../evil")], r"case id '../evil' cannot be used"),
        (lambda s, d: [replace(s[0], predictions=[])], r"has no prediction"),
        (lambda s, d: [replace(s[0], predictions=[s[0].probabilities])], r"not a label map"),
        (lambda s, d: [], r"no cases"),
    ],
    ids=["missing-image", "missing-prediction", "duplicate-id", "same-image-twice", "unsafe-id", "no-prediction",
         "probabilities-as-prediction", "empty"],
)
def test_bad_inputs_are_one_clear_error_and_nothing_written(tmp_path, change, message):
    specs = write_cases(tmp_path / "in", n=2)
    with pytest.raises(ReviewError, match=message) as info:
        ReviewProject.create(tmp_path / "proj", change(specs, tmp_path / "in"))
    assert "\n" not in str(info.value)
    assert _nothing_written(tmp_path / "proj")


def test_existing_project_is_not_overwritten_and_non_project_is_refused(tmp_path, project):
    with pytest.raises(ReviewError, match="already a review project"):
        ReviewProject.create(project.folder, write_cases(tmp_path / "x", n=1))
    with pytest.raises(ReviewError, match="not a review project"):
        ReviewProject.open(tmp_path)
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / MANIFEST_NAME).write_text("{")
    with pytest.raises(ReviewError, match="damaged"):
        ReviewProject.open(tmp_path / "broken")


# -- decisions -------------------------------------------------------------------------------------


def test_decisions_are_logged_with_model_time_and_metrics(project):
    pred = np.asarray(project.load_prediction("case0").array)
    edited = pred.copy()
    edited[1, 3:9, 4:10] = 0  # remove 36 voxels of 144
    pins = [{"position": [2, 5, 6], "frame": "index", "text": "missed vessel"}]
    d = project.decide("case0", "alice", "edit", mask=edited, seconds=42.5, comment="trimmed", pins=pins)
    assert d.status == "edited" and d.model == {"model": "box-net", "model_version": "3", "weights_sha256": "ab" * 32}
    assert d.metrics["dice"] == pytest.approx(2 * 108 / (144 + 108))
    assert d.metrics["voxels_changed"] == 36
    voxel_ml = 0.8 * 1.1 * 2.5 / 1000
    assert d.metrics["volume_change_ml"] == pytest.approx(-36 * voxel_ml)
    saved = read_image(project.resolve(d.mask))  # written with the source geometry
    image = project.load_image("case0")
    np.testing.assert_array_equal(saved.array, edited)
    np.testing.assert_allclose(saved.spacing, image.spacing, atol=1e-6)
    np.testing.assert_allclose(saved.origin, image.origin, atol=1e-5)
    np.testing.assert_allclose(saved.direction, image.direction, atol=1e-6)
    assert d.mask.startswith("reviews/alice/case0.") and d.mask_sha256 == sha256_file(project.resolve(d.mask))

    project.decide("case1", "alice", "accept", seconds=5)
    project.decide("case2", "alice", "reject", seconds=1.25, comment="motion artefact")
    record = AuditLog(project.folder / AUDIT_NAME).read().records[0]
    assert record["time"].endswith("Z") and record["reviewer"] == "alice" and record["seconds"] == 42.5
    assert record["pins"] == [{"position": [2.0, 5.0, 6.0], "frame": "index", "text": "missed vessel"}]
    state = ReviewProject.open(project.folder).state()  # rebuilt from the log by a new instance
    assert {k: v.status for k, v in state.cases.items()} == {"case0": "edited", "case1": "accepted", "case2": "rejected"}
    assert state.cases["case1"].reviews["alice"].metrics["dice"] == 1.0
    assert state.counts()["edited"] == 1 and state.cases["case0"].seconds == 42.5


def test_an_edit_made_by_click_prompts_records_their_count_and_time(project):
    pred = np.asarray(project.load_prediction("case0").array)
    edited = pred.copy()
    edited[1, 3:9, 4:10] = 0
    d = project.decide("case0", "alice", "edit", mask=edited, seconds=30.0, prompts={"count": 4, "seconds": 12.3456})
    assert d.prompts == {"count": 4, "seconds": 12.346}
    assert AuditLog(project.folder / AUDIT_NAME).read().records[0]["prompts"] == {"count": 4, "seconds": 12.346}
    assert project.decide("case1", "alice", "accept").prompts is None


def test_bad_decisions_are_refused_without_logging(project):
    pred = np.asarray(project.load_prediction("case0").array)
    for kwargs, message in [
        ({"action": "approve"}, "unknown review action"),
        ({"action": "edit"}, "needs the edited mask"),
        ({"action": "accept", "mask": pred}, "takes no mask"),
        ({"action": "edit", "mask": pred[:, :5]}, "has shape"),
        ({"action": "accept", "seconds": -1.0}, "seconds >= 0"),
        ({"action": "accept", "pins": [{"text": "no position"}]}, "needs 'position'"),
        ({"action": "accept", "prediction": 3}, "no prediction 3"),
        ({"action": "accept", "prompts": {"count": -2}}, "need a count >= 0"),
        ({"action": "accept", "prompts": {"seconds": 3}}, "must be {'count': n, 'seconds': s}"),
    ]:
        with pytest.raises(ReviewError, match=message):
            project.decide("case0", "alice", **kwargs)
    # issue 14: reviewer names may hold spaces and dots ("Dr. A. Smith"), never path parts
    with pytest.raises(ReviewError, match="reviewer name 'a/b' cannot be used: these characters cannot be used: '/'"):
        project.decide("case0", "a/b", "accept")
    with pytest.raises(ReviewError, match="reviewer name '../x' cannot be used"):
        project.decide("case0", "../x", "accept")
    with pytest.raises(ReviewError, match="no case 'case9'.*case0"):
        project.decide("case9", "alice", "accept")
    assert not (project.folder / AUDIT_NAME).exists()
    assert check_name("dr.jones@ward-3", "reviewer name") == "dr.jones@ward-3"
    with pytest.raises(ReviewError, match="case id 'case 1' cannot be used"):
        check_name("case 1", "case id")  # case ids stay strict


def test_reviewer_names_with_spaces_and_dots(project):
    from medloop.plugins.review.project import reviewer_problem

    assert reviewer_problem("Dr. A. Smith") is None and reviewer_problem("Zoë O'Neil") is None
    assert reviewer_problem("") == "type your name"
    assert reviewer_problem(" Ann") == "no space at the start or the end"
    assert reviewer_problem("Ann.") == "no dot at the end"
    assert reviewer_problem(".Ann") == "start with a letter or digit"
    assert reviewer_problem("A\\B") == "these characters cannot be used: '\\\\'"
    pred = np.asarray(project.load_prediction("case0").array).copy()
    pred[1] = 0
    d = project.decide("case0", "Dr. A. Smith", "edit", mask=pred)
    assert d.reviewer == "Dr. A. Smith" and Path(d.mask).parent.name == "Dr. A. Smith"
    np.testing.assert_array_equal(project.reviewed_mask("case0", "Dr. A. Smith")[0], pred)
    assert project.state().cases["case0"].reviews["Dr. A. Smith"].action == "edit"


def test_two_reviewers_never_clobber_and_disagreement_is_second_opinion(project):
    pred = np.asarray(project.load_prediction("case0").array)
    mask_a, mask_b = pred.copy(), pred.copy()
    mask_a[1] = 0
    mask_b[4] = 0
    other = ReviewProject.open(project.folder)  # a second reviewer's session on the same folder
    da = project.decide("case0", "alice", "edit", mask=mask_a, seconds=10)
    db = other.decide("case0", "bob", "edit", mask=mask_b, seconds=20)
    assert da.mask != db.mask and Path(db.mask).parent.name == "bob"
    st = project.state().cases["case0"]
    assert st.status == "edited" and set(st.reviews) == {"alice", "bob"} and st.seconds == 30
    np.testing.assert_array_equal(project.reviewed_mask("case0", "alice")[0], mask_a)
    np.testing.assert_array_equal(project.reviewed_mask("case0", "bob")[0], mask_b)
    np.testing.assert_array_equal(project.reviewed_mask("case0")[0], mask_b)  # latest verdict

    other.decide("case1", "bob", "reject")
    project.decide("case1", "alice", "accept")
    assert project.state().cases["case1"].status == "second opinion"  # they disagree

    project.decide("case2", "alice", "second_opinion", comment="unsure about the margin")
    assert project.state().cases["case2"].status == "second opinion"
    project.decide("case2", "alice", "accept")  # the asker's own verdict does not answer it
    assert project.state().cases["case2"].status == "second opinion"
    other.decide("case2", "bob", "accept")
    st2 = project.state().cases["case2"]
    assert st2.status == "accepted" and set(st2.reviews) == {"alice", "bob"}
    other.decide("case2", "bob", "reopen")
    assert set(project.state().cases["case2"].reviews) == {"alice"}
    assert project.reviewers() == ["alice", "bob"]


def test_sorting_by_status_and_id(project):
    project.decide("case2", "alice", "accept")
    assert [c.id for c in project.cases_sorted("status")] == ["case1", "case0", "case2"]
    assert [c.id for c in project.cases_sorted("id")] == ["case0", "case1", "case2"]
    with pytest.raises(ReviewError, match="cannot sort"):
        project.cases_sorted("colour")


def test_in_progress_edit_autosaves_into_the_project_and_is_restored(project):
    labels = np.asarray(project.load_prediction("case1").array).copy()
    saver = project.autosaver("case1", "alice", lambda: labels, delay=0.05)
    labels[0, 0, 0] = 2
    saver.changed()
    saver.close()
    assert saver.path.parent == project.folder / ".medloop"
    reopened = ReviewProject.open(project.folder)
    np.testing.assert_array_equal(reopened.load_draft("case1", "alice"), labels)
    assert reopened.load_draft("case1", "bob") is None
    reopened.decide("case1", "alice", "edit", mask=labels)
    assert reopened.load_draft("case1", "alice") is None  # the verdict supersedes the draft


def test_saved_mask_tampering_is_detected(project):
    d = project.decide("case0", "alice", "edit", mask=box_labels(label=2))
    path = project.resolve(d.mask)
    write_image(read_image(path).with_array(box_labels(label=3)), path)
    with pytest.raises(ReviewError, match="checksum"):
        project.reviewed_mask("case0")
    path.unlink()
    with pytest.raises(ReviewError, match="missing"):
        project.reviewed_mask("case0")


# -- SIGKILL while deciding -------------------------------------------------------------------------

WRITER = textwrap.dedent(
    """
    import os, sys, time
    import numpy as np
    import torch; torch.set_num_threads(1)
    from medloop.plugins.review.project import ReviewProject
    project = ReviewProject.open(sys.argv[1])
    tear = sys.argv[2] == "tear"
    pred = np.asarray(project.load_prediction("case0").array)
    draft = pred.copy()
    saver = project.autosaver("case2", "carol", lambda: draft, delay=0.1)
    i = 0
    while True:
        mask = pred.copy()
        mask.flat[i % mask.size] = 1 + i % 3
        draft.flat[(7 * i) % draft.size] = 1
        saver.changed()
        case = ("case0", "case1")[i % 2]
        project.decide(case, "carol", "edit", mask=mask, seconds=i, comment=str(i))
        print(i, flush=True)
        i += 1
        if tear and i == 3:  # a record cut short, as if killed inside write()
            fd = os.open(project.log.path, os.O_WRONLY | os.O_APPEND)
            os.write(fd, b'{"action": "edit", "case": "case0", "comm')
            print("torn", flush=True)
            time.sleep(60)
    """
)


def _run_and_kill(folder: Path, mode: str, min_writes: int) -> list[str]:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.Popen(
        [sys.executable, "-c", WRITER, str(folder), mode], stdout=subprocess.PIPE, text=True, env=env, cwd=REPO
    )
    lines: list[str] = []
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            line = proc.stdout.readline()
            if not line:
                break
            lines.append(line.strip())
            if (mode == "tear" and line.strip() == "torn") or (mode == "loop" and len(lines) >= min_writes):
                break
        time.sleep(0.013 * (len(lines) % 7))  # land somewhere inside the next decision
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(10)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == -signal.SIGKILL
    return lines


def _check_every_reported_decision_survives(folder: Path, reported: list[str]) -> ReviewProject:
    project = ReviewProject.open(folder)
    with _maybe_warn():  # a torn line may or may not be there, depending on where the kill landed
        state = project.state()
    carol = [d for c in state.cases.values() for d in c.history if d.reviewer == "carol"]
    logged = {d.comment for d in carol}
    done = {s for s in reported if s.isdigit()}
    assert done <= logged  # every decision reported as saved is in the log
    for d in carol:  # and every logged mask is complete, readable and unchanged
        path = project.resolve(d.mask)
        assert sha256_file(path) == d.mask_sha256
        assert read_image(path).shape == project.load_image(d.case).shape
    for case in ("case0", "case1"):
        last = [d for d in carol if d.case == case][-1]
        np.testing.assert_array_equal(project.reviewed_mask(case, "carol", state)[0], read_image(project.resolve(last.mask)).array)
    return project


class _maybe_warn:
    """Collects MedloopWarnings without failing when there are none."""

    def __enter__(self):
        import warnings

        self._ctx = warnings.catch_warnings(record=True)
        self.caught = self._ctx.__enter__()
        warnings.simplefilter("always", MedloopWarning)
        return self

    def __exit__(self, *exc):
        return self._ctx.__exit__(*exc)


def test_sigkill_while_deciding_loses_nothing_saved_and_reports_a_torn_line(project):
    reported = _run_and_kill(project.folder, "loop", min_writes=6)
    assert len([s for s in reported if s.isdigit()]) >= 6
    reopened = _check_every_reported_decision_survives(project.folder, reported)
    draft = reopened.load_draft("case2", "carol")  # the in-progress edit autosaved and restores
    assert draft is not None and draft.shape == reopened.load_image("case2").shape and draft.sum() > 0

    before = len(AuditLog(project.folder / AUDIT_NAME).read().records)
    reported = _run_and_kill(project.folder, "tear", min_writes=0)
    assert reported[-1] == "torn"
    reopened = ReviewProject.open(project.folder)
    with pytest.warns(MedloopWarning, match="torn last line"):
        state = reopened.state()
    assert state.torn_tail and len(state.problems) >= 1
    assert len(AuditLog(project.folder / AUDIT_NAME).read().records) == before + 3
    _check_every_reported_decision_survives(project.folder, reported)
    reopened.decide("case1", "dave", "accept")  # the log goes on after the fragment
    with pytest.warns(MedloopWarning, match="invalid line"):  # the fragment stays, reported, mid-file now
        after = reopened.state()
    assert after.cases["case1"].reviews["dave"].action == "accept" and not after.torn_tail
    with _maybe_warn() as quiet:
        again = reopened.state()
    assert len(again.problems) >= 1 and quiet.caught == []  # reported every call, warned once
