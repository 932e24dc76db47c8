"""Radio reconstruction of an inclined air shower as a one-step inverse problem (Guelfand et al., arXiv 2504.18257;
digest ``papers/one-step-tasks.md`` §17, "Framing"); the physics is :mod:`rl_energy.radio`.

* **obs**: the array's 331 antennas, padded and masked, flattened from ``[331, 6]``: position ``(x, y, z)`` in km,
  peak time in µs from the first triggered antenna, peak amplitude in mV/m, and the trigger mask (untriggered
  antennas carry zeros).
* **action**: the shower hypothesis ``(θ, φ, log10 E_em/eV, core_x, core_y, log10 r/m, δω)`` (radians, km on the
  ground, ``r`` the distance from the core back up the axis to the emission point ``X_s = X_core − r K``), in a
  bounded Box.
* **reward**: ``−χ²/n``, the reduced χ² of the hypothesis's spherical-wave times (``t_s`` profiled out, ``σ_t`` =
  5 ns) and ADF amplitudes (``A`` from the generator's amplitude law :func:`rl_energy.radio.amplitude_law`,
  ``σ_i = √((0.075 A_i)² + floor²)``) over the ``n`` triggered antennas. ``χ²/2`` is an exact energy of the
  hypothesis; it needs no label (the paper's fits minimise it). Full information: ``target`` is the true action.
* **metrics**: ``angle_68`` (the 68 % containment of the angle between the action's and the true direction,
  degrees), ``angle_median``, ``energy_resolution`` (the standard deviation of ``E_rec/E_true − 1``).

The events are synthetic (the forward models generate them; see :mod:`rl_energy.radio`): train and test splits
from different seeds, with or without the noise model (``noise``).
"""

from __future__ import annotations

import math
from typing import Any, ClassVar

import gymnasium as gym
import numpy as np
import torch
from tensordict import TensorDict

from rl_energy import radio
from rl_energy.envs.tasks.base import OneStepTask, Split, is_int

N_FEATURES = 6
LOW = np.array([math.radians(50.0), -math.pi, 16.0, -20.0, -20.0, 3.0, 0.1], dtype=np.float32)
HIGH = np.array([math.radians(89.5), math.pi, 20.0, 20.0, 20.0, 6.5, 5.0], dtype=np.float32)
"""Bounds of the action ``(θ, φ, log10 E_em, core_x km, core_y km, log10 r, δω)``."""
MAX_EVENTS = 200_000
"""Largest split (the generator makes about 600 events per second)."""


def encode(showers: radio.Showers) -> tuple[torch.Tensor, torch.Tensor]:
    """``(obs [B, N·6], target [B, 7])`` float32 of simulated events (the module docstring's layout)."""
    mask = showers.mask.astype(np.float64)
    feats = np.concatenate([showers.pos / 1000.0 * mask[..., None], (showers.t / 1000.0 * mask)[..., None],
                            (showers.amp / 1000.0 * mask)[..., None], mask[..., None]], axis=-1)
    r = np.linalg.norm(showers.x_s - showers.core, axis=-1)
    target = np.stack([showers.theta, showers.phi, showers.log10_e, showers.core[:, 0] / 1000.0,
                       showers.core[:, 1] / 1000.0, np.log10(r), showers.delta_omega], axis=-1)
    return (torch.as_tensor(feats.reshape(len(showers), -1), dtype=torch.float32),
            torch.as_tensor(target, dtype=torch.float32))


def decode(obs: torch.Tensor) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """``(pos m [B, N, 3], t ns [B, N], amp µV/m [B, N], mask [B, N])`` (float64) of observations."""
    x = np.asarray(torch.as_tensor(obs).detach().cpu(), dtype=np.float64).reshape(len(obs), -1, N_FEATURES)
    return x[..., :3] * 1000.0, x[..., 3] * 1000.0, x[..., 4] * 1000.0, x[..., 5] > 0.5


