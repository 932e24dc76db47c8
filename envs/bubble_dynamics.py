"""Keller–Miksis radial dynamics coupled to 1-D translation of a gas bubble in a dual-frequency
standing acoustic wave (Klapcsik et al., "Position control of an acoustic cavitation bubble by
reinforcement learning", 2023; model and constants in ``papers/bubble-control.md`` §2).

The model, in the dimensionless variables ``τ = t f_1`` (one unit = one cycle of the first
component), ``y = R/R_0``, ``ζ = x/λ_0`` (``λ_0 = c_L/f_1``), state ``X = [y, ζ, y', ζ']`` with
``y' = Ṙ/(R_0 f_1)`` and ``ζ' = ẋ/c_L``:

* radial (Keller–Miksis with the translational ``u²/4`` term, the time derivative of the liquid
  pressure expanded analytically): ``y'' = N/D`` with
  ``N = (C0 + C1 y') y^{-3γ} - C2 (1 + C7 y') - C3/y - C4 y'/y - 1.5 (1 - C7 y'/3) y'²
  - (1 + C7 y') C5 p_A - C6 ṗ_A y + C8 ζ'²`` and ``D = y - C7 y y' + C4 C7``;
* translational (massless bubble, added mass): ``ζ'' = 3 C9 (F_B + F_D)/y³ - 3 y' ζ'/y`` with the
  instantaneous primary Bjerknes force ``F_B = -C10 y³ ∇p_A`` and Levich drag
  ``F_D = -C11 y (c_L ζ' - u_ac)``;
* field (pressure node at ``x = 0``): ``p_A = Σ_i P_i sin(k_i x) sin(ω_i t)`` with its time
  derivative, gradient and the acoustic velocity ``u_ac = Σ_i P_i cos(k_i x) cos(ω_i t) / (ρ c_L)``.

:func:`integrate` advances many bubbles at once with an adaptive embedded Runge–Kutta method
(Dormand–Prince 5(4), per-bubble step sizes, float64), one bubble per loop iteration of a numba
``prange`` loop, so a vector of bubbles uses every core and no Python runs per time step. Failures
are reported per bubble in a status array (:data:`STATUS_NAMES`), never silently.

:func:`bjerknes_force_linear` is the time-averaged primary Bjerknes force of the linearised bubble
(digest §5), used by the linear-theory controller and to check the drift direction.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from rl_energy.errors import import_optional

numba = import_optional("numba", "the bubble env (rl_energy/BubblePosition-v0)")

OK, STEP_UNDERFLOW, NON_FINITE, COLLAPSE, MAX_STEPS = 0, 1, 2, 3, 4
STATUS_NAMES = {
    OK: "ok",
    STEP_UNDERFLOW: "step size underflow",
    NON_FINITE: "non-finite state",
    COLLAPSE: "radius collapse",
    MAX_STEPS: "too many steps",
}
MIN_RADIUS = 1e-3
"""``R/R_0`` below this counts as a collapse (the gas term ``y^{-3γ}`` then overflows the solver)."""


@dataclass(frozen=True)
class BubbleParams:
    """Physical constants (SI units); defaults are the paper's water, 25 + 50 kHz, ``R_0 = 60 µm``."""

    R0: float = 60e-6
    """Equilibrium radius (m)."""
    f1: float = 25e3
    """Frequency of the first component (Hz); also the reference frequency of the time unit."""
    f2: float = 50e3
    rho: float = 998.0
    """Liquid density (kg/m³)."""
    sigma: float = 0.0725
    """Surface tension (N/m)."""
    mu: float = 1e-3
    """Liquid viscosity (Pa s)."""
    c: float = 1500.0
    """Sound speed in the liquid (m/s)."""
    p0: float = 1e5
    """Ambient pressure (Pa)."""
    pv: float = 0.0
    """Vapour pressure (Pa)."""
    gamma: float = 1.4
    """Polytropic exponent."""

    @property
    def wavelength(self) -> float:
        """``λ_0 = c_L / f_1`` (m): positions are in units of it."""
        return self.c / self.f1

    def constants(self) -> np.ndarray:
        """``C0 … C11`` of the digest's dimensionless form, then ``3γ, c_L, ω_1, ω_2, k_1, k_2, ρ c_L``."""
        R0, fr, rho, c = self.R0, self.f1, self.rho, self.c
        pg0 = self.p0 - self.pv + 2 * self.sigma / R0
        lam = self.wavelength
        return np.array([
            pg0 / (rho * R0**2 * fr**2),                         # C0
            (1 - 3 * self.gamma) * pg0 / (rho * c * R0 * fr),    # C1
            (self.p0 - self.pv) / (rho * R0**2 * fr**2),         # C2
            2 * self.sigma / (rho * R0**3 * fr**2),              # C3
            4 * self.mu / (rho * R0**2 * fr),                    # C4
            1 / (rho * R0**2 * fr**2),                           # C5
            1 / (rho * c * R0 * fr**2),                          # C6
            R0 * fr / c,                                         # C7
            (lam / (2 * R0)) ** 2,                               # C8
            1 / (2 * math.pi * rho * c * fr * R0**3),            # C9
            4 / 3 * math.pi * R0**3,                             # C10
            12 * math.pi * self.mu * R0,                         # C11
            3 * self.gamma,
            c,
            2 * math.pi * self.f1,
            2 * math.pi * self.f2,
            2 * math.pi * self.f1 / c,
            2 * math.pi * self.f2 / c,
            rho * c,
        ])

    def natural_frequency(self) -> float:
        """Linear (undamped) natural frequency of radial oscillation (Hz); ≈ 54.9 kHz for 60 µm."""
        s = 2 * self.sigma / self.R0
        w0_sq = (3 * self.gamma * (self.p0 - self.pv + s) - s) / (self.rho * self.R0**2)
        return math.sqrt(w0_sq) / (2 * math.pi)


