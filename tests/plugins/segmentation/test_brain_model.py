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
