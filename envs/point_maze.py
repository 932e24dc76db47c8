"""``rl_energy/PointMaze-{Open,UMaze,MultiRoom}-v0``: 2-D point-mass goal mazes (the SVGG point mazes,
Castanet et al. 2023; SVGG digest §4), in Gymnasium's goal-env convention.

A maze is a grid of unit cells, each free (``.``, ``S`` = the start cell) or a wall block (``#``). Cell
``(row r, column c)`` is the square of side 1 centred on ``(c − c_S, r − r_S)``, so the start cell is
``[−0.5, 0.5]²``. The state is the point's position, and it is also the goal space. An action
``a ∈ [−0.95, 0.95]²`` moves the point by ``a``: first along x, then along y, each stopped just short of
a wall block or of the maze's border (so it slides along walls). Episodes start uniformly in the
start cell, last 30 steps (``max_episode_steps``), and never terminate early. The reward is sparse,
``−1`` until the point is within ``success_radius = 0.15`` of the goal and ``0`` there
(:meth:`PointMazeEnv.compute_reward`, vectorised); ``info["is_success"]`` says the same. A goal inside
a wall block is invalid and never achieved (so a curriculum that proposes such goals wastes episodes).

Observations are dicts with ``observation``, ``achieved_goal`` (both the position) and
``desired_goal``. The goal of an episode is ``options["goal"]`` at reset if given, else drawn by the
env's ``goal_sampler`` (set by a curriculum, :mod:`rl_energy.curricula`), else uniform over the free
cells. :meth:`PointMazeEnv.set_maze` swaps the layout during training (the recovery experiment);
:meth:`Maze.coverage_goals` is the evaluation grid of the success-coverage metric (digest §5).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import gymnasium as gym
import numpy as np

MAZES: dict[str, tuple[str, ...]] = {
    # an open 5 x 5 room
    "open": ("S....", ".....", ".....", ".....", "....."),
    # a U: along the top corridor, down the right arm, back along the bottom one
    "umaze": ("S....", "####.", "....."),
    # nine 2 x 2 rooms behind one-cell walls, chained by doors into a snake: the doors never lie on
    # the straight line to a far room, so heading for a distant goal runs into a wall. From the start
    # room to the last one is about 24 units of path (26 of the 30 steps at full speed).
    "multiroom": (
        "S.#.....",
        ".....#..",
        "#######.",
        ".....#..",
        "..#.....",
        ".#######",
        "..#.....",
        ".....#..",
    ),
    # the same rooms with the door from the top-right room down to the middle-right one moved to
    # the middle column: the top-right room becomes a dead end and the middle rows are entered from
    # the middle room (the layout the recovery experiment switches to)
    "multiroom_moved": (
        "S.#.....",
        ".....#..",
        "###.####",
        ".....#..",
        "..#.....",
        ".#######",
        "..#.....",
        ".....#..",
    ),
}
"""Maze layouts by name: ``#`` wall block, ``.`` free, ``S`` the start cell (free)."""

EPS = 1e-6