# ------------------------------------------------------------------------------------------- kernel
@numba.njit(cache=True, fastmath=False, inline="always")
def _rhs(t: float, y0: float, y1: float, y2: float, y3: float, p1: float, p2: float, C: np.ndarray,
         out: np.ndarray) -> None:
    """``dX/dτ`` of one bubble into ``out`` (see the module docstring)."""
    c, w1, w2, k1, k2, rho_c = C[13], C[14], C[15], C[16], C[17], C[18]
    x = y1 * c / w1 * 2.0 * math.pi  # ζ λ_0 in metres (λ_0 = 2π c / ω_1)
    tt = t * 2.0 * math.pi / w1      # τ / f_1 in seconds
    s1x, c1x = math.sin(k1 * x), math.cos(k1 * x)
    s1t, c1t = math.sin(w1 * tt), math.cos(w1 * tt)
    if w2 == 2.0 * w1:  # the paper's 25 + 50 kHz: double-angle formulas instead of four more sin/cos
        s2x, c2x = 2.0 * s1x * c1x, 1.0 - 2.0 * s1x * s1x
        s2t, c2t = 2.0 * s1t * c1t, 1.0 - 2.0 * s1t * s1t
    else:
        s2x, c2x = math.sin(k2 * x), math.cos(k2 * x)
        s2t, c2t = math.sin(w2 * tt), math.cos(w2 * tt)
    pa = p1 * s1x * s1t + p2 * s2x * s2t
    pa_dot = w1 * p1 * s1x * c1t + w2 * p2 * s2x * c2t
    grad_pa = k1 * p1 * c1x * s1t + k2 * p2 * c2x * s2t
    u_ac = (p1 * c1x * c1t + p2 * c2x * c2t) / rho_c
    inv_y = 1.0 / y0
    c7y2 = C[7] * y2
    num = ((C[0] + C[1] * y2) * y0 ** (-C[12]) - C[2] * (1.0 + c7y2) - C[3] * inv_y - C[4] * y2 * inv_y
           - 1.5 * (1.0 - c7y2 / 3.0) * y2 * y2 - (1.0 + c7y2) * C[5] * pa - C[6] * pa_dot * y0 + C[8] * y3 * y3)
    den = y0 - c7y2 * y0 + C[4] * C[7]
    y_cubed = y0 * y0 * y0
    force = -C[10] * y_cubed * grad_pa - C[11] * y0 * (c * y3 - u_ac)
    out[0] = y2
    out[1] = y3
    out[2] = num / den
    out[3] = 3.0 * C[9] * force / y_cubed - 3.0 * y2 * y3 * inv_y


