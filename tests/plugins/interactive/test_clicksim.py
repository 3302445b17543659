"""Click simulation: first click deep inside, later clicks in the larger error with the right sign."""

from __future__ import annotations

import numpy as np

from medloop.plugins.interactive import clicksim


def _disk(shape=(64, 64), centre=(32, 32), radius=10.0) -> np.ndarray:
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    return (yy - centre[0]) ** 2 + (xx - centre[1]) ** 2 <= radius**2


def test_first_click_is_inside_at_high_edt():
    target = _disk(radius=12)
    edt = clicksim.edt_inside(target)
    assert clicksim.first_click(target) == clicksim.Click((32, 32), True)  # deterministic: the EDT maximum
    rng = np.random.default_rng(0)
    clicks = [clicksim.first_click(target, rng) for _ in range(300)]
    depth = np.array([edt[c.index] for c in clicks])
    assert all(c.positive and target[c.index] for c in clicks)
    # p ∝ exp(d) - 1: mostly deep (median near the maximum), shallow clicks rare
    assert depth.min() >= 1 and np.median(depth) >= edt.max() - 3 and np.mean(depth >= 0.6 * edt.max()) >= 0.9
    assert len({c.index for c in clicks}) > 3  # sampled, not always the same pixel


def test_next_click_goes_to_the_larger_error_with_its_polarity():
    ref = _disk(radius=12)
    under = _disk(radius=5)  # FN is the large error -> positive click in it
    c = clicksim.next_click(under, ref)
    assert c.positive and ref[c.index] and not under[c.index]
    over = ref | _disk(centre=(10, 50), radius=8)  # FP blob larger than any FN -> negative in it
    over &= ~_disk(centre=(32, 42), radius=2)
    c = clicksim.next_click(over, ref)
    assert not c.positive and over[c.index] and not ref[c.index]
    assert c.index == (10, 50)  # the FP region's EDT maximum
    rng = np.random.default_rng(1)
    for _ in range(50):
        c = clicksim.next_click(over, ref, rng)
        assert not c.positive and over[c.index] and not ref[c.index]
    assert clicksim.next_click(ref, ref) is None


def test_user_errors_are_redundant_positives_or_edge_clicks():
    ref, pred = _disk(radius=12), _disk(radius=6)
    fn = ref & ~pred
    edt = clicksim.edt_inside(fn)
    rng = np.random.default_rng(2)
    kinds = set()
    for _ in range(60):
        c = clicksim.next_click(pred, ref, rng, user_error=1.0)
        assert c.positive
        if pred[c.index]:
            kinds.add("foreground")
        else:
            assert fn[c.index] and edt[c.index] <= 1.5
            kinds.add("edge")
    assert kinds == {"foreground", "edge"}


def test_perturbed_reference_is_close_but_different():
    ref = _disk(radius=10)
    rng = np.random.default_rng(3)
    for _ in range(20):
        p = clicksim.perturb(ref, rng)
        overlap = 2 * (p & ref).sum() / (p.sum() + ref.sum())
        assert p.any() and not np.array_equal(p, ref) and overlap > 0.4


def test_guidance_is_deepgrow_gaussians_and_the_input_has_4_channels():
    clicks = [clicksim.Click((10, 20), True), clicksim.Click((40, 40), False), clicksim.Click((10, 24), True)]
    g = clicksim.guidance((64, 64), clicks)
    assert g.shape == (2, 64, 64) and g.max() == 1.0
    assert g[0, 10, 20] == 1.0 and g[1, 40, 40] == 1.0 and g[0, 40, 40] < 1e-6
    assert np.isclose(g[1, 40, 42], np.exp(-0.5), atol=1e-6)  # sigma 2 px
    image = np.random.default_rng(0).normal(100, 20, (64, 64))
    x = clicksim.net_input(image, clicks, _disk())
    assert x.shape == (4, 64, 64) and x.dtype == np.float32
    assert x[0].min() == 0.0 and x[0].max() == 1.0 and np.array_equal(x[3], _disk().astype(np.float32))
