"""Spec §E checks 3 (state) and 4 (reward), and the stop rules of the batched environment."""

from __future__ import annotations

import numpy as np
import pytest

from medloop.plugins.axons.checks import TracingInputError
from medloop.plugins.axons.env import AxonEnv, EnvConfig, EpisodeSpec, drive, episode_from_axon, episode_from_path
from medloop.plugins.axons.geometry import point_at, project


def _line_episode(row: float = 32.0, config_end: float = 60.0) -> EpisodeSpec:
    """A straight horizontal axon along ``row`` from col 2 to ``config_end``, v0 = +col."""
    img = np.full((64, 64), 0.1, dtype=np.float32)
    img[int(row)] = 0.9
    line = np.array([[row, 2.0], [row, config_end]])
    return EpisodeSpec(img, line[0], np.array([0.0, 1.0]), line[1:], line)


def test_state_shapes_and_the_first_stack(validation_axons):
    env = AxonEnv([episode_from_axon(a) for a in validation_axons[:5]], EnvConfig(max_steps=60))
    idx = env.live()
    a, c = env.actor_state(idx), env.critic_state(idx)
    assert a.shape == (5, 12, 11, 11) and c.shape == (5, 16, 11, 11)
    assert a.dtype == np.float32
    for k in range(1, 4):  # frame 0 repeated four times
        assert np.array_equal(a[:, 3 * k : 3 * k + 3], a[:, 0:3])
    assert np.allclose(c[:, 3], env._frame(idx)[:, 3])  # the critic's 4th view is I_G
    assert c[:, 3].max() > 0.5  # the agent starts on the centreline
    before = a.copy()
    env.step(idx, np.tile([[0.0, 0.0]], (5, 1)) + 2.0)
    after = env.actor_state(idx)
    assert np.array_equal(after[:, 0:9], before[:, 3:12])  # the stack shifted by one frame
    assert not np.array_equal(after[:, 9:12], before[:, 9:12])


def test_reward_three_px_along_the_centreline(validation_axons):
    ratios = []
    for a in validation_axons:
        env = AxonEnv([episode_from_axon(a)], EnvConfig())
        target = point_at(a.centreline, np.array(3.0))
        out = env.step(np.array([0]), (target - a.start)[None])
        ratios.append(out.reward[0] / out.moved[0])
    # I_G read bilinearly from the pixel grid: 1 on grid-aligned lines, ~0.86 mean on curves
    assert np.mean(ratios) > 0.8 and np.min(ratios) > 0.75
    env = AxonEnv([_line_episode()], EnvConfig())
    assert env.step(np.array([0]), np.array([[0.0, 3.0]])).reward[0] == pytest.approx(3.0)


def test_reward_three_px_off_the_line_and_no_movement():
    on = AxonEnv([_line_episode()], EnvConfig()).step(np.array([0]), np.array([[0.0, 3.0]])).reward[0]
    shifted = _line_episode()
    shifted.start = np.array([35.0, 2.0])
    off = AxonEnv([shifted], EnvConfig()).step(np.array([0]), np.array([[0.0, 3.0]])).reward[0]
    assert 0 <= off < 0.05 * on
    still = AxonEnv([_line_episode()], EnvConfig()).step(np.array([0]), np.array([[0.0, 0.0]]))
    assert still.reward[0] == -1.0 and still.moved[0] == 0.0


def test_reward_modes():
    rewards = {}
    for mode in ("integral", "mean", "sum"):
        env = AxonEnv([_line_episode(row=32.0)], EnvConfig(reward_mode=mode))
        rewards[mode] = env.step(np.array([0]), np.array([[0.5, 2.0]])).reward[0]
    d = np.hypot(0.5, 2.0)
    assert rewards["integral"] == pytest.approx(rewards["mean"] * d)
    assert rewards["sum"] == pytest.approx(rewards["mean"] * 100)
    with pytest.raises(TracingInputError, match="reward_mode 'max' is unknown; choose one of integral, mean, sum"):
        AxonEnv([_line_episode()], EnvConfig(reward_mode="max"))


def test_reversals_flip_the_sign():
    env = AxonEnv([_line_episode()], EnvConfig())
    env.pos[0] = [32.0, 30.0]
    i = np.array([0])
    forward = env.step(i, np.array([[0.0, 3.0]])).reward[0]  # along v0
    back1 = env.step(i, np.array([[0.0, -3.0]])).reward[0]  # first reversal: k = 1
    back2 = env.step(i, np.array([[0.0, -3.0]])).reward[0]  # same direction, k stays 1
    still = env.step(i, np.array([[0.0, 0.0]])).reward[0]  # standing still stays -1
    again = env.step(i, np.array([[0.0, 3.0]])).reward[0]  # second reversal: k = 2
    assert forward > 2.9 and back1 < -2.9 and back2 < -2.9 and still == -1.0 and again > 2.9
    assert env.reversals[0] == 2
    # the first step against v0 already counts as a reversal
    env = AxonEnv([_line_episode()], EnvConfig())
    env.pos[0] = [32.0, 30.0]
    assert env.step(i, np.array([[0.0, -3.0]])).reward[0] < -2.9


