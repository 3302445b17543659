"""Shared fixtures of the staining tests: one torch thread, the IHC set-up of spec §4."""

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
def ihc():
    from medloop.plugins.staining.deconvolution import ihc_image

    return ihc_image()


@pytest.fixture(scope="session")
def gareau_data():
    """Domain A = Gareau(sim) of region 1, B = real RGB of region 2, the paired held-out quarter."""
    from medloop.plugins.staining.deconvolution import transfer_data

    return transfer_data("gareau")
