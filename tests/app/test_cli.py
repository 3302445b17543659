"""The `medloop` console script: version, info, one-line errors with exit code 2."""

from __future__ import annotations

import json
import os
import re

import numpy as np
import SimpleITK as sitk

from medloop import __version__
from medloop.app.io.read import supported_suffixes
from medloop.app.samples import sample_path

SUPPORTED = ", ".join(supported_suffixes())


def test_version(cli):
    result = cli("--version")
    assert result.returncode == 0
    assert result.stdout.strip() == f"medloop {__version__}"


def test_info_on_sample_prints_its_geometry(cli):
    path = sample_path("t1")
    result = cli("info", str(path))
    assert result.returncode == 0, result.stderr
    lines = dict(re.split(r"\s{2,}", line, maxsplit=1) for line in result.stdout.splitlines())
    assert lines["spacing"] == "2.0 2.0 2.0 mm (x, y, z)"
    assert lines["shape"] == "95 x 117 x 99 (z, y, x)"
    assert lines["dtype"] == "int16"


def test_info_json_matches_simpleitk(cli):
    path = sample_path("tissue")
    result = cli("info", "--json", str(path))
    record = json.loads(result.stdout)
    ref = sitk.ReadImage(str(path))
    assert record["spacing"] == list(ref.GetSpacing())
    assert record["origin"] == list(ref.GetOrigin())
    np.testing.assert_array_equal(np.asarray(record["direction"]).ravel(), ref.GetDirection())
    assert record["shape"] == list(ref.GetSize())[::-1]


def test_info_on_missing_path_is_one_line_exit_2(cli):
    result = cli("info", "/nonexistent")
    assert result.returncode == 2
    assert result.stdout == ""
    assert result.stderr == "medloop: error: cannot read /nonexistent: no such file or folder; check the path\n"


def test_info_on_bad_files_is_one_line_exit_2(cli, tmp_path):
    empty = tmp_path / "empty.nii.gz"
    empty.write_bytes(b"")
    garbage = tmp_path / "garbage.nii.gz"
    garbage.write_bytes(np.random.default_rng(0).bytes(4096))
    text = tmp_path / "notes.txt"
    text.write_text("hello")
    expected = {
        empty: f"medloop: error: cannot read {empty}: the file is empty; re-export or copy it again",
        text: f"medloop: error: cannot read {text}: unsupported file type '.txt'; supported: {SUPPORTED}",
    }
    for path in (empty, garbage, text):
        result = cli("info", str(path))
        assert result.returncode == 2
        assert len(result.stderr.splitlines()) == 1, result.stderr
        assert "Traceback" not in result.stderr
        if path in expected:
            assert result.stderr.strip() == expected[path]
        else:
            assert result.stderr == (
                f"medloop: error: cannot read {path}: not a NIfTI file (unrecognised or corrupt header); "
                "check that this is an image and that it is not damaged\n"
            )


def test_usage_errors_are_one_line_exit_2(cli):
    for args in (("frobnicate",), ("info",), ("demo", "--screenshot")):
        result = cli(*args)
        assert result.returncode == 2, args
        assert len(result.stderr.splitlines()) == 1, result.stderr
        assert result.stderr.startswith("medloop: error: ")


def test_demo_screenshot_into_missing_folder_is_refused(cli, tmp_path):
    target = tmp_path / "missing" / "shot.png"
    result = cli("demo", "--screenshot", str(target))
    assert result.returncode == 2
    assert result.stderr == (
        f"medloop: error: cannot write screenshot {target}: folder does not exist; create it first\n"
    )
    assert not target.exists()


def test_gui_reports_bad_paths_before_opening_a_window(cli):
    result = cli("gui", "/nonexistent.nii.gz")
    assert result.returncode == 2
    assert result.stderr == "medloop: error: cannot read /nonexistent.nii.gz: no such file or folder; check the path\n"


def test_gui_without_a_display_is_one_line_exit_2(cli):
    env = {k: v for k, v in os.environ.items() if k not in ("DISPLAY", "WAYLAND_DISPLAY")}
    for args in ((), ("gui", str(sample_path("t1"))), ("demo",)):
        result = cli(*args, env=env)
        assert result.returncode == 2, args
        assert result.stderr == (
            "medloop: error: no display to open a window on; run from a desktop session, "
            "or render headless with 'medloop demo --screenshot PNG'\n"
        )
