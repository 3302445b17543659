"""Pseudo-label a folder with the anomaly autoencoder (Baur et al.'s S, spec §3) through the
engine's cohort runner.

Each case (a 2-D slice or a (Z, Y, X) stack of axial slices in [0, 1], any medloop-readable file)
gets ``<id>_labels.nii.gz`` (uint8 {0, 1}: r >= t) and, unless turned off, ``<id>_anomaly.nii.gz``
(the continuous residual r, the authors' future-work suggestion), both on the input's exact grid.
The task carries the weights as numpy arrays (picklable, no file needed on the workers) and builds
the network once per worker.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from medloop.app.engine.cohort import Case, CohortProgress, CohortReport, CohortTask, cases_from, run_cohort
from medloop.app.engine.jobs import ShouldStop
from medloop.plugins.lesions.checks import LesionInputError, check_threshold

WEIGHTS_PREFIX = "autoencoder."


@dataclass(frozen=True)
class PseudoLabelTask(CohortTask):
    """Anomaly map + threshold on every case; ``state`` is the autoencoder's state dict as arrays."""

    state: dict[str, np.ndarray] = field(repr=False)
    t: float
    architecture: dict[str, Any] = field(default_factory=dict)
    median: int = 5
    write_anomaly: bool = True

    def weights_sha256(self) -> str:
        digest = hashlib.sha256()
        for key in sorted(self.state):
            digest.update(key.encode())
            digest.update(np.ascontiguousarray(self.state[key]).tobytes())
        return digest.hexdigest()

    def fingerprint(self) -> dict[str, Any]:
        """What changes the outputs: the weights, the architecture, t, the median and the outputs asked for."""
        return {"task": "lesion-pseudolabels", "weights_sha256": self.weights_sha256(), "architecture": self.architecture,
                "t": self.t, "median": self.median, "write_anomaly": self.write_anomaly}

    def load(self) -> Any:
        import torch

        from medloop.plugins.lesions.anomaly import SpatialAutoencoder

        model = SpatialAutoencoder(**self.architecture)
        model.load_state_dict({k: torch.from_numpy(np.array(v)) for k, v in self.state.items()})
        return model.eval()

    def run(self, case: Case, state: Any, out_dir: Path) -> dict[str, Any]:
        from medloop.app.io.read import read_image
        from medloop.app.io.write import write_image
        from medloop.plugins.lesions.residual import anomaly_map, threshold_map

        image = read_image(case.path)
        if image.channel_axis:
            raise LesionInputError(f"{case.path.name} has {image.shape[-1]} channels; give a greyscale FLAIR image")
        r = anomaly_map(state, np.asarray(image.array), median=self.median, name=case.path.name)
        labels = threshold_map(r, self.t)
        outputs = [write_image(image.with_array(labels), out_dir / f"{case.id}_labels.nii.gz").name]
        if self.write_anomaly:
            outputs.append(write_image(image.with_array(r.astype(np.float32)), out_dir / f"{case.id}_anomaly.nii.gz").name)
        return {"outputs": outputs, "lesion_voxels": int(labels.sum()), "max_residual": round(float(r.max()), 6)}


def task_for(model: Any, t: float, architecture: dict[str, Any] | None = None, median: int = 5,
             write_anomaly: bool = True) -> PseudoLabelTask:
    """A :class:`PseudoLabelTask` from a :class:`SpatialAutoencoder` or a ``weights.pt`` path (keys
    with or without the ``autoencoder.`` prefix; ``architecture`` gives its kwargs)."""
    import torch

    t = check_threshold(t)
    if isinstance(model, (str, os.PathLike)):
        path = Path(model)
        try:
            raw = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:  # a missing or foreign file is the user's to fix
            raise LesionInputError(f"cannot read autoencoder weights {path}: {exc}; give a weights.pt from the anomaly recipe") from None
        state = {k[len(WEIGHTS_PREFIX):] if k.startswith(WEIGHTS_PREFIX) else k: v for k, v in raw.items()}
        arch = dict(architecture or {})
    else:
        state = model.state_dict()
        arch = dict(architecture or {"width": model.encoder[-1].out_channels,
                                      "channels": [model.encoder[i].out_channels for i in (0, 2, 4)]})
    arrays = {k: v.detach().cpu().numpy().copy() for k, v in state.items()}
    return PseudoLabelTask(arrays, t, arch, median, write_anomaly)


def run_pseudolabels(
    paths: str | os.PathLike | Iterable[str | os.PathLike],
    model: Any,
    t: float,
    out_dir: str | os.PathLike,
    progress: CohortProgress | None = None,
    should_stop: ShouldStop | None = None,
    workers: int | None = None,
    write_anomaly: bool = True,
) -> CohortReport:
    """Pseudo-label every image of ``paths`` (a folder, a list file or paths) into ``out_dir``
    (5 x 5 median per slice, 5 x 5 x 5 over a stack); ``workers``: None runs serially in this
    process, N on a local dask cluster. Finished cases with the same weights and settings are
    skipped; per-case failures are in the report."""
    task = task_for(model, t, write_anomaly=write_anomaly)
    return run_cohort(cases_from(paths), task, out_dir, scheduler=None if workers is None else "local",
                      workers=workers, progress=progress, should_stop=should_stop)


def run_pseudolabel_folder(
    paths: str | os.PathLike | Iterable[str | os.PathLike], out_dir: str | os.PathLike,
    model: str | os.PathLike = "lesion-anomaly-brain", t: float | None = None,
    progress: CohortProgress | None = None, should_stop: ShouldStop | None = None,
    scheduler: str | None = None, workers: int | None = None,
) -> CohortReport:
    """Pseudo-labels with a packaged (or trained) anomaly model at its calibrated t (or ``t``);
    ``scheduler``/``workers`` as for the engine's cohort runner."""
    from medloop.plugins.lesions.zoo import load_lesion_model

    loaded = load_lesion_model(model, "anomaly")
    t = loaded.threshold if t is None else check_threshold(t)
    task = task_for(loaded.network, t, architecture=dict(loaded.card.architecture[1]), median=loaded.median)
    return run_cohort(cases_from(paths), task, out_dir, scheduler=scheduler, workers=workers,
                      progress=progress, should_stop=should_stop)
