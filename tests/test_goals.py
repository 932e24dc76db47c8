"""Goal mazes, HER relabelling, SVGD, the success predictor, the validity model and curricula in the trainer."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest
import torch
from gymnasium.utils.env_checker import check_env

from rl_energy.buffers import HERReplayBuffer
from rl_energy.checkpoint import load_checkpoint
from rl_energy.config import ConfigError, resolve_config
from rl_energy.curricula import (
    SVGG,
    CurriculumConfig,
    SuccessPredictor,
    SVGDParticles,
    ValidityModel,
    beta_density,
    make_curriculum,
)
from rl_energy.envs.point_maze import Maze, PointMazeEnv
from rl_energy.goals import GoalLayout
from rl_energy.registry import get_agent
from rl_energy.trainer import Trainer

MAZE_IDS = ["rl_energy/PointMaze-Open-v0", "rl_energy/PointMaze-UMaze-v0", "rl_energy/PointMaze-MultiRoom-v0"]


# ----------------------------------------------------------------------------------------------- envs
@pytest.mark.parametrize("env_id", MAZE_IDS)
def test_goal_envs_pass_check_env_and_keep_the_point_out_of_walls(env_id):
    env = gym.make(env_id)
    check_env(env.unwrapped, skip_render_check=True)
    obs, _ = env.reset(seed=0)
    assert set(obs) == {"observation", "achieved_goal", "desired_goal"}
    maze = env.unwrapped.maze
    rng = np.random.default_rng(0)
    for t in range(2000):
        obs, reward, term, trunc, info = env.step(rng.uniform(-0.95, 0.95, 2))
        assert maze.is_valid(obs["observation"][None])[0]
        assert reward == env.unwrapped.compute_reward(obs["achieved_goal"], obs["desired_goal"], info)
        assert info["is_success"] == (reward == 0.0) and not term
        if trunc:
            assert (t + 1) % 30 == 0  # 30 steps per episode
            env.reset()


def test_maze_geometry_motion_and_vectorised_reward():
    maze = Maze("umaze")  # S.... / ####. / .....
    assert maze.is_valid(np.array([[0.0, 0.0], [4.0, 1.0], [1.0, 1.0], [0.0, 2.0], [5.0, 0.0]])).tolist() == \
        [True, True, False, True, False]
    # moving down from the start cell stops at the wall below, sliding along it in x
    pos = maze.move(np.array([[0.0, 0.2]]), np.array([[0.5, 0.9]]))
    np.testing.assert_allclose(pos, [[0.5, 0.5 - 1e-6]])
    env = PointMazeEnv("open")
    rewards = env.compute_reward(np.zeros((4, 2)), np.array([[0.1, 0], [0.2, 0], [0, 0.149], [3, 3]]), None)
    assert rewards.tolist() == [0.0, -1.0, 0.0, -1.0]
    umaze = PointMazeEnv("umaze")  # a goal inside a wall block is never achieved, even from its edge
    assert umaze.compute_reward(np.array([[1.0, 1.0], [1.0, 0.5]]), np.array([[1.0, 1.0], [1.0, 0.55]]),
                                None).tolist() == [-1.0, -1.0]
    goals = Maze("multiroom").coverage_goals(per_cell=3)
    assert goals.shape == (44 * 3, 2) and Maze("multiroom").is_valid(goals).all()
    box = Maze("multiroom").sample_box(5000, np.random.default_rng(0))
    assert 0.26 < 1 - Maze("multiroom").is_valid(box).mean() < 0.36  # 20 of 64 cells are walls


def test_maze_switch_during_training():
    env = PointMazeEnv("multiroom", switch_maze_at=5, switch_to="multiroom_moved")
    env.reset(seed=0)
    for _ in range(4):
        env.step(np.zeros(2))
    assert env.maze.layout[2] == "#######."
    env.step(np.zeros(2))
    assert env.maze.name == "multiroom_moved" and env.maze.layout[2] == "###.####"
    resumed = PointMazeEnv("multiroom", switch_maze_at=5, switch_to="multiroom_moved")
    resumed.set_elapsed_steps(7)  # a resumed run past the switch sees the new maze at once
    assert resumed.maze.name == "multiroom_moved"
    with pytest.raises(ValueError, match="switch_to"):
        PointMazeEnv("multiroom", switch_maze_at=5, switch_to="nowhere")


# ------------------------------------------------------------------------------------------------ HER
def test_her_relabels_with_future_achieved_goals_and_recomputes_rewards():
    env = gym.make("rl_energy/PointMaze-Open-v0").unwrapped
    layout = GoalLayout.of(env.observation_space)
    buf = HERReplayBuffer(10_000, 1, (layout.size,), 2, layout, lambda a, d: env.compute_reward(a, d, None),
                          her_ratio=1.0, seed=0)
    rng = np.random.default_rng(0)
    episodes: list[np.ndarray] = []  # the achieved goals of each episode, in order
    for _ in range(6):
        obs, _ = env.reset(seed=int(rng.integers(1000)))
        achieved = [obs["achieved_goal"]]
        for _t in range(30):
            action = rng.uniform(-0.95, 0.95, 2)
            nxt, reward, *_ = env.step(action)
            buf.add(layout.flatten(obs)[None], action[None], np.array([reward]), np.array([False]), np.array([True]))
            obs = nxt
            achieved.append(obs["achieved_goal"])
        buf.add(layout.flatten(obs)[None], np.zeros((1, 2)), np.zeros(1), np.array([False]), np.array([False]))
        episodes.append(np.stack(achieved))
    batch = buf.sample(4000)
    desired, next_achieved = batch["next_obs"][:, layout.desired].numpy(), batch["next_obs"][:, layout.achieved].numpy()
    np.testing.assert_array_equal(batch["obs"][:, layout.desired].numpy(), desired)
    np.testing.assert_array_equal(batch["reward"].numpy(), env.compute_reward(next_achieved, desired, None))
    assert (batch["reward"] == 0).float().mean() > 0.05  # relabelled goals are often reached
    # every new goal is an achieved goal later in the transition's own episode
    obs_achieved = batch["obs"][:, layout.achieved].numpy()
    def later_in_same_episode(start: np.ndarray, goal: np.ndarray) -> bool:
        # (positions can repeat across episodes, e.g. in corners: any matching occurrence will do)
        return any((np.abs(ep[t + 1:] - goal).sum(1) == 0).any()
                   for ep in episodes for t in np.flatnonzero(np.abs(ep - start).sum(1) == 0))

    assert all(later_in_same_episode(s, g) for g, s in zip(desired[:300], obs_achieved[:300], strict=True))
    assert not later_in_same_episode(obs_achieved[0], obs_achieved[0] + 0.123)  # the check can fail
    # her_ratio = 0: the stored goals and rewards
    buf.her_ratio = 0.0
    plain = buf.sample(500)
    np.testing.assert_array_equal(plain["obs"][:, layout.desired].numpy(), plain["next_obs"][:, layout.desired].numpy())


# ------------------------------------------------------------------------------------------ SVGG parts
def test_svgd_moves_particles_to_a_gaussian_mixture_and_matches_its_moments():
    means, std = torch.tensor([[-2.0, 0.0], [2.0, 0.0]]), 0.5

    def log_p(x: torch.Tensor) -> torch.Tensor:
        d2 = (x[:, None, :] - means[None]).square().sum(-1)
        return torch.logsumexp(-d2 / (2 * std**2), 1)

    torch.manual_seed(0)
    particles = SVGDParticles(torch.randn(200, 2) * 0.5 + torch.tensor([0.0, 3.0]), sigma=0.5, lr=0.05)
    for _ in range(1500):
        particles.step(log_p)
    x = particles.x.detach()
    assert x.mean(0).abs().max() < 0.2  # the mixture's mean (0, 0), from a start at (0, 3)
    assert abs(x[:, 0].var().item() - (4 + std**2)) < 0.5  # var_x = 4.25
    assert abs(x[:, 1].var().item() - std**2) < 0.08  # var_y = 0.25
    assert 0.4 < (x[:, 0] > 0).float().mean() < 0.6  # both modes, evenly


def test_success_predictor_learns_a_synthetic_success_map():
    rng = np.random.default_rng(0)
    goals = rng.uniform(-3, 3, size=(3000, 2))
    start = np.zeros((3000, 2))
    success = (np.linalg.norm(goals - [1.0, 0.0], axis=1) < 1.5).astype(np.float32)  # about 20% positive
    model = SuccessPredictor(4, [64, 64])
    model.fit(np.concatenate([start, goals], 1)[:2000], success[:2000], epochs=30, batch=64, lr=1e-3, rng=rng)
    with torch.no_grad():
        pred = model(torch.as_tensor(np.concatenate([start, goals], 1)[2000:], dtype=torch.float32)).numpy()
    assert ((pred > 0.5) == (success[2000:] > 0.5)).mean() > 0.93


def test_validity_model_puts_low_mass_in_walls():
    maze = Maze("multiroom")
    rng = np.random.default_rng(0)
    model = ValidityModel(nu=0.01, gamma=CurriculumConfig().svm_gamma)
    model.fit(maze.sample_valid(2000, rng), rng)
    probe = maze.sample_box(4000, rng)
    valid = maze.is_valid(probe)
    with torch.no_grad():
        p = model.log_prob(torch.as_tensor(probe, dtype=torch.float32)).exp().numpy()
    outside = maze.sample_box(1000, rng) + np.array([10.0, 10.0])
    with torch.no_grad():
        p_out = model.log_prob(torch.as_tensor(outside, dtype=torch.float32)).exp().numpy()
    assert p[valid].mean() > 0.6 and p_out.mean() < 0.01
    assert p[~valid].mean() < p[valid].mean() - 0.3


def test_svgg_target_density_prefers_intermediate_difficulty():
    cfg = CurriculumConfig(name="svgg", predictor_epochs=30)
    svgg = make_curriculum(cfg, PointMazeEnv("open"))
    rng = np.random.default_rng(0)
    for _ in range(300):  # success falls with the distance from the start: 1 near, 0 far
        g = rng.uniform(-0.5, 4.5, 2)
        svgg.record_episode(np.zeros(2), g, bool(np.linalg.norm(g) < 2.5), np.stack([np.zeros(2), g]))
    svgg.refit()
    with torch.no_grad():
        d = svgg.predicted_success(torch.tensor([[0.2, 0.2], [1.8, 1.8], [4.2, 4.2]]))
        density = svgg.log_density(torch.tensor([[0.2, 0.2], [1.8, 1.8], [4.2, 4.2]]))
    assert d[0] > 0.8 and d[2] < 0.2
    assert density[1] > density[0] and density[1] > density[2]  # the frontier, D ≈ 0.5, is preferred
    assert beta_density(torch.tensor(0.5), 2, 2) == pytest.approx(1.5)
    # validity_weight λ scales log p_valid in the target and nothing else
    goals = torch.tensor([[0.2, 0.2], [1.8, 1.8], [6.0, 6.0]])
    with torch.no_grad():
        base, log_valid = svgg.log_density(goals), svgg.validity.log_prob(goals)
        svgg.config.validity_weight = 3.0
        assert torch.allclose(svgg.log_density(goals), base + 2.0 * log_valid, atol=1e-5)
    assert float(log_valid[2]) < -1.0  # off the map


# ------------------------------------------------------------------------------------------ trainer
def test_curriculum_runs_in_the_trainer_logs_coverage_and_resumes(tmp_path):
    overrides = ["train.total_steps=2400", "train.learning_starts=300", "train.eval_every=1200", "train.log_every=600",
                 "train.checkpoint_every=1200", "train.batch_size=64", "agent.hidden=[32,32]",
                 "curriculum.name=svgg", "curriculum.predictor_every=600", "curriculum.predictor_epochs=5"]
    cfg = resolve_config("ddpg", "rl_energy/PointMaze-UMaze-v0", get_agent("ddpg").config_cls, overrides=overrides)
    trainer = Trainer(cfg, tmp_path / "run", verbose=False)
    assert isinstance(trainer.buffer, HERReplayBuffer) and isinstance(trainer.extensions['goals'].curriculum, SVGG)
    trainer.train()
    goals = trainer.extensions['goals']
    assert goals.curriculum.fits == 4 and 0.0 <= goals.last_coverage <= 1.0
    rows = (tmp_path / "run" / "progress.csv").read_text().splitlines()
    assert "success_coverage" in rows[0] and "goal_success" in rows[0]
    state, _ = load_checkpoint(tmp_path / "run" / "checkpoints")
    cfg.train.total_steps = 3000
    resumed = Trainer(cfg, tmp_path / "run", resume=True, verbose=False)
    resumed_curriculum = resumed.extensions['goals'].curriculum
    torch.testing.assert_close(resumed_curriculum.particles.x, state["extensions"]["goals"]["curriculum"]["particles"])
    assert resumed_curriculum.steps == goals.curriculum.steps and len(resumed_curriculum.history) == 80
    resumed.train()
    assert resumed.step == 3000


def test_curriculum_errors():
    with pytest.raises(ConfigError, match="curriculum.name"):
        resolve_config("ddpg", "rl_energy/PointMaze-UMaze-v0", get_agent("ddpg").config_cls,
                       overrides=["curriculum.name=mega"])
    cfg = resolve_config("ddpg", "Pendulum-v1", get_agent("ddpg").config_cls, overrides=["curriculum.name=svgg"])
    with pytest.raises(ConfigError, match="curriculum.name.* applies to goal envs"):
        Trainer(cfg, "/tmp/never-written", verbose=False)


def test_goal_conditioned_sac_and_ddpg_learn_the_umaze_with_her(tmp_path):
    """Both base agents, goal-agnostic, reach most U-maze goals after a short run (HER, env goals)."""
    for agent in ("sac", "ddpg"):
        overrides = ["train.total_steps=6000", "train.learning_starts=500", "train.eval_every=6000",
                     "train.batch_size=128", "agent.hidden=[64,64]", "train.checkpoint_every=0"]
        cfg = resolve_config(agent, "rl_energy/PointMaze-UMaze-v0", get_agent(agent).config_cls, overrides=overrides)
        trainer = Trainer(cfg, tmp_path / agent, verbose=False)
        assert trainer.envs.single_observation_space.shape == (6,)
        trainer.train()
        assert trainer.extensions['goals'].last_coverage > 0.6, agent
