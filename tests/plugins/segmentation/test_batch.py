"""segment_cohort(): the cohort runner over segment(), identical to one-at-a-time segment() runs."""

from __future__ import annotations

import os
from dataclasses import replace

import numpy as np
import pytest

from medloop.app.engine.jobs import JobCancelled
from medloop.app.io.read import read_image
from medloop.models.registry import ModelNotFoundError, register_model
from medloop.plugins.segmentation.batch import SegmentTask, segment_cohort
from medloop.plugins.segmentation.method import SegmentParams, segment
from tests.app.engine.cohort_synth import write_volumes
from tests.models.tiny import make_tiny_model


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    return write_volumes(tmp_path_factory.mktemp("cohort") / "in")


@pytest.fixture
def params(zoo) -> SegmentParams:
    return SegmentParams("tiny-threshold", models_dir=zoo, num_threads=1, roi_size=(16, 32, 32))


def one_at_a_time(inputs, params, folder=None):
    """segment() on each image alone (and, with ``folder``, written as the CLI writes it)."""
    from medloop import write_image

    labels = [segment(read_image(p), params).labels for p in inputs]
    if folder is not None:
        folder.mkdir()
        for p, image in zip(inputs, labels):
            write_image(image, folder / p.name)
    return labels


@pytest.mark.timeout(180)
def test_two_local_workers_match_one_at_a_time_segment(tmp_path, inputs, params):
    """(a) Byte-identical label arrays and identical geometry to segment() on each image alone."""
    import SimpleITK as sitk

    report = segment_cohort(inputs, tmp_path / "out", params, scheduler="local", workers=2)
    assert len(report.computed) == 6 and report.failed == {}
    assert os.getpid() not in {e["pid"] for e in report.entries}  # the work ran on the workers
    one_at_a_time(inputs, params, tmp_path / "alone")
    for path in inputs:
        got = sitk.ReadImage(str(tmp_path / "out" / path.name))
        alone = sitk.ReadImage(str(tmp_path / "alone" / path.name))
        assert got.GetPixelID() == alone.GetPixelID() == sitk.sitkUInt8
        assert sitk.GetArrayViewFromImage(got).tobytes() == sitk.GetArrayViewFromImage(alone).tobytes()
        for geometry in ("GetSize", "GetSpacing", "GetOrigin", "GetDirection"):
            assert getattr(got, geometry)() == getattr(alone, geometry)()
        assert 0.2 < float(sitk.GetArrayViewFromImage(got).mean()) < 0.8  # both classes: the comparison means something
        source = sitk.ReadImage(str(path))  # and that geometry is the input's (NIfTI keeps it to float32)
        for geometry in ("GetSpacing", "GetOrigin", "GetDirection"):
            np.testing.assert_allclose(getattr(got, geometry)(), getattr(source, geometry)(), rtol=0, atol=1e-5)
    first = np.asarray(read_image(tmp_path / "out" / "case0.nii.gz").array)
    voxels = {"background": int((first == 0).sum()), "bright": int((first == 1).sum())}
    assert report.entries[0]["record"]["voxels"] == voxels


def test_serial_builds_the_network_once_and_honours_stop(tmp_path, inputs, params, monkeypatch):
    """(f) Six cases, one network; stopping keeps the finished cases."""
    from medloop.models import registry

    built = []
    original = registry.build_model
    monkeypatch.setattr(registry, "build_model", lambda *a, **k: built.append(a[0].name) or original(*a, **k))
    done = []
    with pytest.raises(JobCancelled):
        segment_cohort(inputs, tmp_path / "out", params, progress=lambda d, t, info: done.append(info["case"]),
                       should_stop=lambda: len(done) == 2)
    assert done == ["case0", "case1"] and built == ["tiny-threshold"]
    report = segment_cohort(inputs, tmp_path / "out", params)
    assert report.skipped == ["case0", "case1"] and len(report.computed) == 4 and len(built) == 2
    for path, expected in zip(inputs, one_at_a_time(inputs, params)):
        np.testing.assert_array_equal(read_image(tmp_path / "out" / path.name).array, expected.array)


def test_resume_follows_the_model_and_parameters(tmp_path, inputs, params):
    out = tmp_path / "out"
    segment_cohort(inputs[:3], out, params)
    before = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    # Execution settings do not change what is computed: nothing is redone.
    same = segment_cohort(inputs[:3], out, replace(params, batch_size=4, num_threads=2, device="cpu"))
    assert same.computed == [] and {p.name: p.stat().st_mtime_ns for p in out.iterdir()} == before
    # Another tile overlap changes the labels' provenance: everything is recomputed.
    other = replace(params, overlap=0.5)
    assert len(segment_cohort(inputs[:3], out, other).computed) == 3
    # Other weights under the same model name (another models folder): recomputed too.
    weights, card = make_tiny_model(tmp_path / "retrained", seed=4)
    register_model(weights, card, tmp_path / "zoo2")
    report = segment_cohort(inputs[:3], out, replace(other, models_dir=tmp_path / "zoo2"))
    assert len(report.computed) == 3
    assert report.fingerprint["model"]["weights_sha256"] != same.fingerprint["model"]["weights_sha256"]


def test_a_corrupt_case_is_reported_and_the_others_written(tmp_path, inputs, params):
    """(d) Random bytes named .nii.gz: one line naming the file; the five others segmented."""
    data = tmp_path / "in"
    data.mkdir()
    for p in inputs[:5]:
        (data / p.name).write_bytes(p.read_bytes())
    bad = data / "broken.nii.gz"
    bad.write_bytes(np.random.default_rng(1).bytes(2048))
    report = segment_cohort(data, tmp_path / "out", params)
    assert list(report.failed) == ["broken"]
    assert report.failed["broken"] == (
        f"cannot read {bad}: not a NIfTI file (unrecognised or corrupt header); "
        "check that this is an image and that it is not damaged"
    )
    assert sorted(report.computed) == [f"case{i}" for i in range(5)]
    assert sorted(p.name for p in (tmp_path / "out").glob("*.nii.gz")) == [f"case{i}.nii.gz" for i in range(5)]


def test_an_unknown_model_fails_before_anything_is_written(tmp_path, inputs, zoo):
    with pytest.raises(ModelNotFoundError):
        segment_cohort(inputs, tmp_path / "out", SegmentParams("nope", models_dir=zoo))
    assert not (tmp_path / "out").exists()


def test_the_task_pickles_for_workers(params):
    import pickle

    task = SegmentTask(params)
    assert pickle.loads(pickle.dumps(task)) == task
    assert task.fingerprint() == pickle.loads(pickle.dumps(task)).fingerprint()
