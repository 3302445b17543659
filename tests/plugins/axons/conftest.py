"""Shared fixtures of the axon-tracker tests: one torch thread, the fixed validation set."""

from __future__ import annotations

import pytest


@pytest.fixture(autouse=True, scope="session")
def one_torch_thread():
    """These small nets are slower with more threads, and the tests share the machine."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def validation_axons():
    """The 30 fixed-seed 64 x 64 SI validation images of the small-scale run (spec §C)."""
    from medloop.plugins.axons.ppo import VALIDATION_SEED
    from medloop.plugins.axons.synth import make_batch

    return make_batch(30, 64, "SI", VALIDATION_SEED)
