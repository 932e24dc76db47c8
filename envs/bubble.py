"""``rl_energy/BubblePosition-v0``: move an acoustic cavitation bubble to a target position by setting
the amplitudes of a dual-frequency standing wave (Klapcsik et al. 2023; ``papers/bubble-control.md`` §3).

* **action**: ``(P_A1, P_A2) ∈ [0, 1]²`` bar (25 and 50 kHz), held for one control step of
  ``cycles_per_action`` acoustic cycles of 25 kHz. Out-of-range amplitudes are clipped to ``[0, 1]``
  (documented behaviour; the trainer's actions are already in range); NaN or infinite ones raise
  ``ValueError``.
* **observation**: ``[x_T, x_t, x_{t-1}] / 0.25``: target, current and previous position in units of
  ``λ_0 = 60 mm``, divided by 0.25 as in the paper's code (the last two positions stand in for a
  velocity). Positions may leave ``[0.05, 0.25]``; that does not end the episode (observations clip
  positions to ``±1 λ_0``).
* **reward**: ``-(|x - x_T| / d_max)^½ - 10·[solver failure] + 10·[success]`` with
  ``d_max = max(0.25 - x_T, x_T - 0.05)``.
* **termination**: success when ``|x - x_T| < tolerance`` (0.01 λ_0); failure when the integrator
  reports a failure (step-size underflow, non-finite state, radius collapse; ``info["solver_status"]``).
  **truncation** after ``episode_length`` actions.
* **reset**: ``x_0, x_T ~ U[0.05, 0.25]`` independently, the bubble at rest at ``R_0``; fixed pairs via
  ``reset(options={"position": x0, "target": xT})``.

Between control steps the acoustic phase (solver time), ``R``, ``Ṙ``, ``x`` and ``ẋ`` carry over.
Defaults follow the paper's current setting (10 cycles per action, 128 actions per episode); the older
one (50 cycles, 12 actions) is ``gym.make(..., cycles_per_action=50, episode_length=12)``.

``gym.make_vec("rl_energy/BubblePosition-v0", num_envs=n)`` builds :class:`BubblePositionVectorEnv`,
which integrates all sub-environments in one call of the multi-threaded kernel
(:func:`rl_energy.envs.bubble_dynamics.integrate`) and autoresets in Gymnasium's ``NEXT_STEP`` mode.
"""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium.utils import seeding
from gymnasium.vector.utils import batch_space

from rl_energy.envs.bubble_dynamics import OK, STATUS_NAMES, BubbleParams, integrate

OBS_SCALE = 0.25
"""Observations are positions (in λ_0) divided by this (the paper's observation-space high)."""
OBS_LIMIT = 1.0
"""Positions beyond ``±1 λ_0`` (far outside the target interval) are clipped in the observation."""
PA_PER_BAR = 1e5


