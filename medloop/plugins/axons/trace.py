"""Deterministic tracing: every seed of an image traced together, one actor forward per step.

The policy's Beta mean is the action (training samples instead); the policy entropy at every
vertex is the trace's uncertainty. Input is checked before any work (:mod:`.checks`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np

from medloop.plugins.axons.checks import TracingInputError, check_image, check_points, check_positive
from medloop.plugins.axons.env import AxonEnv, EnvConfig, EpisodeSpec, drive


class Trace(NamedTuple):
    """One seed's trace."""

    vertices: np.ndarray  # (N, 2) float (row, col), the seed first
    entropy: np.ndarray  # policy entropy of the step taken at each vertex (N - 1, or N after an entropy stop)
    stop_reason: str  # "end", "border", "max_steps", "entropy" or "cancelled"
    seed_id: int  # index of the seed


@dataclass(frozen=True)
class TraceParams:
    """Tracing settings (see :func:`trace`)."""

    max_steps: int = 200
    window_scale: float = 1.0
    stop_radius_px: float = 3.0
    entropy_stop: float | None = None
    deterministic: bool = True  # the Beta mean; False samples (for comparisons only)
    border_stop_px: float = 1.0  # a push against the border moving less than this ends the trace


def run_policy(
    actor: Any,
    episodes: Sequence[EpisodeSpec],
    config: EnvConfig,
    deterministic: bool = True,
    should_stop: Callable[[], bool] | None = None,
    on_step: Callable[..., None] | None = None,
) -> AxonEnv:
    """Roll ``actor`` out on ``episodes`` (batched, no gradients); the finished environment."""
    import torch

    from medloop.plugins.axons.nets import displacement, entropy, mean_u, sample_u

    def choose(env: AxonEnv, idx: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        with torch.no_grad():
            params = actor(torch.from_numpy(env.actor_state(idx)))
            u = mean_u(params) if deterministic else sample_u(params)
            return displacement(u).double().numpy(), entropy(params).double().numpy()

    return drive(AxonEnv(episodes, config), choose, should_stop, on_step)


def _ends_for(seed: np.ndarray, end_points: np.ndarray, radius: float) -> np.ndarray:
    """The end points a trace from ``seed`` may stop at: all but those marking the seed itself
    (within 2 x stop radius), so seeds may be listed among the end points."""
    if len(end_points) == 0:
        return np.zeros((0, 2))
    far = np.linalg.norm(end_points - seed, axis=1) > 2.0 * radius
    return end_points[far]


def check_inputs(image: Any, seeds: Any, params: TraceParams, end_points: Any = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(image, seeds, end points) checked, or a :class:`TracingInputError` naming what is wrong."""
    arr = check_image(image)
    check_positive(max_steps=params.max_steps, window_scale=params.window_scale, stop_radius_px=params.stop_radius_px)
    if int(params.max_steps) != params.max_steps:
        raise TracingInputError(f"max_steps must be a whole number, got {params.max_steps}; choose e.g. 200")
    if params.entropy_stop is not None and not np.isfinite(params.entropy_stop):
        raise TracingInputError(f"entropy_stop must be a finite number or off, got {params.entropy_stop}")
    pts = check_points(seeds, arr.shape, "seed")
    ends = np.zeros((0, 2)) if end_points is None or np.size(end_points) == 0 else check_points(end_points, arr.shape, "end point")
    return arr, pts, ends


def trace_with(
    image: Any,
    seeds: Any,
    actor: Any,
    params: TraceParams = TraceParams(),
    end_points: Any = None,
    progress: Callable[[int, int], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> list[Trace]:
    """:func:`trace` with a parameters object and ``progress(step, max_steps)`` / ``should_stop``."""
    from medloop.plugins.axons.nets import load_actor

    arr, pts, ends = check_inputs(image, seeds, params, end_points)
    net = load_actor(actor)  # an Actor is used as is; a path or state dict is checked first
    config = EnvConfig(
        max_steps=int(params.max_steps), stop_radius_px=float(params.stop_radius_px),
        window_scale=float(params.window_scale), entropy_stop=params.entropy_stop,
        border_stop_px=params.border_stop_px,
    )
    episodes = [EpisodeSpec(arr, p, np.zeros(2), _ends_for(p, ends, config.stop_radius_px)) for p in pts]
    done = [0]

    def tick(idx: np.ndarray, out: Any) -> None:
        done[0] += 1
        if progress is not None:
            progress(done[0], config.max_steps)

    env = run_policy(net, episodes, config, params.deterministic, should_stop, tick)
    return [Trace(env.path(i), np.array(env.entropies[i]), env.reasons[i], i) for i in range(env.size)]


def trace(
    image: Any,
    seeds: Any,
    actor: Any,
    max_steps: int = 200,
    window_scale: float = 1.0,
    stop_radius_px: float = 3.0,
    end_points: Any = None,
    entropy_stop: float | None = None,
) -> list[Trace]:
    """Trace an axon from each of ``seeds`` ((N, 2) (row, col)) in a 2-D greyscale ``image``.

    ``actor``: an :class:`~medloop.plugins.axons.nets.Actor`, its state dict or a checkpoint path.
    A trace stops within ``stop_radius_px`` of an end point (``end_points``, (M, 2), those at
    its own seed ignored), when it pushes against the image border (moving < 1 px), after
    ``max_steps``, or when the step's entropy exceeds ``entropy_stop``. ``window_scale``: 1.0 for synthetic-like data, 1.5 for real data.
    """
    params = TraceParams(max_steps, window_scale, stop_radius_px, entropy_stop)
    return trace_with(image, seeds, actor, params, end_points)
