"""File in, file out: what ``medloop lesions …`` runs (and the panels' batch modes).

Every output keeps the input's geometry (spacing, origin, direction): it is written through the
input's :class:`~medloop.app.io.image.MedImage` with only the array replaced. 2-D inputs stored as
one-slice volumes (a NIfTI of shape (1, Y, X)) are handled as 2-D images and written back as read.
"""

from __future__ import annotations

import csv
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from medloop.plugins.lesions.checks import LesionInputError

Box = tuple[int, int, int, int]


def read_plane(path: str | Path) -> tuple[Any, np.ndarray]:
    """The image at ``path`` and its 2-D greyscale plane (a one-slice volume counts as 2-D)."""
    from medloop.app.io.read import read_image

    image = read_image(path)
    array = np.asarray(image.array)
    if image.channel_axis:
        raise LesionInputError(f"{path} has {array.shape[-1]} channels; lesion synthesis needs a 2-D greyscale image")
    if array.ndim == 3 and array.shape[0] == 1:
        array = array[0]
    if array.ndim != 2:
        raise LesionInputError(
            f"{path} has shape {array.shape}: a 3-D volume, but box → lesion works on one 2-D image; extract a slice first")
    return image, array


def write_like(image: Any, array: np.ndarray, path: str | Path) -> Path:
    """``array`` written to ``path`` with ``image``'s geometry (restoring a one-slice axis)."""
    from medloop.app.io.write import write_image

    if array.ndim == image.ndim - 1:
        array = array[None]
    return write_image(image.with_array(array), path)


@dataclass(frozen=True)
class SynthesizeFileSettings:
    """What ``medloop lesions synthesize`` takes besides the paths."""

    model: str = "lesion-unit-bone"
    seed: int = 0
    s: int = 2
    n: float = 1.0
    threshold: float | None = None
    scorer: str | None = None
    allow_no_bone: bool = False


def synthesize_file(
    source: str | Path, output: str | Path, boxes: Sequence[Box], settings: SynthesizeFileSettings,
    mask_out: str | Path | None = None,
) -> dict[str, Any]:
    """Lesions in ``boxes`` of the image at ``source`` → ``output`` (and the derived pseudo-mask)."""
    from medloop.plugins.lesions.synthesize import SynthesisParams, synthesize_lesions
    from medloop.plugins.lesions.zoo import load_lesion_model

    image, plane = read_plane(source)
    translator = load_lesion_model(settings.model, "translator").translator()
    scorer = load_lesion_model(settings.scorer, "classifier").scorer() if settings.scorer else None
    params = SynthesisParams(s=settings.s, n=settings.n, seed=settings.seed, threshold=settings.threshold,
                             allow_no_bone=settings.allow_no_bone)
    result = synthesize_lesions(plane, list(boxes), translator, params, scorer, name=str(source))
    write_like(image, result.image, output)
    if mask_out is not None:
        write_like(image, result.pseudo_mask, mask_out)
    return {"crops": result.crops, "score": result.score, "kept": result.kept, "provenance": result.provenance}


def anomaly_file(
    source: str | Path, output: str | Path, model: str = "lesion-anomaly-brain", threshold: float | None = None,
    labels_out: str | Path | None = None, mask: str | Path | None = None, annotation_out: str | Path | None = None,
) -> dict[str, Any]:
    """The residual map r of the image (2-D or a stack of axial slices) → ``output``; with
    ``labels_out`` the labels r >= t (t: the model's calibrated threshold unless given); with
    ``annotation_out`` the same labels in Correction's stroke convention (lesion, with a background
    ring), to correct and give to ``medloop train --weak strokes --annotation``."""
    from medloop.app.io.read import read_image
    from medloop.plugins.lesions.checks import check_threshold
    from medloop.plugins.lesions.zoo import load_lesion_model

    image = read_image(source)
    if image.channel_axis:
        raise LesionInputError(f"{source} has channels; the anomaly model takes one greyscale image or slice stack")
    loaded = load_lesion_model(model, "anomaly")
    t = loaded.threshold if threshold is None else check_threshold(threshold)
    brain = None if mask is None else np.asarray(read_image(mask).array) != 0
    residual = loaded.anomaly_map(np.asarray(image.array, dtype=np.float32), brain, name=str(source))
    write_like(image, residual.astype(np.float32), output)
    labels = (residual >= t).astype(np.uint8)
    if labels_out is not None:
        write_like(image, labels, labels_out)
    if annotation_out is not None:
        from medloop.plugins.lesions.handoff import pseudo_label_annotation

        write_like(image, pseudo_label_annotation(labels, within=residual_brain(image, brain)), annotation_out)
    return {"threshold": t, "voxels": int(labels.sum()), "max": float(residual.max())}


