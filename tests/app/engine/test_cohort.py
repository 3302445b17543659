"""The cohort runner: serial, LocalCluster and an existing scheduler; resume, failures, dying workers.

The task (``cohort_synth.ThresholdTask``) thresholds seeded volumes, so every output can be checked
against the input exactly. Segmentation through the runner is tested in
``tests/plugins/segmentation/test_batch.py``.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from medloop.app.engine import cohort
from medloop.app.engine.cohort import Case, CohortError, cases_from, run_cohort
from medloop.app.engine.jobs import JobCancelled
from medloop.app.io.read import read_image
from tests.app.engine.cohort_synth import ORIGIN, SPACING, ThresholdTask, loads, write_volumes
from tests.app.io.synth import OBLIQUE

ROOT = Path(__file__).resolve().parents[3]


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> list[Path]:
    return write_volumes(tmp_path_factory.mktemp("cohort") / "in")


def check_outputs(out: Path, inputs: list[Path], threshold: float = 0.5) -> None:
    """Every ``case<i>.nii.gz`` is its input thresholded, with the input's geometry."""
    for i, source in enumerate(inputs):
        labels = read_image(out / f"case{i}.nii.gz")
        expected = (np.asarray(read_image(source).array) > threshold).astype(np.uint8)
        np.testing.assert_array_equal(labels.array, expected)
        assert labels.spacing == pytest.approx(SPACING) and labels.origin == pytest.approx(ORIGIN)
        np.testing.assert_allclose(labels.direction, OBLIQUE, atol=1e-6)


def mtimes(out: Path) -> dict[str, int]:
    return {p.name: p.stat().st_mtime_ns for p in sorted(out.iterdir())}


def expected_files(n: int = 6) -> list[str]:
    return sorted([f"case{i}.nii.gz" for i in range(n)] + [f"case{i}.json" for i in range(n)])


# -- cases --------------------------------------------------------------------------------------


def test_cases_from_folder_list_file_and_paths(tmp_path, inputs):
    folder = tmp_path / "data"
    folder.mkdir()
    for p in inputs[:2]:
        (folder / p.name).write_bytes(p.read_bytes())
    (folder / "b.nrrd").write_bytes(b"x")  # readable by name; its content is the case's problem
    (folder / "notes.txt").write_text("not an image")
    (folder / ".case0.nii.gz.tmp123.nii.gz").write_bytes(b"x")  # a killed write: hidden, skipped
    series = folder / "ct_series"
    series.mkdir()
    (series / "IM0001").write_bytes(b"\0" * 128 + b"DICM" + b"\0" * 64)  # DICOM magic, no extension
    (folder / "empty_sub").mkdir()
    cases = cases_from(folder)
    assert [(c.id, c.path.name) for c in cases] == [
        ("b", "b.nrrd"), ("case0", "case0.nii.gz"), ("case1", "case1.nii.gz"), ("ct_series", "ct_series"),
    ]
    # A list file: comments, blank lines, paths relative to the list; shared names take their folder.
    for sub in ("a", "b"):
        (tmp_path / sub).mkdir()
        (tmp_path / sub / "t1.nii.gz").write_bytes(inputs[0].read_bytes())
    listing = tmp_path / "cohort.txt"
    listing.write_text(f"# subjects\na/t1.nii.gz\n\nb/t1.nii.gz  # second\n{inputs[3]}\n")
    assert [c.id for c in cases_from(listing)] == ["a_t1", "b_t1", "case3"]
    assert [c.id for c in cases_from([inputs[1], str(inputs[2])])] == ["case1", "case2"]


def test_cases_from_refuses_empty_and_missing(tmp_path):
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "readme.txt").write_text("no images here")
    with pytest.raises(CohortError, match=r"^no images in .*empty: it holds no image files"):
        cases_from(tmp_path / "empty")
    with pytest.raises(CohortError, match=r"^cannot find .*nowhere: no such file or folder; check the path$"):
        cases_from(tmp_path / "nowhere")
    listing = tmp_path / "list.txt"
    listing.write_text("# nothing yet\n")
    with pytest.raises(CohortError, match="names no inputs"):
        cases_from(listing)
    listing.write_text("gone.nii.gz\n")
    with pytest.raises(CohortError, match=r"^cannot find .*gone.nii.gz: no such file"):
        cases_from(listing)
    with pytest.raises(CohortError, match="repeated: x"):
        run_cohort([Case("x", tmp_path), Case("x", tmp_path)], ThresholdTask(str(tmp_path / "log")), tmp_path / "out")


