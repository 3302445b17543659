"""Everything the Review panel shows for one case, read in one go off the GUI thread (Qt-free).

Opening a case reads the image, the prediction (or the reviewer's autosaved edit), the reference,
the uncertainty map and the class names; on a real CT that takes seconds, so the panel runs
:func:`load_case` as a background job and only swaps the data into its layers on the GUI thread.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from medloop.app.errors import MedloopError
from medloop.app.io.image import MedImage


@dataclass
class CaseData:
    """One case, ready to show: arrays on the image's grid and the class table (its status comes
    from the audit log when it is shown: a decision may come between reading and showing)."""

    case_id: str
    reviewer: str
    image: MedImage
    prediction: MedImage
    draft: np.ndarray | None
    reference: np.ndarray | None
    uncertainty: np.ndarray | None
    classes: dict[int, str]


def load_case(project: Any, case_id: str, reviewer: str) -> CaseData:
    """Read case ``case_id`` of ``project`` for ``reviewer`` (raises the project's errors)."""
    from medloop.app.io.read import read_image

    image = project.load_image(case_id)
    prediction = project.load_prediction(case_id)
    draft = project.load_draft(case_id, reviewer)
    reference = project.reference_path(case_id)
    uncertainty = project.uncertainty_path(case_id)
    return CaseData(
        case_id=case_id,
        reviewer=reviewer,
        image=image,
        prediction=prediction,
        draft=draft,
        reference=None if reference is None else np.asarray(read_image(reference).array),
        uncertainty=None if uncertainty is None else np.asarray(read_image(uncertainty).array),
        classes=case_classes(project.case(case_id)),
    )


def case_classes(case: Any) -> dict[int, str]:
    """Class names of the case's prediction from its model's card, when the model is installed."""
    name = (case.predictions[0].model or {}).get("model") if case.predictions else None
    if name:
        try:
            from medloop.models.registry import get_model

            return dict(get_model(name).card.classes)
        except MedloopError:
            pass
    return {}
