"""Cohort test data: seeded volumes with oblique geometry, and a cheap task that workers import.

Importable by dask workers (the repository root on their PYTHONPATH), so the task pickles by
reference; no torch, no plugin.
"""

from __future__ import annotations

import os
import signal
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from medloop.app.engine.cohort import Case, CohortTask
from medloop.app.io.image import MedImage
from tests.app.io.synth import OBLIQUE

SHAPE = (24, 32, 32)
SPACING = (2.5, 0.9, 1.1)
ORIGIN = (-30.0, 12.5, 7.25)


def volume(seed: int) -> MedImage:
    data = np.random.default_rng(seed).random(SHAPE).astype(np.float32)
    return MedImage(data, spacing=SPACING, origin=ORIGIN, direction=OBLIQUE)


def write_volumes(folder: Path, n: int = 6) -> list[Path]:
    """``case0.nii.gz`` .. ``case{n-1}.nii.gz``: uniform noise in [0, 1), seeds 0..n-1."""
    from medloop.app.io.write import write_image

    folder.mkdir(parents=True, exist_ok=True)
    return [write_image(volume(i), folder / f"case{i}.nii.gz") for i in range(n)]


@dataclass(frozen=True)
class ThresholdTask(CohortTask):
    """Labels = input > ``threshold``. ``load`` appends its pid to ``log`` (to count loads per
    process). With ``kill_marker``, the process running ``kill_case`` first (never the test's own,
    ``parent_pid``) starts an atomic write, then SIGKILLs itself: a worker dying mid-case."""

    log: str
    threshold: float = 0.5
    parent_pid: int = 0
    kill_marker: str | None = None
    kill_case: str = "case2"
    sleep: float = 0.0

    def fingerprint(self) -> dict:
        return {"task": "threshold", "threshold": self.threshold}

    def load(self) -> dict:
        with open(self.log, "a", encoding="utf-8") as f:
            f.write(f"{os.getpid()}\n")
        return {"threshold": self.threshold}

    def run(self, case: Case, state: dict, out_dir: Path) -> dict:
        from medloop.app.io.atomic import atomic_target
        from medloop.app.io.read import read_image
        from medloop.app.io.write import write_image

        image = read_image(case.path)
        time.sleep(self.sleep)
        if self._should_die(case):
            Path(self.kill_marker).write_text(str(os.getpid()))
            with atomic_target(out_dir / f"{case.id}.nii.gz", suffix=".nii.gz") as tmp:
                Path(tmp).write_bytes(b"half a volume")
                os.kill(os.getpid(), signal.SIGKILL)
        labels = (np.asarray(image.array) > state["threshold"]).astype(np.uint8)
        out = write_image(image.with_array(labels), out_dir / f"{case.id}.nii.gz")
        return {"outputs": [out.name], "bright": int(labels.sum()), "malloc_trim": os.environ.get("MALLOC_TRIM_THRESHOLD_")}

    def _should_die(self, case: Case) -> bool:
        return (
            self.kill_marker is not None and case.id == self.kill_case and os.getpid() != self.parent_pid
            and not Path(self.kill_marker).exists()
        )


def loads(log: Path) -> list[int]:
    """The pids that called ``ThresholdTask.load``, one per call."""
    return [int(line) for line in log.read_text().split()] if log.exists() else []
