"""Axon tracker (#15): batched roll-out against one episode at a time, and one PPO iteration.

The batched environment steps all live episodes together, one actor forward per step; the
baseline rolls the same episodes out one after another (:func:`collect_one_at_a_time`). Both use
an untrained, seeded actor on the small-scale setting (spec §C: 64 x 64 SI images, 60-step cap,
the training rules, so every episode runs its full 60 steps: the same 960 transitions either way).
Also timed: one whole PPO iteration of 16 episodes x 60 steps (roll-out + values + 10 + 10
full-batch passes), split into its parts. One torch thread (the trainer's default). Timings
only, nothing asserted; report the machine and its load with the numbers.

    python benchmarks/bench_axons_rollout.py               # ~1 min on one core
    python benchmarks/bench_axons_rollout.py --episodes 32 --repeats 5
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def timed(fn, repeats: int) -> tuple[float, object]:
    """Median wall seconds of ``repeats`` calls and the last result."""
    times, out = [], None
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--episodes", type=int, default=16)
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)

    import torch

    torch.set_num_threads(1)
    from medloop.plugins.axons.env import EnvConfig, episode_from_axon
    from medloop.plugins.axons.ppo import (
        PPOStep, TrackerConfig, collect, collect_one_at_a_time, critic_values, gae, make_model, ppo_update,
    )
    from medloop.plugins.axons.synth import make_batch

    env = EnvConfig(max_steps=args.steps)
    episodes = [episode_from_axon(a) for a in make_batch(args.episodes, args.size, "SI", 1)]
    model = make_model(seed=0)
    actor = model["actor"]
    torch.manual_seed(0)
    t_batch, batched = timed(lambda: collect(actor, episodes, env), args.repeats)
    t_single, single = timed(lambda: collect_one_at_a_time(actor, episodes, env), args.repeats)
    n_b, n_s = len(batched.reward), sum(len(r.reward) for r in single)
    print(f"torch {torch.__version__}, 1 thread, OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS')}, "
          f"load average {os.getloadavg()[0]:.2f} on {os.cpu_count()} CPUs")
    print(f"roll-out of {args.episodes} episodes x {args.steps} steps on {args.size}x{args.size} SI (median of {args.repeats}):")
    print(f"  batched          {t_batch:7.3f} s  ({n_b} transitions, {1e3 * t_batch / n_b:.2f} ms each)")
    print(f"  one at a time    {t_single:7.3f} s  ({n_s} transitions, {1e3 * t_single / n_s:.2f} ms each)")
    print(f"  speed-up         {t_single / t_batch:7.2f} x")

    config = TrackerConfig(episodes=args.episodes, size=args.size, env=env)
    step = PPOStep(model, config)
    t_iter, scalars = timed(lambda: step(None, None), 1)
    rollout = collect(actor, step.episodes(None), env)
    t_values, values = timed(lambda: critic_values(model["critic"], rollout.critic_states), 1)
    adv, ret = gae(rollout, values)
    t_update, _ = timed(lambda: ppo_update(actor, model["critic"], step.optimisers, rollout, adv, ret, config.ppo), 1)
    print(f"one PPO iteration ({int(scalars['transitions'])} transitions): {t_iter:.2f} s "
          f"(critic values {t_values:.2f} s, 10 + 10 passes {t_update:.2f} s, the rest is the roll-out)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
