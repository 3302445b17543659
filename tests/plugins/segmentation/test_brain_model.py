"""The bundled brain-tissue-t1 model on held-out variants of the template (resampled, thick
slices, rotated with bias field and noise, intensity-rescaled): Dice WM >= 0.85, GM >= 0.75,
written with the input's geometry."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from medloop import write_image
from medloop.app.engine.metrics import dice_per_class
from medloop.models.variants import held_out_variants
from medloop.plugins.segmentation.method import SegmentParams, segment

GM, WM = 1, 2


@pytest.fixture(scope="module")
def variants(brain_sample):
    torch.set_num_threads(2)
    t1, tissue = brain_sample
    return held_out_variants(t1, tissue, seed=11)  # another seed than the card's report


@pytest.mark.parametrize(
    "name", ["resampled 1.5 mm", "thick slices 1x1x3 mm", "rotated 10 deg + bias + noise", "intensity x2.5 + 300"]
)
def test_dice_on_held_out_variant(variants, name):
    image, truth = variants[name]
    result = segment(image, SegmentParams("brain-tissue-t1", device="cpu"))
    assert result.labels.shape == image.shape and result.labels.affine_xyz().tolist() == image.affine_xyz().tolist()
    dice = dice_per_class(np.asarray(result.labels.array), np.asarray(truth.array), 3)
    assert dice[WM] >= 0.85, dice
    assert dice[GM] >= 0.75, dice


def test_cli_segment_thick_slices_keeps_geometry(cli, variants, tmp_path):
    image, truth = variants["thick slices 1x1x3 mm"]
    source = write_image(image, tmp_path / "t1_thick.nii.gz")
    out = tmp_path / "tissue.nii.gz"
    result = cli("segment", str(source), "-o", str(out), "--model", "brain-tissue-t1", "--device", "cpu", timeout=600)
    assert result.returncode == 0, result.stderr
    ref, seg = sitk.ReadImage(str(source)), sitk.ReadImage(str(out))
    assert seg.GetSize() == ref.GetSize()
    for getter in ("GetSpacing", "GetOrigin", "GetDirection"):
        np.testing.assert_allclose(getattr(seg, getter)(), getattr(ref, getter)(), atol=1e-6, rtol=0)
    dice = dice_per_class(sitk.GetArrayFromImage(seg), np.asarray(truth.array), 3)
    assert dice[WM] >= 0.85 and dice[GM] >= 0.75
    assert "grey matter:" in result.stdout and " mL" in result.stdout


def test_2d_slice_and_png_through_the_slice_model(cli, brain_sample, tmp_path):
    """A 2-D image (one axial slice in mm, or a PNG in pixels) goes through the slice-by-slice
    model as a 2-D image: the labels match the same slice segmented inside the volume."""
    from PIL import Image

    from medloop.app.io.image import MedImage
    from medloop.app.io.read import read_image

    t1, _ = brain_sample
    z = 47
    in_volume = np.asarray(segment(t1, SegmentParams("brain-tissue-t1", device="cpu")).labels.array)[z]
    plane = np.asarray(t1.array)[z].astype(np.float32)
    path = write_image(MedImage(plane, spacing=(2.0, 2.0), origin=(0.0, 0.0), direction=np.eye(2)), tmp_path / "slice.nii.gz")
    result = cli("segment", str(path), "-o", str(tmp_path / "labels.nii.gz"), "--model", "brain-tissue-t1", "--device", "cpu")
    assert result.returncode == 0 and result.stderr == ""
    labels = read_image(tmp_path / "labels.nii.gz")
    assert labels.shape == plane.shape and labels.spacing == (2.0, 2.0)
    dice = dice_per_class(np.asarray(labels.array), in_volume, 3)
    assert dice[1] > 0.92 and dice[2] > 0.92, dice  # per-slice intensity normalisation differs a little
    png = tmp_path / "slice.png"
    Image.fromarray(np.round(plane / plane.max() * 255).astype(np.uint8)).save(png)
    result = cli("segment", str(png), "-o", str(tmp_path / "png_labels.nii.gz"), "--model", "brain-tissue-t1", "--device", "cpu")
    assert result.returncode == 0, result.stderr
    from_png = read_image(tmp_path / "png_labels.nii.gz")
    assert from_png.shape == plane.shape  # a pixel image keeps its own grid
    dice = dice_per_class(np.asarray(from_png.array), in_volume, 3)
    assert dice[1] > 0.9 and dice[2] > 0.9
