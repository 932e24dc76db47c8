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
    MEGA,
    SVGG,
    BinnedKDE,
    CurriculumConfig,
    RandomAchieved,
    SuccessPredictor,
    SVGDParticles,
    ValidityModel,
    beta_density,
    kde_log_density,
    make_curriculum,
)
from rl_energy.envs.point_maze import Maze, PointMazeEnv
from rl_energy.goals import GoalLayout
from rl_energy.registry import get_agent
from rl_energy.trainer import Trainer

MAZE_IDS = ["rl_energy/PointMaze-Open-v0", "rl_energy/PointMaze-UMaze-v0", "rl_energy/PointMaze-MultiRoom-v0",
            "rl_energy/PointMaze-SquarePBCS0-v0", "rl_energy/PointMaze-SquarePBCS1-v0", "rl_energy/PointMaze-Snail-v0",
            "rl_energy/PointMaze-Snake-v0"]


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


def test_thin_wall_mazes_block_at_walls_pass_through_passages_and_reach_every_cell():
    snake = Maze("snake")  # row y = 0 is open along x; its only way up is at x = 4
    assert snake.thin and snake.free.all() and snake.free.shape == (5, 5)
    np.testing.assert_allclose(snake.move(np.array([[0.0, 0.3]]), np.array([[0.0, 0.9]])), [[0.0, 0.5 - 1e-6]])
    np.testing.assert_allclose(snake.move(np.array([[4.0, 0.3]]), np.array([[0.0, 0.9]])), [[4.0, 1.2]])
    np.testing.assert_allclose(snake.move(np.array([[0.0, 0.0]]), np.array([[0.9, 0.0]])), [[0.9, 0.0]])
    pbcs1 = Maze("square_pbcs_1")  # the start cell's only passage is up
    np.testing.assert_allclose(pbcs1.move(np.array([[0.2, 0.0]]), np.array([[0.9, 0.0]])), [[0.5 - 1e-6, 0.0]])
    np.testing.assert_allclose(pbcs1.move(np.array([[0.0, 0.2]]), np.array([[0.0, 0.9]])), [[0.0, 1.1]])
    for name in ("square_pbcs_0", "square_pbcs_1", "snail", "snake", "square_pbcs_1_changed", "multiroom", "umaze"):
        maze = Maze(name)
        assert maze.reachable()[maze.free].all(), name  # every free cell can be reached from the start
        # the vectorised and the scalar motion agree exactly, and keep the point inside the maze
        rng = np.random.default_rng(1)
        pos = maze.sample_valid(500, rng)
        for _ in range(20):
            action = rng.uniform(-0.95, 0.95, size=(500, 2))
            new = maze.move(pos, action)
            np.testing.assert_array_equal(new, [maze.move_one(*p, *a) for p, a in zip(pos, action, strict=True)])
            assert maze.is_valid(new).all()
            pos = new
    # the recovery change: one passage closes (x 3: y 2 | y 1) and one opens (x 0: y 2 | y 3), nothing else
    changed = Maze("square_pbcs_1_changed")
    assert (changed.wall_x == pbcs1.wall_x).all()
    assert sorted(map(tuple, np.argwhere(changed.wall_y != pbcs1.wall_y))) == [(2, 3), (3, 0)]
    assert changed.wall_y[2, 3] and not changed.wall_y[3, 0]
    # 5 x 5 mazes span [-0.5, 4.5]^2 from the start cell (0, 0), as in the SVGG code
    np.testing.assert_allclose([pbcs1.low, pbcs1.high], [[-0.5, -0.5], [4.5, 4.5]])
    with pytest.raises(ValueError, match="2R\\+1"):
        Maze(["+-+", "|S|"])
    with pytest.raises(ValueError, match="one start cell"):
        Maze(["+-+-+", "| | |", "+-+-+"])


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
    with pytest.raises(ValueError, match="switch_to: maze 'snail' does not span"):
        PointMazeEnv("snake", switch_maze_at=5, switch_to="snail")  # 6 x 6 after 5 x 5: refused at the start
    env = PointMazeEnv("square_pbcs_1", switch_maze_at=2, switch_to="square_pbcs_1_changed")
    env.reset(seed=0)
    env.step(np.zeros(2))
    env.step(np.zeros(2))
    assert env.maze.name == "square_pbcs_1_changed"


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
    # terminate_on_success: every sampled transition that reaches its goal (reward 0) is terminal, no other
    assert not batch["terminated"].any()
    buf.terminate_on_success = True
    ended = buf.sample(4000)
    assert (ended["terminated"] == (ended["reward"] == 0)).all() and ended["terminated"].any()
    buf.terminate_on_success = False
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


