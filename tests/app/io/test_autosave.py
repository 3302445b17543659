"""Annotation autosave: atomic, debounced, restored, and safe against SIGKILL."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from medloop.app.errors import MedloopWarning
from medloop.app.io.image import MedImage
from medloop.app.io.read import read_image
from medloop.app.io import autosave
from medloop.app.io.autosave import ANNOTATION_SUFFIX, AnnotationStore, Autosaver, is_annotation_path
from tests.app.io.synth import OBLIQUE, oblique_volume

REPO = Path(__file__).resolve().parents[3]


def _image_2d(path: str | None = None) -> MedImage:
    rot = np.array([[0.8, -0.6], [0.6, 0.8]])
    return MedImage(
        array=np.zeros((17, 23), np.int16), spacing=(0.25, 0.5), origin=(3.5, -7.25), direction=rot, path=path
    )


def _labels(shape, seed=3) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 5, size=shape).astype(np.uint8)


# -- store -------------------------------------------------------------------------------------


@pytest.mark.parametrize("make", [lambda p: oblique_volume(), lambda p: _image_2d()], ids=["oblique3d", "2d"])
def test_round_trip_keeps_voxels_and_geometry(tmp_path, make):
    image = make(tmp_path)
    store = AnnotationStore(tmp_path / "ann")
    labels = _labels(image.shape)
    path = store.save(image, "labels", labels)
    assert path == store.path_for(image, "labels") and path.name.endswith(ANNOTATION_SUFFIX)
    assert is_annotation_path(path)
    np.testing.assert_array_equal(store.load(image, "labels"), labels)
    on_disk = read_image(path)
    assert on_disk.ndim == image.ndim
    np.testing.assert_allclose(on_disk.spacing, image.spacing, atol=1e-6)
    np.testing.assert_allclose(on_disk.origin, image.origin, atol=1e-5)
    np.testing.assert_allclose(on_disk.direction, image.direction, atol=1e-6)
    assert store.list(image) == ["labels"]
    assert store.load(image, "other") is None


def test_names_are_stable_and_distinct(tmp_path):
    proj = AnnotationStore(tmp_path / "project" / ".medloop")
    a = oblique_volume().with_array(np.zeros((9, 11, 13)), path=str(tmp_path / "project" / "a" / "imaging.nii.gz"))
    b = a.with_array(a.array, path=str(tmp_path / "project" / "b" / "imaging.nii.gz"))
    outside = a.with_array(a.array, path=str(tmp_path / "elsewhere" / "imaging.nii.gz"))
    paths = {proj.path_for(x, "labels") for x in (a, b, outside)}
    assert len(paths) == 3
    assert proj.path_for(a, "labels").name == "a__imaging.labels" + ANNOTATION_SUFFIX
    assert proj.path_for(a, "labels") == AnnotationStore(proj.folder).path_for(a, "labels")
    # next to the image: the plain stem
    (tmp_path / "project" / "a").mkdir(parents=True)
    own = AnnotationStore(AnnotationStore.default_folder(a))
    assert own.folder == tmp_path / "project" / "a" / ".medloop"
    assert own.path_for(a, "labels").name == "imaging.labels" + ANNOTATION_SUFFIX
    # no path: a hash of shape and geometry, the same for the same grid, another for another grid
    g1, g2 = oblique_volume(), oblique_volume(seed=5)
    assert proj.path_for(g1, "labels") == proj.path_for(g2, "labels")
    assert proj.path_for(g1, "labels") != proj.path_for(_image_2d(), "labels")
    # awkward layer names round-trip through list()
    img = _image_2d(str(tmp_path / "x.v2.png"))
    store = AnnotationStore(tmp_path / "s")
    for name in ("Labels [1]", "a/b", "tumour.core", ".hidden"):
        store.save(img, name, np.zeros(img.shape, np.uint8))
    assert store.list(img) == sorted(["Labels [1]", "a/b", "tumour.core", ".hidden"])
    assert not any(p.name.startswith(".") for p in store.folder.iterdir())
    assert store.list(_image_2d(str(tmp_path / "x.png"))) == []


def test_default_folder_falls_back_to_user_folder(tmp_path, monkeypatch):
    img = _image_2d(str(tmp_path / "scan.png"))
    assert AnnotationStore.default_folder(img) == tmp_path / ".medloop"
    monkeypatch.setattr(autosave, "_writable_dir", lambda folder: False)
    monkeypatch.setattr(autosave, "_user_annotation_folder", lambda: tmp_path / "user" / "annotations")
    assert AnnotationStore.default_folder(img) == tmp_path / "user" / "annotations"
    assert AnnotationStore.default_folder(_image_2d()) == tmp_path / "user" / "annotations"


def test_file_for_another_grid_is_ignored_not_deleted(tmp_path):
    image = oblique_volume()
    store = AnnotationStore(tmp_path)
    path = store.path_for(image, "labels")
    # another grid under the same name: shifted origin, then another shape
    shifted = MedImage(array=image.array, spacing=image.spacing, origin=(0.0, 0.0, 0.0), direction=OBLIQUE)
    store.save(image, "labels", _labels(image.shape))
    from medloop.app.io.write import write_image

    write_image(shifted.with_array(_labels(image.shape)), path)
    with pytest.warns(MedloopWarning, match="ignoring saved annotation"):
        assert store.load(image, "labels") is None
    write_image(MedImage.from_array(np.zeros((4, 5, 6), np.uint8)), path)
    with pytest.warns(MedloopWarning, match="shape"):
        assert store.load(image, "labels") is None
    path.write_bytes(b"not a nifti")
    with pytest.warns(MedloopWarning, match="ignoring saved annotation"):
        assert store.load(image, "labels") is None
    assert path.exists()


def test_stale_temps_are_removed_on_open(tmp_path):
    store = AnnotationStore(tmp_path)
    name = store.path_for(_image_2d(), "labels").name
    old, fresh = tmp_path / f".{name}.k3j4h5.nii.gz", tmp_path / f".{name}.a1b2c3.nii.gz"
    other = tmp_path / ".unrelated.tmp"
    for p in (old, fresh, other):
        p.write_bytes(b"partial")
    past = time.time() - 3600
    for p in (old, other):
        os.utime(p, (past, past))
    assert AnnotationStore(tmp_path).removed_temps == [old]
    assert fresh.exists() and other.exists() and not old.exists()


# -- autosaver ---------------------------------------------------------------------------------


class RecordingStore(AnnotationStore):
    """Records when saves start and end, and whether two ever overlapped."""

    def __init__(self, folder, slow: float = 0.0, fail: int = 0):
        super().__init__(folder)
        self.slow, self.fail = slow, fail
        self.starts: list[float] = []
        self.active = 0
        self.overlapped = False
        self.snapshots: list[np.ndarray] = []
        self._lock = threading.Lock()

    def save(self, image, name, labels):
        with self._lock:
            self.active += 1
            self.overlapped |= self.active > 1
        try:
            self.starts.append(time.monotonic())
            time.sleep(self.slow)
            if self.fail:
                self.fail -= 1
                raise OSError("disk full")
            self.snapshots.append(labels)
            return super().save(image, name, labels)
        finally:
            with self._lock:
                self.active -= 1


DELAY = 0.5
TOL = 0.4  # scheduling slack on a busy 2-core CI machine


def test_burst_of_changes_saves_once_within_delay(tmp_path):
    image = _image_2d()
    labels = np.zeros(image.shape, np.uint8)
    store = RecordingStore(tmp_path)
    with Autosaver(store, image, "labels", lambda: labels, delay=DELAY) as saver:
        t0 = time.monotonic()
        for i in range(20):
            labels[0, i] = 1
            saver.changed()
        time.sleep(DELAY + TOL + 0.2)
        assert saver.saves == 1 and len(store.starts) == 1
        assert store.starts[0] - t0 <= DELAY + TOL
        assert not saver.dirty
    np.testing.assert_array_equal(store.load(image, "labels"), labels)


def test_continuous_painting_saves_every_delay(tmp_path):
    image = _image_2d()
    labels = np.zeros(image.shape, np.uint8)
    store = RecordingStore(tmp_path)
    saver = Autosaver(store, image, "labels", lambda: labels, delay=DELAY)
    t0 = time.monotonic()
    i = 0
    while time.monotonic() - t0 < 3 * DELAY:
        labels.flat[i] = 1
        i += 1
        saver.changed()
        time.sleep(0.1)
    t_end = time.monotonic()
    saver.close()
    starts = [s for s in store.starts if s <= t_end]
    assert len(starts) >= 2
    gaps = np.diff([t0, *starts, t_end])
    assert gaps.max() <= DELAY + TOL, gaps
    assert not store.overlapped
    np.testing.assert_array_equal(store.load(image, "labels"), labels)  # close() saved the rest


def test_flush_close_and_snapshot(tmp_path):
    image = oblique_volume()
    labels = np.zeros(image.shape, np.uint8)
    store = RecordingStore(tmp_path)
    saver = Autosaver(store, image, "labels", lambda: labels, delay=60.0)
    assert saver.flush() is False and saver.saves == 0  # nothing to save
    labels[1, 2, 3] = 7
    saver.changed()
    assert saver.flush() is True and saver.saves == 1 and saver.last_saved is not None
    labels[1, 2, 3] = 9  # the saved copy is not the live array
    assert store.snapshots[0][1, 2, 3] == 7 and store.load(image, "labels")[1, 2, 3] == 7
    saver.changed()
    saver.close()
    assert saver.saves == 2 and store.load(image, "labels")[1, 2, 3] == 9
    saver.changed()  # after close: ignored, no thread left
    assert not saver._thread.is_alive() and saver.saves == 2
    saver.close()  # idempotent


def test_never_two_saves_at_once(tmp_path):
    image = _image_2d()
    labels = np.zeros(image.shape, np.uint8)
    store = RecordingStore(tmp_path, slow=0.2)
    saver = Autosaver(store, image, "labels", lambda: labels, delay=0.05)
    saver.changed()
    time.sleep(0.1)  # the worker is now inside a slow save
    labels[0, 0] = 1
    saver.changed()
    saver.flush()  # waits for the running save, then saves the new edit
    saver.close()
    assert not store.overlapped and saver.saves == 2
    assert store.load(image, "labels")[0, 0] == 1


def test_save_errors_go_to_on_error_and_next_change_retries(tmp_path):
    image = _image_2d()
    labels = np.ones(image.shape, np.uint8)
    store = RecordingStore(tmp_path, fail=1)
    errors = []
    saver = Autosaver(store, image, "labels", lambda: labels, delay=0.05, on_error=errors.append)
    saver.changed()
    time.sleep(0.3)
    assert len(errors) == 1 and isinstance(errors[0], OSError) and saver.saves == 0
    assert saver.dirty  # not lost: waiting for the next edit
    saver.changed()
    time.sleep(0.3)
    assert saver.saves == 1 and len(errors) == 1
    np.testing.assert_array_equal(store.load(image, "labels"), labels)
    saver.close()


def test_default_on_error_warns(tmp_path):
    image = _image_2d()
    store = RecordingStore(tmp_path, fail=1)
    saver = Autosaver(store, image, "labels", lambda: np.zeros(image.shape, np.uint8), delay=60)
    saver.changed()
    with pytest.warns(MedloopWarning, match="autosave failed"):
        saver.flush()
    saver.close()  # retries on close
    assert saver.saves == 1


# -- SIGKILL while painting --------------------------------------------------------------------

PAINTER = textwrap.dedent(
    """
    import sys, time
    import numpy as np
    import SimpleITK  # noqa: F401 - loaded before painting starts, as in the running app
    import medloop.app.io.write  # noqa: F401
    from medloop.app.io.image import MedImage
    from medloop.app.io.autosave import AnnotationStore, Autosaver

    folder = sys.argv[1]
    image = MedImage.from_array(np.zeros((24, 64, 64), np.int16), spacing=(0.8, 0.8, 2.5),
                                origin=(10, -20, 30), path=folder + "/case.nii.gz")
    labels = np.zeros(image.shape, np.uint8)
    saver = Autosaver(AnnotationStore(folder + "/.medloop"), image, "labels", lambda: labels, delay=0.5)
    rng = np.random.default_rng(0)
    order = rng.permutation(labels.size)
    i = 0
    while True:
        labels.flat[order[i]] = 1 + i % 250
        saver.changed()
        print(i, flush=True)
        i += 1
        time.sleep(0.05)
    """
)


def test_sigkill_while_painting_loses_at_most_the_last_second(tmp_path):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.Popen(
        [sys.executable, "-c", PAINTER, str(tmp_path)], stdout=subprocess.PIPE, text=True, env=env, cwd=REPO
    )
    painted: list[tuple[int, float]] = []
    try:
        first = proc.stdout.readline()
        assert first.strip() == "0", first
        t_first = time.monotonic()
        painted.append((0, t_first))
        lines: list[tuple[int, float]] = []

        def reader():
            for line in proc.stdout:
                lines.append((int(line), time.monotonic()))

        t = threading.Thread(target=reader, daemon=True)
        t.start()
        time.sleep(2.0)
        os.kill(proc.pid, signal.SIGKILL)
        t_kill = time.monotonic()
        proc.wait(5)
        t.join(5)
        painted.extend(lines)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == -signal.SIGKILL

    image = MedImage.from_array(
        np.zeros((24, 64, 64), np.int16), spacing=(0.8, 0.8, 2.5), origin=(10, -20, 30),
        path=str(tmp_path / "case.nii.gz"),
    )
    folder = tmp_path / ".medloop"
    temps = sorted(p.name for p in folder.iterdir() if p.name.startswith("."))
    files = sorted(p.name for p in folder.iterdir() if not p.name.startswith("."))
    assert files == ["case.labels" + ANNOTATION_SUFFIX]
    assert len(temps) <= 1 and all(n.startswith(".case.labels" + ANNOTATION_SUFFIX + ".") for n in temps), temps
    on_disk = read_image(folder / files[0])  # a complete, valid NIfTI
    assert on_disk.shape == image.shape

    store = AnnotationStore(folder)
    saved = store.load(image, "labels")
    assert saved is not None
    order = np.random.default_rng(0).permutation(saved.size)
    old_enough = [i for i, t in painted if t <= t_kill - 1.0]
    assert len(old_enough) >= 10, painted[:3]
    for i in old_enough:
        assert saved.flat[order[i]] == 1 + i % 250, f"stroke {i} painted {t_kill - dict(painted)[i]:.2f} s before the kill is lost"
    # nothing that was never painted is there
    last = painted[-1][0]
    assert np.count_nonzero(saved) <= last + 1