# Dormand–Prince 5(4) tableau (Hairer, Nørsett & Wanner, Table II.5.2)
_A21 = 1 / 5
_A31, _A32 = 3 / 40, 9 / 40
_A41, _A42, _A43 = 44 / 45, -56 / 15, 32 / 9
_A51, _A52, _A53, _A54 = 19372 / 6561, -25360 / 2187, 64448 / 6561, -212 / 729
_A61, _A62, _A63, _A64, _A65 = 9017 / 3168, -355 / 33, 46732 / 5247, 49 / 176, -5103 / 18656
_B1, _B3, _B4, _B5, _B6 = 35 / 384, 500 / 1113, 125 / 192, -2187 / 6784, 11 / 84
# error weights: 5th-order minus embedded 4th-order solution
_E1, _E3, _E4, _E5, _E6, _E7 = (71 / 57600, -71 / 16695, 71 / 1920, -17253 / 339200, 22 / 525, -1 / 40)


@numba.njit(cache=True)
def _integrate_one(X: np.ndarray, t0: float, t1: float, p1: float, p2: float, C: np.ndarray, rtol: float,
                   atol: float, h: float, max_steps: int) -> tuple[int, float, int, float]:
    """Advance one bubble's state ``X`` (in place) from ``t0`` to ``t1``; returns
    ``(status, t reached, accepted steps, last step size)``."""
    k1 = np.empty(4)
    k2 = np.empty(4)
    k3 = np.empty(4)
    k4 = np.empty(4)
    k5 = np.empty(4)
    k6 = np.empty(4)
    k7 = np.empty(4)
    tmp = np.empty(4)
    y5 = np.empty(4)
    t = t0
    _rhs(t, X[0], X[1], X[2], X[3], p1, p2, C, k1)
    if h <= 0.0:
        h = 1e-4
    steps = 0
    last_h = h
    while t < t1:
        if steps >= max_steps:
            return MAX_STEPS, t, steps, last_h
        last = t + h >= t1
        if last:
            h = t1 - t
        for i in range(4):
            tmp[i] = X[i] + h * _A21 * k1[i]
        _rhs(t + h / 5, tmp[0], tmp[1], tmp[2], tmp[3], p1, p2, C, k2)
        for i in range(4):
            tmp[i] = X[i] + h * (_A31 * k1[i] + _A32 * k2[i])
        _rhs(t + 3 * h / 10, tmp[0], tmp[1], tmp[2], tmp[3], p1, p2, C, k3)
        for i in range(4):
            tmp[i] = X[i] + h * (_A41 * k1[i] + _A42 * k2[i] + _A43 * k3[i])
        _rhs(t + 4 * h / 5, tmp[0], tmp[1], tmp[2], tmp[3], p1, p2, C, k4)
        for i in range(4):
            tmp[i] = X[i] + h * (_A51 * k1[i] + _A52 * k2[i] + _A53 * k3[i] + _A54 * k4[i])
        _rhs(t + 8 * h / 9, tmp[0], tmp[1], tmp[2], tmp[3], p1, p2, C, k5)
        for i in range(4):
            tmp[i] = X[i] + h * (_A61 * k1[i] + _A62 * k2[i] + _A63 * k3[i] + _A64 * k4[i] + _A65 * k5[i])
        _rhs(t + h, tmp[0], tmp[1], tmp[2], tmp[3], p1, p2, C, k6)
        for i in range(4):
            y5[i] = X[i] + h * (_B1 * k1[i] + _B3 * k3[i] + _B4 * k4[i] + _B5 * k5[i] + _B6 * k6[i])
        _rhs(t + h, y5[0], y5[1], y5[2], y5[3], p1, p2, C, k7)
        err = 0.0  # largest component of the error estimate scaled by atol + rtol |X|
        for i in range(4):
            e = h * (_E1 * k1[i] + _E3 * k3[i] + _E4 * k4[i] + _E5 * k5[i] + _E6 * k6[i] + _E7 * k7[i])
            err = max(err, abs(e) / (atol + rtol * max(abs(X[i]), abs(y5[i]))))
        if not math.isfinite(err):
            h *= 0.1  # a stage left the domain (e.g. y <= 0): retry smaller
            if h < 1e-14 * max(1.0, abs(t)):
                return NON_FINITE, t, steps, last_h
            continue
        if err <= 1.0:
            t = t1 if last else t + h
            for i in range(4):
                X[i] = y5[i]
                k1[i] = k7[i]  # first same as last
            steps += 1
            if not (math.isfinite(X[0]) and math.isfinite(X[1]) and math.isfinite(X[2]) and math.isfinite(X[3])):
                return NON_FINITE, t, steps, last_h
            if X[0] < MIN_RADIUS:
                return COLLAPSE, t, steps, last_h
            if not last:
                last_h = h
            h *= min(5.0, max(0.2, 0.9 * err ** -0.2)) if err > 0 else 5.0
        else:
            h *= max(0.2, 0.9 * err ** -0.2)
        if h < 1e-14 * max(1.0, abs(t)):
            return STEP_UNDERFLOW, t, steps, last_h
    return OK, t, steps, last_h


