"""Deterministic tracing: stop rules, one batch for all seeds, and every bad input's message."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from medloop.app.errors import MedloopError
from medloop.plugins.axons.checks import TracingInputError
from medloop.plugins.axons.nets import Actor, Critic
from medloop.plugins.axons.trace import Trace, TraceParams, trace, trace_with

IMAGE = np.random.default_rng(0).random((64, 64)).astype(np.float32)


class CountingActor(Actor):
    """An actor whose mean action is a constant +2 px along columns (weights zero, biases set:
    alpha_x = 3, beta_x = 1, alpha_y = beta_y = 2), counting its forward calls."""

    def __init__(self) -> None:
        super().__init__()
        self.calls, self.rows = 0, []
        with torch.no_grad():
            self.head.weight.zero_()
            inv = lambda v: math.log(math.expm1(v))  # softplus^-1
            self.head.bias.copy_(torch.tensor([inv(2.0), -30.0, inv(1.0), inv(1.0)]))

    def forward(self, state):
        self.calls += 1
        self.rows.append(len(state))
        return super().forward(state)


def test_stop_rules_and_one_forward_per_step_for_all_seeds():
    actor = CountingActor()
    seeds = [[32.0, 10.0], [20.0, 50.0], [5.0, 5.0]]
    traces = trace(IMAGE, seeds, actor, max_steps=25, end_points=[[32.0, 30.0], [5.0, 5.0]])
    assert [t.seed_id for t in traces] == [0, 1, 2]
    first, border, capped = traces
    # +2 px per step: 12, 14, ..., 28 is within 3 px of the end point (32, 30)
    assert first.stop_reason == "end" and np.allclose(first.vertices[-1], [32.0, 28.0]) and len(first.vertices) == 10
    # 52 ... 62, 63 (moved 1 px), then pinned against the border
    assert border.stop_reason == "border" and np.allclose(border.vertices[-1], [20.0, 63.0])
    # seed 2 sits on an end point, which is ignored for its own trace
    assert capped.stop_reason == "max_steps" and len(capped.vertices) == 26
    assert all(t.vertices.dtype == np.float64 and np.array_equal(t.vertices[0], s) for t, s in zip(traces, seeds))
    assert len(first.entropy) == len(first.vertices) - 1
    assert actor.calls == 25 and actor.rows[0] == 3 and actor.rows[-1] == 1  # finished seeds drop out


def test_entropy_stop_and_a_seed_on_background():
    actor = CountingActor()
    h = float(torch.distributions.Beta(torch.tensor([3.0, 2.0]), torch.tensor([1.0, 2.0])).entropy().sum())
    stopped = trace(IMAGE, [[40.0, 40.0]], actor, entropy_stop=h - 0.01)[0]
    assert stopped.stop_reason == "entropy" and len(stopped.vertices) == 1
    assert stopped.entropy == pytest.approx([h], abs=1e-5)
    flat = np.full((64, 64), 0.1, dtype=np.float32)
    flat[0, 0] = 0.2  # not constant, but no axon anywhere
    torch.manual_seed(0)
    (t,) = trace(flat, [[30.0, 30.0]], Actor(), max_steps=15)
    assert isinstance(t, Trace) and t.stop_reason in ("max_steps", "border") and np.all(t.entropy <= 0)


def test_checkpoint_paths_and_progress(tmp_path):
    from medloop.plugins.axons.nets import save_actor

    actor = CountingActor()
    save_actor(actor, tmp_path / "a.pt")
    ticks = []
    traces = trace_with(IMAGE, [[32.0, 10.0]], tmp_path / "a.pt", TraceParams(max_steps=5), progress=lambda d, t: ticks.append((d, t)))
    assert np.allclose(traces[0].vertices[-1], [32.0, 20.0]) and ticks == [(i, 5) for i in range(1, 6)]
    stop_now = trace_with(IMAGE, [[32.0, 10.0]], actor, TraceParams(max_steps=5), should_stop=lambda: True)
    assert stop_now[0].stop_reason == "cancelled"


class NeverCalled(Actor):
    def forward(self, state):
        raise AssertionError("the actor ran before the input was checked")


BAD_INPUTS = [
    (dict(image=np.zeros((64, 64, 3))),
     "image has shape (64, 64, 3) (RGB); tracing needs one 2-D greyscale image: pick one channel or convert to grey"),
    (dict(image=np.random.default_rng(1).random((5, 64, 64))),
     "image has shape (5, 64, 64); tracing needs one 2-D greyscale image: for a 3-D stack use its maximum projection "
     "(image.max(axis=0))"),
    (dict(image=np.where(np.eye(64) > 0, np.nan, IMAGE)),
     "image has 64 NaN or infinite pixels; replace them (e.g. numpy.nan_to_num) before tracing"),
    (dict(image=np.where(np.eye(64) > 0, np.inf, IMAGE)),
     "image has 64 NaN or infinite pixels; replace them (e.g. numpy.nan_to_num) before tracing"),
    (dict(image=np.full((64, 64), 0.5)),
     "image is constant (every pixel 0.5); there is nothing to trace, choose another image"),
    (dict(image=IMAGE[:20]),
     "image is 20x64 px, smaller than the 21x21 coarse view; use an image of at least 21x21 px"),
    (dict(seeds=np.zeros((0, 2))), "no seed given; add at least one seed point (row, col) at an axon end"),
    (dict(seeds=[[3.0, 4.0], [70.0, 3.5]]),
     "seed 1 at (row 70, col 3.5) is outside the 64x64 image; move it inside (rows 0-63, cols 0-63)"),
    (dict(seeds=[[3.0, -0.5]]),
     "seed 0 at (row 3, col -0.5) is outside the 64x64 image; move it inside (rows 0-63, cols 0-63)"),
    (dict(seeds=[[1.0, 2.0, 3.0]]), "seeds must be an (N, 2) array of (row, col), got shape (1, 3)"),
    (dict(max_steps=0), "max_steps must be positive, got 0; choose a value above 0"),
    (dict(window_scale=-1.5), "window_scale must be positive, got -1.5; choose a value above 0"),
    (dict(stop_radius_px=0.0), "stop_radius_px must be positive, got 0.0; choose a value above 0"),
    (dict(end_points=[[10.0, 99.0]]),
     "end point 0 at (row 10, col 99) is outside the 64x64 image; move it inside (rows 0-63, cols 0-63)"),
    (dict(actor=Critic().state_dict()),
     "checkpoint is not an axon-tracker actor: trunk.conv1.weight has shape (32, 16, 5, 5), expected (32, 12, 5, 5) "
     "(12 input channels); choose a checkpoint trained by the axon tracker"),
]


@pytest.mark.parametrize("change, message", BAD_INPUTS, ids=[m[:40] for _, m in BAD_INPUTS])
def test_bad_inputs_raise_one_line_errors_before_any_work(change, message):
    args = dict(image=IMAGE, seeds=[[10.0, 10.0]], actor=NeverCalled()) | change
    with pytest.raises(TracingInputError) as err:
        trace(**args)
    assert str(err.value) == message and "\n" not in message
    assert isinstance(err.value, MedloopError) and isinstance(err.value, ValueError)


def test_a_fine_tuning_path_under_two_vertices_is_refused():
    from medloop.plugins.axons.checks import check_pairs

    with pytest.raises(TracingInputError) as err:
        check_pairs([IMAGE, IMAGE], [[[1.0, 1.0], [9.0, 9.0]], [[4.0, 4.0]]])
    assert str(err.value) == "ground-truth path 1 has 1 vertex; draw at least 2 vertices along the axon"
    with pytest.raises(TracingInputError) as err:
        check_pairs([IMAGE], [[[1.0, 1.0], [90.0, 9.0]]])
    assert str(err.value) == (
        "ground-truth path 0 vertex 1 at (row 90, col 9) is outside the 64x64 image; redraw the path inside the image")
    with pytest.raises(TracingInputError, match="no training images given"):
        check_pairs([], [])