# -- serial ---------------------------------------------------------------------------------------


def test_serial_loads_once_and_stops_between_cases(tmp_path, inputs):
    """(f) One load for six cases; should_stop ends the run with JobCancelled, finished cases kept."""
    log, out = tmp_path / "loads", tmp_path / "out"
    task = ThresholdTask(str(log))
    seen: list[tuple[int, int, str]] = []

    def progress(done, total, info):
        seen.append((done, total, info["case"]))

    with pytest.raises(JobCancelled):
        run_cohort(cases_from(inputs), task, out, progress=progress, should_stop=lambda: len(seen) >= 3)
    assert seen == [(1, 6, "case0"), (2, 6, "case1"), (3, 6, "case2")]
    assert sorted(p.name for p in out.iterdir()) == expected_files(3)
    assert loads(log) == [os.getpid()]
    report = run_cohort(cases_from(inputs), task, out)  # resume: the other three only
    assert report.skipped == ["case0", "case1", "case2"] and report.computed == ["case3", "case4", "case5"]
    assert len(loads(log)) == 2  # one more load for the second run, not one per case
    check_outputs(out, inputs)


def test_rerun_computes_nothing_and_a_changed_fingerprint_recomputes(tmp_path, inputs):
    """(c) Resume skips finished cases without loading or writing anything; a new fingerprint,
    a changed input or a deleted output recomputes exactly those cases."""
    log, out = tmp_path / "loads", tmp_path / "out"
    first = run_cohort(cases_from(inputs), ThresholdTask(str(log)), out)
    assert len(first.computed) == 6 and first.failed == {}
    before = mtimes(out)
    time.sleep(0.01)  # mtimes would show any rewrite
    again = run_cohort(cases_from(inputs), ThresholdTask(str(log)), out)
    assert again.computed == [] and len(again.skipped) == 6
    assert mtimes(out) == before and len(loads(log)) == 1
    (out / "case4.nii.gz").unlink()
    assert run_cohort(cases_from(inputs), ThresholdTask(str(log)), out).computed == ["case4"]
    changed = run_cohort(cases_from(inputs), ThresholdTask(str(log), threshold=0.7), out)
    assert len(changed.computed) == 6 and changed.skipped == []
    assert changed.entries[0]["fingerprint"] == {"task": "threshold", "threshold": 0.7}
    check_outputs(out, inputs, threshold=0.7)


def test_a_changed_input_is_recomputed(tmp_path, inputs):
    data = tmp_path / "in"
    data.mkdir()
    copies = [data / p.name for p in inputs[:2]]
    for src, dst in zip(inputs, copies):
        dst.write_bytes(src.read_bytes())
    task, out = ThresholdTask(str(tmp_path / "log")), tmp_path / "out"
    run_cohort(cases_from(data), task, out)
    copies[1].write_bytes(inputs[5].read_bytes())  # replaced by another scan
    report = run_cohort(cases_from(data), task, out)
    assert report.computed == ["case1"] and report.skipped == ["case0"]
    check_outputs(out, [inputs[0], inputs[5]])


# -- LocalCluster ------------------------------------------------------------------------------


