"""The robust brain model ``brain-tissue`` (v2, SynthSeg-style; spec robust-brain §9) through
``segment()`` on files' worth of held-out variants of the sample, made with other seeds than the
training's: noise everywhere (A1), the card's four variants (A2), empty, near-empty and constant
slices (A7) — the must-pass set — and the contrast, resolution, bias and skull checks it claims."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import ndimage

from medloop.app.engine.metrics import dice_per_class
from medloop.models.variants import held_out_variants, robustness_variants
from medloop.plugins.segmentation.method import SegmentParams, segment

GM, WM = 1, 2
MODEL = "brain-tissue"


@pytest.fixture(scope="module")
def variants(brain_sample):
    torch.set_num_threads(2)
    t1, tissue = brain_sample
    return {**held_out_variants(t1, tissue, seed=11), **robustness_variants(t1, tissue, seed=31)}


def run(variants, name):
    image, truth = variants[name]
    result = segment(image, SegmentParams(MODEL, device="cpu"))
    assert result.labels.shape == image.shape
    assert result.labels.affine_xyz().tolist() == image.affine_xyz().tolist()
    pred = np.asarray(result.labels.array)
    return pred, dice_per_class(pred, np.asarray(truth.array), 3)


@pytest.mark.parametrize("name", ["rotated 10 deg + noise 2 % everywhere", "Rician noise 3 %"])
def test_a1_noise_everywhere(variants, name):
    _, dice = run(variants, name)
    assert dice[GM] >= 0.85 and dice[WM] >= 0.85, dice


@pytest.mark.parametrize(
    "name", ["resampled 1.5 mm", "thick slices 1x1x3 mm", "rotated 10 deg + bias + noise", "intensity x2.5 + 300"]
)
def test_a2_the_cards_variants(variants, name):
    _, dice = run(variants, name)
    assert dice[GM] >= 0.85 and dice[WM] >= 0.85, dice


def test_a7_no_tissue_in_empty_ripple_or_constant_slices(variants):
    pred, _ = run(variants, "12 empty + 12 ripple slices")
    assert int((pred[:12] > 0).sum() + (pred[-12:] > 0).sum()) <= 10
    pred, _ = run(variants, "12 constant slices 1e-5..0.3 of WM")
    assert int((pred[:12] > 0).sum()) <= 10


@pytest.mark.parametrize("name", ["T2-like", "T2-like + noise 2 %"])
def test_a3_t2_like_contrast(variants, name):
    _, dice = run(variants, name)
    assert dice[GM] >= 0.80 and dice[WM] >= 0.80, dice


@pytest.mark.parametrize("name", ["axial 2x2x6 mm", "4 mm isotropic", "bias exp(N(0, 0.4^2)) + noise 2 %"])
def test_a4_a5_resolution_and_strong_bias(variants, name):
    _, dice = run(variants, name)
    assert dice[GM] >= 0.80 and dice[WM] >= 0.80, dice


def test_a6_head_with_skull(variants):
    name = "T1 head with skull, Rician 2 %"
    pred, dice = run(variants, name)
    image, truth = variants[name]
    brain = ndimage.binary_fill_holes(ndimage.binary_closing(np.asarray(truth.array) > 0, iterations=2))
    outside_ml = ((pred > 0) & ~ndimage.binary_dilation(brain)).sum() * np.prod(image.spacing) / 1000
    assert outside_ml <= 10.0, outside_ml
    assert dice[GM] >= 0.80 and dice[WM] >= 0.80, dice


def test_a8_real_small_field_of_view(cli, tmp_path):
    """nibabel's ``anatomical.nii``: a real brain cropped to 50x82x66 mm with no background. Against
    the MNI labels resampled into its box (it is SPM-normalised): Dice >= 0.55 per class, grey
    matter within +-30 % of the prior's 105 mL, white matter brighter than grey (T1). Its WM volume
    (93 mL) stays under the prior's 141 mL - 30 % (README: known limits)."""
    import os

    import nibabel
    import SimpleITK as sitk

    from medloop.app.samples import sample_path

    path = os.path.join(os.path.dirname(nibabel.__file__), "tests", "data", "anatomical.nii")
    out = tmp_path / "tissue.nii.gz"
    result = cli("segment", path, "-o", str(out), "--model", MODEL, "--device", "cpu")
    assert result.returncode == 0, result.stderr
    pred = sitk.GetArrayFromImage(sitk.ReadImage(str(out)))
    prior = sitk.GetArrayFromImage(sitk.Resample(
        sitk.ReadImage(str(sample_path("tissue"))), sitk.ReadImage(path), sitk.Transform(), sitk.sitkNearestNeighbor, 0))
    image = sitk.GetArrayFromImage(sitk.ReadImage(path))
    dice = dice_per_class(pred, prior, 3)
    assert dice[GM] >= 0.55 and dice[WM] >= 0.55, dice
    ml = 8 / 1000  # 2 mm voxels
    assert 0.7 * 104.9 <= (pred == GM).sum() * ml <= 1.3 * 104.9
    assert np.median(image[pred == WM]) > np.median(image[pred == GM])
