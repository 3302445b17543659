"""Segment a cohort: :func:`segment` on every case through the engine's cohort runner.

Each worker (or the one process of a serial run) builds the network once; each case is read,
segmented and written as ``<id>.nii.gz`` (labels on the input's exact grid), with
``<id>_probabilities.nii.gz`` when asked, and the runner's ``<id>.json`` sidecar.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Iterable

from medloop.app.engine.cohort import Case, CohortProgress, CohortReport, CohortTask, cases_from, run_cohort
from medloop.app.engine.jobs import ShouldStop
from medloop.plugins.segmentation.method import SegmentParams

# How it runs, not what it computes: a change of these does not recompute finished cases.
EXECUTION_PARAMS = ("model", "models_dir", "device", "batch_size", "num_threads")


@dataclass(frozen=True)
class SegmentTask(CohortTask):
    """:func:`~medloop.plugins.segmentation.method.segment` as a cohort task."""

    params: SegmentParams

    def fingerprint(self) -> dict[str, Any]:
        """The model(s) by name, version and weights sha256, and the parameters that change the
        labels (the models folder, device, batch size and threads do not count)."""
        from medloop.models.registry import get_model

        def model(name: str) -> dict[str, Any]:
            card = get_model(name, self.params.models_dir).card
            return {"name": card.name, "version": card.version, "weights_sha256": card.weights_sha256}

        params = {k: v for k, v in asdict(self.params).items() if k not in EXECUTION_PARAMS}
        params["cascade"] = model(self.params.cascade) if self.params.cascade else None
        return {"task": "segment", "model": model(self.params.model), "params": params}

    def load(self) -> tuple[Any, Any]:
        """The network (and with ``cascade`` the fine one) on the chosen device, as ``segment`` builds it."""
        from medloop.app.engine.devices import choose_device
        from medloop.models.registry import build_model, get_model

        device = choose_device(self.params.device)
        network = build_model(get_model(self.params.model, self.params.models_dir), device)
        fine = build_model(get_model(self.params.cascade, self.params.models_dir), device) if self.params.cascade else None
        return network, fine

    def run(self, case: Case, state: tuple[Any, Any], out_dir: Path) -> dict[str, Any]:
        import numpy as np

        from medloop.app.io.read import read_image
        from medloop.app.io.write import write_image
        from medloop.plugins.segmentation.method import segment

        network, fine = state
        result = segment(read_image(case.path), self.params, network=network, fine_network=fine)
        outputs = [write_image(result.labels, out_dir / f"{case.id}.nii.gz").name]
        if result.probabilities is not None:
            outputs.append(write_image(result.probabilities, out_dir / f"{case.id}_probabilities.nii.gz").name)
        counts = np.bincount(np.asarray(result.labels.array).ravel(), minlength=len(result.provenance["classes"]))
        return {
            "outputs": outputs,
            "voxels": {name: int(counts[k]) for k, name in result.provenance["classes"].items()},
            "device": result.provenance["device"],
        }


def segment_cohort(
    inputs: str | os.PathLike | Iterable[str | os.PathLike] | Iterable[Case],
    out_dir: str | os.PathLike,
    params: SegmentParams,
    *,
    scheduler: str | None = None,
    workers: int | None = None,
    progress: CohortProgress | None = None,
    should_stop: ShouldStop | None = None,
) -> CohortReport:
    """Segment every image of ``inputs`` (a folder, a list file, paths or cases) into ``out_dir``.

    ``scheduler``: None (serial, in this process), ``"local"`` (``workers`` processes) or a dask
    scheduler address. Finished cases with the same model and parameters are skipped; failures
    are listed in the report. Raises what :func:`~medloop.app.engine.cohort.run_cohort` raises,
    and ``ModelNotFoundError`` before anything starts when the model is not registered.
    """
    items = list(inputs) if not isinstance(inputs, (str, os.PathLike)) else inputs
    if isinstance(items, list) and items and all(isinstance(i, Case) for i in items):
        cases = items
    else:
        cases = cases_from(items)
    if params.num_threads is None and scheduler == "local":  # each local worker its share of the cores
        from dataclasses import replace

        from medloop.app.engine.devices import available_cores

        params = replace(params, num_threads=max(1, available_cores() // max(1, int(workers or 2))))
    return run_cohort(
        cases, SegmentTask(params), out_dir,
        scheduler=scheduler, workers=workers, progress=progress, should_stop=should_stop,
    )