def chi2(obs: torch.Tensor, action: torch.Tensor, site: radio.Site) -> tuple[np.ndarray, np.ndarray]:
    """``(χ² [B], n triggered [B])`` of hypotheses ``action [B, 7]`` on events ``obs`` (the module docstring).
    Computed on the triggered antennas only, flattened across the batch (sums per event by ``bincount``)."""
    pos, t, amp, mask = decode(obs)
    b = len(pos)
    a = np.clip(np.asarray(torch.as_tensor(action).detach().cpu(), dtype=np.float64).reshape(b, 7), LOW, HIGH)
    k = radio.propagation(a[:, 0], a[:, 1])
    core = np.stack([a[:, 3] * 1000.0, a[:, 4] * 1000.0, np.full(b, site.altitude)], axis=-1)
    x_s = core - (10.0 ** a[:, 5])[:, None] * k
    ev, ant = np.nonzero(mask)
    n = np.bincount(ev, minlength=b)
    p, t, amp = pos[ev, ant][:, None, :], t[ev, ant], amp[ev, ant]  # [M, 1, 3]: one-antenna "events"
    # timing: spherical wave, t_s profiled (the mean residual of each event)
    resid_t = t - radio.spherical_times(p, x_s[ev], np.zeros(len(ev)), site)[:, 0]
    resid_t = resid_t - (np.bincount(ev, resid_t, minlength=b) / np.maximum(n, 1))[ev]
    chi_t = np.bincount(ev, (resid_t / site.timing_jitter_ns) ** 2, minlength=b)
    # amplitudes: the ADF with A from the amplitude law
    sin_a = radio.geomagnetic_frame(k, site)[0]
    amplitude = radio.amplitude_law(10.0 ** a[:, 2], sin_a, radio.air_density(radio.height(x_s)))
    with np.errstate(all="ignore"):
        model = amplitude[ev] * radio.adf_shape(p, x_s[ev], k[ev], a[ev, 6], site)[:, 0]
        chi_a = np.nan_to_num(((amp - model) / radio.amplitude_sigma(amp, site)) ** 2, nan=1e12)
    return chi_t + np.bincount(ev, chi_a, minlength=b), n


class RadioShowerTask(OneStepTask):
    """Reconstruct an inclined shower's direction and energy from its radio footprint (module docstring)."""

    metric_names: ClassVar[tuple[str, ...]] = ("angle_68", "angle_median", "energy_resolution")

    def __init__(self, n_train: int = 4000, n_test: int = 1000, noise: bool = True, seed: int = 0) -> None:
        for name, value in (("n_train", n_train), ("n_test", n_test)):
            if not is_int(value) or not 1 <= value <= MAX_EVENTS:
                raise ValueError(f"RadioShowerTask kwarg '{name}' must be an integer in [1, {MAX_EVENTS}], "
                                 f"got {value!r}")
        if not isinstance(noise, bool):
            raise ValueError(f"RadioShowerTask kwarg 'noise' must be true or false, got {noise!r}")
        if not is_int(seed) or seed < 0:
            raise ValueError(f"RadioShowerTask kwarg 'seed' must be an integer >= 0, got {seed!r}")
        self.n_train, self.n_test, self.noise, self.seed = int(n_train), int(n_test), noise, int(seed)
        self.site = radio.Site()
        n_ant = len(self.site.antennas())
        self.observation_space = gym.spaces.Box(-np.inf, np.inf, shape=(n_ant * N_FEATURES,), dtype=np.float32)
        self.action_space = gym.spaces.Box(LOW, HIGH, dtype=np.float32)

    def _split(self, split: Split) -> TensorDict:
        n, seed = (self.n_train, 2 * self.seed) if split == "train" else (self.n_test, 2 * self.seed + 1)
        obs, target = encode(radio.simulate(n, seed, self.site, noise=self.noise))
        return TensorDict({"obs": obs, "target": target}, batch_size=[n])

    def score(self, batch: TensorDict, action: torch.Tensor) -> torch.Tensor:
        """``−χ²/n`` per event ``[B]``."""
        c, n = chi2(batch["obs"], action, self.site)
        return torch.as_tensor(-c / np.maximum(n, 1), dtype=torch.float32)

    def metrics(self, batch: TensorDict, action: torch.Tensor) -> dict[str, Any]:
        a = np.asarray(torch.as_tensor(action).detach().cpu(), dtype=np.float64)
        y = np.asarray(batch["target"], dtype=np.float64)
        ang = radio.angle_between(radio.propagation(a[:, 0], a[:, 1]), radio.propagation(y[:, 0], y[:, 1]))
        return {"angle_68": float(np.quantile(ang, 0.68)), "angle_median": float(np.median(ang)),
                "energy_resolution": float(np.std(10.0 ** (a[:, 2] - y[:, 2]) - 1.0))}
