"""Minimum hyperspherical energy (Liu et al., NeurIPS 2018; digest §18): the energy and its variants, the
network regulariser, and the Thomson problem as a one-step task with its reference optimiser."""

from __future__ import annotations

import itertools
import math

import gymnasium as gym
import numpy as np
import pytest
import torch
from torch import nn

from rl_energy.envs.tasks.thomson import THOMSON_MINIMA, ThomsonTask, minimize_energy
from rl_energy.nets import MHE_VARIANTS, hyperspherical_energy, mhe_regularizer, mlp


def brute_force(w: torch.Tensor, s: float, angular: bool, half: bool) -> float:
    """The paper's Eq. (1)-(2) written as a double loop over pairs, averaged."""
    u = [row / row.norm() for row in w.double()]
    if half:
        u = u + [-v for v in u]
    terms = []
    for a, b in itertools.combinations(u, 2):
        z = math.acos(max(-1.0, min(1.0, float(a @ b)))) / math.pi if angular else float((a - b).norm())
        terms.append(-math.log(z) if s == 0 else z ** -s)
    return sum(terms) / len(terms)


@pytest.mark.parametrize("variant", sorted(MHE_VARIANTS))
def test_energy_of_every_variant_matches_the_pairwise_definition(variant):
    s, angular, half = MHE_VARIANTS[variant]
    w = torch.randn(7, 5, generator=torch.Generator().manual_seed(1), dtype=torch.float64) * 3.0
    got = float(hyperspherical_energy(w, s, angular, half))
    assert got == pytest.approx(brute_force(w, s, angular, half), rel=1e-9)
    # batched rows give each matrix's energy; "sum" is "mean" times the number of pairs
    batch = torch.stack([w, w.flip(0) * 0.5, torch.randn(7, 5, dtype=torch.float64)])
    per = torch.stack([hyperspherical_energy(b, s, angular, half) for b in batch])
    torch.testing.assert_close(hyperspherical_energy(batch, s, angular, half), per)
    n = 14 if half else 7
    assert float(hyperspherical_energy(w, s, angular, half, reduction="sum")) == pytest.approx(got * n * (n - 1) / 2)


@pytest.mark.parametrize("variant", ["s0", "s1", "s2", "a1", "half_s2"])
def test_energy_gradient_matches_finite_differences(variant):
    s, angular, half = MHE_VARIANTS[variant]
    w = torch.randn(5, 3, generator=torch.Generator().manual_seed(2), dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x: hyperspherical_energy(x, s, angular, half), (w,))


def test_platonic_configurations_have_their_closed_form_energies():
    tetra = torch.tensor([[1, 1, 1], [1, -1, -1], [-1, 1, -1], [-1, -1, 1]], dtype=torch.float64)
    octa = torch.cat([torch.eye(3), -torch.eye(3)]).double()
    # tetrahedron: 6 pairs at distance sqrt(8/3); octahedron: 12 pairs at sqrt(2), 3 antipodal pairs at 2
    assert float(hyperspherical_energy(tetra, 1.0, reduction="sum")) == pytest.approx(6 / math.sqrt(8 / 3))
    assert float(hyperspherical_energy(octa, 1.0, reduction="sum")) == pytest.approx(12 / math.sqrt(2) + 1.5)
    assert float(hyperspherical_energy(tetra * 7.0, 1.0, reduction="sum")) == pytest.approx(THOMSON_MINIMA[4])
    assert float(hyperspherical_energy(octa, 1.0, reduction="sum")) == pytest.approx(THOMSON_MINIMA[6], rel=1e-9)


def test_coincident_neurons_give_a_finite_energy_and_spread_under_descent():
    w = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]], requires_grad=True)
    e = hyperspherical_energy(w, 2.0)
    e.backward()
    assert torch.isfinite(e) and torch.isfinite(w.grad).all()
    # minimising the half-space energy spreads neurons that start nearly collinear: mean |cosine| drops
    v = torch.tensor([1.0, 0.0, 0.0]) + 0.1 * torch.randn(6, 3, generator=torch.Generator().manual_seed(0))
    v.requires_grad_(True)
    opt = torch.optim.SGD([v], lr=0.05)

    def mean_abs_cos(x: torch.Tensor) -> float:
        u = x / x.norm(dim=1, keepdim=True)
        c = (u @ u.T).abs()
        return float((c.sum() - c.diagonal().sum()) / (6 * 5))

    before = mean_abs_cos(v.detach())
    assert before > 0.95
    for _ in range(300):
        opt.zero_grad()
        hyperspherical_energy(v, 1.0, half_space=True).backward()
        opt.step()
    assert mean_abs_cos(v.detach()) < 0.5