# ----------------------------------------------------------------------------------------- MEGA, RANDOM
def _achieved_goal_curriculum(kind, q_of_goal, candidates=6):
    cfg = CurriculumConfig(name=kind, mega_candidates=candidates, kde_samples=4000)
    curriculum = make_curriculum(cfg, PointMazeEnv("open"))
    curriculum.bind_values(lambda start, goals: q_of_goal(goals), gamma=0.98, episode_length=30)
    return curriculum


def test_mega_picks_the_lowest_density_candidate_that_passes_the_q_cutoff():
    # a hand-built buffer: 1000 achieved goals piled near (0, 0), 100 near (2, 0), and single goals at (4, 0)
    # (the rarest, but valued below the cutoff) and at (3, 3) (rare and valued above it)
    rng = np.random.default_rng(0)
    dense = rng.normal(0.0, 0.05, size=(1000, 2))
    medium = np.array([2.0, 0.0]) + rng.normal(0.0, 0.05, size=(100, 2))
    far_bad, far_ok = np.array([[4.0, 0.0]]), np.array([[3.0, 3.0]])
    q = {(4.0, 0.0): -10.0, (3.0, 3.0): -2.0}  # Q(s0, g): (4, 0) fails the cutoff of -3

    def q_of_goal(goals):
        return np.array([q.get((round(float(x), 3), round(float(y), 3)), -1.0) for x, y in goals])

    mega = _achieved_goal_curriculum("mega", q_of_goal)
    assert isinstance(mega, MEGA) and mega.cutoff == -3.0
    mega.record_episode(np.zeros(2), np.zeros(2), False, np.concatenate([dense, medium, far_bad, far_ok]))
    # the candidates: fix the draw to two dense goals, one medium, and both rare ones
    picks = np.array([0, 1, 1000, 1100, 1101, 2])
    mega.rng = type("FixedDraw", (), {"integers": lambda self, n, size: picks,
                                      "random": np.random.default_rng(0).random})()
    candidates = mega.store[picks].astype(np.float64)
    goal = mega.sample_goal(np.random.default_rng(0), np.zeros(2))
    np.testing.assert_array_equal(goal, [3.0, 3.0])  # the rarest that passes, not (4, 0)
    # and it is the exact KDE's argmin among the candidates that pass (bandwidth 0.1, standardised)
    held = mega.store[: mega.count].astype(np.float64)
    mean, std = held.mean(0), held.std(0) + 1e-4
    exact = kde_log_density((candidates - mean) / std, (held - mean) / std, 0.1)
    passing = q_of_goal(candidates) >= -3.0
    assert np.argmin(np.where(passing, exact, np.inf)) == 4
    # without (3, 3) among the candidates, the medium goal beats the dense ones
    picks[:] = [0, 1, 1000, 1100, 2, 3]
    np.testing.assert_allclose(mega.sample_goal(np.random.default_rng(0), np.zeros(2)), mega.store[1000])
    # if no candidate passes, the highest-valued one is pursued (mrl's fallback)
    picks[:] = [1100] * 6
    np.testing.assert_array_equal(mega.sample_goal(np.random.default_rng(0), np.zeros(2)), [4.0, 0.0])


