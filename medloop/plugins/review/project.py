"""A review project: a folder of cases (image + model predictions) that clinicians accept,
reject or edit, with every decision in an append-only audit log.

Layout (all paths in the manifest are relative to the folder when they lie inside it, so a
project can be moved or shared as a whole)::

    DIR/medloop-review.json           manifest: the cases; written once, atomically
    DIR/audit.jsonl                   every decision, append-only (see audit.py)
    DIR/reviews/<reviewer>/<case>.<time>.nii.gz   saved masks, one immutable file per decision
    DIR/predictions/<case>.nii.gz     predictions when the project ran the model (--model)
    DIR/uncertainty/<case>.nii.gz     per-voxel entropy (0..1), for an overlay layer
    DIR/.medloop/                     in-progress edits, autosaved by AnnotationStore/Autosaver

Why this design: the log is the only state. A decision's mask is written first (to a new file
that nothing else ever writes), then the log record naming it (with its sha256) is appended and
fsync-ed; a crash between the two leaves an unreferenced file, never a decision without its
mask. Reviewers never write the same file, so two reviewers on one folder (even at once)
cannot clobber each other, and :meth:`ReviewProject.state` rebuilds every status from the log.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import time
import warnings
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from medloop.app.errors import MedloopError, MedloopWarning
from medloop.app.io.image import MedImage
from medloop.app.io.hashing import sha256_file
from medloop.plugins.review.model_run import label_dtype
from medloop.models.provenance import model_reference
from medloop.plugins.review.audit import AuditLog, BadLine

MANIFEST_NAME = "medloop-review.json"
AUDIT_NAME = "audit.jsonl"
FORMAT = "medloop-review-1"
RECORD_FORMAT = 1
REVIEWS_DIR = "reviews"
PREDICTIONS_DIR = "predictions"
UNCERTAINTY_DIR = "uncertainty"
DRAFTS_DIR = ".medloop"
MASK_SUFFIX = ".nii.gz"
STALE_TEMP_SECONDS = 60.0

TO_REVIEW, ACCEPTED, REJECTED, EDITED, SECOND_OPINION = "to review", "accepted", "rejected", "edited", "second opinion"
STATUSES = (TO_REVIEW, ACCEPTED, REJECTED, EDITED, SECOND_OPINION)
#: Decision actions and the status each gives the case (for the reviewer who took it).
ACTIONS = {"accept": ACCEPTED, "reject": REJECTED, "edit": EDITED, "second_opinion": SECOND_OPINION, "reopen": TO_REVIEW}
REVIEW_ACTIONS = ("accept", "reject", "edit")  # the ones that are a verdict on the mask
PIN_FRAMES = ("index", "world")

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+@-]{0,127}$")
#: Reviewer names: letters (any script), digits, spaces and . ' _ - + @ ("Dr. A. Smith").
_REVIEWER = re.compile(r"^[^\W_](?:[\w .'+@-]{0,126}[\w.'+@-])?$")


class ReviewError(MedloopError):
    """A review project, case, reviewer or decision that cannot be used as given."""


# -- names and time --------------------------------------------------------------------------------


def check_name(name: str, what: str) -> str:
    """``name`` if it is a safe file-name part (reviewer names and case ids become folder and
    file names: letters, digits, ``. _ - + @``, not starting with a dot, at most 128)."""
    if not isinstance(name, str) or not _NAME.match(name):
        raise ReviewError(
            f"{what} {name!r} cannot be used: use 1-128 letters, digits or . _ - + @ (starting with a letter or digit)"
        )
    return name


def reviewer_problem(name: str) -> str | None:
    """Why ``name`` cannot be a reviewer name, or None when it can. Reviewer names become a
    folder name (``reviews/<name>``), so they may hold spaces and dots but no path separators,
    no leading or trailing space and no trailing dot (Windows drops it), at most 128 characters."""
    if not isinstance(name, str) or not name.strip():
        return "type your name"
    if len(name) > 128:
        return "at most 128 characters"
    if name != name.strip():
        return "no space at the start or the end"
    if "  " in name:
        return "no double spaces"
    bad = sorted({c for c in name if not (c.isalnum() or c in " .'_+@-")})
    if bad:
        return "these characters cannot be used: " + " ".join(repr(c) for c in bad)
    if not name[0].isalnum():
        return "start with a letter or digit"
    if name.endswith("."):
        return "no dot at the end"
    if not _REVIEWER.match(name):
        return "use letters, digits, spaces and . ' _ - + @"
    return None


def check_reviewer(name: str, what: str = "reviewer name") -> str:
    """``name`` if it can be a reviewer name (see :func:`reviewer_problem`); case ids stay strict
    (:func:`check_name`)."""
    problem = reviewer_problem(name)
    if problem is not None:
        raise ReviewError(f"{what} {name!r} cannot be used: {problem}")
    return name


def default_reviewer() -> str:
    """The reviewer name to use when none is given: ``$MEDLOOP_REVIEWER``, else the login name."""
    import getpass

    name = os.environ.get("MEDLOOP_REVIEWER") or ""
    if not name:
        try:
            name = getpass.getuser()
        except Exception:  # noqa: BLE001 - no login name (containers): the caller must give one
            name = ""
    if not name:
        raise ReviewError("no reviewer name: pass --reviewer NAME or set MEDLOOP_REVIEWER")
    return check_reviewer(name, "reviewer name (from $MEDLOOP_REVIEWER or the login name)")


def utc_now() -> str:
    """UTC time as ISO 8601 with milliseconds and a ``Z``."""
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def case_id_from_path(path: str | os.PathLike) -> str:
    """A case id from an image file name: its stem without the image suffix, unsafe characters
    replaced by ``_`` (a DICOM folder gives its folder name)."""
    from medloop.app.io.read import suffix_of

    p = Path(path)
    suffix = "" if p.is_dir() else suffix_of(p)
    stem = p.name[: len(p.name) - len(suffix)] if suffix else p.name
    cleaned = re.sub(r"[^A-Za-z0-9._+@-]", "_", stem).lstrip("._") or "case"
    return cleaned[:128]


# -- what a project holds ------------------------------------------------------------------------


@dataclass(frozen=True)
class Prediction:
    """One model prediction of a case: its label map and the model that made it."""

    path: str  # as stored in the manifest (relative to the project when inside it)
    model: dict[str, Any] = field(default_factory=dict)  # model, model_version, weights_sha256 (None if unknown)


@dataclass(frozen=True)
class Case:
    """One case of the manifest. Paths are as stored; use ReviewProject.*_path for real paths."""

    id: str
    image: str
    predictions: tuple[Prediction, ...]
    reference: str | None = None
    uncertainty: str | None = None  # per-voxel entropy map
    uncertainty_score: float | None = None  # what cases sort by (most doubtful first)
    entropy: float | None = None
    flip_disagreement: float | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "image": self.image,
            "predictions": [{"path": p.path, "model": p.model} for p in self.predictions],
            "reference": self.reference,
            "uncertainty": {
                "map": self.uncertainty,
                "score": self.uncertainty_score,
                "entropy": self.entropy,
                "flip_disagreement": self.flip_disagreement,
            },
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Case:
        unc = data.get("uncertainty") or {}
        return cls(
            id=str(data["id"]),
            image=str(data["image"]),
            predictions=tuple(Prediction(str(p["path"]), dict(p.get("model") or {})) for p in data.get("predictions", [])),
            reference=data.get("reference"),
            uncertainty=unc.get("map"),
            uncertainty_score=unc.get("score"),
            entropy=unc.get("entropy"),
            flip_disagreement=unc.get("flip_disagreement"),
        )


@dataclass(frozen=True)
class CaseInput:
    """What :meth:`ReviewProject.create` needs for one case (files anywhere on disk).

    ``model`` describes who made the predictions: ``{"model", "model_version",
    "weights_sha256"}`` (unknown keys None); ``probabilities`` (per-class, channels last, on the
    image grid) give the uncertainty map and score.
    """

    image: Path
    predictions: Sequence[Path] = ()
    reference: Path | None = None
    probabilities: Path | None = None
    id: str | None = None
    model: dict[str, Any] | None = None


@dataclass(frozen=True)
class Decision:
    """One audit record: a reviewer's action on a case (see :meth:`ReviewProject.decide`)."""

    id: str
    time: str
    reviewer: str
    case: str
    action: str
    prediction: int = 0
    model: dict[str, Any] = field(default_factory=dict)
    seconds: float | None = None
    comment: str = ""
    pins: tuple[dict[str, Any], ...] = ()
    mask: str | None = None  # saved mask, relative to the project (edits only)
    mask_sha256: str | None = None
    metrics: dict[str, Any] | None = None  # EditMetrics.to_record() (accept: an unchanged mask)
    prompts: dict[str, Any] | None = None  # {"count", "seconds"} of click -> object prompts on the mask

    @property
    def status(self) -> str:
        return ACTIONS.get(self.action, TO_REVIEW)

    @classmethod
    def from_record(cls, r: dict[str, Any]) -> Decision:
        return cls(
            id=str(r.get("id", "")),
            time=str(r.get("time", "")),
            reviewer=str(r.get("reviewer", "")),
            case=str(r.get("case", "")),
            action=str(r.get("action", "")),
            prediction=int(r.get("prediction") or 0),
            model=dict(r.get("model") or {}),
            seconds=r.get("seconds"),
            comment=str(r.get("comment") or ""),
            pins=tuple(r.get("pins") or ()),
            mask=r.get("mask"),
            mask_sha256=r.get("mask_sha256"),
            metrics=r.get("metrics"),
            prompts=r.get("prompts"),
        )


