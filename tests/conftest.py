"""Shared fixtures: the CLI as a subprocess, the packaged sample."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

MEDLOOP = Path(sys.executable).with_name("medloop")


def run_cli(*args: str, timeout: float = 120, **kwargs) -> subprocess.CompletedProcess:
    """Run the installed ``medloop`` console script."""
    return subprocess.run([str(MEDLOOP), *args], capture_output=True, encoding="utf-8", timeout=timeout, **kwargs)


@pytest.fixture
def cli():
    return run_cli


@pytest.fixture(scope="session")
def brain_sample():
    from medloop.app.samples import load_brain_sample

    return load_brain_sample()


@pytest.fixture(autouse=True)
def _user_annotation_folder(tmp_path_factory, monkeypatch):
    """Annotations that belong in the per-user data folder (packaged samples, read-only places)
    go to a temporary folder in tests, never into the tester's own data folder."""
    from medloop.app.io import autosave

    folder = tmp_path_factory.mktemp("user-annotations")
    monkeypatch.setattr(autosave, "_user_annotation_folder", lambda: folder)
    return folder


@pytest.fixture(autouse=True)
def _precision_cache(tmp_path_factory, monkeypatch):
    """The per-machine precision checks (issue #20) are cached in a temporary folder in tests."""
    from medloop.app.engine import precision

    path = tmp_path_factory.mktemp("precision-cache") / precision.CACHE_NAME
    monkeypatch.setattr(precision, "_cache_path", lambda: path)
    return path


def pytest_addoption(parser):
    parser.addoption("--run-slow", action="store_true", help="also run the long training checks marked `slow`")


def pytest_collection_modifyitems(config, items):
    """``slow`` tests (long training checks, minutes each) are skipped unless ``--run-slow`` is given:
    the README's test command stays the CI run, and `pytest -m slow --run-slow` runs only them."""
    if config.getoption("--run-slow"):
        return
    skip = pytest.mark.skip(reason="long training check: run with --run-slow (see README, Tests)")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(autouse=True)
def _qt_objects_die_on_the_gui_thread(request):
    """After a Qt test (pytest-qt has closed its widgets by then): let its background jobs end,
    deliver their queued signals, and collect its garbage here, on the GUI thread. Otherwise a
    Qt object left in a reference cycle is freed by whichever thread next triggers a collection
    (an autosave or worker thread of a later test) and Qt crashes there; a CI run segfaulted in
    a Correction layout test this way. Only Qt tests pay for the collection (~0.2 s each)."""
    yield
    if "qtbot" not in request.fixturenames:
        return
    import gc

    from qtpy.QtCore import QThreadPool
    from qtpy.QtWidgets import QApplication

    QThreadPool.globalInstance().waitForDone(60_000)  # superqt's workers run in the global pool
    QApplication.processEvents()
    gc.collect()
    QApplication.processEvents()  # deleteLater() of what the collection released
