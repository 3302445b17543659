"""Actor and critic of Dai et al. (Tables 3-4, with the 3x3 conv padded by 2) and the Beta policy.

Actor: 12 -> conv5 (pad 2) 32 -> conv3 (pad 2) 32 -> 5408 -> 512 -> 4, softplus + 1 = (alpha_x,
beta_x, alpha_y, beta_y), so alpha, beta > 1 (unimodal Betas); 2,790,340 parameters. Critic: the
same trunk on 16 channels, 512 -> 1 value; 2,792,001 parameters. An action u in [0, 1]^2 (x, y)
maps to a displacement (row, col) = (8 u_y - 4, 8 u_x - 4) px.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from medloop.plugins.axons.checks import TracingInputError

ACTOR_CHANNELS = 12
CRITIC_CHANNELS = 16
MAX_STEP_PX = 4.0
ACTOR_FORMAT = "medloop-axon-actor-1"
_EPS = 1e-6  # keeps log-probs finite at the ends of the support


class _Trunk(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(channels, 32, 5, stride=1, padding=2)  # 11 x 11 out
        self.conv2 = nn.Conv2d(32, 32, 3, stride=1, padding=2)  # 13 x 13 out
        self.fc = nn.Linear(32 * 13 * 13, 512)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.conv1(x))
        x = F.relu(self.conv2(x))
        return F.relu(self.fc(x.flatten(1)))


class Actor(nn.Module):
    """(B, 12, 11, 11) state -> (B, 4) Beta parameters (alpha_x, beta_x, alpha_y, beta_y) > 1."""

    def __init__(self) -> None:
        super().__init__()
        self.trunk = _Trunk(ACTOR_CHANNELS)
        self.head = nn.Linear(512, 4)

    def forward(self, state: torch.Tensor) -> torch.Tensor:
        return F.softplus(self.head(self.trunk(state))) + 1.0


class Critic(nn.Module):
    """(B, 16, 11, 11) state (with the ground-truth view) -> (B,) value."""

    def __init__(self) -> None:
        super().__init__()
        self.trunk = _Trunk(CRITIC_CHANNELS)
        self.head = nn.Linear(512, 1)

    def forward(self, state: torch.Tensor) -> torch.Tensor:
        return self.head(self.trunk(state)).squeeze(-1)


def n_parameters(net: nn.Module) -> int:
    """Number of weights of ``net``."""
    return sum(p.numel() for p in net.parameters())


def _betas(params: torch.Tensor) -> torch.distributions.Beta:
    """Two independent Betas per row; columns (x, y) of ``params`` (alpha_x, beta_x, alpha_y, beta_y)."""
    return torch.distributions.Beta(params[:, 0::2], params[:, 1::2])


def sample_u(params: torch.Tensor) -> torch.Tensor:
    """(B, 2) samples u = (u_x, u_y) in [0, 1] from torch's global random state."""
    return _betas(params).sample().clamp(_EPS, 1.0 - _EPS)


def mean_u(params: torch.Tensor) -> torch.Tensor:
    """(B, 2) Beta means alpha / (alpha + beta): the deterministic action."""
    return params[:, 0::2] / (params[:, 0::2] + params[:, 1::2])


def log_prob(params: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """(B,) log-density of u (B, 2) under the two Betas (summed over the axes)."""
    return _betas(params).log_prob(u.clamp(_EPS, 1.0 - _EPS)).sum(-1)


def entropy(params: torch.Tensor) -> torch.Tensor:
    """(B,) differential entropy on the [0, 1] support, summed over the axes (<= 0; 0 = uniform)."""
    return _betas(params).entropy().sum(-1)


def displacement(u: torch.Tensor) -> torch.Tensor:
    """(B, 2) (row, col) px displacement 8u - 4 of actions u = (u_x, u_y)."""
    return (2.0 * u - 1.0).flip(-1) * MAX_STEP_PX


def save_actor(actor: Actor, path: str | os.PathLike[str], config: Mapping[str, Any] | None = None) -> None:
    """Write the actor's weights (and the settings it was trained with) atomically."""
    from medloop.app.io.atomic import atomic_torch_save

    state = {k: v.detach().cpu() for k, v in actor.state_dict().items()}
    atomic_torch_save({"format": ACTOR_FORMAT, "actor": state, "config": dict(config or {})}, Path(path), suffix=".tmp")


def _state_of(source: Any) -> Mapping[str, Any]:
    """The actor state dict inside a saved actor, a training checkpoint or a bare state dict."""
    name = "checkpoint"
    if isinstance(source, (str, os.PathLike)):
        name = str(source)
        try:
            source = torch.load(source, map_location="cpu", weights_only=True)
        except Exception as exc:  # a foreign or corrupt file is the user's to fix
            raise TracingInputError(
                f"cannot read checkpoint {name} ({type(exc).__name__}: not a weights file); choose an axon-tracker actor (.pt)") from exc
    if not isinstance(source, Mapping):
        raise TracingInputError(f"{name} is a {type(source).__name__}, not an actor state; choose an axon-tracker actor")
    if "actor" in source and isinstance(source["actor"], Mapping):
        return source["actor"]
    if "model" in source and isinstance(source["model"], Mapping):  # the training loop's checkpoint
        return {k[len("actor."):]: v for k, v in source["model"].items() if k.startswith("actor.")}
    return source


def load_actor(path_or_state: Any) -> Actor:
    """An :class:`Actor` from a path, a state dict or a checkpoint; other architectures are refused
    with the first wrong key or shape named."""
    if isinstance(path_or_state, Actor):
        return path_or_state
    state = _state_of(path_or_state)
    want = Actor().state_dict()
    missing = [k for k in want if k not in state]
    extra = [k for k in state if k not in want]
    if missing or extra:
        raise TracingInputError(
            f"checkpoint is not an axon-tracker actor: missing keys {missing[:3]}, unexpected keys {extra[:3]}; "
            "choose a checkpoint trained by the axon tracker")
    for key, value in want.items():
        got = tuple(getattr(state[key], "shape", ()))
        if got != tuple(value.shape):
            raise TracingInputError(
                f"checkpoint is not an axon-tracker actor: {key} has shape {got}, expected {tuple(value.shape)} "
                f"({ACTOR_CHANNELS} input channels); choose a checkpoint trained by the axon tracker")
    actor = Actor()
    actor.load_state_dict({k: torch.as_tensor(v) for k, v in state.items()})
    return actor.eval()
