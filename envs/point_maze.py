"""``rl_energy/PointMaze-*-v0``: 2-D point-mass goal mazes (the SVGG point mazes, Castanet et al. 2023;
SVGG digest §4), in Gymnasium's goal-env convention.

A maze is a grid of unit cells. Cell ``(row r, column c)`` is the square of side 1 centred on
``(c − c_S, r − r_S)``, so the start cell is ``[−0.5, 0.5]²``. Two layout formats:

* **block mazes** (``open``, ``umaze``, ``multiroom``): rows of ``.`` (free), ``S`` (the start cell) and
  ``#`` (a wall block one cell thick);
* **thin-wall mazes**, the paper's (``square_pbcs_0``, ``square_pbcs_1``, ``snake``: 5×5 cells; ``snail``:
  6×6): ASCII art of ``2R+1`` lines, ``+`` corners, ``|`` and ``-`` zero-thickness walls between cells, a
  space for a passage, the cells at odd positions (``S`` the start). The layouts are the ones the SVGG
  code builds (``envs/sibrivalry/toy_maze/mazes.py``: every cell lies on one tree of passages, so every
  cell is reachable). Text line 1 is the row of the start cell (``y = 0``), and ``y`` grows downwards in
  the text.

The state is the point's position, and it is also the goal space. An action ``a ∈ [−0.95, 0.95]²``
moves the point by ``a``: first along x, then along y, each stopped just short of a wall (a wall block,
a thin wall or the border), so it slides along walls (the SVGG code moves along the straight segment
with up to 3 sliding bounces; splitting the move by axis is our simplification). Episodes start
uniformly in the start cell, last 30 steps (``max_episode_steps``), and never terminate early. The
reward is sparse, ``−1`` until the point is within ``success_radius = 0.15`` of the goal and ``0`` there
(:meth:`PointMazeEnv.compute_reward`, vectorised); ``info["is_success"]`` says the same. A goal outside
the free cells is invalid and never achieved (so a curriculum that proposes such goals wastes episodes).

Observations are dicts with ``observation``, ``achieved_goal`` (both the position) and
``desired_goal``. The goal of an episode is ``options["goal"]`` at reset if given, else drawn by the
env's ``goal_sampler(rng, start)`` (set by a curriculum, :mod:`rl_energy.curricula`), else uniform over
the free cells. :meth:`PointMazeEnv.set_maze` swaps the layout during training (the recovery
experiment); :meth:`Maze.coverage_goals` is the evaluation grid of the success-coverage metric (digest §5).
"""

from __future__ import annotations

import math
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
    # the SVGG paper's four mazes ("MAZE 1-4"), drawn from the passages its code builds
    "square_pbcs_0": (
        "+-+-+-+-+-+",
        "|S        |",
        "+-+-+-+-+ +",
        "|   |     |",
        "+ +-+ +-+-+",
        "|     |   |",
        "+ +-+-+ + +",
        "| |   | | |",
        "+ + + + + +",
        "|   |   | |",
        "+-+-+-+-+-+",
    ),
    "square_pbcs_1": (
        "+-+-+-+-+-+",
        "|S|       |",
        "+ + +-+-+ +",
        "| |     | |",
        "+ +-+-+ + +",
        "|       | |",
        "+-+-+-+-+ +",
        "| |   |   |",
        "+ + + + +-+",
        "|   |     |",
        "+-+-+-+-+-+",
    ),
    "snail": (
        "+-+-+-+-+-+-+",
        "|S          |",
        "+-+-+-+-+-+ +",
        "|         | |",
        "+ +-+-+-+ + +",
        "| |     | | |",
        "+ + +-+ + + +",
        "| | |   | | |",
        "+ + +-+-+ + +",
        "| |       | |",
        "+ +-+-+-+-+ +",
        "|           |",
        "+-+-+-+-+-+-+",
    ),
    "snake": (
        "+-+-+-+-+-+",
        "|S        |",
        "+-+-+-+-+ +",
        "|         |",
        "+ +-+-+-+-+",
        "|         |",
        "+-+-+-+-+ +",
        "|         |",
        "+ +-+-+-+-+",
        "|         |",
        "+-+-+-+-+-+",
    ),
    # the recovery experiment's change to square_pbcs_1: the passage from (x 3, y 2) down to (3, 1) closes,
    # so the maze's second half, reached through it, must now be reached the long way round, through a
    # passage that opens from (0, 2) to (0, 3): the route to every cell beyond the closed passage reverses
    "square_pbcs_1_changed": (
        "+-+-+-+-+-+",
        "|S|       |",
        "+ + +-+-+ +",
        "| |     | |",
        "+ +-+-+-+ +",
        "|       | |",
        "+ +-+-+-+ +",
        "| |   |   |",
        "+ + + + +-+",
        "|   |     |",
        "+-+-+-+-+-+",
    ),
}
"""Maze layouts by name (module docstring): block mazes of ``#``/``.``/``S`` rows, thin-wall mazes in ASCII art."""

