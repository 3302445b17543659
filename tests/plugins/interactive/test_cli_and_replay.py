"""Spec §7 check 2 (geometry: a log in mm replays on a resampled, reoriented copy) and the CLI."""

from __future__ import annotations

import numpy as np
import pytest

from medloop.app.io.image import MedImage
from medloop.app.io.read import read_image
from medloop.app.io.write import write_image
from medloop.plugins.interactive.evaluation import dice
from medloop.plugins.interactive.params import InteractiveParams
from medloop.plugins.interactive.promptlog import read_log
from medloop.plugins.interactive.prompts import Point, index_to_physical
from medloop.plugins.interactive.session import PromptSession, replay
from tests.cli_helpers import refused

ROTATION = np.array([[np.cos(0.35), -np.sin(0.35), 0.0], [np.sin(0.35), np.cos(0.35), 0.0], [0.0, 0.0, 1.0]])


def _phantom() -> tuple[MedImage, np.ndarray]:
    """A 1 mm volume: a large ellipsoid with a smaller blob attached by a neck, in noise."""
    rng = np.random.default_rng(7)
    shape = (60, 80, 90)
    z, y, x = np.ogrid[:60, :80, :90]
    body = ((z - 30) / 16.0) ** 2 + ((y - 40) / 22.0) ** 2 + ((x - 35) / 18.0) ** 2 <= 1
    blob = ((z - 30) / 8.0) ** 2 + ((y - 40) / 8.0) ** 2 + ((x - 68) / 8.0) ** 2 <= 1
    neck = (abs(z - 30) <= 1) & (abs(y - 40) <= 1) & (x >= 50) & (x <= 62)
    array = 100.0 * (body | blob | neck) + rng.normal(0, 10.0, shape)
    image = MedImage.from_array(array.astype(np.float32), spacing=(1.0, 1.0, 1.0), origin=(-40.0, -30.0, 10.0))
    return image, body


def _to_physical(image: MedImage, index) -> tuple[float, ...]:
    return tuple(float(v) for v in index_to_physical(image, np.asarray(index))[0])


def _resampled_reoriented(image: MedImage, spacing: float) -> MedImage:
    """``image`` on a 1.5 mm grid rotated 20 degrees about z (direction != identity)."""
    import SimpleITK as sitk

    from medloop.app.io.sitk_convert import from_sitk, to_sitk

    src = to_sitk(image)
    extent = np.asarray(image.shape[::-1]) * np.asarray(image.spacing)
    size = [int(np.ceil(e * 1.3 / spacing)) for e in extent]
    centre = np.asarray(image.index_to_physical((np.asarray(image.shape[::-1]) - 1) / 2.0))
    origin = centre - ROTATION @ (np.asarray(size) * spacing / 2.0)
    out = sitk.Resample(src, size, sitk.Transform(), sitk.sitkLinear, tuple(origin), (spacing,) * 3, tuple(ROTATION.ravel()), 0.0)
    return from_sitk(out)


def _back_on(source_grid: MedImage, labels: np.ndarray, moved: MedImage) -> np.ndarray:
    import SimpleITK as sitk

    from medloop.app.io.sitk_convert import to_sitk

    back = sitk.Resample(to_sitk(moved.with_array(labels.astype(np.uint8))), to_sitk(source_grid.with_array(np.zeros(source_grid.shape, np.uint8))),
                         sitk.Transform(), sitk.sitkNearestNeighbor, 0)
    return sitk.GetArrayFromImage(back)


def test_a_log_in_mm_replays_on_a_resampled_reoriented_copy_with_dice_095(tmp_path):
    image, body = _phantom()
    log = tmp_path / "prompts.csv"
    session = PromptSession(image, None, InteractiveParams(engine="classical"), log_path=log)
    session.add(Point(_to_physical(image, (30, 40, 35))))
    session.add(Point(_to_physical(image, (30, 40, 68)), positive=False))  # cut the blob the neck leaked into
    first = session.labels > 0
    assert dice(first, body) >= 0.95
    moved = _resampled_reoriented(image, 1.5)
    assert not np.allclose(moved.direction, np.eye(3))
    replayed = replay(moved, read_log(log))
    assert dice(_back_on(image, replayed, moved) > 0, first) >= 0.95
    again = replay(image, read_log(log))
    assert np.array_equal(again, session.labels)  # same grid, same machine: identical


def test_cli_segments_an_object_keeps_the_geometry_and_replays_identically(cli, tmp_path):
    image, body = _phantom()
    image = MedImage(image.array, (1.0, 1.2, 0.9), image.origin, ROTATION)
    path = tmp_path / "img.nii.gz"
    write_image(image, path)
    inside, blob = _to_physical(image, (30, 40, 35)), _to_physical(image, (30, 40, 68))
    out, log = tmp_path / "obj.nii.gz", tmp_path / "log.csv"
    point = lambda xyz, s: "--point=" + ",".join(f"{v:.3f}" for v in xyz) + s
    result = cli("interactive", str(path), point(inside, "+"), point(blob, "-"), "-o", str(out), "--log", str(log))
    assert result.returncode == 0, result.stderr
    written = read_image(out)
    assert np.allclose(written.direction, ROTATION) and np.allclose(written.spacing, image.spacing) and np.allclose(written.origin, image.origin)
    assert dice(np.asarray(written.array) > 0, body) >= 0.95
    again = tmp_path / "again.nii.gz"
    assert cli("interactive", "replay", str(path), "--prompts", str(log), "-o", str(again)).returncode == 0
    assert np.array_equal(np.asarray(read_image(again).array), np.asarray(written.array))


