"""Pseudo-label folders keep the input's geometry exactly and label r >= t."""

from __future__ import annotations

import numpy as np

from medloop.app.io.image import MedImage
from medloop.app.io.read import read_image
from medloop.app.io.write import write_image
from medloop.plugins.lesions.anomaly import SpatialAutoencoder
from medloop.plugins.lesions.pseudolabels import run_pseudolabels
from medloop.plugins.lesions.residual import anomaly_map, threshold_map


def test_pseudolabel_folder_keeps_geometry_and_labels(tmp_path):
    import torch

    torch.manual_seed(0)
    model = SpatialAutoencoder()
    rng = np.random.default_rng(0)
    src = tmp_path / "in"
    src.mkdir()
    stack = rng.random((3, 24, 40), dtype=np.float32)
    direction = np.array([[0.0, 1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0]])
    write_image(MedImage.from_array(stack, spacing=(2.5, 0.75, 0.5), origin=(-10.25, 3.5, 7.0), direction=direction),
                src / "case3d.nii.gz")
    write_image(MedImage.from_array(stack[0], spacing=(0.8, 0.6), origin=(1.5, -2.0)), src / "case2d.nii.gz")
    t = 0.05
    report = run_pseudolabels(src, model, t, tmp_path / "out")
    assert report.failed == {} and sorted(report.computed) == ["case2d", "case3d"]
    for case in ("case2d", "case3d"):
        source = read_image(src / f"{case}.nii.gz")
        labels = read_image(tmp_path / "out" / f"{case}_labels.nii.gz")
        anomaly = read_image(tmp_path / "out" / f"{case}_anomaly.nii.gz")
        for out in (labels, anomaly):
            assert out.shape == source.shape and out.spacing == source.spacing and out.origin == source.origin
            assert np.array_equal(out.direction, source.direction)
        expected = threshold_map(anomaly_map(model, np.asarray(source.array)), t)
        assert labels.dtype == np.uint8 and np.array_equal(np.asarray(labels.array), expected)
        assert 0 < int(expected.sum()) < expected.size
    again = run_pseudolabels(src, model, t, tmp_path / "out")
    assert sorted(again.skipped) == ["case2d", "case3d"]