def _prompt_record(prompts: dict[str, Any] | None, case_id: str) -> dict[str, Any] | None:
    """``{"count": int, "seconds": float}`` of the interactive prompts behind an edit, checked."""
    if not prompts:
        return None
    try:
        count, seconds = int(prompts["count"]), float(prompts.get("seconds", 0.0))
    except (KeyError, TypeError, ValueError):
        raise ReviewError(f"prompts of case {case_id!r} must be {{'count': n, 'seconds': s}}, not {prompts!r}") from None
    if count < 0 or not np.isfinite(seconds) or seconds < 0:
        raise ReviewError(f"prompts of case {case_id!r} need a count >= 0 and seconds >= 0, not {prompts!r}")
    return {"count": count, "seconds": round(seconds, 3)}


@dataclass
class CaseState:
    """Where a case stands, rebuilt from the log.

    ``status``: ``to review`` with no verdict; the verdict's status when every reviewer with a
    verdict agrees; ``second opinion`` when reviewers disagree or one asked for a second
    opinion that no other reviewer has given yet.
    """

    case_id: str
    status: str = TO_REVIEW
    reviews: dict[str, Decision] = field(default_factory=dict)  # reviewer -> latest verdict
    history: list[Decision] = field(default_factory=list)  # every record, in log order
    second_opinion_requested_by: str | None = None
    seconds: float = 0.0  # time spent on the case, all reviewers, all sessions

    def verdict(self, reviewer: str | None = None) -> Decision | None:
        """The latest verdict (accept/reject/edit) of ``reviewer``, or of anyone."""
        if reviewer is not None:
            return self.reviews.get(reviewer)
        latest = [d for d in self.history if d.action in REVIEW_ACTIONS and self.reviews.get(d.reviewer) is d]
        return latest[-1] if latest else None