def residual_brain(image: Any, brain: np.ndarray | None) -> np.ndarray:
    """The brain mask the residual map used: the given one, else image > 0."""
    return brain if brain is not None else np.asarray(image.array) > 0


def write_phantoms(
    kind: str, out_dir: str | Path, count: int, seed: int = 0, lesion_fraction: float = 0.5,
    progress: Callable[[int, int], None] | None = None,
) -> Path:
    """``count`` phantoms of ``kind`` as NIfTI (image, lesion, healthy twin, anatomy) plus
    ``boxes.csv`` (one row per lesion: source, y0, x0, y1, x1) and ``phantoms.csv``."""
    from medloop.app.io.atomic import atomic_target
    from medloop.app.io.image import MedImage
    from medloop.app.io.write import write_image
    from medloop.plugins.lesions.phantoms import phantom_set

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    phantoms = phantom_set(kind, count, seed, lesion_fraction)
    boxes, rows = [], []
    for i, p in enumerate(phantoms):
        stem = f"{kind}_{i:04d}"
        for suffix, array in (("", p.image), ("_lesion", p.lesion.astype(np.uint8)),
                              ("_healthy", p.healthy), ("_anatomy", p.anatomy.astype(np.uint8))):
            write_image(MedImage.from_array(array, modality=f"{kind}-phantom"), out / f"{stem}{suffix}.nii.gz")
        boxes += [[f"{stem}.nii.gz", *box] for box in p.boxes]
        rows.append([f"{stem}.nii.gz", p.seed, len(p.boxes), int(p.lesion.sum())])
        if progress is not None:
            progress(i + 1, count)
    for name, header, data in (("boxes.csv", ["source", "y0", "x0", "y1", "x1"], boxes),
                               ("phantoms.csv", ["image", "seed", "lesions", "lesion_pixels"], rows)):
        with atomic_target(out / name, suffix=".csv") as tmp, open(tmp, "w", newline="", encoding="utf-8") as f:
            writer = csv.writer(f)
            writer.writerow(header)
            writer.writerows(data)
    return out


def augment_folder(
    folder: str | Path, boxes_csv: str | Path, out_dir: str | Path, settings: SynthesizeFileSettings,
    write_masks: bool = True, progress: Callable[[int, int], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> list[Any]:
    """Lesions into the images of ``folder`` named in ``boxes_csv`` (``source,y0,x0,y1,x1``; relative
    names in the folder or beside the CSV) → ``out_dir`` with ``manifest.csv``; returns its rows."""
    from medloop.plugins.lesions.augment import augment_images, read_boxes_csv
    from medloop.plugins.lesions.synthesize import SynthesisParams, SynthesisSetup
    from medloop.plugins.lesions.zoo import load_lesion_model

    root = Path(folder)
    if not root.is_dir():
        raise LesionInputError(f"{root} is not a folder; give the folder of healthy images")
    boxes = read_boxes_csv(boxes_csv, base=root)
    translator = load_lesion_model(settings.model, "translator").translator()
    scorer = load_lesion_model(settings.scorer, "classifier").scorer() if settings.scorer else None
    params = SynthesisParams(s=settings.s, n=settings.n, seed=settings.seed, threshold=settings.threshold,
                             allow_no_bone=settings.allow_no_bone)
    Path(out_dir).mkdir(parents=True, exist_ok=True)
    return augment_images(sorted(boxes), boxes, SynthesisSetup(translator, params, scorer), out_dir, progress, should_stop,
                          write_masks)