def test_stop_rules_and_masking():
    eps = [_line_episode(config_end=12.0), _line_episode(), _line_episode(config_end=20.0)]
    env = AxonEnv(eps, EnvConfig(max_steps=4, border_stop_px=1.0))
    env.pos[2] = [32.0, 61.0]
    idx = env.live()
    out = env.step(idx, np.array([[0.0, 3.0], [0.0, 3.0], [0.0, 1.5]]))  # 5 / 5 / 62.5 (inside)
    assert out.done.tolist() == [False, False, False]
    # aiming 2.5 px past the last column: the axon leaves the image, the trace ends on the border
    out = env.step(idx, np.array([[0.0, 3.0], [0.0, 3.0], [0.0, 3.0]]))  # 8 -> 4 px from the end / 8 / 63
    assert out.done.tolist() == [False, False, True] and env.reasons[2] == "border"
    out = env.step(np.array([0, 1]), np.array([[0.0, 2.0], [0.0, 3.0]]))  # 10 -> within 3 px of 12
    assert out.done.tolist() == [True, False] and env.reasons[0] == "end"
    assert env.live().tolist() == [1]
    with pytest.raises(ValueError):
        env.step(np.array([0]), np.array([[0.0, 1.0]]))  # a finished episode cannot move
    out = env.step(np.array([1]), np.array([[0.0, 3.0]]))
    assert out.done.tolist() == [True] and env.reasons[1] == "max_steps" and env.steps.tolist() == [3, 4, 2]
    assert np.array_equal(env.path(2)[-1], [32.0, 63.0])


def test_tracing_does_not_slide_along_the_border():
    """A step that aims >= border_stop_px outside ends the trace even when it still moves (along
    the border); one aiming less than that outside, and moving, goes on."""
    env = AxonEnv([_line_episode(config_end=20.0), _line_episode(config_end=20.0)], EnvConfig(border_stop_px=1.0))
    env.pos[0] = [32.0, 62.0]
    env.pos[1] = [32.0, 62.0]
    out = env.step(np.array([0, 1]), np.array([[3.0, 3.0], [3.0, 1.5]]))  # 2 px / 0.5 px past column 63
    assert out.done.tolist() == [True, False] and env.reasons[0] == "border"
    assert np.allclose(env.path(0)[-1], [35.0, 63.0]) and np.allclose(env.path(1)[-1], [35.0, 63.0])


def test_training_rule_clips_at_the_border_without_stopping():
    env = AxonEnv([_line_episode(config_end=20.0)], EnvConfig(max_steps=5))
    env.pos[0] = [32.0, 63.0]
    out = env.step(np.array([0]), np.array([[0.0, 3.0]]))
    assert out.reward[0] == -1.0 and not out.done[0]


def test_entropy_stop_ends_before_moving():
    env = AxonEnv([_line_episode(), _line_episode()], EnvConfig(entropy_stop=-1.0))
    out = env.step(np.array([0, 1]), np.array([[0.0, 3.0], [0.0, 3.0]]), entropy=np.array([-0.5, -2.0]))
    assert out.done.tolist() == [True, False] and env.reasons[0] == "entropy"
    assert len(env.path(0)) == 1 and env.entropies[0] == [-0.5]


def test_different_image_sizes_in_one_batch(validation_axons):
    from medloop.plugins.axons.synth import make_batch

    big = make_batch(1, (80, 100), "SI", 3)[0]
    env = AxonEnv([episode_from_axon(validation_axons[0]), episode_from_axon(big)], EnvConfig(max_steps=3))
    assert env.images.shape == (2, 80, 100)
    env.pos[0] = [63.0, 63.0]
    env.step(np.array([0, 1]), np.array([[4.0, 4.0], [1.0, 1.0]]))
    assert np.array_equal(env.pos[0], [63.0, 63.0])  # clipped to its own 64 x 64 image


def test_drive_with_an_oracle_reaches_the_end(validation_axons):
    a = validation_axons[0]
    env = AxonEnv([episode_from_axon(a)], EnvConfig(max_steps=60))

    def oracle(env, idx):
        s = project(env.pos[idx], a.centreline)[1]
        return point_at(a.centreline, s + 3.0) - env.pos[idx], None

    drive(env, oracle)
    assert env.reasons == ["end"] and np.linalg.norm(env.pos[0] - a.end) <= 3.0


def test_episode_from_a_user_path():
    img = np.random.default_rng(0).random((40, 40)).astype(np.float32)
    path = np.array([[5.0, 5.0], [5.0, 25.0], [30.0, 25.0]])
    forward, backward = episode_from_path(img, path), episode_from_path(img, path, reverse=True)
    assert np.array_equal(forward.start, [5.0, 5.0]) and np.allclose(forward.direction, [0.0, 1.0])
    assert np.array_equal(backward.start, [30.0, 25.0]) and np.allclose(backward.direction, [-1.0, 0.0])
    assert np.array_equal(forward.ends, [[30.0, 25.0]])
