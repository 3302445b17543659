"""Lesion augmentation: the batch augmenter (folder + boxes CSV → lesion images + manifest) and
:class:`LesionAugmenter`, which makes synthetic positives for training (Gupta et al., spec §1, §6).

Batch mode (:func:`augment_images`). Every source image is read with its geometry; its boxes
come from a CSV (:func:`read_boxes_csv`: ``source,y0,x0,y1,x1``, several rows per source). All
sources and boxes are checked before anything is written. Each source then goes through
:func:`~.synthesize.synthesize_lesions` (the one synthesis path) and gives, in ``out_dir``:

* ``<stem>_lesion.nii.gz``: the source with lesions, same dtype, spacing, origin and direction;
* ``<stem>_lesion_mask.nii.gz`` (``write_masks``): the *derived* pseudo-mask, uint8;
* ``boxes.csv``: the boxes of every written image, in the input CSV's format (re-readable);
* ``manifest.csv``: one row per box: source, output, mask, box, crop, s, seed, score, kept,
  mask_kind (always ``derived``: |out − in| > tau inside the box, not an annotation).

With a scorer and a threshold t, an image scoring < t is *discarded*: it is listed in the
manifest (kept=False, its score, its box and crop) but not written (output and mask empty), so
the output folder holds only images that passed the filter and cannot be trained on by mistake;
``write_discarded=True`` writes them too (for review). Without a scorer kept is empty.
"""

from __future__ import annotations

import csv
import io
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from medloop.plugins.lesions.blend import Box, crop_for_box
from medloop.plugins.lesions.checks import LesionInputError, check_box, check_count, check_threshold
from medloop.plugins.lesions.synthesize import Scorer, SynthesisParams, SynthesisSetup, synthesize_lesions
from medloop.plugins.lesions.translators import Translator

BOX_COLUMNS = ("source", "y0", "x0", "y1", "x1")
MANIFEST_COLUMNS = ("source", "output", "mask", "box", "crop", "s", "seed", "score", "kept", "mask_kind")
SEED_STRIDE = 1000  # source i uses seeds params.seed + 1000 i + box index


@dataclass(frozen=True)
class ManifestRow:
    """One box of one source: ``box``/``crop`` as (y0, x0, y1, x1); ``output``/``mask`` paths
    ("" when not written); ``score`` and ``kept`` None without a scorer / threshold."""

    source: str
    output: str
    mask: str
    box: Box
    crop: Box
    s: int
    seed: int
    score: float | None
    kept: bool | None
    mask_kind: str = "derived"

    def as_csv(self) -> dict[str, str]:
        return {"source": self.source, "output": self.output, "mask": self.mask, "box": " ".join(map(str, self.box)),
                "crop": " ".join(map(str, self.crop)), "s": str(self.s), "seed": str(self.seed),
                "score": "" if self.score is None else f"{self.score:.6f}",
                "kept": "" if self.kept is None else str(self.kept), "mask_kind": self.mask_kind if self.mask else ""}


def _number(value: str, column: str, line: int, path: Path) -> float:
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise LesionInputError(f"boxes CSV {path} line {line}: {column} = {value!r} is not a number; give pixel coordinates") from None
    if not np.isfinite(number):
        raise LesionInputError(f"boxes CSV {path} line {line}: {column} = {value!r} is not a number; give pixel coordinates")
    return number


def read_boxes_csv(path: str | os.PathLike[str], base: str | os.PathLike[str] | None = None) -> dict[Path, list[Box]]:
    """Boxes per source image from a CSV with header ``source,y0,x0,y1,x1`` (more columns are
    ignored; a source may have several rows). Relative sources are relative to ``base`` (the
    image folder) when given and found there, else to the CSV's folder. Box bounds are checked
    against the image later, when its shape is known."""
    p = Path(path)
    if not p.is_file():
        raise LesionInputError(f"boxes CSV {p} not found; give the path of a CSV with columns {','.join(BOX_COLUMNS)}")
    with open(p, newline="", encoding="utf-8-sig") as fh:
        reader = csv.DictReader(fh)
        header = [h.strip() for h in (reader.fieldnames or [])]
        missing = [c for c in BOX_COLUMNS if c not in header]
        if missing:
            raise LesionInputError(
                f"boxes CSV {p} lacks column(s) {', '.join(missing)}; its header must hold {','.join(BOX_COLUMNS)}")
        reader.fieldnames = header
        boxes: dict[Path, list[Box]] = {}
        for line, row in enumerate(reader, start=2):
            name = (row.get("source") or "").strip()
            source = Path(name) if Path(name).is_absolute() else p.parent / name
            if base is not None and not Path(name).is_absolute() and (Path(base) / name).is_file():
                source = Path(base) / name
            if not name or not source.is_file():
                raise LesionInputError(
                    f"boxes CSV {p} line {line}: source {name!r} not found; give a path relative to the CSV's folder or absolute")
            values = [_number((row.get(c) or "").strip(), c, line, p) for c in BOX_COLUMNS[1:]]
            boxes.setdefault(source, []).append(tuple(int(round(v)) for v in values))  # type: ignore[arg-type]
    if not boxes:
        raise LesionInputError(f"boxes CSV {p} has no rows; add one row per box: {','.join(BOX_COLUMNS)}")
    return boxes


