"""Spec §E check 3: the networks and the Beta policy; loading checkpoints."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from medloop.app.errors import MedloopError
from medloop.plugins.axons.checks import TracingInputError
from medloop.plugins.axons.nets import (
    Actor, Critic, displacement, entropy, load_actor, log_prob, mean_u, n_parameters, sample_u, save_actor,
)


def test_exact_parameter_counts():
    assert n_parameters(Actor()) == 2_790_340
    assert n_parameters(Critic()) == 2_792_001


def test_output_shapes_and_beta_parameters_above_one():
    torch.manual_seed(0)
    actor, critic = Actor(), Critic()
    for scale in (0.0, 1.0, 10.0, -10.0):
        params = actor(scale * torch.randn(64, 12, 11, 11))
        assert params.shape == (64, 4) and bool((params > 1).all())
    assert critic(torch.randn(5, 16, 11, 11)).shape == (5,)


def test_actions_lie_in_plus_minus_four_px_and_axes_map_to_row_col():
    torch.manual_seed(1)
    params = Actor()(torch.randn(256, 12, 11, 11))
    d = displacement(sample_u(params))
    assert d.shape == (256, 2) and float(d.abs().max()) <= 4.0
    # u = (u_x, u_y): u_x = 1 moves +4 px along columns, u_y = 0 moves -4 px along rows
    assert displacement(torch.tensor([[1.0, 0.0]])).tolist() == [[-4.0, 4.0]]


def test_beta_helpers():
    p = torch.tensor([[1.0, 1.0, 1.0, 1.0], [3.0, 1.0, 2.0, 2.0], [30.0, 10.0, 5.0, 15.0]])
    assert torch.allclose(mean_u(p), torch.tensor([[0.5, 0.5], [0.75, 0.5], [0.75, 0.25]]))
    ent = entropy(p)
    assert float(ent[0]) == pytest.approx(0.0, abs=1e-6)  # two uniforms
    assert bool((ent[1:] < 0).all()) and float(ent[2]) < float(ent[1])  # sharper -> lower
    u = torch.tensor([[0.3, 0.6]] * 3)
    manual = torch.distributions.Beta(p[:, [0, 2]], p[:, [1, 3]]).log_prob(u).sum(-1)
    assert torch.allclose(log_prob(p, u), manual)


def test_save_and_load_actor_round_trip(tmp_path):
    torch.manual_seed(2)
    actor = Actor()
    save_actor(actor, tmp_path / "a.pt", {"preset": "SI"})
    loaded = load_actor(tmp_path / "a.pt")
    x = torch.randn(3, 12, 11, 11)
    assert torch.equal(loaded(x), actor(x))
    assert torch.equal(load_actor(actor.state_dict())(x), actor(x))
    # the training loop's checkpoint (an nn.ModuleDict with actor and critic)
    both = torch.nn.ModuleDict({"actor": actor, "critic": Critic()})
    assert torch.equal(load_actor({"model": both.state_dict()})(x), actor(x))


def test_other_architectures_are_refused_with_the_key_named(tmp_path):
    with pytest.raises(TracingInputError) as err:
        load_actor(Critic().state_dict())
    assert str(err.value) == (
        "checkpoint is not an axon-tracker actor: trunk.conv1.weight has shape (32, 16, 5, 5), expected "
        "(32, 12, 5, 5) (12 input channels); choose a checkpoint trained by the axon tracker")
    with pytest.raises(MedloopError) as err:
        load_actor({"conv.weight": torch.zeros(3)})
    assert str(err.value).startswith(
        "checkpoint is not an axon-tracker actor: missing keys ['trunk.conv1.weight', 'trunk.conv1.bias', "
        "'trunk.conv2.weight'], unexpected keys ['conv.weight']")
    bad = tmp_path / "junk.pt"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match=r"cannot read checkpoint .*junk.pt \(UnpicklingError: not a weights file\); choose an axon-tracker actor \(.pt\)$"):
        load_actor(bad)
    with pytest.raises(TracingInputError, match="is a list, not an actor state"):
        load_actor([1, 2])


def test_eval_uses_the_beta_mean_twice_identical():
    from medloop.plugins.axons.synth import make_axon
    from medloop.plugins.axons.trace import trace

    torch.manual_seed(3)
    actor = Actor()
    a = make_axon(64, "SI", np.random.default_rng(0))
    first = trace(a.image, [a.start], actor, max_steps=20)
    second = trace(a.image, [a.start], actor, max_steps=20)
    assert np.array_equal(first[0].vertices, second[0].vertices)
    assert np.array_equal(first[0].entropy, second[0].entropy)
    state = torch.from_numpy(np.zeros((1, 12, 11, 11), np.float32))
    step = first[0].vertices[1] - first[0].vertices[0]
    with torch.no_grad():  # the first move is the mean action of the first state (frames of the seed)
        from medloop.plugins.axons.env import AxonEnv, EnvConfig, EpisodeSpec

        env = AxonEnv([EpisodeSpec(a.image, a.start, np.zeros(2), np.zeros((0, 2)))], EnvConfig())
        state = torch.from_numpy(env.actor_state(np.array([0])))
        expect = displacement(mean_u(actor(state)))[0].double().numpy()
    assert np.allclose(step, expect)