@dataclass
class ProjectState:
    """Every case's state plus what was wrong in the log (torn or invalid lines)."""

    cases: dict[str, CaseState]
    problems: list[BadLine] = field(default_factory=list)
    unknown_cases: list[str] = field(default_factory=list)  # log records naming no manifest case

    @property
    def torn_tail(self) -> bool:
        return any(p.torn_tail for p in self.problems)

    def counts(self) -> dict[str, int]:
        """Number of cases per status (every status listed, zeros included)."""
        out = {s: 0 for s in STATUSES}
        for c in self.cases.values():
            out[c.status] += 1
        return out


def build_state(case_ids: Iterable[str], records: Iterable[dict[str, Any]]) -> dict[str, CaseState]:
    """Replay decisions (in log order) into case states; unknown case ids are skipped."""
    states = {cid: CaseState(cid) for cid in case_ids}
    for r in records:
        d = Decision.from_record(r)
        st = states.get(d.case)
        if st is None or d.action not in ACTIONS:
            continue
        st.history.append(d)
        if isinstance(d.seconds, (int, float)):
            st.seconds += float(d.seconds)
        if d.action in REVIEW_ACTIONS:
            st.reviews[d.reviewer] = d
            if st.second_opinion_requested_by not in (None, d.reviewer):
                st.second_opinion_requested_by = None  # another reviewer has given it
        elif d.action == "second_opinion":
            st.second_opinion_requested_by = d.reviewer
        elif d.action == "reopen":
            st.reviews.pop(d.reviewer, None)
            if st.second_opinion_requested_by == d.reviewer:
                st.second_opinion_requested_by = None
    for st in states.values():
        verdicts = {d.status for d in st.reviews.values()}
        if st.second_opinion_requested_by is not None or len(verdicts) > 1:
            st.status = SECOND_OPINION
        elif verdicts:
            st.status = verdicts.pop()
        else:
            st.status = TO_REVIEW
    return states


# -- the project ---------------------------------------------------------------------------------


