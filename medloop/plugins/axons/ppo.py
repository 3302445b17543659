"""PPO training of the tracker (Dai et al.): batched roll-outs, GAE, clipped updates, a step for
:func:`medloop.app.engine.loop.train`, validation, and fine-tuning on user (image, path) pairs.

One PPO iteration = one loop step: roll out ``episodes`` episodes together (one actor forward per
step for all live episodes), values of every state in one critic pass, GAE (gamma 0.99, lambda
0.95, episodes cut at ``max_steps`` treated as terminal), advantages normalised per batch, then
10 full-batch passes of the clipped objective (epsilon 0.2) for the actor and 10 of MSE to the
GAE returns for the critic; Adam, lr 5e-4, L2 weight decay 3e-4.
"""

from __future__ import annotations

import copy

from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch

from medloop.app.engine.loop import LoopConfig, LoopResult, TrainStep, train
from medloop.plugins.axons.checks import TracingInputError, check_pairs
from medloop.plugins.axons.env import AxonEnv, EnvConfig, EpisodeSpec, StepOut, drive, episode_from_axon, episode_from_path
from medloop.plugins.axons.metrics import evaluate_trace, summarise
from medloop.plugins.axons.nets import Actor, Critic, displacement, entropy, log_prob, sample_u
from medloop.plugins.axons.synth import make_batch, params_for
from medloop.plugins.axons.trace import run_policy

VALIDATION_SEED = 2019  # the fixed validation set: make_batch(val_images, size, preset, VALIDATION_SEED)


@dataclass(frozen=True)
class PPOConfig:
    """The update's settings (the paper's)."""

    gamma: float = 0.99
    lam: float = 0.95
    clip: float = 0.2
    passes: int = 10  # per network, one full-batch gradient step each
    lr: float = 5e-4
    weight_decay: float = 3e-4  # Adam's L2 penalty


@dataclass(frozen=True)
class TrackerConfig:
    """A training run (defaults: the small-scale faithful version, spec §C)."""

    iterations: int = 120
    episodes: int = 16  # per iteration (the paper: 32)
    size: int = 64  # synthetic image side (ignored when fine-tuning)
    preset: str = "SI"
    env: EnvConfig = field(default_factory=lambda: EnvConfig(max_steps=60))
    ppo: PPOConfig = field(default_factory=PPOConfig)
    seed: int = 0  # torch's seed and the training images' seed
    val_every: int = 10  # iterations between validations; must divide iterations
    val_images: int = 30
    val_seed: int = VALIDATION_SEED
    threads: int = 1  # torch threads while training (these small nets are slower with more)

    def as_dict(self) -> dict[str, Any]:
        """Plain values, for the checkpoint beside the actor (:func:`~.nets.save_actor`)."""
        return asdict(self)


@dataclass
class Rollout:
    """Transitions of one batched roll-out, in step order (row = one live episode at one step)."""

    env: AxonEnv
    actor_states: np.ndarray  # (N, 12, 11, 11)
    critic_states: np.ndarray  # (N, 16, 11, 11)
    u: np.ndarray  # (N, 2) Beta samples
    log_prob: np.ndarray  # (N,)
    reward: np.ndarray  # (N,)
    done: np.ndarray  # (N,) bool
    episode: np.ndarray  # (N,) episode index
    t: np.ndarray  # (N,) step index within the episode


