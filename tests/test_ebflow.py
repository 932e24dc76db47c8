"""EBFlow/MEow: the flow's density is exact, Q - V = α log π, and the SCDQ target is the paper's."""

import math

import gymnasium as gym
import pytest
import torch
from tensordict import TensorDict

from rl_energy.agents.ebflow import EBFlow, EBFlowConfig


def make_agent(obs_dim=5, action_dim=3, **overrides) -> EBFlow:
    torch.manual_seed(0)
    cfg = EBFlowConfig(**overrides)
    agent = EBFlow(gym.spaces.Box(-1, 1, (obs_dim,)), gym.spaces.Box(-1, 1, (action_dim,)), cfg).double()
    # move away from the zero initialisation so every term is exercised (not so far that tanh saturates)
    with torch.no_grad():
        for p in list(agent.flow.parameters()) + list(agent.shift.parameters()):
            p.add_(0.1 * torch.randn_like(p))
    return agent


def test_q_minus_v_is_alpha_log_pi():
    agent = make_agent(alpha=0.37)
    obs = torch.randn(64, 5, dtype=torch.float64)
    action = torch.rand(64, 3, dtype=torch.float64) * 1.9 - 0.95
    alpha = agent.log_alpha.detach().exp()
    q, v = agent.q_values(obs, action, alpha), agent.v_values(obs, alpha)
    log_pi = agent.flow.log_prob(action, obs).log_prob
    assert q.shape == v.shape == (2, 64)
    # α is exp(log α) (0.37 to float32's precision); Q/α reaches the thousands near the squash's edge
    torch.testing.assert_close(alpha, torch.tensor(0.37, dtype=torch.float64), rtol=1e-7, atol=0)
    torch.testing.assert_close(q - v, alpha * log_pi.expand(2, -1), rtol=0, atol=1e-5)


def test_log_prob_matches_change_of_variables_with_the_autograd_jacobian():
    agent = make_agent(action_dim=4, obs_dim=3)
    flow = agent.flow
    for _ in range(5):
        obs = torch.randn(1, 3, dtype=torch.float64)
        eps = torch.randn(1, 4, dtype=torch.float64)
        action = flow.push(eps, obs)
        jac = torch.autograd.functional.jacobian(lambda e, o=obs: flow.push(e.unsqueeze(0), o)[0], eps[0])
        brute = torch.distributions.Normal(0.0, 1.0).log_prob(eps).sum() - torch.linalg.slogdet(jac)[1]
        torch.testing.assert_close(flow.log_prob(action, obs).log_prob[0], brute, rtol=0, atol=1e-5)
        _, sampled_log_prob = flow.sample(obs, with_log_prob=True)  # the sampling path's own log π
        assert torch.isfinite(sampled_log_prob).all()


def test_sample_and_inverse_are_inverses():
    flow = make_agent().flow
    obs = torch.randn(32, 5, dtype=torch.float64)
    eps = 0.5 * torch.randn(32, 3, dtype=torch.float64)
    action = flow.push(eps, obs)
    torch.testing.assert_close(flow.inverse(action, obs)[0], eps, rtol=0, atol=1e-8)
    action = torch.rand(32, 3, dtype=torch.float64) * 1.8 - 0.9
    torch.testing.assert_close(flow.push(flow.inverse(action, obs)[0], obs), action, rtol=0, atol=1e-10)


def test_v_is_the_log_partition_function_of_q():
    """Proposition 1: V(s) = α log ∫ exp(Q(s,a)/α) da (A = 1, quadrature in pre-tanh space)."""
    agent = make_agent(obs_dim=2, action_dim=1, alpha=0.5)
    alpha = agent.log_alpha.detach().exp()
    obs = torch.randn(1, 2, dtype=torch.float64)
    u = torch.linspace(-12, 12, 400_001, dtype=torch.float64)
    a = torch.tanh(u).clamp(-1 + 1e-12, 1 - 1e-12).unsqueeze(-1)
    q = agent.q_values(obs.expand(len(u), -1), a, alpha)[0]
    integrand = torch.exp(q / alpha) * (1 - torch.tanh(u) ** 2)  # da = (1 - tanh²u) du
    log_z = torch.log(torch.trapezoid(integrand, u))
    torch.testing.assert_close(alpha * log_z, agent.v_values(obs, alpha)[0, 0], rtol=0, atol=1e-3)


