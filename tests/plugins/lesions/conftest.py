"""Shared fixtures of the lesion tests: a deterministic stand-in translator."""

import numpy as np
import pytest


class DarkDisc:
    """Darkens a disc of radius 6 px at the centre of each 32-px patch by 0.3 (a lytic lesion)."""

    name = "dark-disc"
    size = 32

    def translate(self, patches, seed=0):
        yy, xx = np.mgrid[: self.size, : self.size]
        disc = ((yy - 15.5) ** 2 + (xx - 15.5) ** 2) < 36
        return np.clip(np.asarray(patches) - 0.3 * disc, 0, 1).astype(np.float32)


@pytest.fixture
def dark_disc():
    return DarkDisc()