def collect(actor: Actor, episodes: Sequence[EpisodeSpec], config: EnvConfig) -> Rollout:
    """Sample ``actor`` on all ``episodes`` at once: ONE forward per step for every live episode."""
    env = AxonEnv(episodes, config)
    keep: dict[str, list[np.ndarray]] = {k: [] for k in ("a", "c", "u", "lp", "r", "d", "e", "t")}

    def choose(env: AxonEnv, idx: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        states = env.actor_state(idx)
        with torch.no_grad():
            params = actor(torch.from_numpy(states))
            u = sample_u(params)
            keep["lp"].append(log_prob(params, u).numpy())
            ent = entropy(params).double().numpy()
        keep["a"].append(states.copy())
        keep["c"].append(env.critic_state(idx).copy())
        keep["u"].append(u.numpy())
        keep["e"].append(idx.copy())
        keep["t"].append(env.steps[idx].copy())
        return displacement(u).double().numpy(), ent

    def record(idx: np.ndarray, out: StepOut) -> None:
        keep["r"].append(out.reward)
        keep["d"].append(out.done)

    drive(env, choose, on_step=record)
    cat = {k: np.concatenate(v) for k, v in keep.items()}
    return Rollout(env, cat["a"], cat["c"], cat["u"], cat["lp"], cat["r"], cat["d"], cat["e"], cat["t"])


def collect_one_at_a_time(actor: Actor, episodes: Sequence[EpisodeSpec], config: EnvConfig) -> list[Rollout]:
    """The same roll-outs as :func:`collect`, one episode after another (the benchmark's baseline)."""
    return [collect(actor, [e], config) for e in episodes]


def gae(rollout: Rollout, values: np.ndarray, gamma: float = 0.99, lam: float = 0.95) -> tuple[np.ndarray, np.ndarray]:
    """(advantages, returns) per transition; every episode's last step is terminal (no bootstrap)."""
    steps, b = int(rollout.t.max()) + 1, rollout.env.size
    grid = np.zeros((3, steps, b))  # reward, value, done laid out as (t, episode)
    grid[0, rollout.t, rollout.episode] = rollout.reward
    grid[1, rollout.t, rollout.episode] = values
    grid[2, rollout.t, rollout.episode] = rollout.done
    adv = np.zeros((steps, b))
    running, next_value = np.zeros(b), np.zeros(b)
    for t in range(steps - 1, -1, -1):
        live = 1.0 - grid[2, t]
        delta = grid[0, t] + gamma * next_value * live - grid[1, t]
        running = delta + gamma * lam * live * running
        adv[t], next_value = running, grid[1, t]
    a = adv[rollout.t, rollout.episode]
    return a, a + values


def ppo_update(
    actor: Actor,
    critic: Critic,
    optimisers: tuple[torch.optim.Optimizer, torch.optim.Optimizer],
    rollout: Rollout,
    advantages: np.ndarray,
    returns: np.ndarray,
    config: PPOConfig,
) -> dict[str, float]:
    """``config.passes`` full-batch clipped-objective steps for the actor, as many MSE steps for the critic."""
    states = torch.from_numpy(rollout.actor_states)
    u = torch.from_numpy(rollout.u)
    old = torch.from_numpy(rollout.log_prob)
    adv = torch.as_tensor(advantages, dtype=torch.float32)
    adv = (adv - adv.mean()) / (adv.std() + 1e-8) if len(adv) > 1 else adv * 0.0
    first = {}
    for k in range(config.passes):
        params = actor(states)
        ratio = torch.exp(log_prob(params, u) - old)
        loss = -torch.min(ratio * adv, ratio.clamp(1 - config.clip, 1 + config.clip) * adv).mean()
        if k == 0:
            first = {"actor_loss": float(loss.detach()), "entropy": float(entropy(params.detach()).mean())}
        optimisers[0].zero_grad()
        loss.backward()
        optimisers[0].step()
    with torch.no_grad():
        ratio = torch.exp(log_prob(actor(states), u) - old)
    cstates, target = torch.from_numpy(rollout.critic_states), torch.as_tensor(returns, dtype=torch.float32)
    for k in range(config.passes):
        value_loss = torch.mean((critic(cstates) - target) ** 2)
        if k == 0:
            first["value_loss"] = float(value_loss.detach())
        optimisers[1].zero_grad()
        value_loss.backward()
        optimisers[1].step()
    first["clip_fraction"] = float(((ratio - 1).abs() > config.clip).float().mean())
    first["value_loss_end"] = float(value_loss.detach())
    return first


def critic_values(critic: Critic, states: np.ndarray, chunk: int = 1024) -> np.ndarray:
    """V(s) of every state, in chunks, without gradients."""
    with torch.no_grad():
        return np.concatenate([critic(torch.from_numpy(states[i : i + chunk])).double().numpy() for i in range(0, len(states), chunk)])


def make_model(actor: Actor | None = None, critic: Critic | None = None, seed: int | None = None) -> torch.nn.ModuleDict:
    """The loop's model: both networks in one module (checkpointed and kept at the best state
    together); new networks are initialised from ``seed`` (the caller's random state is kept)."""
    with torch.random.fork_rng(devices=[]):
        if seed is not None:
            torch.manual_seed(seed)
        return torch.nn.ModuleDict({"actor": actor or Actor(), "critic": critic or Critic()})


class PPOStep(TrainStep):
    """One PPO iteration per call. ``batch``: a list of :class:`EpisodeSpec` (e.g. from
    :class:`PairSampler`), or None to draw ``config.episodes`` synthetic axons seeded by
    (config.seed, iteration) -- the iteration count is in the state dict, so a resumed run draws
    the same images."""

    def __init__(self, model: torch.nn.ModuleDict, config: TrackerConfig) -> None:
        self.model, self.config = model, config
        ppo = config.ppo
        self.optimisers = (
            torch.optim.Adam(model["actor"].parameters(), lr=ppo.lr, weight_decay=ppo.weight_decay),
            torch.optim.Adam(model["critic"].parameters(), lr=ppo.lr, weight_decay=ppo.weight_decay),
        )
        self.iteration = 0

    def episodes(self, batch: Sequence[EpisodeSpec] | None) -> list[EpisodeSpec]:
        if batch is not None:
            return list(batch)
        cfg = self.config
        axons = make_batch(cfg.episodes, cfg.size, cfg.preset, [cfg.seed, self.iteration])
        return [episode_from_axon(a) for a in axons]

    def __call__(self, batch: Sequence[EpisodeSpec] | None, at: Any) -> dict[str, float]:
        actor, critic = self.model["actor"], self.model["critic"]
        rollout = collect(actor, self.episodes(batch), self.config.env)
        values = critic_values(critic, rollout.critic_states)
        adv, ret = gae(rollout, values, self.config.ppo.gamma, self.config.ppo.lam)
        stats = ppo_update(actor, critic, self.optimisers, rollout, adv, ret, self.config.ppo)
        self.iteration += 1
        env = rollout.env
        return {
            "return": float(env.returns.mean()),
            "steps": float(env.steps.mean()),
            "reached": float(np.mean([r == "end" for r in env.reasons])),
            "transitions": float(len(rollout.reward)),
            **stats,
        }

    def state_dict(self) -> dict[str, Any]:
        return {"iteration": self.iteration, "actor_opt": self.optimisers[0].state_dict(), "critic_opt": self.optimisers[1].state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.iteration = int(state["iteration"])
        self.optimisers[0].load_state_dict(state["actor_opt"])
        self.optimisers[1].load_state_dict(state["critic_opt"])


class PairSampler:
    """Fine-tuning batches: ``episodes`` user (image, true path) pairs drawn with replacement,
    each traced from a random end when ``both_ends``; seeded by (seed, batches drawn so far)."""

    def __init__(self, images: Sequence[Any], paths: Sequence[Any], episodes: int = 16, seed: int = 0, both_ends: bool = True) -> None:
        self.pairs = check_pairs(images, paths)
        self.episodes, self.seed, self.both_ends = int(episodes), int(seed), both_ends
        self.drawn = 0

    def __call__(self) -> list[EpisodeSpec]:
        rng = np.random.default_rng([self.seed, self.drawn])
        self.drawn += 1
        picks = rng.integers(len(self.pairs), size=self.episodes)
        flips = rng.random(self.episodes) < 0.5 if self.both_ends else np.zeros(self.episodes, dtype=bool)
        return [episode_from_path(*self.pairs[i], reverse=bool(f)) for i, f in zip(picks, flips)]

    def state_dict(self) -> dict[str, Any]:
        return {"drawn": self.drawn}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.drawn = int(state["drawn"])


def validation_episodes(config: TrackerConfig) -> list[EpisodeSpec]:
    """The fixed synthetic validation set of ``config`` (same images for every run)."""
    return [episode_from_axon(a) for a in make_batch(config.val_images, config.size, config.preset, config.val_seed)]


def evaluate_policy(actor: Actor, episodes: Sequence[EpisodeSpec], config: EnvConfig) -> dict[str, float]:
    """Deterministic traces of ``episodes`` scored against their centrelines: ``val_coverage`` (%),
    ``val_error`` / ``val_error_sd`` (px), ``val_lost``, ``val_entropy_on`` / ``_off``,
    ``val_return`` and ``val_score`` (= coverage, what picks the best state)."""
    env = run_policy(actor, episodes, config, deterministic=True)
    scores = [evaluate_trace(env.path(i), e.centreline, np.array(env.entropies[i])) for i, e in enumerate(episodes)]
    out = {f"val_{k}": v for k, v in summarise(scores).items()}
    out["val_return"] = float(env.returns.mean())
    out["val_score"] = out["val_coverage"]
    return out


@dataclass
class TrackerResult:
    """A finished run: the actor at its best validation state, the critic, the loop's history."""

    actor: Actor
    critic: Critic
    history: list[dict[str, Any]]
    loop: LoopResult
    start_validation: dict[str, float] | None = None  # a fine-tune's starting weights, validated
    kept_start: bool = False  # no iteration beat the starting weights: ``actor`` holds them


def _loop_config(config: TrackerConfig, checkpoint: Any, resume: bool) -> LoopConfig:
    if config.iterations < 1 or config.val_every < 1 or config.iterations % config.val_every:
        raise TracingInputError(
            f"iterations ({config.iterations}) must be a positive multiple of val_every ({config.val_every}); change either")
    if config.episodes < 1:
        raise TracingInputError(f"episodes per iteration must be at least 1, got {config.episodes}")
    return LoopConfig(
        epochs=config.iterations // config.val_every, steps_per_epoch=config.val_every, seed=config.seed,
        monitor="val_score", best_name="best_coverage", checkpoint=checkpoint, resume=resume,
    )


def train_tracker(
    config: TrackerConfig = TrackerConfig(),
    progress: Callable[..., None] | None = None,
    should_stop: Callable[[], bool] | None = None,
    *,
    pairs: tuple[Sequence[Any], Sequence[Any]] | None = None,
    val_pairs: tuple[Sequence[Any], Sequence[Any]] | None = None,
    actor: Actor | None = None,
    checkpoint: Any = None,
    resume: bool = False,
) -> TrackerResult:
    """Train (or, with ``pairs`` = (images, paths), fine-tune) the tracker with PPO through the
    shared loop; validation every ``config.val_every`` iterations on ``val_pairs`` or else the
    fixed synthetic set (fine-tuning without ``val_pairs`` validates on its training pairs).
    ``actor``: the starting weights (fine-tuning starts from a trained actor)."""
    loop_config = _loop_config(config, checkpoint, resume)
    params_for(config.preset)  # an unknown preset fails here, before any work
    data = PairSampler(*pairs, episodes=config.episodes, seed=config.seed) if pairs is not None else None
    if val_pairs is not None or pairs is not None:
        checked = check_pairs(*(val_pairs if val_pairs is not None else pairs))
        val = [episode_from_path(image, path) for image, path in checked]
    else:
        val = validation_episodes(config)
    model = make_model(actor, seed=config.seed)
    step = PPOStep(model, config)
    threads = torch.get_num_threads()
    torch.set_num_threads(config.threads)
    try:
        # A fine-tune's starting weights compete for "best": a short run must not return a worse actor.
        start = evaluate_policy(model["actor"], val, config.env) if actor is not None and not resume else None
        start_state = copy.deepcopy(model["actor"].state_dict()) if start is not None else None
        result = train(
            model, data, step, loop_config, progress=progress, should_stop=should_stop,
            validate=lambda m: evaluate_policy(m["actor"], val, config.env),
        )
    finally:
        torch.set_num_threads(threads)
    kept_start = start is not None and not (result.best_score > start["val_score"])
    if kept_start:
        model["actor"].load_state_dict(start_state)
    return TrackerResult(model["actor"], model["critic"], result.history, result, start, kept_start)
