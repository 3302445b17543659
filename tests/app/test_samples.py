"""The packaged brain sample: geometry, classes, size, integrity check."""

from __future__ import annotations

import shutil

import numpy as np
import pytest

from medloop.app import samples
from medloop.app.errors import ResourceError


def test_sample_geometry_and_classes(brain_sample):
    t1, tissue = brain_sample
    assert t1.spacing == (2.0, 2.0, 2.0)
    assert tissue.shape == t1.shape == (95, 117, 99)
    assert tissue.origin == t1.origin
    np.testing.assert_array_equal(tissue.direction, t1.direction)
    assert set(np.unique(tissue.array).tolist()) == {0, 1, 2}
    # Tissue lies where the T1 has signal: the labelled voxels are brighter than the background.
    assert t1.array[tissue.array > 0].mean() > 10 * max(1.0, t1.array[tissue.array == 0].mean())
    # White matter is brighter than grey matter on T1.
    assert t1.array[tissue.array == 2].mean() > t1.array[tissue.array == 1].mean()


def test_sample_is_small():
    total = sum(p.stat().st_size for p in samples.sample_dir().iterdir())
    assert total < 1_000_000


def test_damaged_sample_is_reported(tmp_path, monkeypatch):
    copy = tmp_path / "sample"
    shutil.copytree(samples.sample_dir(), copy)
    path = copy / samples.sample_manifest()["files"]["tissue"]["name"]
    data = bytearray(path.read_bytes())
    data[100] ^= 0xFF
    path.write_bytes(bytes(data))
    monkeypatch.setattr(samples, "sample_dir", lambda: copy)
    with pytest.raises(ResourceError, match=r"mni152_tissue_2mm.nii.gz is damaged \(sha256 mismatch\); reinstall medloop"):
        samples.sample_path("tissue")


def test_sample_layers_carry_spacing_and_class_names():
    (t1, t1_kwargs, t1_type), (tissue, tissue_kwargs, tissue_type) = samples.brain_sample_layers()
    assert (t1_type, tissue_type) == ("image", "labels")
    assert t1_kwargs["scale"] == tissue_kwargs["scale"] == (2.0, 2.0, 2.0)
    assert tissue_kwargs["metadata"]["classes"] == {0: "background", 1: "grey matter", 2: "white matter"}
