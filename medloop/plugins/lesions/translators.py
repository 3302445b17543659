"""What turns a healthy patch into a lesion patch: one small interface, several translators.

Gupta et al. used UNIT (``medloop.plugins.lesions.unit``); Xia et al.'s mask-conditioned R and
MUNIT-style style sampling (XLSor) plug in later by implementing :class:`Translator`. The
:class:`IdentityTranslator` is the benchmark's negative control: the untranslated patch pasted
with the same blend, so any gain it shows comes from "more positives", not from lesions.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import numpy as np


@runtime_checkable
class Translator(Protocol):
    """A patch translator: ``translate`` maps (N, size, size) float32 healthy patches in [0, 1]
    to lesion patches of the same shape and range; the same ``seed`` gives the same output."""

    name: str
    size: int

    def translate(self, patches: np.ndarray, seed: int = 0) -> np.ndarray: ...


class IdentityTranslator:
    """Returns the patches unchanged (the identity-paste control)."""

    name = "identity"

    def __init__(self, size: int = 32) -> None:
        self.size = int(size)

    def translate(self, patches: np.ndarray, seed: int = 0) -> np.ndarray:
        return np.asarray(patches, dtype=np.float32).copy()
