"""Linear-theory controller: a stable equilibrium of the time-averaged Bjerknes force at the target."""

import numpy as np
import pytest
import torch

from rl_energy.agents.bubble_linear import BubbleLinear, BubbleLinearConfig, equilibrium_amplitudes
from rl_energy.envs.bubble import OBS_SCALE, BubblePositionEnv
from rl_energy.envs.bubble_dynamics import bjerknes_force_linear


@pytest.mark.parametrize("target", [0.13, 0.15, 0.177, 0.2, 0.24])
def test_amplitudes_put_a_stable_linear_equilibrium_at_the_target(target):
    p1, p2 = equilibrium_amplitudes(np.array([target]), 0.5)[0] * 1e5
    assert max(p1, p2) == pytest.approx(0.5e5)
    force = bjerknes_force_linear(np.array([target - 1e-4, target, target + 1e-4]), p1, p2)
    scale = np.abs(bjerknes_force_linear(np.array([target]), 0.5e5, 0.0))[0]
    assert abs(force[1]) < 1e-9 * scale  # equilibrium
    assert force[0] > 0 > force[2]  # stable: pushed back from both sides


def test_ratio_table_of_the_digest():
    # papers/bubble-control.md §5: P_A2/P_A1 -> x_eq/λ0
    for ratio, x_eq in [(0.3, 0.177), (0.5, 0.142), (1.0, 0.129), (2.0, 0.126)]:
        p1, p2 = equilibrium_amplitudes(np.array([x_eq]), 1.0)[0]
        assert p2 / p1 == pytest.approx(ratio, rel=0.05)


def test_unreachable_targets_get_the_lowest_equilibrium_and_actions_are_unit_scaled():
    low = equilibrium_amplitudes(np.array([0.05, 0.1]), 0.4)
    np.testing.assert_allclose(low, [[0.0, 0.4], [0.0, 0.4]], atol=1e-12)  # 50 kHz only: 0.125
    env = BubblePositionEnv()
    agent = BubbleLinear(env.observation_space, env.action_space, BubbleLinearConfig(amplitude=0.4))
    obs = torch.tensor([[0.1, 0.5, 0.5], [0.25, 0.5, 0.5]]) / OBS_SCALE
    bar = (agent.act(obs).double().numpy() + 1) / 2
    np.testing.assert_allclose(bar[0], [0.0, 0.4], atol=1e-6)
    np.testing.assert_allclose(bar, equilibrium_amplitudes(np.array([0.1, 0.25]), 0.4), atol=1e-6)
    with pytest.raises(RuntimeError, match="nothing to learn"):
        agent.update(None)


def test_closed_loop_reaches_a_target_in_the_full_model():
    env = BubblePositionEnv(episode_length=200)
    agent = BubbleLinear(env.observation_space, env.action_space, BubbleLinearConfig(amplitude=0.2))
    obs, _ = env.reset(options={"position": 0.2, "target": 0.14})
    for _ in range(200):
        action = (agent.act(torch.as_tensor(obs)[None]).numpy()[0] + 1) / 2
        obs, _, terminated, truncated, info = env.step(action)
        if terminated or truncated:
            break
    assert info["success"] and info["steps"] > 20  # it drifts there, at the drag-limited pace