def test_deterministic_action_is_the_flow_image_of_the_prior_mean():
    agent = make_agent()
    obs = torch.randn(8, 5, dtype=torch.float64)
    expected = agent.flow.push(torch.zeros(8, 3, dtype=torch.float64), obs)
    torch.testing.assert_close(agent.act(obs, deterministic=True), expected)


def test_scdq_target_uses_the_target_network_and_the_smaller_shift():
    agent = make_agent(gamma=0.9)
    alpha = agent.log_alpha.detach().exp()
    next_obs = torch.randn(16, 5, dtype=torch.float64)
    reward = torch.randn(16, dtype=torch.float64)
    terminated = torch.zeros(16, dtype=torch.bool)
    terminated[:4] = True
    # the target copies differ from the online nets after the perturbation in make_agent
    norm = agent.flow.normaliser(next_obs, agent.scale_target(next_obs))
    shifts = agent.shift_target(next_obs).squeeze(-1)
    expected = reward + 0.9 * (~terminated).double() * alpha * (norm + shifts.min(0).values)
    y = agent.soft_target(reward, next_obs, terminated, alpha)
    torch.testing.assert_close(y, expected)
    assert not torch.allclose(shifts[0], shifts[1])
    with torch.no_grad():  # the online network does not enter the target
        for p in list(agent.shift.parameters()) + list(agent.flow.parameters()):
            p.add_(1.0)
    torch.testing.assert_close(agent.soft_target(reward, next_obs, terminated, alpha), y)


def test_update_regresses_both_heads_and_moves_only_the_targets_by_polyak():
    torch.manual_seed(1)
    agent = EBFlow(gym.spaces.Box(-1, 1, (5,)), gym.spaces.Box(-1, 1, (3,)), EBFlowConfig(tau=0.5))
    target_before = [p.clone() for p in agent.shift_target.parameters()]
    batch = TensorDict(obs=torch.randn(32, 5), action=torch.rand(32, 3) * 2 - 1, reward=torch.randn(32),
                       next_obs=torch.randn(32, 5), terminated=torch.zeros(32, dtype=torch.bool), batch_size=[32])
    losses = [float(agent.update(batch)["loss"]) for _ in range(200)]
    assert losses[-1] < 0.1 * losses[0]
    online, target = list(agent.shift.parameters()), list(agent.shift_target.parameters())
    assert all(not torch.equal(t, b) for t, b in zip(target, target_before, strict=True))
    assert all(p.requires_grad and not t.requires_grad for p, t in zip(online, target, strict=True))


def test_compiled_loss_gradients_and_actions_match_eager():
    from rl_energy.agent import CompiledFn

    torch.manual_seed(0)
    torch.set_default_dtype(torch.float64)  # float64 throughout (optimiser buffers too): agreement to rounding
    try:
        agent = make_agent()
    finally:
        torch.set_default_dtype(torch.float32)
    args = (torch.randn(64, 5, dtype=torch.float64), torch.rand(64, 3, dtype=torch.float64) * 2 - 1,
            torch.randn(64, dtype=torch.float64), torch.randn(64, 5, dtype=torch.float64), torch.rand(64) < 0.2,
            torch.tensor(0.3, dtype=torch.float64))
    params = agent._params
    agent._set_dropout(True)  # as in update(): the hashed dropout masks must match too
    loss, stats = agent.loss(*args)
    grads = torch.autograd.grad(loss, params)
    compiled = CompiledFn(agent.loss, "test loss")
    c_loss, c_stats = compiled(*args)
    agent._set_dropout(False)
    with torch.no_grad():
        assert not torch.equal(agent.loss(*args)[0], loss), "dropout was not on"
    assert compiled.compiled is not None, "Inductor could not compile the loss (no C++ compiler?)"
    torch.testing.assert_close(c_loss, loss, rtol=1e-10, atol=1e-10)
    for key in stats:
        torch.testing.assert_close(c_stats[key], stats[key], rtol=1e-10, atol=1e-10)
    for g, c in zip(grads, torch.autograd.grad(c_loss, params), strict=True):
        torch.testing.assert_close(c, g, rtol=1e-8, atol=1e-10)
    obs = torch.randn(1, 5, dtype=torch.float64)
    torch.manual_seed(3)
    eager_actions = [agent.act(obs), agent.act(obs, deterministic=True)]
    agent.compile_update()
    torch.manual_seed(3)
    for eager, compiled_action in zip(eager_actions, [agent.act(obs), agent.act(obs, deterministic=True)], strict=True):
        torch.testing.assert_close(compiled_action, eager, rtol=1e-10, atol=1e-10)


