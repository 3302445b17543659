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
def _qt_objects_die_between_tests(request):
    """Qt tests run with the cyclic garbage collector off and collect once they are over, after
    their background jobs ended and their queued signals were delivered. A widget kept alive by
    a reference cycle (a slot capturing its owner; pytest-qt holds only a weak reference) is
    otherwise freed whenever the collector fires: inside ``processEvents`` while Qt dispatches to
    it, or on an autosave or worker thread, and Qt crashes there (a CI run segfaulted in a
    Correction layout test; equinor/ert#14421 describes the same). Non-Qt tests are untouched."""
    import gc

    qt = "qtbot" in request.fixturenames
    if qt:
        gc.disable()
    try:
        yield
    finally:
        if qt:
            from qtpy.QtCore import QThreadPool
            from qtpy.QtWidgets import QApplication

            QThreadPool.globalInstance().waitForDone(60_000)  # superqt's workers run in the global pool
            QApplication.processEvents()
            gc.enable()
            gc.collect()
            QApplication.processEvents()  # deleteLater() of what the collection released