class ReviewProject:
    """A review folder: open with :meth:`open`, create with :meth:`create` or
    :meth:`create_with_model`. Every method is safe to call from several processes."""

    def __init__(self, folder: Path, manifest: dict[str, Any]) -> None:
        self.folder = folder
        self.manifest = manifest
        self.cases: list[Case] = [Case.from_json(c) for c in manifest.get("cases", [])]
        self._by_id = {c.id: c for c in self.cases}
        self.log = AuditLog(folder / AUDIT_NAME)
        self.removed_temps: list[Path] = []
        self._image_cache: tuple[str, MedImage] | None = None
        self._warned: set[tuple[int, bool]] = set()

    # -- opening and creating ------------------------------------------------------------------
    @classmethod
    def open(cls, folder: str | os.PathLike) -> ReviewProject:
        """Open an existing project; stale temporary files of killed writes are removed.

        Raises:
            ReviewError: no project there, or a damaged manifest.
        """
        folder = Path(folder)
        path = folder / MANIFEST_NAME
        if not path.is_file():
            raise ReviewError(
                f"{folder} is not a review project (no {MANIFEST_NAME}); create one with 'medloop review init {folder} --images ...'"
            )
        try:
            manifest = json.loads(path.read_text(encoding="utf-8"))
            if manifest.get("format") != FORMAT:
                raise ValueError(f"format {manifest.get('format')!r}, expected {FORMAT!r}")
            for c in manifest["cases"]:
                Case.from_json(c)
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
            raise ReviewError(f"review manifest {path} is damaged ({exc}); restore it from a backup or create the project again") from None
        project = cls(folder, manifest)
        project.removed_temps = project.clean_stale_temps()
        return project

    @classmethod
    def create(
        cls,
        folder: str | os.PathLike,
        cases: Sequence[CaseInput],
        created_by: str | None = None,
        _extra: dict[str, Any] | None = None,
    ) -> ReviewProject:
        """Check every case, then write uncertainty maps and the manifest.

        Nothing is written unless every file exists, every prediction, reference and
        probability map lies on its image's grid, and case ids are unique.

        Raises:
            ReviewError / ImageReadError / ImageMismatchError: the first problem found, naming the file.
        """
        folder = Path(folder)
        _check_new_folder(folder)
        if not cases:
            raise ReviewError(f"no cases for review project {folder}; give at least one image")
        checked = _check_cases(cases)
        folder.mkdir(parents=True, exist_ok=True)
        entries = []
        for spec, cid, image, labels0 in checked:
            unc_rel, scores = None, {"score": None, "entropy": None, "flip_disagreement": None}
            if spec.probabilities is not None:
                from medloop.app.io.read import read_image
                from medloop.plugins.review.uncertainty import uncertainty_summary

                emap, scores = uncertainty_summary(read_image(spec.probabilities), labels0)
                unc_rel = _write_uncertainty(folder, cid, image, emap)
            entries.append(
                Case(
                    id=cid,
                    image=_stored(folder, spec.image),
                    predictions=tuple(Prediction(_stored(folder, p), model_reference(spec.model)) for p in spec.predictions),
                    reference=_stored(folder, spec.reference) if spec.reference is not None else None,
                    uncertainty=unc_rel,
                    uncertainty_score=scores["score"],
                    entropy=scores["entropy"],
                    flip_disagreement=scores["flip_disagreement"],
                )
            )
        return cls._write_manifest(folder, entries, created_by, _extra)

    @classmethod
    def create_with_model(
        cls,
        folder: str | os.PathLike,
        images: Sequence[Path],
        model: str,
        references: Sequence[Path] | None = None,
        ids: Sequence[str] | None = None,
        *,
        created_by: str | None = None,
        progress: Callable[..., None] | None = None,
        should_stop: Callable[[], bool] | None = None,
        **run: Any,
    ) -> ReviewProject:
        """Run ``model`` (the segmentation plugin's ``segment-image`` service) over ``images``
        through the cohort runner; predictions and entropy maps go into the project, cases sort
        by entropy. ``run``: the fields of :class:`~medloop.plugins.review.model_run.ModelRun`
        (``device``, ``models_dir``, ``flips`` for mirrored test-time runs and their
        disagreement score, ``scheduler``/``workers`` to run on a Dask cluster).

        Inputs and the model are checked before anything runs. ``progress(done, total, info)``
        after every case; ``should_stop`` cancels between cases (no manifest is written, so there
        is no project; the finished cases are kept and a later call resumes from them). A case that
        fails stops the project with its one-line error, the others' outputs are kept likewise.
        """
        from medloop.app.engine.cohort import Case as CohortCase
        from medloop.app.engine.cohort import run_cohort
        from medloop.plugins.review.model_run import ModelRun, ReviewPredictTask

        folder = Path(folder)
        options = ModelRun(**run)
        checked = cls._checked_model_cases(folder, images, model, references, ids, options)
        task = ReviewPredictTask(model, options.device, None if options.models_dir is None else str(options.models_dir), options.flips)

        def report(done: int, total: int, info: dict[str, Any]) -> None:
            if progress is not None:
                progress(done, total, {"case": info["case"], "done": done, "total": total})

        result = run_cohort(
            [CohortCase(cid, spec.image) for spec, cid, _, _ in checked], task, folder / PREDICTIONS_DIR,
            scheduler=options.scheduler, workers=options.workers, progress=report, should_stop=should_stop,
        )
        if result.failed:
            first = next(iter(result.failed.items()))
            raise ReviewError(
                f"{len(result.failed)} of {len(checked)} cases failed, so no review project was made "
                f"(first: {first[0]}: {first[1]}); fix or leave out those images and run again (finished cases are kept)"
            )
        entries = [
            _model_case(folder, spec, cid, entry["record"])
            for (spec, cid, _, _), entry in zip(checked, result.entries)
        ]
        return cls._write_manifest(folder, entries, created_by, {"model": result.entries[-1]["record"]["model"]})

    @staticmethod
    def _checked_model_cases(
        folder: Path, images: Sequence[Path], model: str, references: Sequence[Path] | None,
        ids: Sequence[str] | None, options: Any,
    ) -> list[tuple[CaseInput, str, MedImage, None]]:
        """The cases of a model run, checked (paths, ids, grids, the model can take each image)."""
        from medloop.models.inputs import check_input
        from medloop.models.registry import get_model

        _check_new_folder(folder)
        refs = list(references or [])
        if refs and len(refs) != len(images):
            raise ReviewError(f"{len(refs)} references for {len(images)} images; give one reference per image, in the same order")
        specs = [
            CaseInput(image=Path(img), reference=Path(refs[i]) if refs else None, id=ids[i] if ids else None)
            for i, img in enumerate(images)
        ]
        if not specs:
            raise ReviewError(f"no cases for review project {folder}; give at least one image")
        entry = get_model(model, options.models_dir)  # an unknown model fails here, before any work
        checked = _check_cases(specs, need_predictions=False)
        for _, _, image, _ in checked:
            check_input(image, entry.card)
        return checked

    @classmethod
    def _write_manifest(cls, folder: Path, cases: list[Case], created_by: str | None, extra: dict[str, Any] | None) -> ReviewProject:
        from medloop.app.io.atomic import atomic_target

        manifest = {
            "format": FORMAT,
            "created": utc_now(),
            "created_by": created_by,
            **(extra or {}),
            "cases": [c.to_json() for c in cases],
        }
        target = folder / MANIFEST_NAME
        try:
            with atomic_target(target, suffix=".json") as tmp, open(tmp, "w", encoding="utf-8") as f:
                json.dump(manifest, f, indent=1)
                f.flush()
                os.fsync(f.fileno())
        except OSError as exc:
            raise ReviewError(f"cannot write {target} ({exc.strerror}); check that the folder is writable") from None
        return cls(folder, manifest)

    # -- cases and paths -------------------------------------------------------------------------
    def case(self, case_id: str) -> Case:
        """The case ``case_id``; ReviewError naming the known ids if there is none."""
        try:
            return self._by_id[case_id]
        except KeyError:
            known = ", ".join(c.id for c in self.cases[:10]) + (" ..." if len(self.cases) > 10 else "")
            raise ReviewError(f"no case {case_id!r} in review project {self.folder}; known cases: {known}") from None

    def resolve(self, stored: str | None) -> Path | None:
        """Real path of a path stored in the manifest or log (relative ones are in the folder)."""
        if stored is None:
            return None
        p = Path(stored)
        return p if p.is_absolute() else self.folder / p

    def image_path(self, case_id: str) -> Path:
        return self.resolve(self.case(case_id).image)  # type: ignore[return-value]

    def prediction_paths(self, case_id: str) -> list[Path]:
        return [self.resolve(p.path) for p in self.case(case_id).predictions]  # type: ignore[misc]

    def reference_path(self, case_id: str) -> Path | None:
        return self.resolve(self.case(case_id).reference)

    def uncertainty_path(self, case_id: str) -> Path | None:
        """The per-voxel entropy map (float32, 0..1, on the image grid), if the model gave one."""
        return self.resolve(self.case(case_id).uncertainty)

    def load_image(self, case_id: str) -> MedImage:
        """The case's image (the last one read is cached: decisions need its geometry)."""
        from medloop.app.io.read import read_image

        if self._image_cache is not None and self._image_cache[0] == case_id:
            return self._image_cache[1]
        image = read_image(self.image_path(case_id))
        self._image_cache = (case_id, image)
        return image

    def load_prediction(self, case_id: str, index: int = 0) -> MedImage:
        from medloop.app.io.read import read_image

        paths = self.prediction_paths(case_id)
        if not 0 <= index < len(paths):
            raise ReviewError(f"case {case_id!r} has {len(paths)} prediction(s); there is no prediction {index}")
        return read_image(paths[index])

    # -- state -----------------------------------------------------------------------------------
    def state(self) -> ProjectState:
        """Every case's status, rebuilt from the audit log (cheap: call it after each decision).

        Torn or invalid log lines are reported in ``problems`` (every call) and as a
        MedloopWarning (once per line and project instance).
        """
        read = self.log.read()
        new = [p for p in read.problems if (p.offset, p.torn_tail) not in self._warned]
        if new:  # once per problem and project instance: the GUI calls state() after every decision
            warnings.warn(read.describe_problems(self.log.path), MedloopWarning, stacklevel=2)
            self._warned.update((p.offset, p.torn_tail) for p in new)
        ids = [c.id for c in self.cases]
        unknown = sorted({str(r.get("case")) for r in read.records} - set(ids))
        return ProjectState(build_state(ids, read.records), list(read.problems), unknown)

    def cases_sorted(self, by: str = "uncertainty", state: ProjectState | None = None) -> list[Case]:
        """Cases in review order. ``uncertainty``: most doubtful first, unknown scores last;
        ``status``: to review, second opinion, edited, rejected, accepted (then uncertainty);
        ``id``: by case id."""
        def doubt(c: Case) -> tuple[bool, float, str]:
            s = c.uncertainty_score
            return (s is None, -(s or 0.0), c.id)

        if by == "uncertainty":
            return sorted(self.cases, key=doubt)
        if by == "id":
            return sorted(self.cases, key=lambda c: c.id)
        if by == "status":
            order = {TO_REVIEW: 0, SECOND_OPINION: 1, EDITED: 2, REJECTED: 3, ACCEPTED: 4}
            st = (state or self.state()).cases
            return sorted(self.cases, key=lambda c: (order[st[c.id].status], *doubt(c)))
        raise ReviewError(f"cannot sort cases by {by!r}; use uncertainty, status or id")

    def reviewers(self) -> list[str]:
        """Everyone who has recorded a decision, sorted."""
        return sorted({str(r.get("reviewer")) for r in self.log.read().records if r.get("reviewer")})

    # -- decisions -------------------------------------------------------------------------------
    def decide(
        self,
        case_id: str,
        reviewer: str,
        action: str,
        mask: np.ndarray | None = None,
        seconds: float | None = None,
        comment: str = "",
        pins: Sequence[dict[str, Any]] = (),
        prediction: int = 0,
        prompts: dict[str, Any] | None = None,
    ) -> Decision:
        """Record ``reviewer``'s ``action`` on a case and return the logged decision.

        Actions: ``accept`` (the prediction as it is), ``reject``, ``edit`` (``mask`` required:
        labels on the image grid, saved with the image's geometry), ``second_opinion`` (ask
        another reviewer), ``reopen`` (withdraw this reviewer's verdict). ``seconds``: how long
        the case was open. ``pins``: comments at a location, each ``{"position": [z, y, x],
        "frame": "index" | "world", "text": ...}`` (world = napari world coordinates, mm).
        An edit's mask is written before the log record, so a recorded edit always has its mask.
        ``prompts``: ``{"count": n, "seconds": s}`` when the mask was edited by click -> object
        prompts (the interactive panel leaves it in the mask layer's metadata).

        Raises:
            ReviewError: unknown case/action, bad reviewer name, missing or misshaped mask.
        """
        check_reviewer(reviewer)
        case = self.case(case_id)
        if action not in ACTIONS:
            raise ReviewError(f"unknown review action {action!r} for case {case_id!r}; use one of {', '.join(ACTIONS)}")
        if action == "edit" and mask is None:
            raise ReviewError(f"an edit of case {case_id!r} needs the edited mask; pass mask=... (or use accept)")
        if action != "edit" and mask is not None:
            raise ReviewError(f"action {action!r} on case {case_id!r} takes no mask; use action 'edit' to save a changed mask")
        if seconds is not None and (not np.isfinite(seconds) or seconds < 0):
            raise ReviewError(f"time spent on case {case_id!r} must be a number of seconds >= 0, not {seconds!r}")
        if not 0 <= prediction < max(len(case.predictions), 1):
            raise ReviewError(f"case {case_id!r} has {len(case.predictions)} prediction(s); there is no prediction {prediction}")
        clean_pins = [_check_pin(p, case_id) for p in pins]
        record: dict[str, Any] = {
            "format": RECORD_FORMAT,
            "id": secrets.token_hex(8),
            "time": utc_now(),
            "reviewer": reviewer,
            "case": case_id,
            "action": action,
            "prediction": prediction,
            "model": case.predictions[prediction].model if case.predictions else {},
            "seconds": None if seconds is None else round(float(seconds), 3),
            "comment": str(comment or ""),
            "pins": clean_pins,
            "mask": None,
            "mask_sha256": None,
            "metrics": None,
            "prompts": _prompt_record(prompts, case_id),
        }
        if action in ("accept", "edit"):
            from medloop.plugins.review.edit_metrics import edit_metrics

            image = self.load_image(case_id)
            predicted = np.asarray(self.load_prediction(case_id, prediction).array) if case.predictions else None
            if action == "edit":
                arr = np.asarray(mask)
                if arr.shape != image.shape[: image.ndim]:
                    raise ReviewError(
                        f"edited mask of case {case_id!r} has shape {arr.shape}, the image {tuple(image.shape[: image.ndim])}; "
                        "save the labels drawn on this case's image"
                    )
                path = self._write_mask(case_id, reviewer, image, arr, record["time"])
                record["mask"] = path.relative_to(self.folder).as_posix()
                record["mask_sha256"] = sha256_file(path)
                if predicted is not None:
                    record["metrics"] = edit_metrics(predicted, arr, image).to_record()
            elif predicted is not None:
                record["metrics"] = edit_metrics(predicted, predicted, image).to_record()
        self.log.append(record)
        if action in ("accept", "edit", "reject"):
            self.discard_draft(case_id, reviewer)
        return Decision.from_record(record)

    def _write_mask(self, case_id: str, reviewer: str, image: MedImage, mask: np.ndarray, when: str) -> Path:
        from medloop.app.io.write import write_image

        folder = self.folder / REVIEWS_DIR / reviewer
        folder.mkdir(parents=True, exist_ok=True)
        stamp = re.sub(r"[^0-9TZ]", "", when)
        path = folder / f"{case_id}.{stamp}-{secrets.token_hex(3)}{MASK_SUFFIX}"
        labels = np.asarray(mask)
        if labels.dtype == bool or labels.dtype.kind not in "iu":
            labels = labels.astype(label_dtype(labels))
        return write_image(image.with_array(labels, channel_axis=False, metadata={}, path=None), path)

    def reviewed_mask(self, case_id: str, reviewer: str | None = None, state: ProjectState | None = None) -> tuple[np.ndarray | None, str]:
        """The mask a case's verdict stands for, and where it came from.

        ``edited`` → the saved mask (checked against its sha256); ``accepted`` → the accepted
        prediction; otherwise (no verdict, rejected) ``(None, reason)``. ``reviewer`` picks that
        reviewer's verdict, else the latest verdict of anyone.

        Raises:
            ReviewError: the saved mask is missing or does not match its logged checksum.
        """
        from medloop.app.io.read import read_image

        st = (state or self.state()).cases[self.case(case_id).id]
        d = st.verdict(reviewer)
        if d is None:
            return None, "no verdict"
        if d.action == "reject":
            return None, f"rejected by {d.reviewer}"
        if d.action == "accept":
            return np.asarray(self.load_prediction(case_id, d.prediction).array), f"prediction {d.prediction} accepted by {d.reviewer}"
        path = self.resolve(d.mask)
        if path is None or not path.is_file():
            raise ReviewError(f"saved mask {path} of case {case_id!r} ({d.reviewer}, {d.time}) is missing; restore it from a backup")
        if d.mask_sha256 and sha256_file(path) != d.mask_sha256:
            raise ReviewError(f"saved mask {path} of case {case_id!r} does not match its logged checksum; restore it from a backup")
        return np.asarray(read_image(path).array), f"edited by {d.reviewer}"

    # -- in-progress edits -----------------------------------------------------------------------
    def annotation_store(self):
        """Where in-progress edits autosave (``DIR/.medloop``), an :class:`AnnotationStore`."""
        from medloop.app.io.autosave import AnnotationStore

        return AnnotationStore(self.folder / DRAFTS_DIR)

    @staticmethod
    def draft_name(reviewer: str) -> str:
        """The autosave layer name of ``reviewer``'s edit (one draft per reviewer and case)."""
        return f"review-{check_reviewer(reviewer)}"

    def autosaver(self, case_id: str, reviewer: str, get_labels: Callable[[], np.ndarray], delay: float = 2.0):
        """An :class:`Autosaver` for ``reviewer``'s in-progress edit of a case (call
        ``changed()`` on every paint; ``close()`` when the case is closed)."""
        from medloop.app.io.autosave import Autosaver

        return Autosaver(self.annotation_store(), self._draft_image(case_id), self.draft_name(reviewer), get_labels, delay=delay)

    def load_draft(self, case_id: str, reviewer: str) -> np.ndarray | None:
        """The autosaved in-progress edit, to restore when the case is opened again, or None."""
        return self.annotation_store().load(self._draft_image(case_id), self.draft_name(reviewer))

    def discard_draft(self, case_id: str, reviewer: str) -> None:
        """Delete the in-progress edit (done after a verdict is logged)."""
        store = self.annotation_store()
        path = store.path_for(self._draft_image(case_id), self.draft_name(reviewer))
        try:
            path.unlink()
        except FileNotFoundError:
            pass

    def _draft_image(self, case_id: str) -> MedImage:
        image = self.load_image(case_id)
        return image if image.path else image.with_array(image.array, path=str(self.image_path(case_id)))

    # -- housekeeping ----------------------------------------------------------------------------
    def clean_stale_temps(self, older_than: float = STALE_TEMP_SECONDS) -> list[Path]:
        """Delete temporary files of writes killed midway (``.<name>.<random>...`` in reviews/)."""
        removed = []
        now = time.time()
        for folder in (self.folder / REVIEWS_DIR).glob("*"):
            if not folder.is_dir():
                continue
            for p in folder.iterdir():
                try:
                    if p.name.startswith(".") and now - p.stat().st_mtime > older_than:
                        p.unlink()
                        removed.append(p)
                except OSError:
                    pass
        return removed