class _Episodes:
    """``n`` bubble episodes as arrays; :meth:`step` advances any subset with one kernel call. The one
    home of the env's dynamics, reward and termination rules, shared by the single and vector envs."""

    def __init__(self, n: int, cycles_per_action: float, episode_length: int, tolerance: float,
                 target_range: tuple[float, float], params: BubbleParams, rtol: float, atol: float) -> None:
        self.cycles, self.episode_length, self.tolerance = float(cycles_per_action), episode_length, tolerance
        self.low, self.high = target_range
        self.params, self.constants, self.rtol, self.atol = params, params.constants(), rtol, atol
        self.state = np.zeros((n, 4))
        self.tau = np.zeros(n)
        self.step_size = np.full(n, 1e-4)
        self.target = np.zeros(n)
        self.prev_x = np.zeros(n)
        self.t = np.zeros(n, dtype=np.int64)

    def reset(self, i: int, rng: np.random.Generator, position: float | None, target: float | None) -> None:
        x0 = rng.uniform(self.low, self.high) if position is None else float(position)
        xt = rng.uniform(self.low, self.high) if target is None else float(target)
        for name, value in (("position", x0), ("target", xt)):
            if not np.isfinite(value):
                raise ValueError(f"reset option '{name}' must be finite, got {value}")
        self.state[i] = (1.0, x0, 0.0, 0.0)
        self.tau[i], self.step_size[i], self.target[i], self.prev_x[i], self.t[i] = 0.0, 1e-4, xt, x0, 0

    def obs(self, idx: np.ndarray | slice) -> np.ndarray:
        x = np.stack([self.target[idx], self.state[idx, 1], self.prev_x[idx]], -1)
        return (np.clip(x, -OBS_LIMIT, OBS_LIMIT) / OBS_SCALE).astype(np.float32)

    def step(self, idx: np.ndarray, action: np.ndarray) -> tuple[np.ndarray, ...]:
        """Advance episodes ``idx`` by one control step with ``action[k]`` (bar) for ``idx[k]``."""
        action = np.asarray(action, dtype=np.float64).reshape(len(idx), 2)
        if not np.all(np.isfinite(action)):
            raise ValueError(f"BubblePosition: actions must be finite amplitudes in bar, got {action.tolist()}")
        amps = np.clip(action, 0.0, 1.0) * PA_PER_BAR  # documented: out-of-range amplitudes are clipped
        state, tau, h = self.state[idx], self.tau[idx], self.step_size[idx]
        status, _ = integrate(state, tau, tau + self.cycles, amps, self.constants, self.rtol, self.atol, h)
        failed = status != OK
        x_before = self.state[idx, 1]
        x = np.where(failed, x_before, state[:, 1])  # a failed integration keeps the last valid position
        self.state[idx] = np.where(failed[:, None], self.state[idx], state)
        self.tau[idx], self.step_size[idx], self.prev_x[idx] = tau, h, x_before
        self.t[idx] += 1
        target = self.target[idx]
        dist = np.abs(x - target)
        success = ~failed & (dist < self.tolerance)
        d_max = np.maximum(self.high - target, target - self.low)
        reward = -np.sqrt(dist / d_max) - 10.0 * failed + 10.0 * success
        terminated = success | failed
        truncated = ~terminated & (self.t[idx] >= self.episode_length)
        return reward, terminated, truncated, success, status


def _check_settings(cycles_per_action: float, episode_length: int, tolerance: float,
                    target_range: tuple[float, float]) -> None:
    if not cycles_per_action > 0:
        raise ValueError(f"cycles_per_action must be > 0, got {cycles_per_action}")
    if episode_length < 1:
        raise ValueError(f"episode_length must be >= 1, got {episode_length}")
    if not tolerance > 0:
        raise ValueError(f"tolerance must be > 0, got {tolerance}")
    if not 0 <= target_range[0] < target_range[1]:
        raise ValueError(f"target_range must be (low, high) with 0 <= low < high, got {target_range}")


class BubblePositionEnv(gym.Env):
    """One bubble; see the module docstring. ``R0`` (m) is the equilibrium radius (60 µm)."""

    metadata = {"render_modes": []}

    def __init__(self, cycles_per_action: float = 10, episode_length: int = 128, tolerance: float = 0.01,
                 target_range: tuple[float, float] = (0.05, 0.25), R0: float = 60e-6, rtol: float = 1e-9,
                 atol: float = 1e-9) -> None:
        _check_settings(cycles_per_action, episode_length, tolerance, target_range)
        self.params = BubbleParams(R0=R0)
        self._ep = _Episodes(1, cycles_per_action, episode_length, tolerance, tuple(target_range), self.params,
                             rtol, atol)
        self.action_space = gym.spaces.Box(0.0, 1.0, (2,), np.float32)
        self.observation_space = gym.spaces.Box(-OBS_LIMIT / OBS_SCALE, OBS_LIMIT / OBS_SCALE, (3,), np.float32)

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None
              ) -> tuple[np.ndarray, dict[str, Any]]:
        super().reset(seed=seed)
        options = options or {}
        self._ep.reset(0, self.np_random, options.get("position"), options.get("target"))
        return self._ep.obs(slice(0, 1))[0], self._info(np.zeros(1, bool), np.zeros(1, np.int64))

    def step(self, action: np.ndarray) -> tuple[np.ndarray, float, bool, bool, dict[str, Any]]:
        reward, terminated, truncated, success, status = self._ep.step(np.zeros(1, np.int64), action)
        info = self._info(success, status)
        return self._ep.obs(slice(0, 1))[0], float(reward[0]), bool(terminated[0]), bool(truncated[0]), info

    def _info(self, success: np.ndarray, status: np.ndarray) -> dict[str, Any]:
        ep = self._ep
        return {"success": bool(success[0]), "solver_status": STATUS_NAMES[int(status[0])],
                "position": float(ep.state[0, 1]), "target": float(ep.target[0]), "steps": int(ep.t[0]),
                "time_ms": float(ep.tau[0] / self.params.f1 * 1e3)}


