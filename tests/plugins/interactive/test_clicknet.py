"""The learned engine: ROI in, mask of the ROI out; locked voxels kept; packaged weights checked."""

from __future__ import annotations

import hashlib
import json
import shutil

import numpy as np
import pytest

from medloop.app.errors import ResourceError
from medloop.models.card import read_card
from medloop.plugins.interactive.evaluation import dice
from medloop.plugins.interactive import clicknet, clicksim, synth
from medloop.plugins.interactive.engine_api import EngineInput, RoiPoint
from medloop.plugins.interactive.params import InteractiveParams


@pytest.fixture(scope="module")
def engine():
    e = clicknet.LearnedEngine()
    e.warm_up()
    return e


def _request(image, points, spacing=(1.0, 1.0), previous=None, locked=None) -> EngineInput:
    shape = image.shape
    return EngineInput(
        image=image.astype(np.float32), spacing=spacing, points=tuple(points),
        previous=np.zeros(shape, bool) if previous is None else previous,
        locked=np.zeros(shape, bool) if locked is None else locked, params=InteractiveParams(engine="learned"))


def test_packaged_weights_match_the_card_and_the_engine_ships_disabled():
    card = read_card(clicknet.packaged_card())
    assert card.task == "interactive" and card.in_channels == 4 and card.architecture == (
        clicknet.ARCHITECTURE["name"], clicknet.ARCHITECTURE["kwargs"])
    weights = clicknet.packaged_card().parent / card.weights_file
    assert hashlib.sha256(weights.read_bytes()).hexdigest() == card.weights_sha256
    assert weights.stat().st_size <= 2 * 1024 * 1024
    enabled, reason = clicknet.learned_status()
    numbers = card.raw["interactive"]["numbers"]
    assert enabled is False and "Dice@1" in reason and str(numbers["heldout_tubes"]["dice@1"]) in reason
    assert clicknet.learned_status("/no/such/card.json")[0] is False


def test_damaged_weights_are_refused(tmp_path):
    folder = tmp_path / "m"
    shutil.copytree(clicknet.packaged_card().parent, folder)
    weights = folder / read_card(folder / "card.json").weights_file
    data = bytearray(weights.read_bytes())
    data[-20] ^= 0xFF
    weights.write_bytes(bytes(data))
    engine = clicknet.LearnedEngine(folder / "card.json")
    obj = synth.heldout_tubes(1)[0]
    with pytest.raises(ResourceError, match="do not match the sha256"):
        engine.segment(_request(obj.image, [RoiPoint(clicksim.first_click(obj.target).index, True)]))


def test_output_shape_locked_voxels_and_one_network_per_engine(engine):
    obj = synth.heldout_tubes(1)[0]
    first = RoiPoint(clicksim.first_click(obj.target).index, True)
    free = engine.segment(_request(obj.image, [first]))
    assert free.shape == obj.image.shape and free.dtype == bool and free.any()
    locked = np.zeros_like(free)
    locked[:, : first.index[1]] = True  # everything left of the click
    mask = engine.segment(_request(obj.image, [first], locked=locked))
    assert not (mask & locked).any() and np.array_equal(mask, free & ~locked)
    net = engine._net
    engine.segment(_request(obj.image, [first]))
    assert engine._net is net
    assert np.array_equal(engine.segment(_request(obj.image, [])), np.zeros_like(free))
    assert np.array_equal(engine.segment(_request(obj.image, [first]), should_stop=lambda: True), np.zeros_like(free))


def test_a_volume_is_answered_on_the_last_clicks_slice_only(engine):
    obj = synth.heldout_tubes(1)[0]
    volume = np.repeat(obj.image[None], 5, axis=0)
    y, x = clicksim.first_click(obj.target).index
    mask = engine.segment(_request(volume, [RoiPoint((1, y, x), True), RoiPoint((3, y, x), True)], spacing=(3.0, 1.0, 1.0)))
    assert mask.shape == volume.shape and mask[3].any()
    assert not mask[[0, 1, 2, 4]].any()


def test_the_grid_mapping_round_trips_and_keeps_aspect():
    coords, centre, step = clicknet._grid_coords((30, 60), (2.0, 1.0), 64)
    assert np.isclose(step, 60 / 64)  # both sides are 60 mm: a square field
    assert np.allclose(clicknet.to_grid(tuple(centre), centre, (2.0, 1.0), step), (31.5, 31.5))
    k = (10, 50)
    g = clicknet.to_grid(k, centre, (2.0, 1.0), step)
    assert np.allclose([coords[0][int(round(g[0])), 0], coords[1][0, int(round(g[1]))]], k, atol=0.6)


def test_packaged_net_segments_heldout_tubes_it_never_saw(engine):
    """Measured on the first 10 held-out tubes with the deterministic simulator (training.py)."""
    scores1, scores3 = [], []
    for obj in synth.heldout_tubes(10):
        points, prev = [], np.zeros_like(obj.target)
        click = clicksim.first_click(obj.target)
        for k in range(3):
            points.append(RoiPoint(click.index, click.positive))
            prev = engine.segment(_request(obj.image, points, previous=prev))
            (scores1 if k == 0 else scores3 if k == 2 else []).append(dice(prev, obj.target))
            click = clicksim.next_click(prev, obj.target) or click
    assert np.mean(scores1) >= DICE1_MIN and np.mean(scores3) >= DICE3_MIN


# bounds a little below the packaged net's measured means on these 10 tubes: Dice@1 0.543, Dice@3 0.729
DICE1_MIN, DICE3_MIN = 0.48, 0.65


def test_an_interactive_card_must_say_whether_it_is_enabled():
    from medloop.models.card import CardError, validate_card

    raw = json.loads(clicknet.packaged_card().read_text())
    assert validate_card(raw, "packaged").task == "interactive"
    for broken in ({**raw, "interactive": {"enabled": "no", "reason": "x"}}, {k: v for k, v in raw.items() if k != "interactive"}):
        with pytest.raises(CardError, match="interactive.enabled"):
            validate_card(broken, "c.json")
    with pytest.raises(CardError, match="axes"):
        validate_card({**raw, "inputs": [{"axes": "bc"}]}, "c.json")
