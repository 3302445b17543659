"""PPO: GAE by hand, the batched roll-out, the clipped update, the step in the shared loop
(determinism, resume, cancel), validation and fine-tuning -- all at toy sizes (the training
smoke and benchmark runs of spec §E 7-8 are long and live outside the default run)."""

from __future__ import annotations

from dataclasses import replace
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from medloop.plugins.axons.checks import TracingInputError
from medloop.plugins.axons.env import EnvConfig, episode_from_axon
from medloop.plugins.axons.nets import Actor, Critic
from medloop.plugins.axons.ppo import (
    PairSampler, PPOConfig, PPOStep, Rollout, TrackerConfig, collect, collect_one_at_a_time, critic_values,
    evaluate_policy, gae, make_model, ppo_update, train_tracker,
)
from medloop.plugins.axons.synth import make_batch

TOY = TrackerConfig(
    iterations=2, episodes=3, env=EnvConfig(max_steps=6), ppo=PPOConfig(passes=2), val_every=1, val_images=2,
)


def test_gae_by_hand():
    # episode 0: rewards 1, 0, 2 (terminal); episode 1: reward 5 (terminal); step order as collected
    rollout = Rollout(
        SimpleNamespace(size=2), None, None, None, None,
        reward=np.array([1.0, 5.0, 0.0, 2.0]), done=np.array([False, True, False, True]),
        episode=np.array([0, 1, 0, 0]), t=np.array([0, 0, 1, 2]),
    )
    values = np.array([0.5, 1.0, 0.5, 0.5])
    adv, ret = gae(rollout, values, gamma=0.99, lam=0.95)
    a2 = 2.0 - 0.5
    a1 = (0.0 + 0.99 * 0.5 - 0.5) + 0.99 * 0.95 * a2
    a0 = (1.0 + 0.99 * 0.5 - 0.5) + 0.99 * 0.95 * a1
    assert np.allclose(adv, [a0, 5.0 - 1.0, a1, a2])
    assert np.allclose(ret, adv + values)


class Counting(Actor):
    def __init__(self) -> None:
        super().__init__()
        self.rows: list[int] = []

    def forward(self, state):
        self.rows.append(len(state))
        return super().forward(state)


def test_batched_rollout_one_forward_per_step():
    torch.manual_seed(0)
    actor = Counting()
    episodes = [episode_from_axon(a) for a in make_batch(4, 64, "SI", 1)]
    r = collect(actor, episodes, EnvConfig(max_steps=6))
    assert len(actor.rows) == 6 and actor.rows[0] == 4  # one forward per step for all live episodes
    n = len(r.reward)
    assert n == sum(actor.rows) == int(r.env.steps.sum())
    assert r.actor_states.shape == (n, 12, 11, 11) and r.critic_states.shape == (n, 16, 11, 11)
    assert r.u.min() > 0 and r.u.max() < 1 and r.done.sum() == 4
    assert np.allclose(np.bincount(r.episode, weights=r.reward), r.env.returns)
    single = collect_one_at_a_time(Counting(), episodes, EnvConfig(max_steps=6))
    assert len(single) == 4 and sum(len(s.reward) for s in single) == 24


def test_ppo_update_improves_its_objectives():
    torch.manual_seed(1)
    actor, critic = Actor(), Critic()
    episodes = [episode_from_axon(a) for a in make_batch(4, 64, "SI", 2)]
    r = collect(actor, episodes, EnvConfig(max_steps=8))
    values = critic_values(critic, r.critic_states)
    adv, ret = gae(r, values)
    config = PPOConfig(passes=4)
    opts = tuple(torch.optim.Adam(n.parameters(), lr=config.lr, weight_decay=config.weight_decay) for n in (actor, critic))
    stats = ppo_update(actor, critic, opts, r, adv, ret, config)
    # the surrogate starts at exactly 0 (ratio 1, normalised advantages) and the value loss falls
    assert stats["actor_loss"] == pytest.approx(0.0, abs=1e-6)
    assert stats["value_loss_end"] < stats["value_loss"]
    with torch.no_grad():
        from medloop.plugins.axons.nets import log_prob

        new = log_prob(actor(torch.from_numpy(r.actor_states)), torch.from_numpy(r.u)).numpy()
    a = (adv - adv.mean()) / adv.std()
    assert float(np.mean(np.exp(new - r.log_prob) * a)) > 0  # more likely where the advantage is positive


def _weights(actor: Actor) -> list[torch.Tensor]:
    return [p.detach().clone() for p in actor.parameters()]