class Maze:
    """A grid layout with vectorised motion, validity tests and goal grids (module docstring)."""

    def __init__(self, layout: str | Sequence[str]) -> None:
        rows = MAZES[layout] if isinstance(layout, str) else tuple(layout)
        if isinstance(layout, str) and layout not in MAZES:
            raise ValueError(f"unknown maze {layout!r}; mazes: {', '.join(MAZES)}")
        if not rows or len({len(r) for r in rows}) != 1 or set("".join(rows)) - set("#.S"):
            raise ValueError("a maze layout is equal-length rows of '#', '.' and one 'S'")
        starts = [(r, c) for r, row in enumerate(rows) for c, ch in enumerate(row) if ch == "S"]
        if len(starts) != 1:
            raise ValueError(f"a maze layout needs exactly one start cell 'S', got {len(starts)}")
        self.name = layout if isinstance(layout, str) else "custom"
        self.layout = rows
        self.free = np.array([[ch != "#" for ch in row] for row in rows])
        self.start_row, self.start_col = starts[0]
        n_rows, n_cols = self.free.shape
        self.low = np.array([-self.start_col - 0.5, -self.start_row - 0.5])
        self.high = self.low + np.array([n_cols, n_rows])
        free_r, free_c = np.nonzero(self.free)
        self.free_centers = np.stack([free_c - self.start_col, free_r - self.start_row], 1).astype(np.float64)

    def cell_index(self, points: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(row, col, inside)`` of the cells holding ``points [..., 2]`` (``inside``: within the grid)."""
        col = np.floor(points[..., 0] + 0.5).astype(np.int64) + self.start_col
        row = np.floor(points[..., 1] + 0.5).astype(np.int64) + self.start_row
        inside = (row >= 0) & (row < self.free.shape[0]) & (col >= 0) & (col < self.free.shape[1])
        return row, col, inside

    def is_valid(self, points: np.ndarray) -> np.ndarray:
        """Whether each point lies in a free cell."""
        row, col, inside = self.cell_index(points)
        return inside & self.free[np.clip(row, 0, self.free.shape[0] - 1), np.clip(col, 0, self.free.shape[1] - 1)]

    def move(self, pos: np.ndarray, action: np.ndarray) -> np.ndarray:
        """Positions after ``action`` (``[N, 2]`` each): x then y, stopped short of walls and the border.

        A move is shorter than one cell, so it can enter at most the neighbouring cell along its axis;
        if that cell is a wall block (or outside), the point stops ``1e-6`` inside its own cell.
        """
        pos = np.array(pos, dtype=np.float64, copy=True)
        for axis in (0, 1):
            new = pos.copy()
            new[:, axis] += action[:, axis]
            blocked = ~self.is_valid(new)
            if blocked.any():
                center = np.floor(pos[blocked, axis] + 0.5)
                edge = center + 0.5 * np.sign(action[blocked, axis])
                new[blocked, axis] = edge - EPS * np.sign(action[blocked, axis])
            pos = new
        return pos

    def sample_valid(self, n: int, rng: np.random.Generator) -> np.ndarray:
        """``n`` points uniform over the free cells."""
        centers = self.free_centers[rng.integers(len(self.free_centers), size=n)]
        return centers + rng.uniform(-0.5, 0.5, size=(n, 2))

    def sample_box(self, n: int, rng: np.random.Generator) -> np.ndarray:
        """``n`` points uniform over the bounding box, wall blocks included."""
        return rng.uniform(self.low, self.high, size=(n, 2))

    def coverage_goals(self, per_cell: int = 4, seed: int = 0) -> np.ndarray:
        """The success-coverage evaluation goals: ``per_cell`` uniform points in every free cell (fixed
        by ``seed``; the paper draws 10 per cell, digest §5)."""
        rng = np.random.default_rng(seed)
        offsets = rng.uniform(-0.45, 0.45, size=(len(self.free_centers), per_cell, 2))
        return (self.free_centers[:, None, :] + offsets).reshape(-1, 2)

    def start_positions(self, n: int, rng: np.random.Generator) -> np.ndarray:
        return rng.uniform(-0.5, 0.5, size=(n, 2))


def sparse_reward(achieved_goal: np.ndarray, desired_goal: np.ndarray, radius: float,
                  valid: np.ndarray | bool = True) -> np.ndarray:
    """``0`` within ``radius`` of a valid goal, else ``−1`` (any leading shape)."""
    dist = np.linalg.norm(np.asarray(achieved_goal) - np.asarray(desired_goal), axis=-1)
    return -((dist >= radius) | ~np.asarray(valid)).astype(np.float32)


class PointMazeEnv(gym.Env):
    """``gym.make("rl_energy/PointMaze-UMaze-v0")`` (or ``PointMaze-Open-v0``, ``PointMaze-MultiRoom-v0``;
    any layout with ``maze=``)."""

    metadata = {"render_modes": []}

    def __init__(self, maze: str | Sequence[str] = "umaze", success_radius: float = 0.15,
                 max_action: float = 0.95, switch_maze_at: int = 0, switch_to: str = "") -> None:
        if not success_radius > 0:
            raise ValueError(f"success_radius must be > 0, got {success_radius}")
        if switch_maze_at and switch_to not in MAZES:
            raise ValueError(f"switch_to must name a maze ({', '.join(MAZES)}), got {switch_to!r}")
        self.switch_maze_at, self.switch_to = switch_maze_at, switch_to
        self.total_steps = 0
        """Steps this env has taken: at ``switch_maze_at`` it switches to ``switch_to`` (recovery runs)."""
        self.success_radius = success_radius
        self.max_action = max_action
        self.goal_sampler: Callable[[np.random.Generator], np.ndarray] | None = None
        """Draws the goal of each new episode (set by a curriculum); None: uniform over free cells."""
        self.set_maze(maze)
        self.action_space = gym.spaces.Box(-max_action, max_action, shape=(2,), dtype=np.float32)
        self.pos = np.zeros(2)
        self.goal = np.zeros(2)

    def set_maze(self, maze: str | Sequence[str]) -> None:
        """Switch the layout (the next steps use it; the bounding box must stay the same size)."""
        new = Maze(maze)
        if hasattr(self, "maze") and (new.low != self.maze.low).any() | (new.high != self.maze.high).any():
            raise ValueError("set_maze: the new layout must span the same bounding box")
        self.maze = new
        box = gym.spaces.Box(new.low.astype(np.float32), new.high.astype(np.float32), dtype=np.float32)
        # a curriculum may propose goals anywhere (SVGG's particles roam): desired goals are unbounded
        anywhere = gym.spaces.Box(-np.inf, np.inf, shape=(2,), dtype=np.float32)
        self.observation_space = gym.spaces.Dict({"observation": box, "achieved_goal": box,
                                                  "desired_goal": anywhere})

    def _obs(self) -> dict[str, np.ndarray]:
        pos = self.pos.astype(np.float32)
        return {"observation": pos, "achieved_goal": pos.copy(), "desired_goal": self.goal.astype(np.float32)}

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None
              ) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        super().reset(seed=seed)
        self.pos = self.maze.start_positions(1, self.np_random)[0]
        if options and "goal" in options:
            self.goal = np.asarray(options["goal"], dtype=np.float64).reshape(2)
        elif self.goal_sampler is not None:
            self.goal = np.asarray(self.goal_sampler(self.np_random), dtype=np.float64).reshape(2)
        else:
            self.goal = self.maze.sample_valid(1, self.np_random)[0]
        return self._obs(), {"is_success": self._success()}

    def _success(self) -> bool:
        return bool(np.linalg.norm(self.pos - self.goal) < self.success_radius)

    def step(self, action: np.ndarray) -> tuple[dict[str, np.ndarray], float, bool, bool, dict[str, Any]]:
        action = np.asarray(action, dtype=np.float64).reshape(2)
        if not np.isfinite(action).all():
            raise ValueError(f"PointMaze: non-finite action {action}")
        action = np.clip(action, -self.max_action, self.max_action)
        self.total_steps += 1
        if self.switch_maze_at and self.total_steps == self.switch_maze_at:
            self.set_maze(self.switch_to)
            if not self.maze.is_valid(self.pos[None])[0]:  # walled in by the new layout: back to the start
                self.pos = self.maze.start_positions(1, self.np_random)[0]
        self.pos = self.maze.move(self.pos[None], action[None])[0]
        obs = self._obs()
        reward = float(self.compute_reward(obs["achieved_goal"], obs["desired_goal"], {}))
        return obs, reward, False, False, {"is_success": reward == 0.0}

    def set_elapsed_steps(self, steps: int) -> None:
        """Resume hook: this env has already taken ``steps`` steps (the trainer calls it on ``--resume``),
        so a maze switch that was due is applied and a later one stays on schedule."""
        self.total_steps = steps
        if self.switch_maze_at and steps >= self.switch_maze_at and self.maze.name != self.switch_to:
            self.set_maze(self.switch_to)

    def sample_valid(self, n: int, rng: np.random.Generator) -> np.ndarray:
        """``n`` goals uniform over the current maze's free cells (for curricula)."""
        return self.maze.sample_valid(n, rng)

    def sample_box(self, n: int, rng: np.random.Generator) -> np.ndarray:
        """``n`` goals uniform over the bounding box, walls included (for curricula)."""
        return self.maze.sample_box(n, rng)

    def compute_reward(self, achieved_goal: np.ndarray, desired_goal: np.ndarray, info: Any) -> np.ndarray:
        """Vectorised sparse reward (Gymnasium-Robotics' goal-env signature): 0 within the success radius
        of a goal in a free cell. A goal inside a wall block is never achieved, even from the wall's edge."""
        valid = self.maze.is_valid(np.asarray(desired_goal, dtype=np.float64))
        return sparse_reward(achieved_goal, desired_goal, self.success_radius, valid)
