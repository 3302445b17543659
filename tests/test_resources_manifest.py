"""Nothing ships in the package that no manifest lists (issue 14 §5): every file under
``medloop/resources`` and every plugin's ``resources`` folder is named by the sample manifest,
a model folder's ``card.json`` (the card itself, its weights and test data) or is a training
recipe; listed files exist and match their sha256. Walks the package folder as it is on disk
(so a file left there by a test run or a session fails too), ignoring ``__pycache__``."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import medloop
import numpy as np

from medloop.app.io.autosave import AnnotationStore, inside_package

PACKAGE = Path(medloop.__file__).resolve().parent


def _files(folder: Path) -> set[Path]:
    return {p for p in folder.rglob("*") if p.is_file() and "__pycache__" not in p.parts}


def _listed(folder: Path) -> dict[Path, str | None]:
    """Files named by the manifests in ``folder`` (a resources folder) -> their sha256 (or None)."""
    listed: dict[Path, str | None] = {}
    for manifest in folder.rglob("manifest.json"):
        data = json.loads(manifest.read_text(encoding="utf-8"))
        listed[manifest] = None
        for entry in data.get("files", {}).values():
            listed[manifest.parent / entry["name"]] = entry.get("sha256")
        if data.get("license"):
            listed[manifest.parent / data["license"]] = None
    for card in folder.rglob("card.json"):
        data = json.loads(card.read_text(encoding="utf-8"))
        listed[card] = None
        for key in ("weights", "test_data"):
            if data.get(key):
                listed[card.parent / data[key]["source"]] = data[key].get("sha256")
    for recipe in (folder / "recipes").glob("*.json") if (folder / "recipes").is_dir() else ():
        listed[recipe] = None  # a recipe is its own description (medloop train --recipe)
    return listed


def resource_folders() -> list[Path]:
    return [PACKAGE / "resources", *sorted(p for p in (PACKAGE / "plugins").glob("*/resources") if p.is_dir())]


def test_every_packaged_resource_is_listed_in_a_manifest():
    unlisted, missing, damaged = [], [], []
    for folder in resource_folders():
        listed = _listed(folder)
        unlisted += sorted(str(p.relative_to(PACKAGE)) for p in _files(folder) - set(listed))
        for path, sha in listed.items():
            if not path.is_file():
                missing.append(str(path.relative_to(PACKAGE)))
            elif sha is not None and hashlib.sha256(path.read_bytes()).hexdigest() != sha:
                damaged.append(str(path.relative_to(PACKAGE)))
    assert unlisted == [], f"files in the package that no manifest lists (left by a run?): {unlisted}"
    assert missing == [] and damaged == []
    assert len(resource_folders()) >= 2  # the shared sample and segmentation's models at least


def test_the_check_sees_a_stray_annotation(tmp_path):
    """The check itself: a copy of the sample folder with an autosaved annotation in it fails."""
    import shutil

    copy = tmp_path / "resources"
    shutil.copytree(PACKAGE / "resources", copy, ignore=shutil.ignore_patterns("__pycache__"))
    assert _files(copy) - set(_listed(copy)) == set()
    stray = copy / "sample" / ".medloop" / "mni152_t1_2mm.strokes.annotation.nii.gz"
    stray.parent.mkdir()
    stray.write_bytes(b"x")
    assert _files(copy) - set(_listed(copy)) == {stray}


def test_annotations_of_packaged_samples_autosave_in_the_user_folder(tmp_path, _user_annotation_folder):
    from medloop.app.io import autosave
    from medloop.app.samples import load_brain_sample, sample_path

    t1, _ = load_brain_sample()
    assert inside_package(sample_path("t1")) and not inside_package(tmp_path / "x.nii.gz")
    assert AnnotationStore.default_folder(t1) == autosave._user_annotation_folder() == _user_annotation_folder
    saved = AnnotationStore.for_image(t1).save(t1, "strokes", np.zeros(t1.shape, np.uint8))
    assert saved.parent == _user_annotation_folder and not inside_package(saved)
    from medloop.app.io.write import write_image

    copy = write_image(t1, tmp_path / "t1.nii.gz")
    from medloop.app.io.read import read_image

    assert AnnotationStore.default_folder(read_image(copy)) == tmp_path / ".medloop"  # elsewhere: beside it
