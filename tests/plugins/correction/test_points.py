"""Points -> Voronoi and cluster pseudo-labels, their loss and the CRF loss (spec section 3)."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from scipy import ndimage

from medloop.app.errors import MedloopWarning
from medloop.plugins.correction import synth
from medloop.plugins.correction.points import (
    clean_points,
    cluster_labels,
    crf_loss,
    disk,
    pairwise_crf_loss,
    pairwise_crf_loss_dense,
    point_loss,
    voronoi_labels,
)
from medloop.plugins.correction.weaklabels import AnnotationError, points


@pytest.fixture(autouse=True)
def one_thread():
    torch.set_num_threads(1)


# --- PT-1 ---------------------------------------------------------------------------------------


def test_pt1_voronoi_of_two_points():
    v = voronoi_labels(np.array([(10, 10), (10, 30)]), (40, 40))
    edge_rows, edge_cols = np.nonzero(v == 1)
    assert np.all(np.abs(edge_cols - 20) <= 1) and set(edge_rows) == set(range(40))  # a full line
    expected = np.zeros((40, 40), bool)
    expected[10, 10] = expected[10, 30] = True
    expected = ndimage.binary_dilation(expected, disk(2))
    assert np.array_equal(v == 2, expected) and expected.sum() == 26
    assert set(np.unique(v)) == {0, 1, 2} and v.dtype == np.uint8


def test_voronoi_edges_lie_on_bisectors():
    pts = np.array([(5.2, 8.0), (30.0, 12.4), (18.0, 33.0), (40.0, 40.0)])
    v = voronoi_labels(pts, (48, 48))
    pix = np.floor(pts + 0.5)
    yy, xx = np.nonzero(v == 1)
    d = np.sort(np.hypot(yy[:, None] - pix[None, :, 0], xx[:, None] - pix[None, :, 1]), axis=1)
    assert np.all(d[:, 1] - d[:, 0] <= np.sqrt(2) + 1e-9)  # within a pixel step of equidistance


# --- PT-2 ---------------------------------------------------------------------------------------


def test_pt2_pseudo_labels_are_accurate_where_not_ignored():
    right = {"voronoi": 0, "cluster": 0}
    known = {"voronoi": 0, "cluster": 0}
    for seed in range(6):
        s = synth.nuclei(seed)
        clicks = points(s.instances)
        truth = s.semantic == 1
        for name, labels in (("voronoi", voronoi_labels(clicks, truth.shape)), ("cluster", cluster_labels(s.image, clicks, rng=seed))):
            k = labels > 0
            ok = int(np.sum((labels[k] == 2) == truth[k]))
            assert ok / k.sum() >= 0.9, (name, seed)  # no image far off
            right[name] += ok
            known[name] += int(k.sum())
    for name, ok in right.items():
        assert ok / known[name] >= 0.95, name
    assert 0.08 <= known["voronoi"] / (6 * 64 * 64) <= 0.25  # Voronoi labels are sparse
    assert known["cluster"] / (6 * 64 * 64) >= 0.3


def test_cluster_labels_on_grayscale_and_are_seeded():
    s = synth.nuclei(3, channels=1)
    clicks = points(s.instances)
    with pytest.warns(MedloopWarning, match=r"^the image is grayscale; clustering on \(distance, intensity\)$"):
        a = cluster_labels(s.image, clicks, rng=1)
    with pytest.warns(MedloopWarning):
        b = cluster_labels(s.image[0], clicks, rng=1)
    assert np.array_equal(a, b)
    k = a > 0
    assert np.mean((a[k] == 2) == (s.semantic[k] == 1)) >= 0.95
    # Any value range: an 8-bit RGB copy gives as good labels and the same nuclei (k-means may
    # settle on another background/ignored split of the stroma, so not bit-identical).
    rgb = synth.nuclei(3)
    unit, byte = cluster_labels(rgb.image, clicks), cluster_labels(np.round(rgb.image * 255), clicks)
    k = byte > 0
    assert np.mean((byte[k] == 2) == (rgb.semantic[k] == 1)) >= 0.95
    assert np.sum((unit == 2) & (byte == 2)) >= 0.9 * np.sum((unit == 2) | (byte == 2))


# --- point validation ---------------------------------------------------------------------------


def test_fewer_than_two_points_is_an_annotation_error():
    message = r"^need at least 2 points inside the image, got 1; click one point per nucleus$"
    with pytest.raises(AnnotationError, match=message):
        voronoi_labels(np.array([(3.0, 4.0)]), (16, 16))
    with pytest.raises(AnnotationError, match=message), pytest.warns(MedloopWarning, match="merged"):
        cluster_labels(np.zeros((3, 16, 16)), np.array([(3.0, 4.0), (3.2, 4.1)]))  # merged into one
    with pytest.raises(AnnotationError, match="got 0"):
        voronoi_labels(np.zeros((0, 2)), (16, 16))
    with pytest.raises(AnnotationError, match=r"\(N, 2\)"):
        voronoi_labels(np.zeros((3, 3)), (16, 16))
    with pytest.raises(AnnotationError, match="NaN"):
        voronoi_labels(np.array([(1.0, np.nan), (3, 3)]), (16, 16))


def test_points_outside_are_dropped_and_close_points_merged_with_counts():
    pts = np.array([(2.0, 2.0), (-3.0, 5.0), (8.0, 99.0), (10.0, 10.0), (10.4, 10.3), (12.0, 3.0)])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        kept = clean_points(pts, (16, 16))
    messages = [str(w.message) for w in caught if issubclass(w.category, MedloopWarning)]
    assert messages == ["2 point(s) outside the image were dropped", "1 point(s) less than 1 px from another were merged"]
    assert kept.tolist() == [[2, 2], [10, 10], [12, 3]]
    # -0.4 rounds into pixel 0 (napari pixel centres sit on integer coordinates); 15.5 is outside.
    with pytest.warns(MedloopWarning, match="^1 point"):
        assert clean_points(np.array([(-0.4, 0.0), (15.5, 3.0), (5.0, 5.0)]), (16, 16)).tolist() == [[0, 0], [5, 5]]


# --- L_ce -------------------------------------------------------------------------------------


def test_point_loss_is_two_masked_binary_ce_terms():
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 2, 8, 8, generator=gen, requires_grad=True)
    vor = torch.randint(0, 3, (2, 8, 8), generator=gen)
    clu = torch.randint(0, 3, (2, 8, 8), generator=gen)
    clu[:, :4] = 0
    loss = point_loss(logits, vor, clu)
    p = torch.softmax(logits, 1)[:, 1]

    def bce(t: torch.Tensor) -> torch.Tensor:
        k = t > 0
        return torch.nn.functional.binary_cross_entropy(p[k], (t[k] == 2).to(p.dtype))

    assert torch.allclose(loss, bce(vor) + bce(clu), atol=1e-6)
    loss.backward()
    ignored = ((vor == 0) & (clu == 0)).unsqueeze(1).expand_as(logits)
    assert torch.all(logits.grad[ignored] == 0) and torch.any(logits.grad[~ignored] != 0)
    # One sigmoid logit z is the two-channel (0, z); numpy maps work too.
    z = logits.detach()[:, 1:] - logits.detach()[:, :1]
    assert torch.allclose(point_loss(z, vor.numpy(), clu.numpy()), loss.detach(), atol=1e-5)
    empty = point_loss(logits, torch.zeros_like(vor), torch.zeros_like(clu))
    assert float(empty.detach()) == 0 and empty.requires_grad
    with pytest.raises(ValueError, match="0 \\(ignored\\), 1 \\(background\\) or 2 \\(nucleus\\)"):
        point_loss(logits, vor + 1, clu)


# --- PT-3 ---------------------------------------------------------------------------------------


def square_image(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    image = np.full((3, 32, 32), 0.85)
    image[:, 8:22, 10:24] = 0.3
    image += rng.normal(0, 0.02, image.shape)
    mask = np.zeros((32, 32))
    mask[8:22, 10:24] = 1
    return np.clip(image, 0, 1), mask


def test_pt3_windowed_pair_loss_matches_dense_w():
    image, mask = square_image()
    rng = np.random.default_rng(1)
    for probs in (mask * 0.9 + 0.05, rng.random((32, 32)), np.roll(mask, 3, axis=1) * 0.8 + 0.1):
        y = torch.tensor(probs)[None]
        windowed = pairwise_crf_loss(y, image, s_pq=2, s_rgb=10, radius=6)
        dense = pairwise_crf_loss_dense(y, image, s_pq=2, s_rgb=10)
        assert abs(float(windowed) / float(dense) - 1) < 0.05
    # Two images in a batch, (N, 1, H, W) probabilities and an (N, C, H, W) image.
    y = torch.tensor(rng.random((2, 1, 32, 32)))
    both = torch.tensor(np.stack([image, image[:, ::-1].copy()]))
    assert abs(float(pairwise_crf_loss(y, both, 2, 10, 6)) / float(pairwise_crf_loss_dense(y, both, 2, 10)) - 1) < 0.05


def test_pt3_an_edge_aligned_mask_scores_lower_and_gradients_are_finite():
    image, mask = square_image()
    aligned = torch.tensor(mask * 0.9 + 0.05)[None]
    shifted = torch.tensor(np.roll(mask, 2, axis=1) * 0.9 + 0.05)[None]
    for s_pq, radius in ((2.0, 6), (10.0, 5)):
        assert float(pairwise_crf_loss(aligned, image, s_pq, 10.0, radius)) < float(pairwise_crf_loss(shifted, image, s_pq, 10.0, radius))
    logits = torch.randn(1, 2, 32, 32, generator=torch.Generator().manual_seed(2), requires_grad=True)
    vor = voronoi_labels(np.array([(15, 17), (2, 2)]), (32, 32))[None]
    loss = crf_loss(logits, vor, vor, image, beta=1.0, s_pq=2.0, radius=6)
    loss.backward()
    assert torch.isfinite(loss) and torch.all(torch.isfinite(logits.grad)) and logits.grad.abs().sum() > 0


def test_dense_reference_refuses_large_images():
    with pytest.raises(ValueError, match="at most 4096 pixels"):
        pairwise_crf_loss_dense(torch.zeros(1, 65, 64), np.zeros((3, 65, 64)))