def _stem(path: Path) -> str:
    name = path.name
    for suffix in (".nii.gz", ".ome.tiff", ".ome.tif"):
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return path.stem


def _plane(image: Any, name: str) -> np.ndarray:
    """The 2-D array of a read image (a single-slice volume is squeezed to its plane)."""
    arr = np.asarray(image.array)
    if arr.ndim == 3 and arr.shape[0] == 1 and not image.channel_axis:
        arr = arr[0]
    if arr.ndim != 2 or image.channel_axis:
        raise LesionInputError(f"{name} has shape {arr.shape}: lesion synthesis takes 2-D greyscale images; pick one slice")
    return arr


def _checked_sources(sources: Sequence[str | os.PathLike[str]], boxes_by_source: dict[Any, list[Box]], s: int) -> list[Path]:
    """Every source read once and every box checked against it before anything is written."""
    from medloop.app.io.read import read_image

    by_path = {Path(k).resolve(): v for k, v in boxes_by_source.items()}
    paths = [Path(src) for src in sources]
    if not paths:
        raise LesionInputError("no source images; give at least one healthy image")
    for path in paths:
        boxes = by_path.get(path.resolve())
        if not boxes:
            raise LesionInputError(f"{path.name} has no box in the boxes CSV; add a row source,y0,x0,y1,x1 for it")
        plane = _plane(read_image(path), path.name)
        for i, box in enumerate(boxes):
            checked = check_box(box, plane.shape, f"{path.name} box {i + 1}")
            crop_for_box(checked, plane.shape, s, 0)
    return paths


def _write_csv(path: Path, columns: Sequence[str], rows: list[dict[str, str]]) -> None:
    from medloop.app.io.atomic import atomic_write_text

    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(columns), lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_text(path, buffer.getvalue())


def _augment_one(path: Path, boxes: list[Box], translator: Translator, params: SynthesisParams, scorer: Scorer | None,
                 out_dir: Path, write_masks: bool, write_discarded: bool) -> tuple[list[ManifestRow], list[dict[str, str]]]:
    from medloop.app.io.read import read_image
    from medloop.app.io.write import write_image

    image = read_image(path)
    source = np.asarray(image.array)
    result = synthesize_lesions(_plane(image, path.name), boxes, translator, params, scorer, name=path.name)
    written = result.kept is not False or write_discarded
    output = mask = ""
    if written:
        stem = _stem(path)
        output = str(write_image(image.with_array(result.image.reshape(source.shape)), out_dir / f"{stem}_lesion.nii.gz"))
        if write_masks:
            labels = image.with_array(result.pseudo_mask.reshape(source.shape).astype(np.uint8))
            mask = str(write_image(labels, out_dir / f"{stem}_lesion_mask.nii.gz"))
    rows = [ManifestRow(str(path), output, mask, b, c, params.s, params.seed + i, result.score, result.kept)
            for i, (b, c) in enumerate(zip(result.boxes, result.crops))]
    box_rows = [dict(zip(BOX_COLUMNS, [Path(output).name, *map(str, b)])) for b in result.boxes] if written else []
    return rows, box_rows


def augment_images(
    sources: Sequence[str | os.PathLike[str]], boxes_by_source: dict[Any, list[Box]], setup: SynthesisSetup,
    out_dir: str | os.PathLike[str], progress: Callable[[int, int], None] | None = None,
    should_stop: Callable[[], bool] | None = None, write_masks: bool = True, write_discarded: bool = False,
) -> list[ManifestRow]:
    """Lesions in every source image at its boxes with ``setup`` (translator, parameters, filter;
    see the module docstring for what is written); returns the manifest's rows. Source i uses
    seed ``params.seed + 1000 i`` (+ box index)."""
    from medloop.app.engine.jobs import JobCancelled

    translator, scorer = setup.translator, setup.scorer
    params = setup.params.checked()
    if translator is None:
        raise LesionInputError("no translator loaded; choose a lesion translator model first")
    out = Path(out_dir)
    if not out.is_dir():
        raise LesionInputError(f"output folder {out} does not exist; create it first")
    paths = _checked_sources(sources, boxes_by_source, params.s)
    by_path = {Path(k).resolve(): v for k, v in boxes_by_source.items()}
    rows: list[ManifestRow] = []
    box_rows: list[dict[str, str]] = []
    for i, path in enumerate(paths):
        if should_stop is not None and should_stop():
            raise JobCancelled(f"lesion augmentation stopped after {i} of {len(paths)} images; no manifest written")
        one = replace(params, seed=params.seed + SEED_STRIDE * i)
        more, more_boxes = _augment_one(path, by_path[path.resolve()], translator, one, scorer, out, write_masks, write_discarded)
        rows += more
        box_rows += more_boxes
        if progress is not None:
            progress(i + 1, len(paths))
    _write_csv(out / "boxes.csv", BOX_COLUMNS, box_rows)
    _write_csv(out / "manifest.csv", MANIFEST_COLUMNS, [r.as_csv() for r in rows])
    return rows