def test_mega_cutoff_moves_by_one_every_ten_episodes_within_its_bounds():
    mega = _achieved_goal_curriculum("mega", lambda goals: np.full(len(goals), -8.0))
    r = 0.98
    assert mega.min_min_cutoff == pytest.approx(-(1 - r**24) / (1 - r))  # -19.2: a goal 24 steps away
    mega.record_episode(np.zeros(2), np.zeros(2), True, np.zeros((5, 2)))
    start = np.zeros(2)

    def episodes(success, n):
        for _ in range(n):
            mega.record_episode(start, np.zeros(2), success, np.zeros((1, 2)))

    episodes(True, 8)  # 9 episodes so far: the window is not full, nothing moves
    mega.sample_goal(np.random.default_rng(0), start)
    assert mega.cutoff == -3.0
    episodes(True, 1)  # 10 successes: down by 1, never below the lowest candidate value seen (-8)
    mega.sample_goal(np.random.default_rng(0), start)
    assert mega.cutoff == -4.0 and mega.min_cutoff == -8.0 and len(mega.recent) == 0
    for expected in (-5.0, -6.0, -7.0, -8.0, -8.0):  # ... and stops at min_cutoff
        episodes(True, 10)
        mega.sample_goal(np.random.default_rng(0), start)
        assert mega.cutoff == expected
    episodes(False, 10)  # 10 failures: up by 1
    mega.sample_goal(np.random.default_rng(0), start)
    assert mega.cutoff == -7.0
    episodes(True, 5)
    episodes(False, 5)  # 0.5: between the thresholds, no move (and the window is kept)
    mega.sample_goal(np.random.default_rng(0), start)
    assert mega.cutoff == -7.0 and len(mega.recent) == 10
    for _ in range(6):  # at most the initial cutoff
        episodes(False, 10)
        mega.sample_goal(np.random.default_rng(0), start)
    assert mega.cutoff == -3.0
    assert mega.metrics()["goal_cutoff"] == -3.0


def test_random_achieved_picks_uniformly_among_the_candidates_that_pass():
    rng = np.random.default_rng(0)
    achieved = rng.uniform(0, 4, size=(2000, 2))
    rand = _achieved_goal_curriculum("random", lambda goals: np.where(goals[:, 0] < 2.0, -1.0, -5.0), 100)
    assert isinstance(rand, RandomAchieved)
    rand.record_episode(np.zeros(2), np.zeros(2), False, achieved)
    goals = np.array([rand.sample_goal(rng, np.zeros(2)) for _ in range(400)])
    assert (goals[:, 0] < 2.0).all()  # only goals that pass the cutoff
    assert 0.3 < goals[:, 1].mean() / 4 < 0.7 and goals[:, 0].std() > 0.4  # spread over them, not the rarest


def test_binned_kde_matches_the_exact_kde():
    rng = np.random.default_rng(0)
    samples = np.concatenate([rng.normal(size=(8000, 2)), 0.2 * rng.normal(size=(2000, 2)) + 2.0])
    points = np.concatenate([1.3 * rng.normal(size=(300, 2)), rng.uniform(-5, 5, size=(30, 2))])
    binned = BinnedKDE(samples, 0.1).log_density(points)
    exact = kde_log_density(points, samples, 0.1)
    np.testing.assert_allclose(binned, exact, atol=0.05)
    assert np.argmin(binned) == np.argmin(exact) and np.argmax(binned) == np.argmax(exact)


