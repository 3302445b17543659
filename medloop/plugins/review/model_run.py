"""Making a review project with a model: the model over every image as a cohort task.

Each case gets its prediction (``<id>.nii.gz``) and, when the model gives probabilities, its
entropy map (``<id>_uncertainty.nii.gz``) in the project's ``predictions/`` folder, beside the
cohort runner's ``<id>.json`` sidecar. The segmentation itself is the segmentation plugin's
``segment-image`` service (through the registry, never an import), so Review runs any
segmentation model exactly as ``medloop segment`` does.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from medloop.app.engine.cohort import Case, CohortTask
from medloop.app.io.image import MedImage


@dataclass(frozen=True)
class ModelRun:
    """How the model runs over the cases: device, models folder, mirrored test-time runs
    (``flips``: y and x, 3x the time) and where (``scheduler``: None serial in this process,
    ``"local"`` for ``workers`` processes, or a dask scheduler address)."""

    device: str = "auto"
    models_dir: Path | None = None
    flips: bool = False
    scheduler: str | None = None
    workers: int | None = None


def label_dtype(labels: np.ndarray) -> type:
    """The smallest type that holds ``labels``: uint8 up to 255, uint16 up to 65535, else int32
    (and int32 for negative labels)."""
    top = int(np.max(labels)) if np.size(labels) else 0
    low = int(np.min(labels)) if np.size(labels) else 0
    if low < 0:
        return np.int32
    return np.uint8 if top < 256 else np.uint16 if top < 65536 else np.int32


@dataclass(frozen=True)
class ReviewPredictTask(CohortTask):
    """One case: segment, score uncertainty (entropy, optional flip disagreement), write."""

    model: str
    device: str = "auto"
    models_dir: str | None = None
    flips: bool = False

    def fingerprint(self) -> dict[str, Any]:
        from medloop.models.registry import get_model

        card = get_model(self.model, self._models_dir()).card
        model = {"name": card.name, "version": card.version, "weights_sha256": card.weights_sha256}
        return {"task": "review-predict", "model": model, "flips": self.flips}

    def load(self) -> Any:
        """The network, once per process (serial run) or per worker."""
        from medloop.app.engine.devices import choose_device
        from medloop.models.registry import build_model, get_model

        return build_model(get_model(self.model, self._models_dir()), choose_device(self.device))

    def run(self, case: Case, state: Any, out_dir: Path) -> dict[str, Any]:
        from medloop.app.io.read import read_image
        from medloop.app.io.write import write_image
        from medloop.models.provenance import model_reference
        from medloop.plugins.review.uncertainty import flipped_predictions, uncertainty_summary

        image = read_image(case.path)
        result = self._segment(image, state)
        labels = np.asarray(result.labels.array)
        flipped = flipped_predictions(image, lambda im: self._segment(im, state).labels.array) if self.flips else []
        emap, scores = uncertainty_summary(result.probabilities, labels, flipped)
        plain = {"channel_axis": False, "metadata": {}}
        outputs = [write_image(image.with_array(labels.astype(label_dtype(labels)), **plain), out_dir / f"{case.id}.nii.gz").name]
        if emap is not None:
            target = out_dir / f"{case.id}_uncertainty.nii.gz"
            outputs.append(write_image(image.with_array(emap.astype(np.float32), **plain), target).name)
        scores = {k: (None if v is None else float(v)) for k, v in scores.items()}
        return {"outputs": outputs, "scores": scores, "model": model_reference(result.provenance)}

    def _segment(self, image: MedImage, network: Any) -> Any:
        from medloop.app.plugin import service

        segment_image = service("segment-image")  # the segmentation plugin's, through the registry
        return segment_image(image, self.model, device=self.device, models_dir=self._models_dir(), network=network)

    def _models_dir(self) -> Path | None:
        return Path(self.models_dir) if self.models_dir is not None else None