# ------------------------------------------------------------------------- training positives


class Positives(NamedTuple):
    """What :meth:`LesionAugmenter.make_positives` returns (unpacks as a 5-tuple): images (N, H, W)
    float32, one box list per image, pseudo-masks (N, H, W) uint8, scores (N,) (nan without a
    scorer) and kept (N,) bool (all True without a threshold)."""

    images: np.ndarray
    boxes: list[list[Box]]
    pseudo_masks: np.ndarray
    scores: np.ndarray
    kept: np.ndarray


def box_sizes(boxes: Sequence[Box]) -> list[tuple[int, int]]:
    """The (height, width) of each box: the size library :class:`LesionAugmenter` samples from."""
    return [(int(b[2] - b[0]), int(b[3] - b[1])) for b in boxes]


def place_box(anatomy: np.ndarray, size: tuple[int, int], rng: np.random.Generator, tries: int = 20) -> Box | None:
    """A box of ``size`` whose every pixel lies in ``anatomy``, centred on a random anatomy pixel
    at least half the box's longer side deep; None when none is found in ``tries`` draws."""
    from scipy import ndimage as ndi

    h, w = size
    depth = ndi.distance_transform_edt(np.pad(anatomy, 1))[1:-1, 1:-1]
    candidates = np.argwhere(depth >= max(h, w) / 2.0)
    for _ in range(tries if len(candidates) else 0):
        cy, cx = candidates[int(rng.integers(len(candidates)))]
        y0, x0 = int(cy) - h // 2, int(cx) - w // 2
        if y0 < 0 or x0 < 0 or y0 + h > anatomy.shape[0] or x0 + w > anatomy.shape[1]:
            continue
        if anatomy[y0 : y0 + h, x0 : x0 + w].all():
            return y0, x0, y0 + h, x0 + w
    return None


@dataclass
class LesionAugmenter:
    """Synthetic positives for training: healthy images (N, H, W) in [0, 1] (+ optional anatomy
    masks; default: the whole image), a box-size library (e.g. :func:`box_sizes` of the real
    lesion boxes), a translator, synthesis params, and an optional scorer with threshold t."""

    healthy: Sequence[np.ndarray]
    sizes: Sequence[tuple[int, int]]
    translator: Translator
    params: SynthesisParams = SynthesisParams()
    anatomy: Sequence[np.ndarray] | None = None
    scorer: Scorer | None = None
    threshold: float | None = None

    def _one(self, rng: np.random.Generator, seed: int) -> tuple[np.ndarray, Box, Any] | None:
        index = int(rng.integers(len(self.healthy)))
        image = np.asarray(self.healthy[index], np.float32)
        anatomy = np.ones(image.shape, bool) if self.anatomy is None else np.asarray(self.anatomy[index], bool)
        box = place_box(anatomy, tuple(self.sizes[int(rng.integers(len(self.sizes)))]), rng)
        if box is None:
            return None
        try:
            result = synthesize_lesions(image, [box], self.translator, replace(self.params, seed=seed, threshold=None))
        except LesionInputError:  # crop larger than the image, or no bone in the patch: draw again
            return None
        return result.image.astype(np.float32), box, result.pseudo_mask

    def make_positives(self, count: int, seed: int = 0) -> Positives:
        """``count`` synthetic lesion images (one box each), scored in one batch and filtered at t."""
        check_count(count, "synthetic positive count")
        if not len(self.healthy) or not len(self.sizes):
            raise LesionInputError("the augmenter needs at least one healthy image and one box size")
        if self.threshold is not None:
            check_threshold(self.threshold)
        rng = np.random.default_rng(seed)
        made: list[tuple[np.ndarray, Box, Any]] = []
        attempts = 0
        while len(made) < count:
            attempts += 1
            if attempts > 20 * count:
                raise LesionInputError(
                    f"only {len(made)} of {count} boxes fit inside the anatomy after {attempts - 1} tries; give smaller box sizes")
            one = self._one(rng, seed * SEED_STRIDE + attempts)
            if one is not None:
                made.append(one)
        images = np.stack([m[0] for m in made])
        scores = np.full(count, np.nan) if self.scorer is None else np.asarray(self.scorer.score(images), np.float64)
        kept = np.ones(count, bool) if self.threshold is None or self.scorer is None else scores >= self.threshold
        return Positives(images, [[m[1]] for m in made], np.stack([m[2] for m in made]).astype(np.uint8), scores, kept)