def test_mega_state_survives_a_checkpoint():
    mega = _achieved_goal_curriculum("mega", lambda goals: np.full(len(goals), -1.0))
    rng = np.random.default_rng(0)
    for _ in range(50):
        mega.record_episode(np.zeros(2), np.zeros(2), True, rng.uniform(0, 4, size=(31, 2)))
    mega.sample_goal(rng, np.zeros(2))
    state = mega.state_dict()
    again = _achieved_goal_curriculum("mega", lambda goals: np.full(len(goals), -1.0))
    again.load_state_dict(state)
    assert again.count == mega.count == 50 * 31 and again.cutoff == mega.cutoff
    np.testing.assert_array_equal(again.store[: again.count], mega.store[: mega.count])
    mega._kde = None  # the KDE fit is a per-step cache, not state: both refit it from the same generator
    np.testing.assert_array_equal(again.sample_goal(np.random.default_rng(3), np.zeros(2)),
                                  mega.sample_goal(np.random.default_rng(3), np.zeros(2)))


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
                       overrides=["curriculum.name=goalgan"])
    for bad in ("curriculum.kde_bandwidth=0", "curriculum.mega_candidates=0", "curriculum.initial_cutoff=2",
                "curriculum.cutoff_success=[0.8,0.2]", "curriculum.cutoff_success=[0.3]",
                "curriculum.achieved_capacity=-1", "curriculum.cutoff_window=0"):
        with pytest.raises(ConfigError, match=bad.split("=")[0]):
            resolve_config("ddpg", "rl_energy/PointMaze-UMaze-v0", get_agent("ddpg").config_cls, overrides=[bad])
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


