"""The npe2 manifest validates and declares the home panel, the sample and the reader."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from medloop.app.manifest import load_manifest, method_panels


NPE2 = Path(sys.executable).with_name("npe2")


def npe2_validate(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(NPE2), "validate", *args], capture_output=True, encoding="utf-8", timeout=120)


def test_npe2_validate_passes():
    for args in (("napari-medloop",), ("--imports", "napari-medloop")):
        result = npe2_validate(*args)
        assert result.returncode == 0, result.stdout + result.stderr
        assert result.stdout.strip() == "✔ Manifest for 'medloop' valid!"


def test_npe2_validate_catches_a_broken_command(tmp_path):
    """The check above is meaningful: a manifest pointing at a missing callable fails it."""
    from importlib.resources import files

    text = (files("medloop") / "napari.yaml").read_text(encoding="utf-8")
    broken = tmp_path / "napari.yaml"
    broken.write_text(text.replace("medloop.app.gui.home:HomePanel", "medloop.app.gui.home:NoSuchPanel"))
    result = npe2_validate("--imports", str(broken))
    assert result.returncode != 0
    assert "NoSuchPanel" in result.stdout + result.stderr


def test_manifest_contributions():
    manifest = load_manifest()
    assert manifest.name == "napari-medloop"
    assert [s.key for s in manifest.contributions.sample_data] == ["brain-t1", "axons-si", "lesions-bone", "lesions-brain"]
    assert [w.display_name for w in manifest.contributions.widgets] == ["medloop", "Segmentation", "Correction", "Review", "Click to segment", "Axon tracking", "Stain transfer", "Confocal to H&E", "Normalise stain", "Train stain transfer", "Synthesize lesion", "Anomaly map"]
    assert [m.display_name for m in method_panels()] == ["Segmentation", "Correction", "Review", "Click to segment", "Axon tracking", "Stain transfer", "Confocal to H&E", "Normalise stain", "Train stain transfer", "Synthesize lesion", "Anomaly map"]  # the home panel is not a method