@numba.njit(cache=True, parallel=True)
def _integrate_many(X: np.ndarray, t0: np.ndarray, t1: np.ndarray, amps: np.ndarray, C: np.ndarray, rtol: float,
                    atol: float, h: np.ndarray, max_steps: int, status: np.ndarray, steps: np.ndarray) -> None:
    """Bubbles spread over numba's threads (one bubble per ``prange`` iteration)."""
    for b in numba.prange(X.shape[0]):
        status[b], t0[b], steps[b], h[b] = _integrate_one(
            X[b], t0[b], t1[b], amps[b, 0], amps[b, 1], C, rtol, atol, h[b], max_steps
        )


@numba.njit(cache=True)
def _integrate_serial(X: np.ndarray, t0: np.ndarray, t1: np.ndarray, amps: np.ndarray, C: np.ndarray, rtol: float,
                      atol: float, h: np.ndarray, max_steps: int, status: np.ndarray, steps: np.ndarray) -> None:
    """:func:`_integrate_many` on the calling thread: a single bubble does not pay the thread pool's
    dispatch (about 1 ms per call on two busy cores). A separate function, not a second ``njit`` of
    the same one: numba's on-disk cache is keyed by the Python function, so the two would share it."""
    for b in range(X.shape[0]):
        status[b], t0[b], steps[b], h[b] = _integrate_one(
            X[b], t0[b], t1[b], amps[b, 0], amps[b, 1], C, rtol, atol, h[b], max_steps
        )


