"""Losses on hand-made tensors: exact values, ignored voxels, and the boundary-loss spec (BL-1, BL-2)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import ndimage
from torch.nn import functional as F

from medloop.app.engine.losses import (
    BoundaryLossSchedule,
    boundary_alpha,
    boundary_loss,
    generalised_dice_loss,
    multiclass_iou_loss,
    signed_distance_map,
    soft_dice_loss,
    weighted_cross_entropy,
)

torch.set_num_threads(1)

BIG = 50.0  # softmax of +-50 is exactly one-hot in float32


def confident(labels: torch.Tensor, k: int) -> torch.Tensor:
    """Logits (N, K, *spatial) that predict ``labels`` with probability 1."""
    return (F.one_hot(labels, k).movedim(-1, 1).float() * 2 - 1) * BIG


TARGET = torch.tensor([[[0, 0, 1, 1], [0, 2, 2, 1]]])  # (1, 2, 4), classes 0..2


def disk(radius: float, size: int = 33) -> np.ndarray:
    yy, xx = np.mgrid[:size, :size] - size // 2
    return yy**2 + xx**2 <= radius**2


# --- Dice and IoU ------------------------------------------------------------------------------------


@pytest.mark.parametrize("loss", [soft_dice_loss, multiclass_iou_loss, generalised_dice_loss])
def test_perfect_prediction_gives_zero(loss):
    assert loss(confident(TARGET, 3), TARGET).item() == pytest.approx(0, abs=1e-6)


@pytest.mark.parametrize("loss", [soft_dice_loss, multiclass_iou_loss, generalised_dice_loss])
def test_fully_wrong_prediction_gives_one(loss):
    wrong = (TARGET + 1) % 3
    assert loss(confident(wrong, 3), TARGET).item() == pytest.approx(1, abs=1e-5)


def test_dice_and_iou_intermediate_case_match_the_formulas():
    # Binary, 4 voxels: truth (1, 1, 0, 0), foreground probabilities (0.8, 0.4, 0.3, 0).
    target = torch.tensor([[1, 1, 0, 0]])
    p = torch.tensor([[0.8, 0.4, 0.3, 0.0]])
    probs = torch.stack([1 - p, p], dim=1)
    inter, sp, sg = 0.8 + 0.4, 0.8 + 0.4 + 0.3, 2.0
    eps = 1e-5
    dice = soft_dice_loss(probs, target, activation=None, eps=eps)
    assert dice.item() == pytest.approx(1 - (2 * inter + eps) / (sp + sg + eps), abs=1e-6)
    iou = multiclass_iou_loss(probs, target, activation=None, eps=eps)
    assert iou.item() == pytest.approx(1 - (inter + eps) / (sp + sg - inter + eps), abs=1e-6)
    # With background: the mean of both classes' Dice.
    bg_inter, bg_p, bg_g = 0.7 + 1.0, 0.2 + 0.6 + 0.7 + 1.0, 2.0
    both = soft_dice_loss(probs, target, include_background=True, activation=None, eps=eps)
    expected = 1 - ((2 * inter + eps) / (sp + sg + eps) + (2 * bg_inter + eps) / (bg_p + bg_g + eps)) / 2
    assert both.item() == pytest.approx(expected, abs=1e-6)
    # From logits: a single binary logit channel is read through a sigmoid.
    logit = torch.logit(p.clamp(1e-6, 1 - 1e-6))[:, None]
    assert soft_dice_loss(logit, target).item() == pytest.approx(dice.item(), abs=1e-4)


def test_iou_averages_foreground_classes_or_joins_them():
    probs = torch.tensor([[[0.2, 0.1, 0.1], [0.8, 0.2, 0.0], [0.0, 0.7, 0.9]]])  # (1, K=3, 3 voxels)
    target = torch.tensor([[1, 2, 2]])
    iou1 = 0.8 / (1 + 1.0 - 0.8)
    iou2 = 1.6 / (2 + 1.6 - 1.6)
    per_class = multiclass_iou_loss(probs, target, activation=None, eps=0)
    assert per_class.item() == pytest.approx(1 - (iou1 + iou2) / 2, abs=1e-6)
    joint = multiclass_iou_loss(probs, target, activation=None, eps=0, average="joint")
    assert joint.item() == pytest.approx(1 - 2.4 / (3 + 2.6 - 2.4), abs=1e-6)


def test_iou_ignores_the_background_channel():
    torch.manual_seed(0)
    target = torch.randint(0, 3, (2, 5, 5))
    probs = torch.softmax(torch.randn(2, 3, 5, 5), dim=1)
    base = multiclass_iou_loss(probs, target, activation=None)
    changed = probs.clone()
    changed[:, 0] = torch.rand(2, 5, 5)  # anything at all in the background channel
    assert multiclass_iou_loss(changed, target, activation=None).item() == pytest.approx(base.item(), abs=1e-7)
    # Whereas Dice with background does see it.
    assert soft_dice_loss(changed, target, include_background=True, activation=None) != soft_dice_loss(
        probs, target, include_background=True, activation=None)


def test_generalised_dice_matches_the_two_region_formula():
    g = torch.tensor([[1.0, 1.0, 0.0, 0.0, 0.0, 0.0]])
    s = torch.tensor([[0.9, 0.5, 0.2, 0.1, 0.0, 0.3]])
    probs = torch.stack([1 - s, s], dim=1)
    w_g, w_b = 1 / g.sum() ** 2, 1 / (1 - g).sum() ** 2
    num = w_g * (g * s).sum() + w_b * ((1 - g) * (1 - s)).sum()
    den = w_g * (s + g).sum() + w_b * (2 - s - g).sum()
    expected = 1 - 2 * num / den
    got = generalised_dice_loss(probs, g.long(), activation=None)
    assert got.item() == pytest.approx(expected.item(), abs=1e-6)


def test_generalised_dice_is_finite_and_sane_on_an_empty_foreground():
    target = torch.zeros(1, 8, 8, dtype=torch.long)
    assert generalised_dice_loss(confident(target, 2), target).item() == pytest.approx(0, abs=1e-6)
    logits = torch.zeros(1, 2, 8, 8, requires_grad=True)  # p = 0.5 everywhere: a bad answer
    loss = generalised_dice_loss(logits, target)
    loss.backward()
    assert 0.9 < loss.item() <= 1 and torch.isfinite(logits.grad).all()


# --- weighted cross-entropy ------------------------------------------------------------------------


def test_weighted_ce_equals_torch_ce():
    torch.manual_seed(1)
    logits, target = torch.randn(2, 3, 4, 5), torch.randint(0, 3, (2, 4, 5))
    assert weighted_cross_entropy(logits, target).item() == pytest.approx(F.cross_entropy(logits, target).item(), rel=1e-6)
    uniform = weighted_cross_entropy(logits, target, weights=[2.0, 2.0, 2.0])
    assert uniform.item() == pytest.approx(F.cross_entropy(logits, target).item(), rel=1e-6)
    w = torch.tensor([0.2, 1.0, 5.0])
    assert weighted_cross_entropy(logits, target, weights=w).item() == pytest.approx(
        F.cross_entropy(logits, target, weight=w).item(), rel=1e-6)


def test_weighted_ce_weights_shift_the_loss_to_the_weighted_class():
    logits = torch.zeros(1, 2, 4)
    logits[0, 1, :3] = 2.0  # predicts class 1 on the first three voxels
    target = torch.tensor([[1, 1, 1, 0]])  # right on 0-2, wrong on voxel 3 (class 0)
    per_voxel = F.cross_entropy(logits, target, reduction="none")[0]
    only_bg = weighted_cross_entropy(logits, target, weights=[1.0, 0.0])
    assert only_bg.item() == pytest.approx(per_voxel[3].item())  # just the wrong background voxel
    plain = weighted_cross_entropy(logits, target)
    heavier_bg = weighted_cross_entropy(logits, target, weights=[3.0, 1.0])
    assert heavier_bg > plain  # the misclassified class now counts more
    # 'auto' = inverse frequency: 3 voxels of class 1, 1 of class 0 -> each class half the weight.
    auto = weighted_cross_entropy(logits, target, weights="auto")
    assert auto.item() == pytest.approx((per_voxel[:3].mean() + per_voxel[3]).item() / 2, rel=1e-6)
    # An absent class gets no weight and does not break 'auto'.
    three = torch.cat([logits, torch.zeros(1, 1, 4)], dim=1)
    assert torch.isfinite(weighted_cross_entropy(three, target, weights="auto"))
    with pytest.raises(ValueError, match="one value per class"):
        weighted_cross_entropy(logits, target, weights=[1.0, 2.0, 3.0])


# --- ignored voxels -----------------------------------------------------------------------------------

LOSSES = {
    "dice": lambda lg, t, w: soft_dice_loss(lg, t, weight=w),
    "dice_bg": lambda lg, t, w: soft_dice_loss(lg, t, include_background=True, weight=w),
    "iou": lambda lg, t, w: multiclass_iou_loss(lg, t, weight=w),
    "wce": lambda lg, t, w: weighted_cross_entropy(lg, t, weight=w),
    "wce_auto": lambda lg, t, w: weighted_cross_entropy(lg, t, weights="auto", weight=w),
    "gdl": lambda lg, t, w: generalised_dice_loss(lg, t, weight=w),
    "schedule": lambda lg, t, w: BoundaryLossSchedule()(lg, t, epoch=30, weight=w),
}


@pytest.mark.parametrize("name", sorted(LOSSES))
def test_ignored_voxels_get_exactly_zero_gradient_and_do_not_change_the_loss(name):
    loss_fn = LOSSES[name]
    torch.manual_seed(2)
    logits = torch.randn(2, 2, 6, 6, requires_grad=True)
    target = torch.randint(0, 2, (2, 6, 6))
    weight = (torch.rand(2, 6, 6) > 0.4).float()
    unlabelled = target.masked_fill(weight == 0, -1)  # sparse annotation: -1 where not labelled
    loss = loss_fn(logits, unlabelled, weight)
    loss.backward()
    ignored = (weight == 0).unsqueeze(1).expand_as(logits)
    assert torch.count_nonzero(logits.grad[ignored]) == 0
    assert torch.count_nonzero(logits.grad[~ignored]) > 0
    # Whatever the ignored voxels predict or are labelled, the loss is the same (boundary loss
    # excepted: its phi is computed from the whole map, so relabelling moves the contour).
    if name != "schedule":
        other = logits.detach() + 10 * torch.randn_like(logits) * ignored
        relabelled = torch.where(weight == 0, 1 - target, target)
        assert loss_fn(other, relabelled, weight).item() == pytest.approx(loss.item(), abs=1e-6)


def test_everything_ignored_gives_zero_loss_and_zero_gradient():
    logits = torch.randn(1, 2, 4, 4, requires_grad=True)
    target = torch.zeros(1, 4, 4, dtype=torch.long)
    weight = torch.zeros(1, 4, 4)
    total = sum(fn(logits, target, weight) for fn in LOSSES.values() if fn is not LOSSES["schedule"])
    total.backward()
    assert total.item() == 0 and torch.count_nonzero(logits.grad) == 0


# --- boundary loss: BL-1, BL-2 ---------------------------------------------------------------------


def lb(mask_or_probs: np.ndarray, phi: np.ndarray) -> float:
    return boundary_loss(torch.from_numpy(mask_or_probs.astype(np.float32))[None], torch.from_numpy(phi)[None]).item()


def test_bl1_phi_signs_and_empty_mask():
    truth = disk(8)
    phi = signed_distance_map(truth)
    assert (phi[truth] < 0).all() and (phi[~truth] > 0).all()
    assert phi.dtype == np.float32 and phi.shape == truth.shape
    # Half a voxel from the contour on both sides of a straight edge.
    edge = np.zeros((6, 6), bool)
    edge[:, :3] = True
    assert signed_distance_map(edge)[0].tolist() == [-2.5, -1.5, -0.5, 0.5, 1.5, 2.5]
    assert not signed_distance_map(np.zeros((9, 9), bool)).any()
    assert not signed_distance_map(np.zeros((4, 5, 6), bool)).any()  # any number of axes
    assert signed_distance_map(disk(3, 9)[None].repeat(3, 0)).shape == (3, 9, 9)


def test_bl1_truth_minimises_the_boundary_loss():
    rng = np.random.default_rng(0)
    truth = disk(6, 21)
    phi = signed_distance_map(truth)
    best = lb(truth, phi)
    for _ in range(25):
        random_p = rng.random(truth.shape) < rng.uniform(0.05, 0.95)
        assert best <= lb(random_p, phi)
        flipped = truth ^ (rng.random(truth.shape) < 0.02)  # near-misses too
        assert best < lb(flipped, phi)
    assert best < lb(np.zeros_like(truth), phi) < lb(np.ones_like(truth), phi)


def test_bl1_boundary_loss_rises_when_dilated_and_never_falls_when_eroded():
    truth = disk(8)
    phi = signed_distance_map(truth)
    structure = ndimage.generate_binary_structure(2, 1)
    # (scipy's iterations=0 means "until nothing changes", so the unchanged mask is listed first.)
    grown = [lb(truth, phi)] + [lb(ndimage.binary_dilation(truth, structure, iterations=i), phi) for i in range(1, 8)]
    assert all(b > a for a, b in zip(grown, grown[1:])), grown
    shrunk = [lb(truth, phi)] + [lb(ndimage.binary_erosion(truth, structure, iterations=i), phi) for i in range(1, 10)]
    assert shrunk[-1] == 0  # eroded away entirely
    assert all(b >= a for a, b in zip(shrunk, shrunk[1:])), shrunk


def test_bl2_alpha_schedule():
    for epoch, alpha in [(0, 1.0), (1, 0.99), (50, 0.5), (98, 0.02), (99, 0.01), (100, 0.01), (500, 0.01)]:
        assert boundary_alpha(epoch) == pytest.approx(max(0.01, 1 - 0.01 * epoch))
        assert boundary_alpha(epoch) == pytest.approx(alpha)
    short = BoundaryLossSchedule.for_run(34)
    assert short.alpha(0) == 1 and short.alpha(33) == pytest.approx(0.01) and short.alpha(40) == 0.01


def test_schedule_combines_generalised_dice_and_boundary_loss():
    target = torch.from_numpy(disk(4, 12)).long()[None]
    torch.manual_seed(3)
    logits = torch.randn(1, 2, 12, 12)
    phi = torch.from_numpy(signed_distance_map(target[0].numpy()))[None]
    gd = generalised_dice_loss(logits, target)
    bl = boundary_loss(torch.softmax(logits, 1)[:, 1], phi)
    schedule = BoundaryLossSchedule()
    for epoch in (0, 30, 120):
        a = boundary_alpha(epoch)
        got = schedule(logits, target, epoch=epoch)
        assert got.item() == pytest.approx((a * gd + (1 - a) * bl).item(), rel=1e-5)
        assert schedule(logits, target, epoch=epoch, phi=phi).item() == pytest.approx(got.item(), rel=1e-6)