def test_mega_and_random_run_in_the_trainer_with_the_agents_values_and_resume(tmp_path):
    overrides = ["train.total_steps=1600", "train.learning_starts=320", "train.eval_every=800", "train.log_every=400",
                 "train.checkpoint_every=800", "train.batch_size=64", "agent.hidden=[32,32]", "train.num_envs=4",
                 "curriculum.name=mega", "curriculum.kde_samples=500"]
    cfg = resolve_config("ddpg", "rl_energy/PointMaze-SquarePBCS1-v0", get_agent("ddpg").config_cls,
                         overrides=overrides)
    trainer = Trainer(cfg, tmp_path / "run", verbose=False)
    mega = trainer.extensions["goals"].curriculum
    assert isinstance(mega, MEGA) and mega.q_fn is not None
    # the value the curriculum reads is the agent's critic at its own action, at the start with the goal
    start, goals = np.zeros(2, dtype=np.float32), np.array([[1.0, 2.0], [3.0, 0.5]], dtype=np.float32)
    obs = torch.as_tensor(np.concatenate([np.zeros((2, 4), dtype=np.float32), goals], 1))
    agent = trainer.agent
    with torch.no_grad():
        expected = agent.critic(torch.cat([obs, agent.actor(obs)], -1))[0, :, 0].numpy()
    np.testing.assert_allclose(mega.q_fn(start, goals), expected, rtol=1e-6)
    trainer.train()
    header = (tmp_path / "run" / "progress.csv").read_text().splitlines()[0].split(",")
    assert {"goal_cutoff", "goal_pass", "success_coverage"} <= set(header)
    assert mega.count == 4 * (400 // 30) * 31  # the achieved goals of every ended episode: 31 per 30 steps
    cfg.train.total_steps = 2000
    resumed = Trainer(cfg, tmp_path / "run", resume=True, verbose=False)
    again = resumed.extensions["goals"].curriculum
    assert again.count == mega.count and again.cutoff == mega.cutoff and again.q_fn is not None
    resumed.train()
    assert resumed.step == 2000
    # RANDOM with SAC's values (the min of its twin critics at the mean action)
    cfg = resolve_config("sac", "rl_energy/PointMaze-Snake-v0", get_agent("sac").config_cls,
                         overrides=overrides[:-2] + ["curriculum.name=random", "train.total_steps=800"])
    trainer = Trainer(cfg, tmp_path / "sac", verbose=False)
    trainer.train()
    assert isinstance(trainer.extensions["goals"].curriculum, RandomAchieved)
    assert trainer.extensions["goals"].curriculum.count > 0


def test_value_curricula_need_an_agent_with_a_critic_value():
    from rl_energy.goals import GoalExtension

    cfg = resolve_config("ddpg", "rl_energy/PointMaze-Snake-v0", get_agent("ddpg").config_cls,
                         overrides=["curriculum.name=mega"])
    ext = GoalExtension(cfg, training=True)
    ext.goal_env = PointMazeEnv("snake")
    with pytest.raises(ConfigError, match="critic value: use --agent ddpg or sac"):
        ext.bind_agent(object())


def test_ddpg_target_clip_clamps_the_td_target():
    from tensordict import TensorDict

    from rl_energy.agents.ddpg import DDPG, DDPGConfig

    obs_space = gym.spaces.Box(-10, 10, (6,), np.float32)
    act_space = gym.spaces.Box(-1, 1, (2,), np.float32)
    torch.manual_seed(0)
    n = 64
    batch = TensorDict({"obs": torch.randn(n, 6), "next_obs": torch.randn(n, 6), "action": torch.rand(n, 2) * 2 - 1,
                        "reward": torch.full((n,), 5.0), "terminated": torch.zeros(n, dtype=torch.bool)},
                       batch_size=[n])
    for clip, target in (([-1.0, 0.0], 0.0), ([-3.0, -2.0], -2.0)):
        agent = DDPG(obs_space, act_space, DDPGConfig(hidden=[16, 16], target_clip=clip))
        with torch.no_grad():
            q = agent.critic(torch.cat([batch["obs"], batch["action"]], -1))[0, :, 0]
        loss = agent.update(batch)["critic_loss"]  # y = 5 + γ Q̄ clamped to the range's top
        torch.testing.assert_close(loss, (q - target).square().mean())
    plain = DDPG(obs_space, act_space, DDPGConfig(hidden=[16, 16]))
    with torch.no_grad():
        q = plain.critic(torch.cat([batch["obs"], batch["action"]], -1))[0, :, 0]
        y = 5.0 + 0.99 * plain.critic_target(torch.cat([batch["next_obs"], plain.actor_target(batch["next_obs"])],
                                                      -1))[0, :, 0]
    torch.testing.assert_close(plain.update(batch)["critic_loss"], (q - y).square().mean())
    for bad in ("agent.target_clip=[0,-1]", "agent.target_clip=[1]", "agent.target_clip=[-inf,0]"):
        with pytest.raises(ConfigError, match="agent.target_clip"):
            resolve_config("ddpg", "rl_energy/PointMaze-UMaze-v0", get_agent("ddpg").config_cls, overrides=[bad])


@pytest.mark.parametrize("flag", [["--steps", "0"], ["--seeds", "-1"], ["--recovery-steps", "-5"],
                                  ["--steps", "1000001"], ["--jobs", "x"]])
def test_reproduce_svgg_rejects_bad_flags(flag, tmp_path):
    import subprocess
    import sys
    from pathlib import Path

    script = Path(__file__).resolve().parents[1] / "scripts" / "reproduce_svgg.py"
    proc = subprocess.run([sys.executable, str(script), *flag, "--out", str(tmp_path)], capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert flag[0] in proc.stderr.splitlines()[-1] or "--steps must be a multiple" in proc.stderr
    assert not (tmp_path / "trials").exists()  # nothing started


def test_reproduce_svgg_plans_the_paper_comparison():
    import argparse
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "scripts" / "reproduce_svgg.py"
    spec = importlib.util.spec_from_file_location("reproduce_svgg", path)
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    args = argparse.Namespace(seeds=3, reference_seeds=1, steps=1_000_000, recovery_steps=500_000,
                              eval_every=50_000, only=[])
    trials = script.trials_for(args)
    arms = [(t.seed, t.env_id, dict(t.settings)["curriculum.name"]) for t in trials]
    assert len(trials) == 3 * 2 * 3 + 2 * 2 and len(set(arms)) == len(arms)
    assert [a[2] for a in arms[:6]] == ["svgg", "mega", "random"] * 2  # every arm at seed 0 first
    for t in trials:
        s = dict(t.settings)
        recovery = "SquarePBCS1" in t.env_id and s["curriculum.name"] in ("svgg", "mega")
        assert s["train.total_steps"] == (1_500_000 if recovery else 1_000_000)
        assert (s.get("env_kwargs.switch_maze_at") == 31_251) == recovery  # right after 1M steps of 32 envs
        assert s["train.num_envs"] * s["train.utd"] == 1.0 and s["curriculum.seed"] == t.seed