def test_training_is_deterministic_validated_and_resumes_exactly(tmp_path):
    from medloop.app.engine.loop import load_checkpoint

    seen = []
    a = train_tracker(TOY, progress=lambda d, t, info: seen.append(info["event"]), checkpoint=tmp_path / "full.pt")
    b = train_tracker(TOY)
    assert all(torch.equal(x, y) for x, y in zip(_weights(a.actor), _weights(b.actor)))
    assert [h["epoch"] for h in a.history] == [1, 2] and seen == ["step", "epoch"] * 2
    record = a.history[-1]
    for key in ("train_return", "train_actor_loss", "train_value_loss", "val_coverage", "val_error", "val_entropy_on"):
        assert key in record
    assert 0.0 <= record["val_coverage"] <= 100.0
    # one iteration, stop, resume for the second: the last state equals the uninterrupted run's
    calls = iter([False, True])
    part = train_tracker(TOY, should_stop=lambda: next(calls, True), checkpoint=tmp_path / "part.pt")
    assert part.loop.stopped and part.loop.steps_done == 1
    resumed = train_tracker(TOY, checkpoint=tmp_path / "part.pt", resume=True)
    assert resumed.loop.steps_done == 2 and resumed.history[-1]["train_return"] == record["train_return"]
    full, cont = load_checkpoint(tmp_path / "full.pt")["model"], load_checkpoint(tmp_path / "part.pt")["model"]
    assert full.keys() == cont.keys() and all(torch.equal(full[k], cont[k]) for k in full)


def test_step_draws_images_by_iteration_and_keeps_it_in_its_state():
    model = make_model()
    step = PPOStep(model, TOY)
    first = step.episodes(None)
    step.iteration = 1
    second = step.episodes(None)
    assert not np.array_equal(first[0].image, second[0].image)
    state = step.state_dict()
    other = PPOStep(make_model(), TOY)
    other.load_state_dict(state)
    assert other.iteration == 1 and np.array_equal(other.episodes(None)[0].image, second[0].image)


def test_fine_tuning_on_user_pairs():
    axons = make_batch(3, 48, "SI-RC", 5)
    images, paths = [a.image for a in axons], [a.centreline[::10] for a in axons]  # hand-drawn: sparse vertices
    sampler = PairSampler(images, paths, episodes=4, seed=1)
    batch = sampler()
    assert len(batch) == 4 and sampler.state_dict() == {"drawn": 1}
    assert all(np.linalg.norm(np.diff(e.centreline, axis=0), axis=1).max() <= 0.5 + 1e-9 for e in batch)
    torch.manual_seed(0)
    start = Actor()
    before = _weights(start)
    result = train_tracker(replace(TOY, iterations=1), pairs=(images, paths), actor=start)
    assert result.actor is start and "val_coverage" in result.history[0]
    # The starting weights were validated too; the actor holds whichever scored higher (ties: the start).
    trained = result.history[0]["val_score"]
    assert result.kept_start == (not trained > result.start_validation["val_score"])
    unchanged = all(torch.equal(x, y) for x, y in zip(before, _weights(start)))
    assert unchanged == result.kept_start
    with pytest.raises(TracingInputError, match="ground-truth path 2 has 1 vertex"):
        train_tracker(TOY, pairs=(images, paths[:2] + [paths[2][:1]]))


def test_settings_errors_before_training():
    with pytest.raises(TracingInputError) as err:
        train_tracker(replace(TOY, iterations=5, val_every=2))
    assert str(err.value) == "iterations (5) must be a positive multiple of val_every (2); change either"
    with pytest.raises(TracingInputError, match="unknown synthetic preset 'XX'"):
        train_tracker(replace(TOY, preset="XX"))


def test_evaluate_policy_scores_an_untrained_actor_low():
    torch.manual_seed(0)
    episodes = [episode_from_axon(a) for a in make_batch(4, 64, "SI", 8)]
    out = evaluate_policy(Actor(), episodes, EnvConfig(max_steps=20))
    assert out["val_score"] == out["val_coverage"] < 60.0


def test_a_fine_tune_never_returns_a_worse_actor_than_it_started_with():
    """The packaged tracker, fine-tuned for one iteration at a learning rate that wrecks it: the
    validated starting weights win, and the result holds them exactly."""
    from medloop.plugins.axons.tracker import load_tracker

    axons = make_batch(3, 64, "SI", 21)
    images, paths = [a.image for a in axons], [a.centreline for a in axons]
    start = load_tracker("axon-tracker-si").actor
    before = _weights(start)
    wreck = replace(TOY, iterations=1, episodes=4, env=EnvConfig(max_steps=40), ppo=PPOConfig(passes=3, lr=0.5))
    result = train_tracker(wreck, pairs=(images, paths), actor=start)
    assert result.start_validation["val_score"] > 90.0  # measured 100 % on these three axons
    assert result.history[0]["val_score"] < result.start_validation["val_score"]
    assert result.kept_start and all(torch.equal(x, y) for x, y in zip(before, _weights(start)))