EPS = 1e-6


def _parse_blocks(rows: Sequence[str]) -> np.ndarray:
    if not rows or len({len(r) for r in rows}) != 1 or set("".join(rows)) - set("#.S"):
        raise ValueError("a block maze layout is equal-length rows of '#', '.' and one 'S'")
    return np.array([[ch != "#" for ch in row] for row in rows])


def _block_walls(free: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``wall_x [R, C+1]`` (the edge left of column c in row r; 0 and C the border) and ``wall_y [R+1, C]``
    (the edge below row r) of a block maze: an edge is a wall unless both its cells are free."""
    padded = np.pad(free, 1, constant_values=False)
    wall_x = ~(padded[1:-1, :-1] & padded[1:-1, 1:])
    wall_y = ~(padded[:-1, 1:-1] & padded[1:, 1:-1])
    return wall_x, wall_y


def _parse_thin(rows: Sequence[str]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Cells and walls of a thin-wall layout (module docstring)."""
    if len(rows) < 3 or len(rows) % 2 == 0 or len({len(r) for r in rows}) != 1 or len(rows[0]) % 2 == 0:
        raise ValueError("a thin-wall maze layout is 2R+1 equal-length lines of 2C+1 characters")
    if set("".join(rows)) - set("+-| S.#"):
        raise ValueError("a thin-wall maze layout uses '+', '-', '|', ' ', 'S', '.' and '#' only")
    n_rows, n_cols = len(rows) // 2, len(rows[0]) // 2
    free = np.array([[rows[2 * r + 1][2 * c + 1] != "#" for c in range(n_cols)] for r in range(n_rows)])
    wall_x = np.array([[rows[2 * r + 1][2 * c] == "|" for c in range(n_cols + 1)] for r in range(n_rows)])
    wall_y = np.array([[rows[2 * r][2 * c + 1] == "-" for c in range(n_cols)] for r in range(n_rows + 1)])
    wall_x[:, [0, -1]] = True  # the border is closed whatever the drawing says
    wall_y[[0, -1], :] = True
    return free, wall_x, wall_y


def _start_mask(rows: Sequence[str], thin: bool) -> np.ndarray:
    if thin:
        return np.array([[row[c] == "S" for c in range(1, len(row), 2)] for row in rows[1::2]])
    return np.array([[ch == "S" for ch in row] for row in rows])


class Maze:
    """A grid layout with vectorised motion, validity tests and goal grids (module docstring)."""

    def __init__(self, layout: str | Sequence[str]) -> None:
        if isinstance(layout, str) and layout not in MAZES:
            raise ValueError(f"unknown maze {layout!r}; mazes: {', '.join(MAZES)}")
        rows = MAZES[layout] if isinstance(layout, str) else tuple(layout)
        self.name = layout if isinstance(layout, str) else "custom"
        self.layout = rows
        self.thin = bool(rows) and rows[0].startswith("+")
        if self.thin:
            self.free, self.wall_x, self.wall_y = _parse_thin(rows)
        else:
            self.free = _parse_blocks(rows)
            self.wall_x, self.wall_y = _block_walls(self.free)
        starts = np.argwhere(_start_mask(rows, self.thin))
        if len(starts) != 1:
            raise ValueError(f"a maze layout needs exactly one start cell 'S', got {len(starts)}")
        self.start_row, self.start_col = (int(v) for v in starts[0])
        n_rows, n_cols = self.free.shape
        self.low = np.array([-self.start_col - 0.5, -self.start_row - 0.5])
        self.high = self.low + np.array([n_cols, n_rows])
        free_r, free_c = np.nonzero(self.free)
        self.free_centers = np.stack([free_c - self.start_col, free_r - self.start_row], 1).astype(np.float64)
        # the walls as lists, for the scalar step
        self._wx, self._wy = self.wall_x.tolist(), self.wall_y.tolist()

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

        A move is shorter than one cell, so it crosses at most one cell edge per axis; if that edge is a
        wall (``wall_x``/``wall_y``), the point stops ``1e-6`` inside its own cell.
        """
        pos = np.array(pos, dtype=np.float64, copy=True)
        offset = (self.start_col, self.start_row)
        walls = (self.wall_x, self.wall_y)
        for axis in (0, 1):
            other = 1 - axis
            old_cell = np.floor(pos[:, axis] + 0.5).astype(np.int64) + offset[axis]
            new = pos[:, axis] + action[:, axis]
            new_cell = np.floor(new + 0.5).astype(np.int64) + offset[axis]
            crossing = np.flatnonzero(new_cell != old_cell)
            if len(crossing):
                line = np.floor(pos[crossing, other] + 0.5).astype(np.int64) + offset[other]
                edge = np.maximum(old_cell[crossing], new_cell[crossing])
                w = walls[axis]
                blocked = w[line, edge] if axis == 0 else w[edge, line]
                hit = crossing[blocked]
                step = np.sign(action[hit, axis])
                new[hit] = np.floor(pos[hit, axis] + 0.5) + 0.5 * step - EPS * step
            pos[:, axis] = new
        return pos

    def move_one(self, x: float, y: float, ax: float, ay: float) -> tuple[float, float]:
        """:meth:`move` of one point in plain floats (the env's step; a test checks they agree)."""
        c0, r0 = math.floor(x + 0.5) + self.start_col, math.floor(y + 0.5) + self.start_row
        nx = x + ax
        c1 = math.floor(nx + 0.5) + self.start_col
        if c1 != c0 and self._wx[r0][max(c0, c1)]:
            s = 1.0 if ax > 0 else -1.0
            nx = math.floor(x + 0.5) + 0.5 * s - EPS * s
            c1 = c0
        ny = y + ay
        r1 = math.floor(ny + 0.5) + self.start_row
        if r1 != r0 and self._wy[max(r0, r1)][c1]:
            s = 1.0 if ay > 0 else -1.0
            ny = math.floor(y + 0.5) + 0.5 * s - EPS * s
        return nx, ny

    def reachable(self) -> np.ndarray:
        """Cells reachable from the start cell through passages (a breadth-first search)."""
        seen = np.zeros_like(self.free)
        seen[self.start_row, self.start_col] = True
        frontier = [(self.start_row, self.start_col)]
        n_rows, n_cols = self.free.shape
        while frontier:
            r, c = frontier.pop()
            for dr, dc in ((0, 1), (0, -1), (1, 0), (-1, 0)):
                nr, nc = r + dr, c + dc
                if not (0 <= nr < n_rows and 0 <= nc < n_cols) or seen[nr, nc]:
                    continue
                wall = self.wall_x[r, max(c, nc)] if dc else self.wall_y[max(r, nr), c]
                if not wall:
                    seen[nr, nc] = True
                    frontier.append((nr, nc))
        return seen

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
        self.goal_sampler: Callable[[np.random.Generator, np.ndarray], np.ndarray] | None = None
        """Draws the goal of each new episode from ``(rng, start position)`` (set by a curriculum); None:
        uniform over free cells."""
        self.set_maze(maze)
        if switch_maze_at:
            other = Maze(switch_to)
            if (other.low != self.maze.low).any() or (other.high != self.maze.high).any():
                raise ValueError(f"switch_to: maze {switch_to!r} does not span the bounding box of "
                                 f"{self.maze.name!r} (the switch keeps the spaces)")
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
            self.goal = np.asarray(self.goal_sampler(self.np_random, self.pos.copy()), dtype=np.float64).reshape(2)
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
        self.pos = np.array(self.maze.move_one(self.pos[0], self.pos[1], action[0], action[1]))
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
