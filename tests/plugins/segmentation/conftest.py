"""Fixtures shared by the segmentation cohort tests."""

from __future__ import annotations

import pytest

from medloop.models.registry import register_model
from tests.models.tiny import make_tiny_model


@pytest.fixture(scope="module")
def zoo(tmp_path_factory):
    """A models folder holding ``tiny-threshold`` (3-D). Seed 3 labels about 40 % of uniform
    noise bright: label maps with both classes everywhere."""
    root = tmp_path_factory.mktemp("zoo")
    weights, card = make_tiny_model(root / "src", seed=3)
    register_model(weights, card, root / "zoo")
    return root / "zoo"