def test_regularizer_weights_hidden_and_output_layers_and_keeps_half_space_off_the_output():
    torch.manual_seed(0)
    net = mlp(6, [8, 8], 4)
    linears = [m for m in net.modules() if isinstance(m, nn.Linear)]
    hidden = sum(hyperspherical_energy(m.weight, 2.0, half_space=True) for m in linears[:-1])
    out = hyperspherical_energy(linears[-1].weight, 2.0)
    torch.testing.assert_close(mhe_regularizer(net, "half_s2", 1.0, 10.0), hidden + 10.0 * out)
    torch.testing.assert_close(mhe_regularizer(net, "half_s2", 0.0, 1.0), out)
    assert float(mhe_regularizer(net, "s1", 0.0, 0.0)) == 0.0
    with pytest.raises(ValueError, match="MHE variant"):
        mhe_regularizer(net, "s3", 1.0, 1.0)
    for bad in ({"s": -1.0}, {"s": float("nan")}, {"reduction": "max"}):
        with pytest.raises(ValueError):
            hyperspherical_energy(torch.randn(3, 2), **bad)
    with pytest.raises(ValueError, match="N >= 2"):
        hyperspherical_energy(torch.randn(1, 3))


@pytest.mark.parametrize("n", [5, 12, 24])
def test_reference_optimiser_reaches_the_known_thomson_minima(n):
    points, energy = minimize_energy(n, restarts=16, seed=0)
    assert abs(energy - THOMSON_MINIMA[n]) / THOMSON_MINIMA[n] < 1e-6  # the issue asks 1e-4
    torch.testing.assert_close(points.norm(dim=-1), torch.ones(n, dtype=torch.float64))


def test_thomson_task_scores_the_projected_points_and_reports_the_gap():
    env = gym.make("rl_energy/Thomson-v0", n_points=12)
    task = env.unwrapped
    assert not task.full_information and task.known_minimum == THOMSON_MINIMA[12]
    points, energy = minimize_energy(12, restarts=4)
    action = torch.stack([points.reshape(-1) * 0.5, torch.randn(36, dtype=torch.float64)]).float()
    batch = task.contexts("test")
    reward = task.score(batch, action)
    assert float(reward[0]) == pytest.approx(-THOMSON_MINIMA[12], rel=1e-5)  # the row norms do not matter
    assert float(reward[1]) < float(reward[0])
    m = task.metrics(batch, action)
    assert abs(m["rel_gap"]) < 1e-5 and m["best_energy"] <= m["energy"]
    assert math.isnan(ThomsonTask(n_points=13).metrics(batch, torch.randn(1, 39))["rel_gap"])  # no tabulated E*
    obs, info = task.reset(seed=0)
    _, r, terminated, _, info = task.step(np.asarray(action[0]))
    assert terminated and info == {} and r == pytest.approx(float(reward[0]))
    for kwargs in ({"n_points": 1}, {"n_points": 2.5}, {"dim": 1}, {"s": -1}, {"s": "one"}):
        with pytest.raises(ValueError, match=next(iter(kwargs))):
            ThomsonTask(**kwargs)


def test_supervised_agent_adds_the_mhe_regulariser_and_decays_its_step_size():
    from rl_energy.config import resolve_config
    from rl_energy.errors import ConfigError
    from rl_energy.registry import get_agent
    from rl_energy.trainer import build_agent

    task = gym.make("rl_energy/Classification-v0", dataset="wine").unwrapped

    def agent(*overrides: str):
        cfg = resolve_config("supervised", "rl_energy/Classification-v0", get_agent("supervised").config_cls,
                             overrides=["agent.optimizer=sgd", "agent.lr=0.1", *overrides])
        torch.manual_seed(0)
        return build_agent(cfg, task.observation_space, task.action_space, torch.device("cpu"))

    plain, reg = agent(), agent("agent.mhe=half_s1", "agent.mhe_hidden=0.5", "agent.mhe_output=2")
    assert float(plain.regularizer()) == 0.0
    torch.testing.assert_close(reg.regularizer(), mhe_regularizer(reg.net, "half_s1", 0.5, 2.0))
    batch = task.contexts("train")
    total, data = reg.objective(reg.net(batch["obs"]), batch["target"])
    torch.testing.assert_close(total, data + reg.regularizer())
    # with a huge MHE weight the update spreads the output rows (their energy drops)
    strong = agent("agent.mhe=s2", "agent.mhe_hidden=0", "agent.mhe_output=100")
    before = float(strong.regularizer())
    for _ in range(20):
        strong.update(batch)
    assert float(strong.regularizer()) < before
    sched = agent("agent.lr_milestones=[2,3]", "agent.lr_decay=0.5")
    sizes = [float(sched.update(batch)["step_size"]) for _ in range(4)]
    assert sizes == pytest.approx([0.1, 0.1, 0.05, 0.025])
    for bad, key in (("agent.mhe=s3", "agent.mhe"), ("agent.mhe_hidden=-1", "agent.mhe_hidden"),
                     ("agent.mhe_output=nan", "agent.mhe_output"), ("agent.lr_milestones=[0]", "agent.lr_milestones"),
                     ("agent.lr_decay=0", "agent.lr_decay"), ("agent.lr_milestones=abc", "agent.lr_milestones")):
        with pytest.raises(ConfigError, match=key):
            agent(bad)
