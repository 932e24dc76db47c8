"""The MEow reference of ``bench_sps.py --meow-ref`` computes our EBFlow's loss: same weights, same numbers."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest
import torch
from torch import nn

from rl_energy.registry import get_agent
from tests.conftest import load_script

ref = load_script("meow_reference")


def _layers(net: nn.Module, kind: type) -> list[nn.Module]:
    return [m for m in net.modules() if isinstance(m, kind)]


def _map_weights(agent, reference) -> None:
    """Copy our EBFlow's parameters onto the reference (masked full-width couplings, two separate shift nets)."""
    policy = reference.policy
    with torch.no_grad():
        policy.log_std_net.load_state_dict(agent.flow.scale.net.state_dict())
        for k, head in enumerate(policy.shifts):
            for ours, theirs in zip(agent.shift.layers, _layers(head, nn.Linear), strict=True):
                theirs.weight.copy_(ours.weight[k].T)
                theirs.bias.copy_(ours.bias[k, 0])
        for coupling, masked in zip(agent.flow.couplings, policy.couplings, strict=True):
            cond = torch.nonzero(masked.mask).flatten()  # the dims that condition, in our half's order
            shifted = torch.nonzero(masked.mask == 0).flatten()
            ours_lin, theirs_lin = _layers(coupling.net, nn.Linear), _layers(masked.net, nn.Linear)
            first, last = theirs_lin[0], theirs_lin[-1]
            first.weight.zero_()
            first.weight[:, cond] = ours_lin[0].weight[:, : len(cond)]
            first.weight[:, masked.mask.numel():] = ours_lin[0].weight[:, len(cond):]
            first.bias.copy_(ours_lin[0].bias)
            for o, t in zip(ours_lin[1:-1], theirs_lin[1:-1], strict=True):
                t.load_state_dict(o.state_dict())
            last.weight.zero_()
            last.bias.zero_()
            last.weight[shifted] = ours_lin[-1].weight
            last.bias[shifted] = ours_lin[-1].bias
            for kind in (nn.LayerNorm, ref.Swish):
                for o, t in zip(_layers(coupling.net, kind), _layers(masked.net, kind), strict=True):
                    t.load_state_dict(o.state_dict())
    reference.target.load_state_dict(policy.state_dict())


@pytest.mark.parametrize("action_dim", [4, 3])
def test_reference_loss_and_gradients_equal_ours(action_dim: int) -> None:
    torch.manual_seed(0)
    obs_dim, batch = 5, 64
    spec = get_agent("ebflow")
    cfg = spec.config_cls(dropout=0.0, alpha=0.2, flow_hidden=[16, 16], shift_hidden=[32, 32])
    agent = spec.cls(gym.spaces.Box(-np.inf, np.inf, (obs_dim,), np.float32),
                     gym.spaces.Box(-1, 1, (action_dim,), np.float32), cfg)
    with torch.no_grad():  # away from the zero initialisation, so every net matters
        for p in [*agent.flow.parameters(), *agent.shift.parameters()]:
            p.add_(0.3 * torch.randn_like(p))
        agent.scale_target.load_state_dict(agent.flow.scale.state_dict())
        agent.shift_target.load_state_dict(agent.shift.state_dict())
    reference = ref.MEowReference(obs_dim, action_dim, cfg)
    _map_weights(agent, reference)

    obs, next_obs = torch.randn(batch, obs_dim), torch.randn(batch, obs_dim)
    action = torch.rand(batch, action_dim) * 1.98 - 0.99
    reward, done = torch.randn(batch), (torch.rand(batch) < 0.2).float()
    alpha = torch.tensor(cfg.alpha)
    ours, _ = agent.loss(obs, action, reward, next_obs, done.bool(), alpha)
    theirs = reference.loss(obs, action, reward, next_obs, done)
    assert ours.item() > 1e-3
    torch.testing.assert_close(theirs, ours, rtol=1e-5, atol=1e-6)

    ours.backward()
    theirs.backward()
    torch.testing.assert_close(reference.policy.log_std_net[0].weight.grad, agent.flow.scale.net[0].weight.grad,
                               rtol=1e-4, atol=1e-6)
    for k, head in enumerate(reference.policy.shifts):
        torch.testing.assert_close(head[0].weight.grad, agent.shift.layers[0].weight.grad[k].T, rtol=1e-4, atol=1e-6)
    for coupling, masked in zip(agent.flow.couplings, reference.policy.couplings, strict=True):
        cond = torch.nonzero(masked.mask).flatten()
        ours_first, theirs_first = _layers(coupling.net, nn.Linear)[0], _layers(masked.net, nn.Linear)[0]
        torch.testing.assert_close(theirs_first.weight.grad[:, cond], ours_first.weight.grad[:, : len(cond)],
                                   rtol=1e-4, atol=1e-6)


def test_reference_update_follows_algorithm_1() -> None:
    """One update: Adam moves every online parameter, the target moves by τ towards it, the loss is finite."""
    torch.manual_seed(1)
    cfg = get_agent("ebflow").config_cls(tau=0.5, flow_hidden=[8, 8], shift_hidden=[8, 8])
    reference = ref.MEowReference(3, 2, cfg)
    before = [p.detach().clone() for p in reference.target.parameters()]
    obs = torch.randn(16, 3)
    loss = reference.update(obs, torch.rand(16, 2) - 0.5, torch.randn(16), torch.randn(16, 3), torch.zeros(16))
    assert np.isfinite(loss)
    for old, target, online in zip(before, reference.target.parameters(), reference.policy.parameters(), strict=True):
        torch.testing.assert_close(target, 0.5 * old + 0.5 * online)


def test_reference_trains_on_a_real_env() -> None:
    from rl_energy.config import resolve_config

    # Hopper: float64 observations (the buffer stores float32) and terminations
    cfg = resolve_config("ebflow", "Hopper-v4", get_agent("ebflow").config_cls,
                         overrides=["train.batch_size=32", "train.buffer_size=1000"])
    sps, (_, start, _, end) = ref.train_sps("Hopper-v4", cfg, learning_starts=40, steps=30, seed=0)
    assert sps > 0 and end > start
    with pytest.raises(RuntimeError, match="raise --steps"):
        ref.train_sps("Hopper-v4", cfg, learning_starts=40, steps=1, seed=0)
