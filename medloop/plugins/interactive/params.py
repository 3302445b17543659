"""The settings of an interactive session, all in millimetres or intensity units (never voxels)."""

from __future__ import annotations

from dataclasses import dataclass

ENGINES = ("auto", "classical", "learned")


@dataclass(frozen=True)
class InteractiveParams:
    """What a :class:`~medloop.plugins.interactive.session.PromptSession` does with prompts.

    ``label`` is the value written for the object in the target labels; ``lock_other_classes``
    keeps every voxel of another non-zero value untouched (R4). ``tolerance`` scales how far the
    local threshold's range reaches from the click's intensity toward its neighbouring classes
    (2.5: to where the two are equally likely). The region of interest starts as a ``first_roi_mm`` cube
    around the first click (a box x ``box_margin``) and grows x ``grow`` while the object
    touches a face that is not an image face; past ``budget_voxels`` (None: the engine's own)
    the engine runs on a grid zoomed out to fit, and a 2-voxel band is refined at native
    resolution. The guard refuses a step that grows the object more than ``max_growth`` times
    (unless ``confirm_growth``), a negative prompt that adds voxels, and a positive one that
    removes more than ``max_positive_loss`` of the object.
    """

    engine: str = "auto"
    label: int = 1
    lock_other_classes: bool = True
    tolerance: float = 2.5
    seed_radius_mm: float = 3.0
    opening_mm: float = 0.0
    first_roi_mm: float = 48.0
    box_margin: float = 1.5
    grow: float = 1.5
    budget_voxels: int | None = None
    max_growth: float = 5.0
    confirm_growth: bool = False
    max_positive_loss: float = 0.02
    ring_mm: float = 2.0
    allow_disabled: bool = False

    def validate(self) -> "InteractiveParams":
        """Raise :class:`~medloop.plugins.interactive.prompts.PromptError` naming a bad setting."""
        from medloop.plugins.interactive.prompts import PromptError

        if self.engine not in ENGINES:
            raise PromptError(f"unknown engine {self.engine!r}; choose one of {', '.join(ENGINES)}")
        if not 1 <= int(self.label) <= 65535:
            raise PromptError(f"the object's label value must be 1-65535, got {self.label}")
        checks = {
            "tolerance": self.tolerance > 0, "seed_radius_mm": self.seed_radius_mm > 0,
            "first_roi_mm": self.first_roi_mm > 0, "grow": self.grow > 1, "max_growth": self.max_growth > 1,
            "opening_mm": self.opening_mm >= 0, "ring_mm": self.ring_mm >= 0, "box_margin": self.box_margin >= 1,
        }
        bad = [k for k, ok in checks.items() if not ok]
        if bad:
            raise PromptError(f"invalid interactive setting {bad[0]}={getattr(self, bad[0])}")
        if self.budget_voxels is not None and self.budget_voxels < 4096:
            raise PromptError(f"the voxel budget must be at least 4096, got {self.budget_voxels}")
        return self
