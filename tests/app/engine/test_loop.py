"""The one training loop with steps that are not "one loss, one optimiser": a toy GAN step (two
networks, two optimisers, alternating updates) and a toy RL step (a rollout, then several PPO
passes over it). Both run through the same loop with exact checkpoint/resume, progress totals,
cancel, best-state keeping and the epoch hook."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch
from torch import nn

from medloop.app.engine.jobs import JobCancelled
from medloop.app.engine.loop import LoopConfig, StepAt, TrainStep, load_checkpoint, train

torch.set_num_threads(1)


# --------------------------------------------------------------------------------------- a GAN


class RealSampler:
    """Data: batches of 2-D points around (2, -1), from a numpy generator (checkpointed)."""

    def __init__(self, seed: int = 0) -> None:
        self.rng = np.random.default_rng(seed)

    def __call__(self) -> torch.Tensor:
        return torch.from_numpy(self.rng.normal([2.0, -1.0], 0.3, (16, 2)).astype(np.float32))

    def state_dict(self) -> dict:
        return {"rng": self.rng.bit_generator.state}

    def load_state_dict(self, state: dict) -> None:
        self.rng.bit_generator.state = state["rng"]


class GanStep(TrainStep):
    """One discriminator update, then one generator update (noise from torch's seeded RNG);
    the generator's learning rate decays per step."""

    def __init__(self, model: nn.ModuleDict) -> None:
        self.g, self.d = model["generator"], model["discriminator"]
        self.opt_g = torch.optim.Adam(self.g.parameters(), lr=1e-2)
        self.opt_d = torch.optim.SGD(self.d.parameters(), lr=5e-2, momentum=0.9)
        self.sched_g = torch.optim.lr_scheduler.StepLR(self.opt_g, step_size=4, gamma=0.5)
        self.bce = nn.BCEWithLogitsLoss()

    def __call__(self, real: torch.Tensor, at: StepAt) -> dict[str, float]:
        fake = self.g(torch.randn(len(real), 2))
        ones, zeros = torch.ones(len(real), 1), torch.zeros(len(real), 1)
        self.opt_d.zero_grad()
        loss_d = self.bce(self.d(real), ones) + self.bce(self.d(fake.detach()), zeros)
        loss_d.backward()
        self.opt_d.step()
        self.opt_g.zero_grad()
        loss_g = self.bce(self.d(fake), ones)
        loss_g.backward()
        self.opt_g.step()
        lr = self.opt_g.param_groups[0]["lr"]
        self.sched_g.step()
        return {"loss_g": float(loss_g.detach()), "loss_d": float(loss_d.detach()), "lr": lr}

    def state_dict(self) -> dict:
        return {"opt_g": self.opt_g.state_dict(), "opt_d": self.opt_d.state_dict(), "sched_g": self.sched_g.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.opt_g.load_state_dict(state["opt_g"])
        self.opt_d.load_state_dict(state["opt_d"])
        self.sched_g.load_state_dict(state["sched_g"])


def gan(init_seed: int = 0):
    torch.manual_seed(init_seed)
    model = nn.ModuleDict({"generator": nn.Linear(2, 2), "discriminator": nn.Sequential(nn.Linear(2, 8), nn.ReLU(), nn.Linear(8, 1))})
    return model, RealSampler(), GanStep(model), None


# ------------------------------------------------------------------------------------ an RL policy


class PpoStep(TrainStep):
    """A contextual bandit: observation o (4 values), 3 actions, reward 1 for the action that
    ``argmax(W o)`` names. Each step collects a rollout of 32 (observations from the step's own
    numpy generator, actions sampled from the policy with torch's RNG), then makes 3 PPO passes of
    2 shuffled minibatches with the clipped surrogate loss."""

    W = torch.tensor([[1.0, -1.0, 0.5, 0.0], [-0.5, 1.0, 0.0, 1.0], [0.0, 0.0, -1.0, -1.0]])

    def __init__(self, policy: nn.Module, passes: int = 3, clip: float = 0.2) -> None:
        self.policy, self.passes, self.clip = policy, passes, clip
        self.optimizer = torch.optim.Adam(policy.parameters(), lr=3e-2)
        self.env = np.random.default_rng(123)

    def rollout(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        obs = torch.from_numpy(self.env.normal(size=(32, 4)).astype(np.float32))
        with torch.no_grad():
            dist = torch.distributions.Categorical(logits=self.policy(obs))
            actions = dist.sample()
            old_logp = dist.log_prob(actions)
        reward = (actions == (obs @ self.W.T).argmax(1)).float()
        return obs, actions, old_logp, reward

    def __call__(self, batch: None, at: StepAt) -> dict[str, float]:
        obs, actions, old_logp, reward = self.rollout()
        advantage = reward - reward.mean()
        for _ in range(self.passes):
            for idx in torch.randperm(len(obs)).chunk(2):
                logp = torch.distributions.Categorical(logits=self.policy(obs[idx])).log_prob(actions[idx])
                ratio = torch.exp(logp - old_logp[idx])
                surrogate = torch.min(ratio * advantage[idx], ratio.clamp(1 - self.clip, 1 + self.clip) * advantage[idx])
                loss = -surrogate.mean()
                self.optimizer.zero_grad()
                loss.backward()
                self.optimizer.step()
        return {"reward": float(reward.mean()), "loss": float(loss.detach())}

    def state_dict(self) -> dict:
        return {"optimizer": self.optimizer.state_dict(), "env": self.env.bit_generator.state}

    def load_state_dict(self, state: dict) -> None:
        self.optimizer.load_state_dict(state["optimizer"])
        self.env.bit_generator.state = state["env"]


def greedy_reward(policy: nn.Module) -> dict[str, float]:
    obs = torch.from_numpy(np.random.default_rng(7).normal(size=(256, 4)).astype(np.float32))
    with torch.no_grad():
        hit = (policy(obs).argmax(1) == (obs @ PpoStep.W.T).argmax(1)).float().mean()
    return {"val_score": float(hit)}


def ppo(init_seed: int = 0):
    torch.manual_seed(init_seed)
    policy = nn.Linear(4, 3)
    return policy, None, PpoStep(policy), greedy_reward


# ------------------------------------------------------------------------------------------ tests

KINDS = {"gan": gan, "ppo": ppo}
CONFIG = LoopConfig(epochs=4, steps_per_epoch=3, seed=5)


def states_equal(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def run(kind: str, config: LoopConfig, init_seed: int = 0, **kwargs):
    model, data, step, validate = KINDS[kind](init_seed)
    return train(model, data, step, config, validate=validate, **kwargs), step


@pytest.mark.parametrize("kind", KINDS)
def test_resume_after_a_stop_mid_epoch_equals_an_uninterrupted_run(kind, tmp_path):
    straight, straight_step = run(kind, replace(CONFIG, checkpoint=tmp_path / "straight.pt"))
    ck = tmp_path / "ck.pt"
    steps = []

    def progress(done, total, info):
        if info["event"] == "step":
            steps.append(done)

    stopped, _ = run(kind, replace(CONFIG, checkpoint=ck), progress=progress, should_stop=lambda: len(steps) >= 7)
    assert stopped.stopped and stopped.steps_done == 7 and load_checkpoint(ck)["epoch"] == 2
    # A differently initialised model: everything comes from the checkpoint.
    resumed, resumed_step = run(kind, replace(CONFIG, checkpoint=ck, resume=True), init_seed=99)

    assert resumed.epochs_done == 4 and resumed.steps_done == 12 and not resumed.stopped
    assert states_equal(straight.model.state_dict(), resumed.model.state_dict())  # returned (best) state
    assert states_equal(load_checkpoint(tmp_path / "straight.pt")["model"], load_checkpoint(ck)["model"])  # last
    assert states_equal(straight.best_state, resumed.best_state) and straight.best_epoch == resumed.best_epoch
    for a, b in zip(straight.history, resumed.history):
        assert {k: v for k, v in a.items() if k != "seconds"} == {k: v for k, v in b.items() if k != "seconds"}
    # the optimisers' states (two for the GAN) resumed exactly too
    sa, sb = straight_step.state_dict(), resumed_step.state_dict()
    for key in sa:
        if key.startswith("opt"):
            for p, q in zip(sa[key]["state"].values(), sb[key]["state"].values()):
                assert all(torch.equal(torch.as_tensor(p[k]), torch.as_tensor(q[k])) for k in p)


@pytest.mark.parametrize("kind", KINDS)
def test_progress_totals_and_curves(kind):
    seen = []
    epochs = []
    result, _ = run(
        kind, CONFIG, progress=lambda done, total, info: seen.append((done, total, info["event"])),
        on_epoch=lambda model, record, improved: epochs.append((record["epoch"], improved)),
    )
    assert [s for s in seen if s[2] == "step"] == [(n, 12, "step") for n in range(1, 13)]
    assert [s for s in seen if s[2] == "epoch"] == [(n, 12, "epoch") for n in (3, 6, 9, 12)]
    assert [e for e, _ in epochs] == [1, 2, 3, 4]
    record = result.history[0]
    if kind == "gan":
        assert set(record) == {"epoch", "train_loss_g", "train_loss_d", "lr", "seconds"}
        assert [h["lr"] for h in result.history] == [1e-2, 5e-3, 2.5e-3, 2.5e-3]  # last lr of epochs ending at steps 3, 6, 9, 12 (halved every 4)
        assert all(improved for _, improved in epochs) and result.best_epoch == 4  # no validation: last is best
    else:
        assert set(record) == {"epoch", "train_reward", "train_loss", "val_score", "seconds"}
        scores = [h["val_score"] for h in result.history]
        assert result.best_score == max(scores) and result.best_epoch == scores.index(max(scores)) + 1
        assert [improved for _, improved in epochs][0] is True
        assert scores[-1] > 0.6  # the policy learnt the bandit (chance: 1/3)


@pytest.mark.parametrize("kind", KINDS)
def test_cancel_raises_and_leaves_the_last_checkpoint_loadable(kind, tmp_path):
    ck = tmp_path / "ck.pt"
    done = []
    with pytest.raises(JobCancelled):
        run(kind, replace(CONFIG, checkpoint=ck, raise_on_stop=True),
            progress=lambda d, t, info: done.append(d), should_stop=lambda: len(done) >= 5)
    state = load_checkpoint(ck)
    assert state["epoch"] == 1 and state["steps_done"] == 3
    model, _, step, _ = KINDS[kind](0)
    model.load_state_dict(state["model"])
    step.load_state_dict(state["step"])
    # ... and resuming from it finishes the run like an uninterrupted one.
    straight, _ = run(kind, CONFIG)
    resumed, _ = run(kind, replace(CONFIG, checkpoint=ck, resume=True))
    assert states_equal(straight.model.state_dict(), resumed.model.state_dict())


def test_seeded_run_leaves_the_global_rng_alone_and_sequence_data_cycles():
    model = nn.Linear(1, 1)
    state = torch.get_rng_state()
    batches = [torch.full((4, 2), float(i)) for i in range(3)]
    seen = []

    class Record(TrainStep):
        def __call__(self, batch, at):
            seen.append((at.epoch, at.index, at.done, int(batch[0, 0])))
            return {"x": float(torch.rand(()))}  # draws from the loop's seeded RNG

    a = train(model, batches, Record(), LoopConfig(epochs=2, steps_per_epoch=2, seed=3))
    assert torch.equal(state, torch.get_rng_state())
    assert seen == [(0, 0, 0, 0), (0, 1, 1, 1), (1, 0, 2, 2), (1, 1, 3, 0)]
    b = train(model, batches, Record(), LoopConfig(epochs=2, steps_per_epoch=2, seed=3))
    assert [h["train_x"] for h in a.history] == [h["train_x"] for h in b.history]


def test_a_checkpoint_needs_a_step_with_state(tmp_path):
    from medloop.app.errors import MedloopError

    with pytest.raises(MedloopError, match="checkpoints need the step's state"):
        train(nn.Linear(1, 1), None, lambda batch, at: {}, LoopConfig(checkpoint=tmp_path / "c.pt"))


def test_segmentation_runs_on_the_loop_with_its_epoch_hook():
    """train_segmentation is the segmentation step on this loop: the hook sees each epoch's
    record and whether it became the best (what a versioned save keys on)."""
    from medloop.app.engine.train import train_segmentation

    from .test_train import FAST, TRAIN, VAL, net

    seen = []
    result = train_segmentation(
        net(), TRAIN, VAL, FAST, on_epoch=lambda model, record, improved: seen.append((record["val_mean_dice"], improved))
    )
    assert [d for d, _ in seen] == [h["val_mean_dice"] for h in result.history]
    best = [i + 1 for i, (_, improved) in enumerate(seen) if improved][-1]
    assert best == result.best_epoch and seen[best - 1][0] == result.best_val_dice
