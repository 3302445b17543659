"""The batch augmenter (geometry, locality, manifest, CSV errors) and the training augmenter."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest

from medloop.app.io.image import MedImage
from medloop.app.io.read import read_image
from medloop.app.io.write import write_image
from medloop.plugins.lesions.augment import (
    LesionAugmenter, augment_images, box_sizes, place_box, read_boxes_csv,
)
from medloop.plugins.lesions.checks import LesionInputError
from medloop.plugins.lesions.gupta_experiment import OracleTranslator
from medloop.plugins.lesions.phantoms import make_phantom, phantom_set
from medloop.plugins.lesions.synthesize import SynthesisParams, SynthesisSetup

DIRECTION = np.array([[0.0, -1.0], [1.0, 0.0]])


class FixedScorer:
    """Scores each image by its mean: a deterministic stand-in for the classifier."""

    name = "mean"

    def score(self, images: np.ndarray) -> np.ndarray:
        return np.asarray(images, np.float64).reshape(len(images), -1).mean(axis=1)


def _write_sources(folder: Path) -> tuple[list[Path], Path]:
    paths = []
    for i, seed in enumerate((3, 4)):
        image = make_phantom("bone", seed, with_lesion=False).image
        med = MedImage(image, spacing=(0.3, 0.15 + i), origin=(-12.5, 7.25), direction=DIRECTION)
        paths.append(write_image(med, folder / f"healthy{i}.nii.gz"))
    boxes = folder / "boxes.csv"
    boxes.write_text("source,y0,x0,y1,x1\nhealthy0.nii.gz,26,30,36,40\nhealthy0.nii.gz,26,80,34,88\n"
                     "healthy1.nii.gz,25,60,35,70\n")
    return paths, boxes


def test_batch_keeps_geometry_and_changes_only_the_crops(tmp_path):
    paths, csv_path = _write_sources(tmp_path)
    out = tmp_path / "out"
    out.mkdir()
    boxes = read_boxes_csv(csv_path)
    assert [len(v) for v in boxes.values()] == [2, 1]
    rows = augment_images(paths, boxes, SynthesisSetup(OracleTranslator(32, 2), SynthesisParams(s=2, seed=5), None), out)
    assert len(rows) == 3 and all(r.kept is None and r.score is None for r in rows)
    for src in paths:
        source = read_image(src)
        result = read_image(out / src.name.replace(".nii.gz", "_lesion.nii.gz"))
        mask = read_image(out / src.name.replace(".nii.gz", "_lesion_mask.nii.gz"))
        for img in (result, mask):
            assert img.spacing == source.spacing and img.origin == source.origin
            assert np.array_equal(img.direction, source.direction)
        assert result.array.dtype == source.array.dtype and mask.array.dtype == np.uint8
        inside = np.zeros(source.shape, bool)
        for r in rows:
            if r.source == str(src):
                y0, x0, y1, x1 = r.crop
                inside[y0:y1, x0:x1] = True
                assert Path(r.output) == out / src.name.replace(".nii.gz", "_lesion.nii.gz")
        diff = np.asarray(result.array) != np.asarray(source.array)
        assert diff.any() and not diff[~inside].any()
        assert np.asarray(mask.array).any()
    with open(out / "manifest.csv", newline="") as fh:
        manifest = list(csv.DictReader(fh))
    assert [(m["source"], m["box"], m["crop"], m["s"], m["seed"], m["mask_kind"]) for m in manifest] == [
        (r.source, " ".join(map(str, r.box)), " ".join(map(str, r.crop)), "2", str(r.seed), "derived") for r in rows]
    again = read_boxes_csv(out / "boxes.csv")  # the written boxes CSV re-reads to the same boxes
    assert sorted(b for v in again.values() for b in v) == sorted(r.box for r in rows)


def test_batch_filter_lists_discarded_images_without_writing_them(tmp_path):
    paths, csv_path = _write_sources(tmp_path)
    out = tmp_path / "out"
    out.mkdir()
    scorer = FixedScorer()
    free = tmp_path / "free"
    free.mkdir()
    scored = augment_images(paths, read_boxes_csv(csv_path), SynthesisSetup(OracleTranslator(), SynthesisParams(), scorer), free)
    assert all(r.kept is None for r in scored)
    t = float(np.mean(sorted({r.score for r in scored})))  # between the two images' scores
    rows = augment_images(paths, read_boxes_csv(csv_path), SynthesisSetup(OracleTranslator(), SynthesisParams(threshold=t), scorer), out)
    assert [r.score for r in rows] == [r.score for r in scored]
    kept = {r.source: r.kept for r in rows}
    assert sorted(kept.values()) == [False, True]
    for r in rows:
        assert (r.score >= t) == r.kept
        assert bool(r.output) == r.kept and Path(r.output).is_file() if r.kept else not r.output
    assert len(list(out.glob("*_lesion.nii.gz"))) == 1


def test_bad_boxes_csv_messages(tmp_path):
    (tmp_path / "a.nii.gz").write_bytes(b"")
    bad = tmp_path / "b.csv"
    bad.write_text("source,y0,x0,y1\na.nii.gz,1,2,3\n")
    with pytest.raises(LesionInputError) as exc:
        read_boxes_csv(bad)
    assert str(exc.value) == f"boxes CSV {bad} lacks column(s) x1; its header must hold source,y0,x0,y1,x1"
    bad.write_text("source,y0,x0,y1,x1\na.nii.gz,1,2,3,4\na.nii.gz,1,two,3,4\n")
    with pytest.raises(LesionInputError) as exc:
        read_boxes_csv(bad)
    assert str(exc.value) == f"boxes CSV {bad} line 3: x0 = 'two' is not a number; give pixel coordinates"
    bad.write_text("source,y0,x0,y1,x1\nmissing.nii.gz,1,2,3,4\n")
    with pytest.raises(LesionInputError) as exc:
        read_boxes_csv(bad)
    assert str(exc.value) == (f"boxes CSV {bad} line 2: source 'missing.nii.gz' not found; "
                              "give a path relative to the CSV's folder or absolute")


def test_box_outside_image_is_refused_before_writing(tmp_path):
    paths, _ = _write_sources(tmp_path)
    out = tmp_path / "out"
    out.mkdir()
    boxes = {paths[0]: [(26, 30, 36, 40)], paths[1]: [(50, 120, 70, 132)]}
    with pytest.raises(LesionInputError) as exc:
        augment_images(paths, boxes, SynthesisSetup(OracleTranslator(), SynthesisParams(), None), out)
    assert str(exc.value) == ("healthy1.nii.gz box 1 (50, 120, 70, 132) is not fully inside the image "
                              "(0, 0, 64, 128); draw it inside the image")
    assert list(out.iterdir()) == []


def test_augmenter_places_every_box_inside_the_anatomy():
    phantoms = phantom_set("bone", 6, 11, 0.0)
    real = [b for p in phantom_set("bone", 8, 12, 1.0) for b in p.boxes]
    augmenter = LesionAugmenter([p.image for p in phantoms], box_sizes(real), OracleTranslator(),
                                SynthesisParams(s=2), anatomy=[p.anatomy for p in phantoms])
    images, boxes, masks, scores, kept = augmenter.make_positives(12, seed=3)
    assert images.shape == (12, 64, 128) and masks.shape == images.shape and kept.all() and np.isnan(scores).all()
    sizes = set(box_sizes(real))
    for image, (box,), mask in zip(images, boxes, masks):
        y0, x0, y1, x1 = box
        assert (y1 - y0, x1 - x0) in sizes
        side = 2 * max(y1 - y0, x1 - x0)  # the crop (s = 2) lies inside this square around the box
        outside = np.ones(image.shape, bool)
        outside[max(0, y1 - side) : y0 + side, max(0, x1 - side) : x0 + side] = False
        source = [p for p in phantoms if np.array_equal(p.image[outside], image[outside])]
        assert len(source) == 1 and source[0].anatomy[y0:y1, x0:x1].all()
        assert mask.any() and not mask[:y0].any() and not mask[y1:].any()
    again = augmenter.make_positives(12, seed=3)
    assert np.array_equal(again.images, images) and again.boxes == boxes


def test_augmenter_filter_and_place_box_limits():
    phantoms = phantom_set("bone", 4, 11, 0.0)
    augmenter = LesionAugmenter([p.image for p in phantoms], [(9, 9)], OracleTranslator(), SynthesisParams(s=2),
                                anatomy=[p.anatomy for p in phantoms], scorer=FixedScorer(), threshold=0.3)
    positives = augmenter.make_positives(8, seed=1)
    assert np.array_equal(positives.kept, positives.scores >= 0.3)
    assert place_box(np.zeros((20, 20), bool), (5, 5), np.random.default_rng(0)) is None