@pytest.mark.timeout(180)
def test_local_cluster_loads_once_per_worker_and_reports_a_corrupt_case(tmp_path, inputs):
    """(d) A corrupt file fails alone, with a one-line message naming it; the others are written.
    Each worker process loads the task's state once, whatever number of cases it runs; the
    cluster leaves this process's environment as it was."""
    data = tmp_path / "in"
    data.mkdir()
    for p in inputs[:5]:
        (data / p.name).write_bytes(p.read_bytes())
    bad = data / "case5.nii.gz"
    bad.write_bytes(np.random.default_rng(7).bytes(4096))
    log, out = tmp_path / "loads", tmp_path / "out"
    environ = dict(os.environ)
    report = run_cohort(cases_from(data), ThresholdTask(str(log)), out, scheduler="local", workers=2)
    assert dict(os.environ) == environ  # the nannies' OMP_NUM_THREADS=1 etc. do not stay behind
    assert {e["record"]["malloc_trim"] for e in report.entries if "record" in e} == {None}  # glibc's own trimming
    assert sorted(report.computed) == [f"case{i}" for i in range(5)]
    assert list(report.failed) == ["case5"]
    message = report.failed["case5"]
    assert message.startswith(f"cannot read {bad}: ") and "\n" not in message
    assert not (out / "case5.nii.gz").exists() and (out / "case5.json").exists()
    check_outputs(out, inputs[:5])
    ran_on = {e["pid"] for e in report.entries}
    assert os.getpid() not in ran_on and 1 <= len(ran_on) <= 2
    assert sorted(loads(log)) == sorted(ran_on)  # one load per worker process, none twice
    # The failure is retried on the next run; the five done are not.
    again = run_cohort(cases_from(data), ThresholdTask(str(log)), out)
    assert again.computed == [] and len(again.skipped) == 5 and list(again.failed) == ["case5"]


@pytest.mark.timeout(180)
def test_a_worker_killed_mid_case_loses_nothing(tmp_path, inputs):
    """(b) The worker running case2 SIGKILLs itself in the middle of writing it: the case reruns
    elsewhere, all six outputs are right, and no partial or temporary file is left."""
    marker, out = tmp_path / "killed", tmp_path / "out"
    task = ThresholdTask(str(tmp_path / "loads"), parent_pid=os.getpid(), kill_marker=str(marker), sleep=0.2)
    report = run_cohort(cases_from(inputs), task, out, scheduler="local", workers=2)
    killed = int(marker.read_text())  # the kill happened, in a worker
    assert killed != os.getpid()
    assert sorted(report.computed) == [f"case{i}" for i in range(6)] and report.failed == {}
    assert report.entries[2]["pid"] != killed
    assert sorted(p.name for p in out.iterdir()) == expected_files()  # no half file, no leftover
    check_outputs(out, inputs)


# -- an existing scheduler ---------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def stop(process: subprocess.Popen) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=15)


@pytest.mark.timeout(240)
def test_an_existing_scheduler_and_worker(tmp_path, inputs):
    """(e) ``dask scheduler`` and ``dask worker`` as separate processes, reached by address."""
    dask = Path(sys.executable).with_name("dask")
    address = f"tcp://127.0.0.1:{free_port()}"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    logs = [open(tmp_path / name, "w") for name in ("scheduler.log", "worker.log")]
    processes = []
    try:
        processes.append(subprocess.Popen(
            [str(dask), "scheduler", "--host", "127.0.0.1", "--port", address.rsplit(":", 1)[1], "--no-dashboard"],
            stdout=logs[0], stderr=subprocess.STDOUT, env=env, cwd=tmp_path,
        ))
        processes.append(subprocess.Popen(
            [str(dask), "worker", address, "--nthreads", "1", "--no-dashboard"],
            stdout=logs[1], stderr=subprocess.STDOUT, env=env, cwd=tmp_path,
        ))
        log, out = tmp_path / "loads", tmp_path / "out"
        report = run_cohort(cases_from(inputs), ThresholdTask(str(log)), out, scheduler=address, workers=1)
        assert len(report.computed) == 6 and report.failed == {}, (tmp_path / "worker.log").read_text()
        worker_pids = {e["pid"] for e in report.entries}
        assert len(worker_pids) == 1 and os.getpid() not in worker_pids
        assert loads(log) == list(worker_pids)  # one load for six cases on that worker
        check_outputs(out, inputs)
    finally:
        for process in reversed(processes):
            stop(process)
        for f in logs:
            f.close()


def test_an_unreachable_scheduler_is_a_clear_error(tmp_path, inputs, monkeypatch):
    monkeypatch.setattr(cohort, "CONNECT_TIMEOUT_S", 1)
    address = f"tcp://127.0.0.1:{free_port()}"  # nothing listens there
    with pytest.raises(CohortError, match=rf"^cannot reach the dask scheduler at {address} \("):
        run_cohort(cases_from(inputs[:1]), ThresholdTask(str(tmp_path / "log")), tmp_path / "out", scheduler=address)
