"""Synthetic heads (medloop.app.engine.synth): the generator the robust brain model trains on.

Each test measures a property of the drawn volumes against the template they come from: the
extra-cerebral shells sit at the drawn distances, skull-stripped draws have none, targets are
the template's tissue moved by the same map as the image, the image is normalised per volume,
a seed reproduces a draw exactly, and the slice bank refreshes as configured."""

from __future__ import annotations

import numpy as np
import pytest

from medloop.app.engine import synth
from medloop.app.engine.synth import RefreshingSliceBank, SynthConfig, head_labels, synthesize
from medloop.models.recipes import Recipe, brain_template

NORMALISATION = {"name": "percentile", "lower": 0.5, "upper": 99.0}


@pytest.fixture(scope="module")
def template():
    raw = {"name": "t", "spacing_mm": [2.0, 2.0, 2.0], "orientation": "LPS", "data": {"synth": {"soft": "sample:tissue_prob"}}}
    return brain_template(Recipe(raw, None))


def test_template_matches_the_packaged_labels(template, brain_sample):
    """The soft maps' argmax is the packaged tissue label (same MNI maps, same rule)."""
    _, tissue = brain_sample
    soft = template.soft[:, 14:-6, 6:-6, 6:-6]  # the padding: 14 slices below, 6 voxels elsewhere
    background = np.clip(1 - soft[1] - soft[2], 0, None)
    argmax = np.where(template.brain[14:-6, 6:-6, 6:-6], np.argmax(np.stack([background, soft[1], soft[2]]), 0), 0)
    # Same orientation: the template is on the model grid (LPS), as the packaged labels load.
    from medloop.app.engine.resample import to_model_grid

    packaged = np.rint(np.asarray(to_model_grid(tissue, (2.0, 2.0, 2.0), "LPS").array)).astype(int)
    assert argmax.shape == packaged.shape
    agree = float((argmax == packaged).mean())
    assert agree > 0.995, agree
    # The eyes sit in front of (anterior: lower y index in LPS) and below the brain's centre.
    centre = np.argwhere(template.brain).mean(axis=0)
    assert all(e[1] < centre[1] - 20 and e[0] < centre[0] for e in template.eyes)


def test_head_shells_sit_at_their_distances(template):
    cfg = SynthConfig(p_skull_stripped=0.0)
    labels = head_labels(template, np.random.default_rng(3), cfg)
    d = template.outside_mm
    assert set(np.unique(labels[template.brain])) <= {synth.BRAIN_SURFACE, synth.BRAIN_DEEP}
    skull = (labels == synth.SKULL) | (labels == synth.DIPLOE)
    # Meninges 1..4 mm (x 1 +- 0.4), then 4..9 mm of bone: all bone lies within 0.6..14.6 mm.
    assert 0.6 <= d[skull].min() and d[skull].max() <= 14.6
    csf = labels == synth.EC_CSF
    assert d[csf].max(initial=0) <= 5.6  # 0 when the draw's meninges are thinner than a voxel
    scalp = (labels == synth.SCALP_FAT) | (labels == synth.SCALP_MUSCLE)
    assert np.median(d[scalp]) > np.median(d[skull])
    assert (labels == synth.NECK).sum() > 1000  # a neck under the head
    # Deep grey matter / ventricles: more than 14 mm inside the brain surface.
    assert (labels == synth.BRAIN_DEEP).sum() > 0.1 * template.brain.sum()


def test_skull_stripped_draws_have_no_extra_cerebral_tissue(template):
    labels = head_labels(template, np.random.default_rng(0), SynthConfig(p_skull_stripped=1.0))
    assert set(np.unique(labels)) == {synth.AIR, synth.BRAIN_SURFACE, synth.BRAIN_DEEP}


def test_draw_is_seeded_and_normalised_per_volume(template):
    cfg = SynthConfig()
    a = synthesize(template, cfg, np.random.default_rng(5), NORMALISATION)
    b = synthesize(template, cfg, np.random.default_rng(5), NORMALISATION)
    c = synthesize(template, cfg, np.random.default_rng(6), NORMALISATION)
    np.testing.assert_array_equal(a.image, b.image)
    np.testing.assert_array_equal(a.label, b.label)
    assert a.image.shape != c.image.shape or not np.array_equal(a.image, c.image)
    for s in (a, c):
        x = s.image[0]
        assert x.shape == s.label.shape and s.image.dtype == np.float32 and s.label.dtype == np.int64
        # The card's normalisation on the whole volume: 0.5th percentile at 0, 99th of the rest at 1.
        lo = np.percentile(x, 0.5)
        assert abs(lo) < 1e-4
        assert abs(np.percentile(x[x > lo], 99) - 1.0) < 1e-3
        assert set(np.unique(s.label)) <= {0, 1, 2}


def test_targets_follow_the_deformation(template):
    """Without intensity randomness the target lines up with the image: WM brighter than GM in a
    T1 draw, GM voxels of the target where the image has GM intensities."""
    cfg = SynthConfig.quiet()
    cfg.p_random_gmm, cfg.contrast_weights, cfg.p_background_zero = 0.0, (1.0, 0.0, 0.0, 0.0), 1.0
    s = synthesize(template, cfg, np.random.default_rng(11), NORMALISATION)
    x, y = s.image[0], s.label
    gm, wm = np.median(x[y == 1]), np.median(x[y == 2])
    assert wm > gm + 0.15, (gm, wm)
    assert np.median(x[y == 0]) < 0.1  # mostly air
    # GM + WM volume stays within the template's +-35 % (scaling 0.85..1.15 per axis).
    template_tissue = int((np.argmax(template.soft, 0) > 0)[template.brain].sum())
    assert 0.55 * template_tissue < (y > 0).sum() < 1.6 * template_tissue


def test_contrasts_differ_between_draws(template):
    """Over 12 draws the WM/GM intensity order flips (T1-like and T2-like contrasts both occur)."""
    rng = np.random.default_rng(2)
    cfg = SynthConfig(p_crop=0.0, p_noise=0.0)
    orders = set()
    for _ in range(12):
        s = synthesize(template, cfg, rng, NORMALISATION)
        x, y = s.image[0], s.label
        orders.add(bool(np.median(x[y == 2]) > np.median(x[y == 1])))
    assert orders == {True, False}


def test_slice_bank_refreshes_the_oldest_volumes():
    draws = []

    def draw(rng):
        k = len(draws)
        draws.append(k)
        image = np.full((1, 4, 32, 32), float(k), np.float32)
        return synth.Sample(image, np.ones((4, 32, 32), np.int64), np.ones((4, 32, 32), np.float32))

    bank = RefreshingSliceBank(draw, volumes=5, refresh=(2, 3), axis=0, patch=(16, 16), batch_size=4, seed=0)
    assert len(bank.pairs()) == 5 * 4 and len(draws) == 5
    for _ in range(6):
        x, y, w = bank()
    assert x.shape == (4, 1, 16, 16) and y.dtype == np.int64
    assert len(draws) == 5 + 2 * 2  # refreshed at calls 3 and 6
    assert sorted({int(p[0][0, 0, 0]) for p in bank.pairs()}) == [4, 5, 6, 7, 8]
