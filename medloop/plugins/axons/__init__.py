"""Axon tracking by deep reinforcement learning (Dai et al., MIDL 2019): a synthetic axon generator,
a batched tracking environment, the actor-critic nets, PPO training and deterministic tracing."""