# -- helpers -------------------------------------------------------------------------------------


def _model_case(folder: Path, spec: CaseInput, cid: str, record: dict[str, Any]) -> Case:
    """The manifest's case for one finished model-run case (its cohort record)."""
    outputs = [folder / PREDICTIONS_DIR / name for name in record["outputs"]]
    scores = record["scores"]
    return Case(
        id=cid,
        image=_stored(folder, spec.image),
        predictions=(Prediction(_stored(folder, outputs[0]), record["model"]),),
        reference=_stored(folder, spec.reference) if spec.reference is not None else None,
        uncertainty=_stored(folder, outputs[1]) if len(outputs) > 1 else None,
        uncertainty_score=scores["score"],
        entropy=scores["entropy"],
        flip_disagreement=scores["flip_disagreement"],
    )


def _stored(folder: Path, path: str | os.PathLike) -> str:
    """``path`` relative to ``folder`` (posix) when inside it, else absolute."""
    p = Path(path).absolute()
    try:
        return p.relative_to(folder.absolute()).as_posix()
    except ValueError:
        return str(p)


def _check_new_folder(folder: Path) -> None:
    if folder.exists() and not folder.is_dir():
        raise ReviewError(f"cannot create review project {folder}: it is a file; choose a folder")
    if (folder / MANIFEST_NAME).exists():
        raise ReviewError(f"{folder} is already a review project; open it, or choose another folder")


