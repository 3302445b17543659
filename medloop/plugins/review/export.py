"""Export reviewed masks with their source image's exact geometry, plus an index CSV.

Why: reviewed masks leave the tool for training sets, registries and PACS; each must sit on its
image's grid exactly (written through ``write_image`` with the image's spacing, origin and
direction, read from the source image, not from the saved mask), and the index says which
reviewer and which verdict every file stands for.
"""

from __future__ import annotations

import csv
import io
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from medloop.plugins.review.project import (
    ACCEPTED,
    EDITED,
    REJECTED,
    TO_REVIEW,
    ReviewError,
    ReviewProject,
    check_reviewer,
)

INDEX_NAME = "export.csv"


@dataclass(frozen=True)
class ExportedCase:
    """One row of the export index; ``path`` is None when the case was not exported."""

    case_id: str
    status: str
    source: str  # where the mask came from, or why there is none
    path: Path | None


def export_masks(
    project: ReviewProject,
    out: str | os.PathLike,
    accepted_only: bool = False,
    reviewer: str | None = None,
    suffix: str = ".nii.gz",
) -> list[ExportedCase]:
    """Write ``OUT/<case>.nii.gz`` for the cases and ``OUT/export.csv`` listing every case.

    Default: every case except rejected ones — the reviewed mask where there is a verdict, else
    the model's prediction (status "to review" in the index). ``accepted_only``: only cases
    whose verdict is accepted or edited (with ``reviewer``: that reviewer's verdict; without:
    the case status, so cases awaiting a second opinion are left out).

    Raises:
        ReviewError: OUT is a file or cannot be created; a saved mask is missing or damaged.
    """
    from medloop.app.io.atomic import atomic_target
    from medloop.app.io.write import write_image

    if reviewer is not None:
        check_reviewer(reviewer)
    out = output_folder(out, "export")
    state = project.state()
    rows: list[ExportedCase] = []
    for case in project.cases:
        st = state.cases[case.id]
        verdict = st.verdict(reviewer)
        status = verdict.status if reviewer is not None and verdict is not None else (TO_REVIEW if reviewer else st.status)
        if accepted_only and status not in (ACCEPTED, EDITED):
            rows.append(ExportedCase(case.id, status, "not accepted", None))
            continue
        if status == REJECTED:
            rows.append(ExportedCase(case.id, status, "rejected", None))
            continue
        mask, source = project.reviewed_mask(case.id, reviewer, state)
        if mask is None:
            if source != "no verdict" or not case.predictions:  # e.g. the latest verdict rejects it
                rows.append(ExportedCase(case.id, status, source, None))
                continue
            mask, source = np.asarray(project.load_prediction(case.id).array), "prediction (not reviewed)"
        image = project.load_image(case.id)
        target = out / f"{case.id}{suffix}"
        write_image(image.with_array(np.asarray(mask), channel_axis=False, metadata={}, path=None), target)
        rows.append(ExportedCase(case.id, status, source, target))
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["case", "status", "source", "file"])
    for r in rows:
        w.writerow([r.case_id, r.status, r.source, r.path.name if r.path else ""])
    with atomic_target(out / INDEX_NAME, suffix=".csv") as tmp:
        Path(tmp).write_text(buf.getvalue(), encoding="utf-8")
    return rows


def output_folder(out: str | Path, what: str) -> Path:
    """``out`` as an existing folder (made if needed) for the ``what`` files; a file there or an
    unwritable place is a :class:`ReviewError` that says so."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise ReviewError(f"cannot write the {what} into {out}: it is a file; give a folder")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ReviewError(f"cannot create {what} folder {out} ({exc.strerror}); choose a writable place") from None
    return out