def test_each_update_draws_fresh_dropout_masks():
    torch.manual_seed(0)
    agent = EBFlow(gym.spaces.Box(-1, 1, (5,)), gym.spaces.Box(-1, 1, (3,)), EBFlowConfig())
    batch = TensorDict(obs=torch.randn(32, 5), action=torch.rand(32, 3) * 2 - 1, reward=torch.randn(32),
                       next_obs=torch.randn(32, 5), terminated=torch.zeros(32, dtype=torch.bool), batch_size=[32])
    seeds = [int(m.seed) for m in agent._dropouts]
    assert len(seeds) == 2 * agent.config.num_couplings and len(set(seeds)) == len(seeds)
    agent.update(batch)
    agent.update(batch)
    assert [int(m.seed) for m in agent._dropouts] == [s + 2 for s in seeds]
    assert not any(m.training for m in agent._dropouts)  # off again for acting


def test_compile_failure_falls_back_to_eager_with_one_warning(monkeypatch):
    from rl_energy import agent as agent_module

    def broken_compile(fn, **kwargs):
        def run(*args):
            raise RuntimeError("no C++ compiler found")
        return run

    monkeypatch.setattr(agent_module.torch, "compile", broken_compile)
    fn = agent_module.CompiledFn(lambda x: x + 1, "probe")
    with pytest.warns(UserWarning, match="probe failed, running it uncompiled: RuntimeError: no C"):
        assert fn(1) == 2
    assert fn.compiled is None and fn(2) == 3  # no second attempt, no second warning


@pytest.mark.parametrize("dim", [1, 2, 17])
def test_odd_and_tiny_action_dims(dim):
    agent = make_agent(obs_dim=4, action_dim=dim)
    obs = torch.randn(10, 4, dtype=torch.float64)
    action, log_prob = agent.flow.sample(obs, with_log_prob=True)
    assert action.shape == (10, dim) and action.abs().max() <= 1
    torch.testing.assert_close(agent.flow.log_prob(action, obs).log_prob, log_prob, rtol=0, atol=1e-6)
    assert math.isfinite(float(log_prob.detach().sum()))


MEMORY_PROBE = """
import torch, gymnasium as gym
from tensordict import TensorDict
from rl_energy.buffers import ReplayBuffer
from rl_energy.agents.ebflow import EBFlow, EBFlowConfig
from rl_energy.config import resolve_config

def status(key):
    for line in open("/proc/self/status"):
        if line.startswith(key):
            return int(line.split()[1]) * 1024

open("/proc/self/clear_refs", "w").write("5")  # reset the peak-RSS counter (VmHWM) to the current RSS
base = status("VmRSS:")
cfg = resolve_config("ebflow", "Ant-v4", EBFlowConfig).agent
buf = ReplayBuffer(1_000_000, 1, (27,), 8)
for t in buf.storage.values():
    t.fill_(1)  # touch every page: the full 1M-step buffer is resident
agent = EBFlow(gym.spaces.Box(-1, 1, (27,)), gym.spaces.Box(-1, 1, (8,)), cfg)
agent.compile_update()  # as the default config does (Inductor's compiler runs in worker processes)
batch = TensorDict(obs=torch.randn(256, 27), action=torch.rand(256, 8) * 2 - 1, reward=torch.randn(256),
                   next_obs=torch.randn(256, 27), terminated=torch.zeros(256, dtype=torch.bool), batch_size=[256])
for _ in range(20):
    agent.update(batch)
print(status("VmHWM:") - base, buf.nbytes)
"""


def test_ant_million_step_buffer_plus_agent_peak_memory_under_1_gb():
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-c", MEMORY_PROBE], capture_output=True, text=True, check=True)
    peak, buffer_bytes = map(int, out.stdout.split()[-2:])
    assert buffer_bytes <= peak < 1e9, (peak, buffer_bytes)  # the peak includes the whole buffer


def test_layers_declare_the_energy_and_normaliser_split():
    flow = make_agent().flow
    layers = flow.layers()
    assert [type(m).__name__ for m in layers] == ["StateScale"] + ["AdditiveCoupling"] * 4 + ["TanhSquash"]
    assert [m.linear for m in layers] == [True] + [False] * 5  # only the scale carries V(s)
    assert [m.volume_preserving for m in layers] == [False] + [True] * 4 + [False]