@pytest.mark.parametrize("extra, message", [
    (["--point=500,0,0+"], "medloop: error: the point (500, 0, 0) mm lies outside the image"),
    (["--point=1,2,3"], "medloop: error: --point '1,2,3': end it with + (inside the object) or - (outside), e.g. 12.5,-20,31+"),
    (["--box=0,0,12:0,30,12"], "medloop: error: the box has zero size (it needs at least 2 voxels on each side); drag a rectangle around the object"),
    ([], "medloop: error: give at least one --point X,Y,Z+ (in mm) or --box; see medloop interactive --help"),
])
def test_cli_bad_prompts_are_one_line_and_exit_2(cli, tmp_path, extra, message):
    path = tmp_path / "img.nii.gz"
    write_image(MedImage.from_array(np.zeros((20, 30, 40), np.float32)), path)
    line = refused(cli, "interactive", str(path), *extra, "-o", str(tmp_path / "o.nii.gz"))
    assert line.startswith(message)


def test_cli_replay_of_a_file_that_is_not_a_log_is_one_line(cli, tmp_path):
    path = tmp_path / "img.nii.gz"
    write_image(MedImage.from_array(np.zeros((20, 30, 40), np.float32)), path)
    bad = tmp_path / "points.csv"
    bad.write_text("axis-0,axis-1,axis-2\n1,2,3\n")
    line = refused(cli, "interactive", "replay", str(path), "--prompts", str(bad), "-o", str(tmp_path / "o.nii.gz"))
    assert line == f"medloop: error: {bad} is not a medloop prompt log: it lacks the column(s) seq, event, object, kind, x, y"


def test_cli_labels_on_another_grid_are_refused(cli, tmp_path):
    path, other = tmp_path / "img.nii.gz", tmp_path / "lab.nii.gz"
    write_image(MedImage.from_array(np.zeros((20, 30, 40), np.float32)), path)
    write_image(MedImage.from_array(np.zeros((20, 30, 41), np.uint8)), other)
    line = refused(cli, "interactive", str(path), "--point=1,1,1+", "--labels", str(other), "-o", str(tmp_path / "o.nii.gz"))
    assert line == (f"medloop: error: label map {other} does not match image {path}: shape 20 x 30 x 41 vs 20 x 30 x 40; "
                    "resample the label map onto the image grid or open the image it was drawn on")


def test_cli_learned_engine_while_disabled_says_why(cli, tmp_path):
    from medloop.plugins.interactive.clicknet import learned_status

    enabled, reason = learned_status()
    assert not enabled
    path = tmp_path / "img.nii.gz"
    write_image(MedImage.from_array(np.zeros((20, 30, 40), np.float32)), path)
    line = refused(cli, "interactive", str(path), "--point=1,1,1+", "--engine", "learned", "-o", str(tmp_path / "o.nii.gz"))
    assert line == f"medloop: error: the learned click engine is disabled ({reason}); use the classical engine (--engine classical)"


def test_replay_redraws_a_ring_from_the_models_prediction(cli, tmp_path):
    """A Correction commit draws a 2 mm ring from the model's prediction: the log describes it,
    replay (Python and CLI) redraws it bit for bit given the prediction, and refuses without it."""
    from medloop.plugins.interactive.session import Ring

    image, body = _phantom()
    prediction = np.where(body, 1, 2).astype(np.int64)  # the model's classes: 1 in the body, 2 around it
    log = tmp_path / "prompts.csv"
    session = PromptSession(image, np.zeros(image.shape, np.uint8), InteractiveParams(engine="classical", label=2), log_path=log)
    session.add(Point(_to_physical(image, (30, 40, 35))))
    session.add(Point(_to_physical(image, (30, 40, 68)), positive=False))
    session.commit(Ring(class_index=1, mm=2.0, prediction=prediction, offset=1))
    ring = int((session.labels == 3).sum())  # class 2 + offset 1, written around the object
    assert ring > 1000 and read_log(log)[-1].kind == "ring mm=2 class=1 background=0 offset=1 from=prediction"
    assert np.array_equal(replay(image, read_log(log), ring_prediction=prediction), session.labels)
    with pytest.raises(Exception, match=r"^the commit with seq 3 in the prompt log drew its ring from the model's prediction; give that prediction"):
        replay(image, read_log(log))

    path, pred_path, out = tmp_path / "img.nii.gz", tmp_path / "pred.nii.gz", tmp_path / "again.nii.gz"
    write_image(image, path)
    write_image(image.with_array(prediction.astype(np.uint8)), pred_path)
    result = cli("interactive", "replay", str(path), "--prompts", str(log), "--ring-prediction", str(pred_path), "-o", str(out))
    assert result.returncode == 0, result.stderr
    assert np.array_equal(np.asarray(read_image(out).array), session.labels)
    line = refused(cli, "interactive", "replay", str(path), "--prompts", str(log), "-o", str(out))
    assert line.startswith("medloop: error: the commit with seq 3 in the prompt log drew its ring from the model's prediction; give that prediction")
