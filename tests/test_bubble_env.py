"""rl_energy/BubblePosition-v0: Gymnasium API, the paper's reward and termination, native vector env."""

import gymnasium as gym
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env

import rl_energy  # noqa: F401  (registers the rl_energy/ namespace)
from rl_energy.envs.bubble import OBS_SCALE, BubblePositionEnv, BubblePositionVectorEnv

ENV_ID = "rl_energy/BubblePosition-v0"


def test_passes_gymnasium_check_env():
    env = gym.make(ENV_ID, cycles_per_action=2, episode_length=4)
    check_env(env.unwrapped, skip_render_check=True)


def test_observation_reward_and_carry_over_of_phase_and_state():
    env = BubblePositionEnv(cycles_per_action=10)
    obs, info = env.reset(options={"position": 0.2, "target": 0.1})
    np.testing.assert_allclose(obs, np.array([0.1, 0.2, 0.2]) / OBS_SCALE, rtol=1e-6)
    obs, reward, terminated, truncated, info = env.step(np.array([0.5, 0.0], dtype=np.float32))
    x = info["position"]
    assert info["time_ms"] == pytest.approx(0.4) and info["steps"] == 1  # 10 cycles of 25 kHz
    np.testing.assert_allclose(obs, np.array([0.1, x, 0.2]) / OBS_SCALE, rtol=1e-6)
    d_max = max(0.25 - 0.1, 0.1 - 0.05)
    assert reward == pytest.approx(-np.sqrt(abs(x - 0.1) / d_max))
    assert not terminated and not truncated
    radial = env._ep.state[0, [0, 2]].copy()
    assert not np.allclose(radial, [1.0, 0.0])  # the bubble is oscillating and stays so at the next step
    env.step(np.array([0.5, 0.0], dtype=np.float32))
    assert env._ep.tau[0] == pytest.approx(20.0)  # solver time (acoustic phase) continues


def test_success_terminates_with_the_bonus_and_truncation_after_the_episode_length():
    env = BubblePositionEnv(cycles_per_action=1, episode_length=3)
    env.reset(options={"position": 0.15, "target": 0.155})  # already within 0.01 λ0
    _, reward, terminated, truncated, info = env.step(np.zeros(2, dtype=np.float32))
    assert terminated and not truncated and info["success"]
    assert reward == pytest.approx(10.0 - np.sqrt(abs(info["position"] - 0.155) / 0.105), abs=1e-9)  # d_max 0.105
    env.reset(options={"position": 0.06, "target": 0.24})
    flags = [env.step(np.zeros(2, dtype=np.float32))[2:4] for _ in range(3)]
    assert flags == [(False, False), (False, False), (False, True)]


def test_invalid_actions_raise_and_out_of_range_ones_are_clipped():
    env = BubblePositionEnv(cycles_per_action=1)
    env.reset(seed=0, options={"position": 0.1, "target": 0.2})
    with pytest.raises(ValueError, match="finite"):
        env.step(np.array([np.nan, 0.5]))
    clipped = BubblePositionEnv(cycles_per_action=1)
    clipped.reset(options={"position": 0.1, "target": 0.2})
    env.step(np.array([3.0, -1.0]))
    clipped.step(np.array([1.0, 0.0]))
    np.testing.assert_array_equal(env._ep.state, clipped._ep.state)
    with pytest.raises(ValueError, match="cycles_per_action"):
        BubblePositionEnv(cycles_per_action=0)


def test_solver_failure_terminates_with_the_penalty():
    env = BubblePositionEnv(cycles_per_action=1)
    env.reset(options={"position": 0.1, "target": 0.2})
    env._ep.state[0] = (2e-3, 0.1, -50.0, 0.0)  # a collapsing bubble the integrator cannot follow
    _, reward, terminated, _, info = env.step(np.zeros(2, dtype=np.float32))
    assert terminated and info["solver_status"] != "ok" and not info["success"]
    assert reward == pytest.approx(-10.0 - np.sqrt(0.1 / 0.15))
    assert info["position"] == 0.1  # the last valid position is kept


def test_make_vec_is_the_native_vector_env_and_matches_single_envs():
    venv = gym.make_vec(ENV_ID, num_envs=3, cycles_per_action=2, episode_length=2)
    assert isinstance(venv.unwrapped, BubblePositionVectorEnv)
    singles = [BubblePositionEnv(cycles_per_action=2, episode_length=2) for _ in range(3)]
    obs, _ = venv.reset(seed=7)
    single_obs = np.stack([e.reset(seed=7 + i)[0] for i, e in enumerate(singles)])
    np.testing.assert_array_equal(obs, single_obs)  # sub-env i draws from seed + i, like SyncVectorEnv
    actions = np.array([[0.3, 0.1], [0.0, 0.6], [1.0, 1.0]], dtype=np.float32)
    for _ in range(2):
        obs, reward, terminated, truncated, _ = venv.step(actions)
        ref = [e.step(a) for e, a in zip(singles, actions, strict=True)]
        np.testing.assert_allclose(obs, np.stack([r[0] for r in ref]), rtol=1e-12)
        np.testing.assert_allclose(reward, [r[1] for r in ref], rtol=1e-12)
    assert truncated.all() or terminated.any()
    # NEXT_STEP autoreset: the next step resets the finished sub-envs and ignores their actions
    obs, reward, terminated, truncated, info = venv.step(actions)
    np.testing.assert_array_equal(reward[truncated | terminated], 0.0)
    assert np.all(info["steps"] == 0)
    venv.close()


def test_ddpg_trains_on_the_native_vector_env_and_the_linear_controller_evaluates(tmp_path, capsys):
    from rl_energy.cli import main

    run = tmp_path / "ddpg"
    code = main(["train", "--agent", "ddpg", "--env", ENV_ID, "--run-dir", str(run), "--total-steps", "96", "--quiet",
                 "--set", "train.learning_starts=32", "--set", "train.num_envs=8", "--set", "train.eval_episodes=2",
                 "--set", "train.batch_size=16", "--set", "env_kwargs.cycles_per_action=1",
                 "--set", "env_kwargs.episode_length=6"])
    assert code == 0 and "final eval return" in capsys.readouterr().out
    assert main(["evaluate", str(run), "--episodes", "2"]) == 0
    assert main(["evaluate", "--agent", "bubble_linear", "--env", ENV_ID, "--episodes", "2",
                 "--set", "env_kwargs.cycles_per_action=1", "--set", "env_kwargs.episode_length=4"]) == 0
    assert "final eval return" in capsys.readouterr().out
    assert main(["train", "--agent", "bubble_linear", "--env", ENV_ID]) == 2
    assert "nothing to train" in capsys.readouterr().err
