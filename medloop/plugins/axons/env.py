"""The tracking environment, batched: B episodes (B images, one agent each) stepped together.

State (Dai et al.): egocentric 11 x 11 views around the subpixel position -- (1) the image at full
resolution, (2) the 21 x 21 px window resampled to 11 x 11, (3) the history raster (every step's
segment), and for the critic only (4) the ground-truth centreline image I_G -- each stacked with
its 3 previous frames (oldest first): actor 3 x 4 = 12 channels, critic 4 x 4 = 16. The first
state repeats frame 0 four times.

Action: a displacement (row, col) in [-4, 4] px. Positions are clipped to the image, so pushing
against the border gives zero movement and the -1 reward; with ``border_stop_px`` (tracing) a step
whose target lies outside the image ends the episode ("border") when it moves less than that or
aims at least that far outside (the axon leaves the image: without this rule a trace slides along
the border with high entropy until ``max_steps``).
Reward (spec §A): the line integral of
I_G = exp(-dist^2 / (2 * 0.7^2)) over 100 points of the segment (``reward_mode`` "integral"; or
their "mean" or "sum"); no movement gives -1; every turn of more than 90 degrees against the
previous movement (v0 before the first) increments a reversal counter, and while it is odd the
reward changes sign. Episodes end within ``stop_radius_px`` of an end point ("end"), at the border,
after ``max_steps`` ("max_steps"), or when the policy's entropy exceeds ``entropy_stop``
("entropy"); finished episodes are masked out while the others continue.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, NamedTuple

import numpy as np

from medloop.plugins.axons.checks import TracingInputError, check_positive
from medloop.plugins.axons.geometry import distance_map, unit
from medloop.plugins.axons.views import VIEW, bilinear, coarse_view, fine_view, rasterise

if TYPE_CHECKING:
    from medloop.plugins.axons.synth import Axon

REWARD_MODES = ("integral", "mean", "sum")
STACK = 4  # frames per state
ACTOR_VIEWS = 3  # image, coarse image, history
CRITIC_VIEWS = 4  # + ground-truth centreline view


@dataclass(frozen=True)
class EnvConfig:
    """Episode rules (defaults: the paper's; the small-scale runs use ``max_steps=60``)."""

    max_steps: int = 200
    stop_radius_px: float = 3.0
    window_scale: float = 1.0  # 1.5 on real data (16.5 / 31.5 px spans)
    reward_mode: str = "integral"
    gt_sigma_px: float = 0.7  # I_G's Gaussian
    reward_points: int = 100
    max_step_px: float = 4.0  # fixed by the net: displacement = 8u - 4
    entropy_stop: float | None = None  # stop when the step's policy entropy exceeds this
    # stop a push against the border that moves less than this (None: never; training keeps
    # the paper's rule -- clipped, -1 for no movement -- so leaving is no escape from a bad reward)
    border_stop_px: float | None = None

    def checked(self) -> "EnvConfig":
        """This config, or a :class:`TracingInputError` naming the bad setting."""
        check_positive(max_steps=self.max_steps, stop_radius_px=self.stop_radius_px, window_scale=self.window_scale)
        if self.reward_mode not in REWARD_MODES:
            raise TracingInputError(f"reward_mode {self.reward_mode!r} is unknown; choose one of {', '.join(REWARD_MODES)}")
        return self


@dataclass
class EpisodeSpec:
    """One episode: the image, where the agent starts, where it may stop and (for rewards and the
    critic) the true centreline."""

    image: np.ndarray  # (H, W) float
    start: np.ndarray  # (2,) (row, col)
    direction: np.ndarray  # (2,) v0, the "previous action" of step 1 (zeros: none)
    ends: np.ndarray  # (M, 2) end points; M may be 0
    centreline: np.ndarray | None = None  # (N, 2); None: no reward, no critic view


def episode_from_axon(axon: "Axon") -> EpisodeSpec:
    """A synthetic axon traced from its start to its far end."""
    return EpisodeSpec(axon.image, axon.start, axon.direction, axon.end[None], axon.centreline)


def episode_from_path(image: np.ndarray, path: np.ndarray, reverse: bool = False) -> EpisodeSpec:
    """A user's (image, true path) pair (fine-tuning): start at the path's first vertex (its last
    with ``reverse``), stop at the other end; v0 along the path's first 2 px."""
    from medloop.plugins.axons.geometry import resample

    path = np.asarray(path, dtype=np.float64)[::-1] if reverse else np.asarray(path, dtype=np.float64)
    dense = resample(path, 0.5)
    ahead = dense[min(4, len(dense) - 1)]
    return EpisodeSpec(np.asarray(image, dtype=np.float32), dense[0], unit(ahead - dense[0]), dense[-1][None], dense)


class StepOut(NamedTuple):
    """What one step gave the episodes it moved (rows follow the ``idx`` passed to step)."""

    reward: np.ndarray  # (n,)
    done: np.ndarray  # (n,) bool: the episode ended with this step
    moved: np.ndarray  # (n,) step length in px


def _pad(arrays: Sequence[np.ndarray], shape: tuple[int, int]) -> np.ndarray:
    out = np.zeros((len(arrays), *shape), dtype=np.float32)
    for i, a in enumerate(arrays):
        out[i, : a.shape[0], : a.shape[1]] = a
    return out


def ground_truth_image(shape: tuple[int, int], centreline: np.ndarray, sigma: float = 0.7) -> np.ndarray:
    """I_G = exp(-dist^2 / (2 sigma^2)) of each pixel's distance to the centreline (1 on it)."""
    d = distance_map(shape, centreline, max_distance=6.0 * sigma)  # beyond: < 1e-7, taken as 0
    return np.exp(-(d**2) / (2.0 * sigma**2)).astype(np.float32)


class AxonEnv:
    """B episodes stepped together; per-episode arrays padded to the largest image."""

    def __init__(self, episodes: Sequence[EpisodeSpec], config: EnvConfig = EnvConfig()) -> None:
        if len(episodes) == 0:
            raise TracingInputError("no episodes given; give at least one image with a start point")
        self.config = config.checked()
        self.episodes = list(episodes)
        sizes = np.array([e.image.shape for e in self.episodes], dtype=np.int64)
        self.limits = (sizes - 1).astype(np.float64)  # (B, 2) largest row / col
        shape = tuple(int(s) for s in sizes.max(axis=0))
        self.images = _pad([np.asarray(e.image, dtype=np.float32) for e in self.episodes], shape)
        self.has_truth = all(e.centreline is not None for e in self.episodes)
        self.truth = (
            _pad([ground_truth_image(e.image.shape, e.centreline, config.gt_sigma_px) for e in self.episodes], shape)
            if self.has_truth else None
        )
        m = max(len(e.ends) for e in self.episodes)
        self.ends = np.full((len(self.episodes), m, 2), np.nan)
        for i, e in enumerate(self.episodes):
            self.ends[i, : len(e.ends)] = e.ends
        self.reset()

    @property
    def size(self) -> int:
        """Number of episodes B."""
        return len(self.episodes)

    def reset(self) -> None:
        """All episodes back at their start, frame 0 repeated ``STACK`` times."""
        b = self.size
        self.pos = np.array([e.start for e in self.episodes], dtype=np.float64)
        self.previous = np.array([unit(np.asarray(e.direction, dtype=np.float64)) for e in self.episodes])
        self.reversals = np.zeros(b, dtype=np.int64)
        self.steps = np.zeros(b, dtype=np.int64)
        self.active = np.ones(b, dtype=bool)
        self.reasons: list[str | None] = [None] * b
        self.returns = np.zeros(b)
        self.paths: list[list[np.ndarray]] = [[p.copy()] for p in self.pos]
        self.entropies: list[list[float]] = [[] for _ in range(b)]
        self.history = np.zeros_like(self.images)
        rasterise(self.history, self.pos, self.pos)
        self.frames = np.zeros((b, STACK, CRITIC_VIEWS, VIEW, VIEW), dtype=np.float32)
        every = np.arange(b)
        self.frames[:] = self._frame(every)[:, None]

    def live(self) -> np.ndarray:
        """Indices of the episodes still running."""
        return np.flatnonzero(self.active)

    def _frame(self, idx: np.ndarray) -> np.ndarray:
        """(n, 4, 11, 11) current views of episodes ``idx``."""
        scale, pos = self.config.window_scale, self.pos[idx]
        views = [
            fine_view(self.images[idx], pos, scale),
            coarse_view(self.images[idx], pos, scale),
            fine_view(self.history[idx], pos, scale),
            fine_view(self.truth[idx], pos, scale) if self.truth is not None else np.zeros((len(idx), VIEW, VIEW), np.float32),
        ]
        return np.stack(views, axis=1)

    def actor_state(self, idx: np.ndarray) -> np.ndarray:
        """(n, 12, 11, 11): 4 frames (oldest first) x (image, coarse image, history)."""
        return self.frames[idx, :, :ACTOR_VIEWS].reshape(len(idx), STACK * ACTOR_VIEWS, VIEW, VIEW)

    def critic_state(self, idx: np.ndarray) -> np.ndarray:
        """(n, 16, 11, 11): 4 frames x (image, coarse image, history, ground truth)."""
        return self.frames[idx].reshape(len(idx), STACK * CRITIC_VIEWS, VIEW, VIEW)

    def reward(self, idx: np.ndarray, start: np.ndarray, stop: np.ndarray) -> np.ndarray:
        """Reward of moving episodes ``idx`` from ``start`` to ``stop`` (before the reversal rule)."""
        if self.truth is None:
            return np.zeros(len(idx))
        d = np.linalg.norm(stop - start, axis=1)
        t = np.linspace(0.0, 1.0, self.config.reward_points)[None, :, None]
        values = bilinear(self.truth[idx], start[:, None, :] + t * (stop - start)[:, None, :])
        mode = self.config.reward_mode
        r = values.mean(axis=1) * d if mode == "integral" else values.mean(axis=1) if mode == "mean" else values.sum(axis=1)
        return np.where(d > 0, r, -1.0)

    def step(self, idx: np.ndarray, displacement: np.ndarray, entropy: np.ndarray | None = None) -> StepOut:
        """Move the live episodes ``idx`` by ``displacement`` (n, 2) px (row, col).

        ``entropy`` (n,), the policy entropy each move came from, is recorded; with
        ``config.entropy_stop`` an episode whose entropy exceeds it stops here without moving.
        """
        idx = np.asarray(idx, dtype=np.int64)
        if not np.all(self.active[idx]):
            raise ValueError("step() was given finished episodes")  # a bug in the caller
        n, cfg = len(idx), self.config
        reward, done, moved = np.zeros(n), np.zeros(n, dtype=bool), np.zeros(n)
        halt = np.zeros(n, dtype=bool)
        if entropy is not None:
            for i, e in zip(idx, entropy):
                self.entropies[i].append(float(e))
            if cfg.entropy_stop is not None:
                halt = np.asarray(entropy) > cfg.entropy_stop
        for i in idx[halt]:
            self._finish(i, "entropy")
        done[halt] = True
        go = ~halt
        j = idx[go]
        start = self.pos[j]
        target = start + np.clip(np.asarray(displacement, dtype=np.float64)[go], -cfg.max_step_px, cfg.max_step_px)
        stop = np.clip(target, 0.0, self.limits[j])
        outside = np.any(target != stop, axis=1)
        r = self.reward(j, start, stop)
        move = stop - start
        d = np.linalg.norm(move, axis=1)
        # a turn of more than 90 degrees against the previous movement (v0 at first)
        self.reversals[j] += ((d > 0) & (np.einsum("ij,ij->i", move, self.previous[j]) < 0)).astype(np.int64)
        r = np.where((d > 0) & (self.reversals[j] % 2 == 1), -r, r)  # standing still stays -1
        self.previous[j] = np.where((d > 0)[:, None], unit(move), self.previous[j])
        rasterise(self.history, start, stop, rows=j)
        self.pos[j] = stop
        self.steps[j] += 1
        self.returns[j] += r
        for i, p in zip(j, stop):
            self.paths[i].append(p.copy())
        if cfg.border_stop_px is None:
            outside[:] = False
        else:
            overshoot = np.linalg.norm(target - stop, axis=1)
            outside &= (d < cfg.border_stop_px) | (overshoot >= cfg.border_stop_px)
        finished = self._stop_rules(j, outside)
        self._advance(j[~finished])
        reward[go], done[go], moved[go] = r, finished, d
        return StepOut(reward, done, moved)

    def _stop_rules(self, j: np.ndarray, outside: np.ndarray) -> np.ndarray:
        """Finish the episodes ``j`` that reached an end, pushed against the border or ran out of steps."""
        gap = np.linalg.norm(self.ends[j] - self.pos[j][:, None, :], axis=2)  # (n, M), nan for no end
        near = np.any(np.nan_to_num(gap, nan=np.inf) <= self.config.stop_radius_px, axis=1)
        finished = np.zeros(len(j), dtype=bool)
        for k, i in enumerate(j):
            reason = "end" if near[k] else "border" if outside[k] else "max_steps" if self.steps[i] >= self.config.max_steps else None
            if reason is not None:
                self._finish(i, reason)
                finished[k] = True
        return finished

    def _finish(self, i: int, reason: str) -> None:
        self.active[i] = False
        self.reasons[i] = reason

    def _advance(self, idx: np.ndarray) -> None:
        """Push the new frame of episodes ``idx`` onto their stacks."""
        if len(idx):
            self.frames[idx, :-1] = self.frames[idx, 1:]
            self.frames[idx, -1] = self._frame(idx)

    def path(self, i: int) -> np.ndarray:
        """(N, 2) visited positions of episode ``i``, start first."""
        return np.array(self.paths[i])


Chooser = Callable[[AxonEnv, np.ndarray], "tuple[np.ndarray, np.ndarray | None]"]


def drive(
    env: AxonEnv,
    choose: Chooser,
    should_stop: Callable[[], bool] | None = None,
    on_step: Callable[[np.ndarray, StepOut], None] | None = None,
) -> AxonEnv:
    """Run every episode of ``env`` to its end: ``choose(env, idx) -> (displacements, entropies or
    None)`` decides for all live episodes at once (one call per step); ``on_step(idx, out)`` sees
    each step's outcome; ``should_stop`` is polled every step (live episodes end "cancelled")."""
    while env.active.any():
        if should_stop is not None and should_stop():
            for i in env.live():
                env._finish(i, "cancelled")
            break
        idx = env.live()
        displacement, entropy = choose(env, idx)
        out = env.step(idx, displacement, entropy)
        if on_step is not None:
            on_step(idx, out)
    return env