def integrate(
    state: np.ndarray,
    tau: np.ndarray,
    tau_end: np.ndarray | float,
    amplitudes: np.ndarray,
    params: BubbleParams | np.ndarray = BubbleParams(),
    rtol: float = 1e-9,
    atol: float = 1e-9,
    step: np.ndarray | None = None,
    max_steps: int = 1_000_000,
) -> tuple[np.ndarray, np.ndarray]:
    """Advance ``n`` bubbles in place.

    Args:
        state: ``[n, 4]`` float64 ``[R/R_0, x/λ_0, Ṙ/(R_0 f_1), ẋ/c_L]``, updated in place.
        tau: ``[n]`` float64 start times in cycles of ``f_1``; updated in place to the time reached
            (``tau_end`` unless the bubble failed).
        tau_end: end time(s) in cycles.
        amplitudes: ``[n, 2]`` pressure amplitudes ``(P_1, P_2)`` in Pa, constant over the interval.
        params: the physical constants, or their :meth:`BubbleParams.constants` array.
        step: ``[n]`` float64 initial step sizes (cycles), updated in place with the last accepted
            full step (pass it back to warm-start the next call); ``None`` starts from 1e-4.
        max_steps: accepted steps allowed per bubble and call.

    Returns:
        ``(status, steps)``: per-bubble :data:`STATUS_NAMES` code (0 = ok) and accepted steps.
    """
    n = state.shape[0]
    if state.dtype != np.float64 or state.shape != (n, 4) or not state.flags.c_contiguous:
        raise ValueError(f"state must be a C-contiguous float64 array of shape [n, 4], got {state.dtype} {state.shape}")
    if tau.dtype != np.float64 or tau.shape != (n,):
        raise ValueError(f"tau must be float64 of shape [{n}], got {tau.dtype} {tau.shape}")
    amps = np.ascontiguousarray(amplitudes, dtype=np.float64).reshape(n, 2)
    if not np.all(np.isfinite(amps)):
        raise ValueError("acoustic amplitudes must be finite")
    t1 = np.broadcast_to(np.asarray(tau_end, dtype=np.float64), (n,)).copy()
    C = params.constants() if isinstance(params, BubbleParams) else params
    h = np.full(n, 1e-4) if step is None else step
    status = np.zeros(n, dtype=np.int64)
    steps = np.zeros(n, dtype=np.int64)
    kernel = _integrate_many if n > 1 else _integrate_serial
    kernel(state, tau, t1, amps, C, rtol, atol, h, max_steps, status, steps)
    return status, steps


# ------------------------------------------------------------------------------------ linear theory
def bjerknes_force_linear(x: np.ndarray | float, p1: float, p2: float, params: BubbleParams = BubbleParams()
                          ) -> np.ndarray:
    """Time-averaged primary Bjerknes force (N) on the linearised bubble at ``x`` (in ``λ_0``) for the
    standing wave ``Σ P_i sin(k_i x) sin(ω_i t)`` (digest §5).

    The radius obeys ``ε̈ + 2β ε̇ + ω_0² ε = -p_A/(ρ R_0²)`` with ``R = R_0 (1 + ε)``; the 25/50 kHz cross
    terms average to zero, so ``⟨F⟩ = Σ_i π R_0 P_i² k_i sin(2 k_i x) (ω_0² - ω_i²) / (ρ [(ω_0² - ω_i²)²
    + (2 β_i ω_i)²])`` with ``β_i = 2μ/(ρ R_0²) + ω_i² R_0 / (2 c_L)`` (viscous + radiation damping).
    Positive = towards larger ``x``. Below resonance (both components for 60 µm) the bubble is pulled
    to pressure antinodes: ``0.25 λ_0`` for 25 kHz, ``0.125 λ_0`` for 50 kHz.
    """
    R0, rho, c = params.R0, params.rho, params.c
    w0_sq = (2 * math.pi * params.natural_frequency()) ** 2
    x_m = np.asarray(x, dtype=np.float64) * params.wavelength
    force = np.zeros_like(x_m)
    for amp, f in ((p1, params.f1), (p2, params.f2)):
        w, k = 2 * math.pi * f, 2 * math.pi * f / c
        beta = 2 * params.mu / (rho * R0**2) + w**2 * R0 / (2 * c)
        gain = (w0_sq - w**2) / ((w0_sq - w**2) ** 2 + (2 * beta * w) ** 2)
        force = force + math.pi * R0 * amp**2 * k * np.sin(2 * k * x_m) * gain / rho
    return force


def drift_speed_linear(x: np.ndarray | float, p1: float, p2: float, params: BubbleParams = BubbleParams()
                       ) -> np.ndarray:
    """Drag-limited drift speed (m/s) under :func:`bjerknes_force_linear`: ``⟨F⟩ / (12π μ R_0)``."""
    return bjerknes_force_linear(x, p1, p2, params) / (12 * math.pi * params.mu * params.R0)
