"""A review project made with a model runs through the cohort runner: identical on two local
workers, cancellable between cases (no project, finished cases kept), and resumable."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from medloop.app.engine.jobs import JobCancelled
from medloop.app.io.read import read_image
from medloop.app.io.write import write_image
from medloop.plugins.review.project import MANIFEST_NAME, ReviewError, ReviewProject


@pytest.fixture
def slabs(tmp_path, brain_sample):
    t1, _ = brain_sample
    paths = []
    for k, z in enumerate((30, 45, 60)):  # three 3-slice slabs of the packaged brain
        slab = replace(t1, array=np.ascontiguousarray(np.asarray(t1.array)[z : z + 3]), path=None)
        paths.append(write_image(slab, tmp_path / f"slab{k}.nii.gz"))
    return paths


def arrays(project: ReviewProject) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    return {
        c.id: (np.asarray(project.load_prediction(c.id).array), np.asarray(read_image(project.uncertainty_path(c.id)).array))
        for c in project.cases
    }


@pytest.mark.timeout(240)
def test_two_local_workers_make_the_same_project(tmp_path, slabs):
    serial = ReviewProject.create_with_model(tmp_path / "serial", slabs, "brain-tissue-t1", device="cpu")
    parallel = ReviewProject.create_with_model(
        tmp_path / "parallel", slabs, "brain-tissue-t1", device="cpu", scheduler="local", workers=2
    )
    assert [c.id for c in parallel.cases] == [c.id for c in serial.cases] == ["slab0", "slab1", "slab2"]
    for case_s, case_p in zip(serial.cases, parallel.cases):
        assert (case_p.entropy, case_p.uncertainty_score) == (case_s.entropy, case_s.uncertainty_score)
        assert case_p.predictions[0].model == case_s.predictions[0].model
    a, b = arrays(serial), arrays(parallel)
    for cid in a:
        np.testing.assert_array_equal(a[cid][0], b[cid][0])
        np.testing.assert_array_equal(a[cid][1], b[cid][1])


def test_cancel_leaves_no_project_and_a_rerun_resumes(tmp_path, slabs):
    seen = []

    def progress(done, total, info):
        seen.append((done, total, info["case"]))

    with pytest.raises(JobCancelled):
        ReviewProject.create_with_model(
            tmp_path / "proj", slabs, "brain-tissue-t1", device="cpu", progress=progress,
            should_stop=lambda: len(seen) >= 1,
        )
    assert seen == [(1, 3, "slab0")]
    assert not (tmp_path / "proj" / MANIFEST_NAME).exists()
    with pytest.raises(ReviewError):
        ReviewProject.open(tmp_path / "proj")
    done_first = (tmp_path / "proj" / "predictions" / "slab0.nii.gz").stat().st_mtime_ns
    seen.clear()
    project = ReviewProject.create_with_model(tmp_path / "proj", slabs, "brain-tissue-t1", device="cpu", progress=progress)
    assert [c.id for c in project.cases] == ["slab0", "slab1", "slab2"]
    assert (tmp_path / "proj" / "predictions" / "slab0.nii.gz").stat().st_mtime_ns == done_first  # not redone
    assert [s[2] for s in seen] == ["slab0", "slab1", "slab2"] and seen[-1][:2] == (3, 3)


def test_a_failing_case_makes_no_project_and_names_it(tmp_path, slabs, monkeypatch):
    from medloop.plugins.review import model_run

    real = model_run.ReviewPredictTask.run

    def run(self, case, state, out_dir):
        if case.id == "slab1":
            raise ReviewError(f"{case.path} is unreadable today")
        return real(self, case, state, out_dir)

    monkeypatch.setattr(model_run.ReviewPredictTask, "run", run)
    with pytest.raises(ReviewError) as err:
        ReviewProject.create_with_model(tmp_path / "proj", slabs, "brain-tissue-t1", device="cpu")
    assert str(err.value) == (
        f"1 of 3 cases failed, so no review project was made (first: slab1: {slabs[1]} is unreadable today); "
        "fix or leave out those images and run again (finished cases are kept)"
    )
    assert not (tmp_path / "proj" / MANIFEST_NAME).exists()
    assert sorted(p.name for p in (tmp_path / "proj" / "predictions").glob("slab?.nii.gz")) == ["slab0.nii.gz", "slab2.nii.gz"]