class BubblePositionVectorEnv(gym.vector.VectorEnv):
    """``num_envs`` bubbles integrated together (one kernel call per step, both cores), autoreset in
    ``NEXT_STEP`` mode: the step after an episode ends resets that sub-env and ignores its action.
    Sub-env ``i`` of ``reset(seed=s)`` draws its episodes from seed ``s + i``, as ``SyncVectorEnv`` does.
    ``reset(options={"position": xs, "target": xts})`` fixes every sub-env's start and target."""

    metadata = {"autoreset_mode": gym.vector.AutoresetMode.NEXT_STEP, "render_modes": []}

    def __init__(self, num_envs: int = 1, cycles_per_action: float = 10, episode_length: int = 128,
                 tolerance: float = 0.01, target_range: tuple[float, float] = (0.05, 0.25), R0: float = 60e-6,
                 rtol: float = 1e-9, atol: float = 1e-9) -> None:
        if num_envs < 1:
            raise ValueError(f"num_envs must be >= 1, got {num_envs}")
        _check_settings(cycles_per_action, episode_length, tolerance, target_range)
        self.num_envs = num_envs
        self.params = BubbleParams(R0=R0)
        self._ep = _Episodes(num_envs, cycles_per_action, episode_length, tolerance, tuple(target_range),
                             self.params, rtol, atol)
        self.single_action_space = gym.spaces.Box(0.0, 1.0, (2,), np.float32)
        self.single_observation_space = gym.spaces.Box(-OBS_LIMIT / OBS_SCALE, OBS_LIMIT / OBS_SCALE, (3,), np.float32)
        self.action_space = batch_space(self.single_action_space, num_envs)
        self.observation_space = batch_space(self.single_observation_space, num_envs)
        self._rngs = [seeding.np_random()[0] for _ in range(num_envs)]
        self._needs_reset = np.zeros(num_envs, dtype=bool)

    def reset(self, *, seed: int | list[int | None] | None = None, options: dict[str, Any] | None = None
              ) -> tuple[np.ndarray, dict[str, Any]]:
        n = self.num_envs
        seeds = [None if seed is None else seed + i for i in range(n)] if not isinstance(seed, list) else seed
        if len(seeds) != n:
            raise ValueError(f"reset got {len(seeds)} seeds for {n} envs")
        for i, s in enumerate(seeds):
            if s is not None:
                self._rngs[i] = seeding.np_random(s)[0]
        options = options or {}
        positions = np.broadcast_to(options.get("position", np.nan), (n,))
        targets = np.broadcast_to(options.get("target", np.nan), (n,))
        for i in range(n):
            self._ep.reset(i, self._rngs[i], None if np.isnan(positions[i]) else positions[i],
                           None if np.isnan(targets[i]) else targets[i])
        self._needs_reset[:] = False
        return self._ep.obs(slice(None)), self._infos(np.zeros(n, bool), np.zeros(n, np.int64))

    def step(self, actions: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, dict[str, Any]]:
        n = self.num_envs
        actions = np.asarray(actions).reshape(n, 2)
        reward, terminated, truncated = np.zeros(n), np.zeros(n, bool), np.zeros(n, bool)
        success, status = np.zeros(n, bool), np.zeros(n, np.int64)
        resetting = np.flatnonzero(self._needs_reset)
        for i in resetting:
            self._ep.reset(i, self._rngs[i], None, None)
        active = np.flatnonzero(~self._needs_reset)
        if len(active):
            r, te, tr, su, st = self._ep.step(active, actions[active])
            reward[active], terminated[active], truncated[active], success[active], status[active] = r, te, tr, su, st
        self._needs_reset = terminated | truncated
        return self._ep.obs(slice(None)), reward, terminated, truncated, self._infos(success, status)

    def _infos(self, success: np.ndarray, status: np.ndarray) -> dict[str, Any]:
        ep, all_set = self._ep, np.ones(self.num_envs, dtype=bool)
        info = {"success": success, "solver_status": status, "position": ep.state[:, 1].copy(),
                "target": ep.target.copy(), "steps": ep.t.copy(), "time_ms": ep.tau / self.params.f1 * 1e3}
        info.update({f"_{k}": all_set for k in list(info)})
        return info