def _check_pin(pin: dict[str, Any], case_id: str) -> dict[str, Any]:
    try:
        position = [float(v) for v in pin["position"]]
        frame = str(pin.get("frame", "index"))
        text = str(pin.get("text", ""))
    except (KeyError, TypeError, ValueError):
        raise ReviewError(
            f"comment pin {pin!r} on case {case_id!r} needs 'position' (numbers, z y x), 'frame' and 'text'"
        ) from None
    if frame not in PIN_FRAMES or not all(np.isfinite(position)):
        raise ReviewError(f"comment pin {pin!r} on case {case_id!r}: frame must be 'index' or 'world' and the position finite")
    return {"position": position, "frame": frame, "text": text}


def _check_cases(cases: Sequence[CaseInput], need_predictions: bool = True) -> list[tuple[CaseInput, str, MedImage, np.ndarray | None]]:
    """Read and check every case; returns (spec, id, image, first prediction's labels)."""
    from medloop.app.io.read import read_image
    from medloop.app.io.validate import check_same_grid

    seen: dict[str, Path] = {}
    for spec in cases:  # cheap checks first: ids and existence, before reading any image
        cid = check_name(spec.id, "case id") if spec.id is not None else case_id_from_path(spec.image)
        if cid in seen:
            raise ReviewError(
                f"duplicate case id {cid!r}: {seen[cid]} and {spec.image}; give the images distinct file names (or ids)"
            )
        seen[cid] = Path(spec.image)
        if need_predictions and not spec.predictions:
            raise ReviewError(f"case {cid!r} ({spec.image}) has no prediction; give --predictions or --model")
        for what, p in [("image", spec.image), *[("prediction", q) for q in spec.predictions],
                        ("reference", spec.reference), ("probabilities", spec.probabilities)]:
            if p is not None and not Path(p).exists():
                raise ReviewError(f"{what} {p} of case {cid!r} does not exist; check the path")
    out = []
    for spec, cid in zip(cases, seen):
        image = read_image(spec.image)
        if image.channel_axis or image.is_multiscale:
            raise ReviewError(f"image {spec.image} of case {cid!r} is a colour/multichannel or slide image; review works on grey 2-D and 3-D images")
        first = None
        for i, p in enumerate(spec.predictions):
            pred = read_image(p)
            check_same_grid(image, pred)
            if pred.channel_axis or np.dtype(pred.dtype).kind not in "iub":
                raise ReviewError(
                    f"prediction {p} of case {cid!r} is not a label map (dtype {pred.dtype}{', several channels' if pred.channel_axis else ''}); "
                    "give integer labels (probabilities go to --probabilities)"
                )
            if i == 0:
                first = np.asarray(pred.array)
        if spec.reference is not None:
            check_same_grid(image, read_image(spec.reference))
        if spec.probabilities is not None:
            probs = read_image(spec.probabilities)
            check_same_grid(image, probs)
            if not probs.channel_axis:
                raise ReviewError(
                    f"probabilities {spec.probabilities} of case {cid!r} have no class axis; "
                    "give the per-class file 'medloop segment --probabilities' writes"
                )
        out.append((spec, cid, image, first))
    return out


def _write_uncertainty(folder: Path, cid: str, image: MedImage, emap: np.ndarray | None) -> str | None:
    if emap is None:
        return None
    from medloop.app.io.write import write_image

    (folder / UNCERTAINTY_DIR).mkdir(parents=True, exist_ok=True)
    path = folder / UNCERTAINTY_DIR / f"{cid}{MASK_SUFFIX}"
    write_image(image.with_array(emap.astype(np.float32), channel_axis=False, metadata={}), path)
    return path.relative_to(folder).as_posix()
