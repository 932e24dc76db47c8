"""Radio reconstruction of inclined air showers (Guelfand, Decoene, Martineau-Huynh, Prunet, Tueros, Macias &
Benoit-Lévy, *Astroparticle Physics*, arXiv 2504.18257; digest ``papers/one-step-tasks.md`` §17).

The forward models, a synthetic array and event generator built on them, and the paper's reconstruction chain.
Everything is float64 numpy; the model functions broadcast over leading batch dimensions (one home for the
physics, used by the generator, the fits and :class:`rl_energy.envs.tasks.radio_shower.RadioShowerTask`'s
score).

**Frame.** Local Cartesian metres: ``x`` north, ``y`` west, ``z`` up, origin at sea level under the array's
centre (GRAND's convention). A shower arriving from zenith ``θ`` and azimuth ``φ`` propagates along

    K(θ, φ) = −(sin θ cos φ, sin θ sin φ, cos θ)                                   (§2, the plane-wave model)

Heights above sea level take the Earth's curvature into account, ``h(p) = √(x² + y² + (R⊕ + z)²) − R⊕``: at
88° zenith the emission region is 50–150 km away and a flat Earth would put it far too high.

**Forward models** (the paper's §3):

* refractive index ``n(h) = 1 + 10⁻⁶ n_s e^{k_r h}`` (GRAND's exponential model, ``n_s = 325``,
  ``k_r = −0.1218 km⁻¹``); ``n_eff(a, b)`` is its average along the straight path (Gauss–Legendre, 8 nodes);
* plane wave: ``t_i = t_0 + K·x_i / c`` (the initialiser);
* spherical wave from the emission point ``X_s = X_core − r K``: ``t_i = t_s + n_eff(X_s, x_i) ‖x_i − X_s‖ / c``;
* the angular distribution function of the peak amplitude (ADF), with ``ω_i`` the angle at ``X_s`` between the
  axis and antenna ``i``, ``l_i = ‖x_i − X_s‖`` and ``η_i`` the antenna's azimuth around the axis from the
  ``v × B`` direction:

      f_i = (A / l_i) [1 + (G_A / sin α) cos η_i] / (1 + 4 [((tan ω_i / tan ω_c)² − 1) / δω]²),
      G_A = −0.003 θ[°] + 0.220,   ω_c = arccos(1 / n_eff(X_s, X_core))  (the Cherenkov angle)

  with ``α`` the geomagnetic angle between ``K`` and the field ``B`` (GRAND's site: inclination 61.6°).

**Synthetic showers** (:func:`simulate`; these are *not* ZHAireS/CoREAS simulations: the events come from the
same forward models the fits use, so what is measured is noise propagation, never the physics systematics of
the paper's 0.07° / 5 % figures). A hexagonal array of 331 antennas, 1 km apart, at 1086 m. ``θ`` uniform in
[60°, 88°], ``φ`` uniform, ``log10 E_em/eV`` uniform in [17.5, 19], the core uniform within 4 km of the centre.
``X_max ~ N(750 + 50 log10(E/EeV), 40²) g cm⁻²`` slant depth, placed on the axis through an isothermal
atmosphere (``ρ = 1.225 e^{−h/8.4 km}`` kg m⁻³) with the same curved heights. ``δω ~ U(0.6, 1.4)``. The ADF
amplitude follows the synthetic law ``A = κ E_em sin α e^{−ρ_s / 0.8}`` (``ρ_s`` the density at ``X_s``; the
paper's energy is likewise ``A / sin α`` corrected by a polynomial in ``(sin α, ρ_s)``). Noise: 5 ns Gaussian
timing jitter, 7.5 % amplitude noise plus a 20 µV/m Gaussian floor; an antenna triggers when its measured
amplitude exceeds 60 µV/m, and an event is kept with at least 5 triggered antennas.

**Reconstruction** (:func:`reconstruct`, the paper's chain, by ``scipy.optimize.least_squares``):

1. plane wave, from the analytic (linear least-squares) initialiser;
2. spherical wave, fitting ``(θ, φ, r)`` of ``X_s = X_ref − r K`` from the amplitude-weighted barycentre
   ``X_ref`` of the triggered antennas, ``t_s`` profiled out in closed form; ``r`` started by a scan;
3. ADF, fitting ``(θ, φ, δω)`` with ``X_s`` fixed from step 2 and ``A`` profiled out (it enters linearly);
   ``χ²`` with ``σ_i = √((0.075 A_i)² + floor²)``;
4. energy: ``E_em = A / (sin α · P₃(sin α, ρ_s))``, ``P₃`` a full cubic polynomial fitted on a calibration set
   (:class:`EnergyCalibration`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

C_LIGHT = 0.299792458
"""Speed of light in vacuum, m/ns."""
R_EARTH = 6.371e6
"""Earth radius, m."""
RHO_0, SCALE_HEIGHT = 1.225, 8400.0
"""Isothermal atmosphere: sea-level density (kg m⁻³) and scale height (m)."""
KAPPA = 1.5e7
"""Synthetic ADF amplitude scale: ``A`` (µV/m · m) of a 1 EeV shower with ``sin α = 1`` in thin air."""
RHO_STAR = 0.8
"""Density scale (kg m⁻³) of the synthetic amplitude law ``e^{−ρ_s/ρ*}``."""

_GL_NODES, _GL_WEIGHTS = np.polynomial.legendre.leggauss(8)
_GL_U = 0.5 * (_GL_NODES + 1.0)
_GL_W = 0.5 * _GL_WEIGHTS


@dataclass(frozen=True)
class Site:
    """The array, the atmosphere and the noise model (the digest's CPU experiment; GRAND-like values)."""

    altitude: float = 1086.0
    spacing: float = 1000.0
    rings: int = 10
    n_s: float = 325.0
    k_r: float = -0.1218e-3
    b_inclination_deg: float = 61.6
    b_declination_deg: float = 0.0
    timing_jitter_ns: float = 5.0
    amplitude_noise: float = 0.075
    amplitude_floor: float = 20.0
    trigger: float = 60.0
    min_antennas: int = 5

    @property
    def b_field(self) -> np.ndarray:
        """Unit geomagnetic field (pointing down at a northern site)."""
        inc, dec = math.radians(self.b_inclination_deg), math.radians(self.b_declination_deg)
        return np.array([math.cos(inc) * math.cos(dec), -math.cos(inc) * math.sin(dec), -math.sin(inc)])

    def antennas(self) -> np.ndarray:
        """Positions ``[N, 3]`` of the hexagonal array (``1 + 3 rings (rings + 1)`` antennas; 331 for 10)."""
        pos = []
        for q in range(-self.rings, self.rings + 1):
            for r in range(max(-self.rings, -q - self.rings), min(self.rings, -q + self.rings) + 1):
                pos.append((self.spacing * (q + 0.5 * r), self.spacing * (math.sqrt(3) / 2) * r))
        xy = np.asarray(pos, dtype=np.float64)
        return np.concatenate([xy, np.full((len(xy), 1), self.altitude)], axis=1)


# ------------------------------------------------------------------------------------------------ geometry
def height(p: np.ndarray) -> np.ndarray:
    """Height above sea level (m) of points ``[..., 3]`` with the Earth's curvature."""
    p = np.asarray(p, dtype=np.float64)
    return np.sqrt(p[..., 0] ** 2 + p[..., 1] ** 2 + (R_EARTH + p[..., 2]) ** 2) - R_EARTH


def propagation(theta: np.ndarray, phi: np.ndarray) -> np.ndarray:
    """``K(θ, φ)`` ``[..., 3]``: the unit vector the shower travels along (θ, φ in radians)."""
    theta, phi = np.asarray(theta, dtype=np.float64), np.asarray(phi, dtype=np.float64)
    st = np.sin(theta)
    return -np.stack([st * np.cos(phi), st * np.sin(phi), np.cos(theta)], axis=-1)


def direction_angles(k: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Inverse of :func:`propagation`: ``(θ, φ)`` of propagation vectors ``[..., 3]`` (any norm)."""
    u = -np.asarray(k, dtype=np.float64)
    u = u / np.linalg.norm(u, axis=-1, keepdims=True)
    return np.arccos(np.clip(u[..., 2], -1.0, 1.0)), np.arctan2(u[..., 1], u[..., 0])


def angle_between(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Angle (degrees) between vectors ``[..., 3]`` (stable at small angles: ``atan2(|a×b|, a·b)``)."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    return np.degrees(np.arctan2(np.linalg.norm(np.cross(a, b), axis=-1), np.sum(a * b, axis=-1)))


def refractive_index(h: np.ndarray, site: Site) -> np.ndarray:
    """``n(h) = 1 + 10⁻⁶ n_s e^{k_r h}``."""
    return 1.0 + 1e-6 * site.n_s * np.exp(site.k_r * np.asarray(h, dtype=np.float64))


def n_eff(a: np.ndarray, b: np.ndarray, site: Site) -> np.ndarray:
    """Mean refractive index along the straight path from ``a`` to ``b`` (``[..., 3]``, broadcast)."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    pts = a[..., None, :] + _GL_U[:, None] * (b - a)[..., None, :]
    return 1.0 + 1e-6 * site.n_s * np.sum(_GL_W * np.exp(site.k_r * height(pts)), axis=-1)


def air_density(h: np.ndarray) -> np.ndarray:
    """Isothermal air density (kg m⁻³) at height ``h`` (m)."""
    return RHO_0 * np.exp(-np.asarray(h, dtype=np.float64) / SCALE_HEIGHT)


def ground_point(x_s: np.ndarray, k: np.ndarray, site: Site) -> np.ndarray:
    """Where the axis through ``x_s`` along ``k`` meets the array's plane ``z = altitude`` (the core)."""
    s = (site.altitude - x_s[..., 2]) / k[..., 2]
    return x_s + s[..., None] * k


def xmax_point(core: np.ndarray, k: np.ndarray, x_max: float, site: Site) -> np.ndarray:
    """The point on the axis (through ``core`` along ``k``) at slant depth ``x_max`` (g cm⁻²) from the top of the
    atmosphere, integrated through the isothermal atmosphere with curved heights."""
    s = np.concatenate([[0.0], np.geomspace(1.0, 3.0e6, 4000)])  # distance up the axis from the core, m
    rho = air_density(height(core[None, :] - s[:, None] * k[None, :]))
    seg = 0.5 * (rho[1:] + rho[:-1]) * np.diff(s) * 0.1  # kg m⁻³ · m -> g cm⁻²
    depth = np.concatenate([np.cumsum(seg[::-1])[::-1], [0.0]])  # depth above each point
    if x_max >= depth[0]:
        raise ValueError(f"X_max = {x_max:.0f} g/cm² lies below the ground ({depth[0]:.0f} g/cm² on this axis)")
    dist = float(np.interp(-x_max, -depth, s))
    return core - dist * k


# ------------------------------------------------------------------------------------------- forward models
def plane_times(ant: np.ndarray, k: np.ndarray, t0: np.ndarray) -> np.ndarray:
    """Plane wave: ``t_i = t_0 + K·x_i / c`` (ns)."""
    return np.asarray(t0)[..., None] + np.einsum("...nd,...d->...n", ant, k) / C_LIGHT


def spherical_times(ant: np.ndarray, x_s: np.ndarray, t_s: np.ndarray, site: Site) -> np.ndarray:
    """Spherical wave: ``t_i = t_s + n_eff(X_s, x_i) ‖x_i − X_s‖ / c`` (ns); ``ant [..., N, 3]``, ``x_s [..., 3]``."""
    xs = x_s[..., None, :]
    return np.asarray(t_s)[..., None] + n_eff(xs, ant, site) * np.linalg.norm(ant - xs, axis=-1) / C_LIGHT


def geomagnetic_frame(k: np.ndarray, site: Site) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(sin α, e_vxB, e_vx(vxB))`` of propagation vectors ``[..., 3]``."""
    vxb = np.cross(k, np.broadcast_to(site.b_field, k.shape))
    sin_a = np.linalg.norm(vxb, axis=-1)
    e1 = vxb / sin_a[..., None]
    return sin_a, e1, np.cross(k, e1)


def cherenkov_angle(x_s: np.ndarray, k: np.ndarray, site: Site) -> np.ndarray:
    """``ω_c = arccos(1 / n_eff(X_s, X_core))`` (radians)."""
    return np.arccos(1.0 / n_eff(x_s, ground_point(x_s, k, site), site))


def adf_geometry(ant: np.ndarray, x_s: np.ndarray, k: np.ndarray, site: Site) -> tuple[np.ndarray, np.ndarray]:
    """The δω-free parts of the ADF: ``((tan ω_i / tan ω_c)², [1 + (G_A / sin α) cos η_i] / l_i)``, each ``[..., N]``
    (``θ`` for ``G_A`` from ``k``)."""
    d = ant - x_s[..., None, :]
    l_i = np.linalg.norm(d, axis=-1)
    cos_w = np.einsum("...nd,...d->...n", d, k) / l_i
    tan_w = np.sqrt(np.clip(1.0 - cos_w ** 2, 0.0, None)) / cos_w
    tan_c = np.tan(cherenkov_angle(x_s, k, site))
    sin_a, e1, e2 = geomagnetic_frame(k, site)
    u1, u2 = np.einsum("...nd,...d->...n", d, e1), np.einsum("...nd,...d->...n", d, e2)
    cos_eta = u1 / np.sqrt(u1 ** 2 + u2 ** 2 + 1e-300)
    theta_deg = np.degrees(np.arccos(np.clip(-k[..., 2], -1.0, 1.0)))
    g_a = -0.003 * theta_deg + 0.220
    with np.errstate(divide="ignore", invalid="ignore"):  # an axis grazing the ground: the fits reject it
        return (tan_w / tan_c[..., None]) ** 2, (1.0 + (g_a / sin_a)[..., None] * cos_eta) / l_i


def adf_shape(ant: np.ndarray, x_s: np.ndarray, k: np.ndarray, delta_omega: np.ndarray, site: Site) -> np.ndarray:
    """The ADF divided by ``A``: ``f_i / A`` ``[..., N]`` (the module docstring's ADF)."""
    ratio2, geo = adf_geometry(ant, x_s, k, site)
    return geo / (1.0 + 4.0 * ((ratio2 - 1.0) / np.asarray(delta_omega)[..., None]) ** 2)


def amplitude_law(e_em: np.ndarray, sin_alpha: np.ndarray, rho: np.ndarray) -> np.ndarray:
    """The synthetic ADF amplitude ``A = κ (E_em / EeV) sin α e^{−ρ_s/ρ*}`` (see the module docstring)."""
    return KAPPA * (np.asarray(e_em) / 1e18) * sin_alpha * np.exp(-np.asarray(rho) / RHO_STAR)


def amplitude_sigma(amplitude: np.ndarray, site: Site) -> np.ndarray:
    """``σ_i = √((0.075 A_i)² + floor²)`` of measured amplitudes."""
    return np.sqrt((site.amplitude_noise * amplitude) ** 2 + site.amplitude_floor ** 2)


# ------------------------------------------------------------------------------------------------- events
@dataclass
class Showers:
    """Events padded to the array size: ``pos [B, N, 3]`` (m), ``t [B, N]`` (ns, from the first triggered
    antenna), ``amp [B, N]`` (µV/m), ``mask [B, N]`` (triggered), and the truth of each event."""

    pos: np.ndarray
    t: np.ndarray
    amp: np.ndarray
    mask: np.ndarray
    theta: np.ndarray
    phi: np.ndarray
    log10_e: np.ndarray
    core: np.ndarray
    x_s: np.ndarray
    delta_omega: np.ndarray
    x_max: np.ndarray

    def __len__(self) -> int:
        return len(self.theta)

    def event(self, i: int) -> dict[str, np.ndarray]:
        """The triggered antennas of event ``i``: ``pos [n, 3]``, ``t [n]``, ``amp [n]``."""
        m = self.mask[i]
        return {"pos": self.pos[i][m], "t": self.t[i][m], "amp": self.amp[i][m]}


def simulate(n: int, seed: int, site: Site | None = None, noise: bool = True,
             theta_range_deg: tuple[float, float] = (60.0, 88.0)) -> Showers:
    """``n`` kept events (the module docstring's generator), deterministic in ``seed``. ``noise=False`` gives the
    exact model times and amplitudes (the trigger still uses the noiseless amplitude)."""
    site = site or Site()
    if n < 1:
        raise ValueError(f"simulate: n must be >= 1, got {n}")
    rng = np.random.default_rng(seed)
    ant = site.antennas()
    n_ant = len(ant)
    keys = ("pos", "t", "amp", "mask", "theta", "phi", "log10_e", "core", "x_s", "delta_omega", "x_max")
    out: dict[str, list] = {k: [] for k in keys}
    lo, hi = np.radians(theta_range_deg)
    while len(out["theta"]) < n:
        theta, phi = rng.uniform(lo, hi), rng.uniform(-np.pi, np.pi)
        log10_e = rng.uniform(17.5, 19.0)
        rad, ang = 4000.0 * np.sqrt(rng.uniform()), rng.uniform(0, 2 * np.pi)
        core = np.array([rad * np.cos(ang), rad * np.sin(ang), site.altitude])
        x_max = rng.normal(750.0 + 50.0 * (log10_e - 18.0), 40.0)
        d_omega = rng.uniform(0.6, 1.4)
        k = propagation(theta, phi)
        x_s = xmax_point(core, k, x_max, site)
        sin_a = geomagnetic_frame(k, site)[0]
        a_true = amplitude_law(10.0 ** log10_e, sin_a, air_density(height(x_s)))
        amp = a_true * adf_shape(ant, x_s, k, d_omega, site)
        times = spherical_times(ant, x_s, np.float64(0.0), site)
        if noise:
            amp = amp * (1.0 + site.amplitude_noise * rng.standard_normal(n_ant)) \
                + site.amplitude_floor * rng.standard_normal(n_ant)
            times = times + site.timing_jitter_ns * rng.standard_normal(n_ant)
        mask = amp > site.trigger
        if mask.sum() < site.min_antennas:
            continue
        times = np.where(mask, times - times[mask].min(), 0.0)
        for key, val in zip(keys, (ant, times, np.where(mask, amp, 0.0), mask, theta, phi, log10_e, core, x_s,
                                   d_omega, x_max), strict=True):
            out[key].append(val)
    return Showers(**{k: np.asarray(v) for k, v in out.items()})


# ------------------------------------------------------------------------------------------ reconstruction
def _least_squares():
    from rl_energy.errors import import_optional

    return import_optional("scipy.optimize", "the radio shower fits").least_squares


def fit_plane(pos: np.ndarray, t: np.ndarray, site: Site) -> dict[str, Any]:
    """Plane-wave fit: the analytic initialiser (linear least squares of ``t_i = t_0 + k·x_i``, ``K = ck/|ck|``)
    refined on ``(θ, φ, t_0)`` with ``t_0`` profiled; ``σ_t`` = the timing jitter."""
    # the array is flat: the times give the horizontal slowness s (t_i = t_0 + s·x_i), and sin θ = c|s|
    design = np.concatenate([np.ones((len(t), 1)), pos[:, :2] - pos[:, :2].mean(0)], axis=1)
    slowness = np.linalg.lstsq(design, t, rcond=None)[0][1:]
    th0 = float(np.arcsin(np.clip(C_LIGHT * np.linalg.norm(slowness), 0.05, 0.995)))
    ph0 = float(np.arctan2(-slowness[1], -slowness[0]))
    sig = site.timing_jitter_ns

    def resid(p: np.ndarray) -> np.ndarray:
        r = t - plane_times(pos, propagation(p[0], p[1]), 0.0)
        return (r - r.mean()) / sig

    sol = _least_squares()(resid, np.array([th0, float(ph0)]), method="lm", xtol=1e-12, ftol=1e-12)
    return {"theta": float(sol.x[0]), "phi": float(sol.x[1]), "chi2": float(np.sum(sol.fun ** 2))}


def fit_spherical(pos: np.ndarray, t: np.ndarray, amp: np.ndarray, theta0: float, phi0: float,
                  site: Site) -> dict[str, Any]:
    """Spherical-wave fit of ``X_s = X_ref − r K(θ, φ)`` (``X_ref`` = the amplitude-weighted barycentre of the
    antennas) with ``t_s`` profiled; ``r`` started by a log scan at ``(θ_0, φ_0)``. Returns ``x_s``, ``t_s``,
    ``theta``/``phi`` (the direction from ``X_ref`` to ``X_s``) and ``chi2``."""
    x_ref = (amp[:, None] * pos).sum(0) / amp.sum()
    sig = site.timing_jitter_ns

    def model(p: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        x_s = x_ref - math.exp(p[2]) * propagation(p[0], p[1])
        r = t - spherical_times(pos, x_s, np.float64(0.0), site)
        return x_s, r

    def resid(p: np.ndarray) -> np.ndarray:
        r = model(p)[1]
        return (r - r.mean()) / sig

    scan = np.log(np.geomspace(2e3, 4e5, 40))
    costs = [np.sum(resid(np.array([theta0, phi0, s])) ** 2) for s in scan]
    p0 = np.array([theta0, phi0, scan[int(np.argmin(costs))]])
    sol = _least_squares()(resid, p0, method="lm", xtol=1e-14, ftol=1e-14, x_scale=np.array([0.01, 0.01, 0.1]))
    x_s, r = model(sol.x)
    th, ph = direction_angles(x_ref - x_s)  # K points from X_s to X_ref
    return {"x_s": x_s, "t_s": float(r.mean()), "theta": float(th), "phi": float(ph),
            "r": float(math.exp(sol.x[2])), "chi2": float(np.sum(sol.fun ** 2))}


ADF_GRIDS_M = (((6000.0, 400.0), (3000.0, 100.0)), ((400.0, 40.0), (100.0, 10.0)))
"""The ADF fit's starting grids of core positions, ``((half-width, step) along, (half-width, step) across)`` in metres
on the ground around the antennas' barycentre, along and across the ground projection of the spherical fit's
direction: a coarse grid, then a fine one around each of its :data:`ADF_STARTS` best cores. A core 100 m across the
axis turns it by 0.04–0.4°; the χ² valley of a near-horizontal shower seen by many antennas is a few hundredths of a
degree wide across the axis and kilometres long along it."""
ADF_GRID_DELTA_OMEGA = (0.6, 0.8, 1.0, 1.2, 1.4)
"""The δω values of the starting grids."""
ADF_STARTS = 3
"""Cores of the coarse grid refined by a fine grid, and least-squares runs of the ADF fit from the fine grids'
lowest points; the lowest χ² wins."""
DELTA_OMEGA_BOUNDS = (0.1, 5.0)
"""Bounds of the fitted δω."""
THETA_MAX = math.radians(89.5)
"""Zenith cap of the joint fit's direction (the models need a downgoing axis that meets the ground)."""


def fit_adf(pos: np.ndarray, amp: np.ndarray, x_s: np.ndarray, theta0: float, phi0: float,
            site: Site) -> dict[str, Any]:
    """ADF fit with ``X_s`` fixed and ``A`` profiled (weighted linear least squares), ``χ²`` with
    :func:`amplitude_sigma`. The axis runs from ``X_s`` through a core on the ground, and the fit is over that
    core's position ``(u, v)`` (along and across the ground projection of ``K(θ_0, φ_0)``, from the antennas'
    barycentre) and δω: ground coordinates follow the footprint's stretch (``1/cos θ``), where the direction's
    ``(θ, φ)`` would make the χ² valley needle-thin. Bounded trust-region least squares (δω within
    :data:`DELTA_OMEGA_BOUNDS`) from the :data:`ADF_STARTS` best points of the grids :data:`ADF_GRIDS_M` ×
    :data:`ADF_GRID_DELTA_OMEGA` (each grid one broadcast evaluation). Returns ``theta``, ``phi``, ``core``,
    ``delta_omega``, ``amplitude`` (``A``) and ``chi2``."""
    w = 1.0 / amplitude_sigma(amp, site)
    y = amp * w
    x_ref = pos.mean(0)
    k0 = propagation(theta0, phi0)
    e_u = np.array([k0[0], k0[1], 0.0]) / max(math.hypot(k0[0], k0[1]), 1e-9)
    e_v = np.array([-e_u[1], e_u[0], 0.0])

    def axis(u: np.ndarray, v: np.ndarray) -> np.ndarray:
        core = x_ref + np.asarray(u)[..., None] * e_u + np.asarray(v)[..., None] * e_v
        k = core - x_s
        return k / np.linalg.norm(k, axis=-1, keepdims=True)

    def residuals(ratio2: np.ndarray, geo: np.ndarray, d_omega: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        shape = geo * w / (1.0 + 4.0 * ((ratio2 - 1.0) / np.asarray(d_omega)[..., None]) ** 2)
        a = np.sum(shape * y, axis=-1) / np.maximum(np.sum(shape * shape, axis=-1), 1e-300)
        return a, y - a[..., None] * shape

    d_o = np.asarray(ADF_GRID_DELTA_OMEGA)

    def grid(centre_u: np.ndarray, centre_v: np.ndarray, level: int) -> tuple[np.ndarray, np.ndarray]:
        """Points ``[C, G, 3]`` ``(u, v, δω)`` of the level's grid around each centre and their χ² ``[C, G]``."""
        (hu, su), (hv, sv) = ADF_GRIDS_M[level]
        du, dv = np.meshgrid(np.arange(-hu, hu + 1e-9, su), np.arange(-hv, hv + 1e-9, sv), indexing="ij")
        uu, vv = centre_u[:, None] + du.ravel(), centre_v[:, None] + dv.ravel()
        k = axis(uu, vv)
        with np.errstate(all="ignore"):
            ratio2, geo = adf_geometry(pos, np.broadcast_to(x_s, k.shape), k, site)
            cost = np.stack([np.sum(residuals(ratio2, geo, np.full(uu.shape, d))[1] ** 2, axis=-1) for d in d_o],
                            axis=-1)
        best = np.argmin(np.nan_to_num(cost, nan=np.inf), axis=-1)  # the best δω of each core
        pts = np.stack([uu, vv, d_o[best]], axis=-1)
        return pts, np.nan_to_num(np.take_along_axis(cost, best[..., None], -1)[..., 0], nan=np.inf)

    pts, cost = grid(np.zeros(1), np.zeros(1), 0)
    top = np.argsort(cost[0])[:ADF_STARTS]
    pts, cost = grid(pts[0, top, 0], pts[0, top, 1], 1)
    pts, cost = pts.reshape(-1, 3), cost.ravel()
    lo, hi = np.array([-np.inf, -np.inf, DELTA_OMEGA_BOUNDS[0]]), np.array([np.inf, np.inf, DELTA_OMEGA_BOUNDS[1]])

    def resid(p: np.ndarray) -> np.ndarray:
        k = axis(p[0], p[1])
        return residuals(*adf_geometry(pos, x_s, k, site), np.float64(p[2]))[1]

    sol = None
    for i in np.argsort(cost)[:ADF_STARTS]:
        p0 = np.clip(pts[i], lo + 1e-9, hi - 1e-9)
        cand = _least_squares()(resid, p0, bounds=(lo, hi), method="trf", xtol=1e-12, ftol=1e-12,
                                x_scale=np.array([10.0, 1.0, 0.1]))
        if sol is None or cand.cost < sol.cost:
            sol = cand
    k = axis(sol.x[0], sol.x[1])
    a, r = residuals(*adf_geometry(pos, x_s, k, site), np.float64(sol.x[2]))
    theta, phi = direction_angles(k)
    return {"theta": float(theta), "phi": float(phi), "core": ground_point(x_s, k, site),
            "delta_omega": float(sol.x[2]), "amplitude": float(a), "chi2": float(np.sum(r ** 2))}


@dataclass
class EnergyCalibration:
    """``log(A / (E_em sin α)) ≈ P₃(sin α, ρ_s)``, a full cubic in two variables (10 coefficients) fitted by least
    squares on reconstructed calibration events (the paper's energy step corrects ``A/(E sin α)`` by a cubic in
    ``(sin α, ρ_s)``; the logarithm keeps the inverted energy positive); :meth:`energy` inverts it."""

    coef: np.ndarray = field(default_factory=lambda: np.zeros(10))

    @staticmethod
    def _features(sin_a: np.ndarray, rho: np.ndarray) -> np.ndarray:
        s, r = np.asarray(sin_a, dtype=np.float64), np.asarray(rho, dtype=np.float64)
        return np.stack([s ** i * r ** j for i in range(4) for j in range(4 - i)], axis=-1)

    @classmethod
    def fit(cls, amplitude: np.ndarray, sin_a: np.ndarray, rho: np.ndarray, e_em: np.ndarray) -> EnergyCalibration:
        """Least squares on the events with a positive fitted amplitude, refitted three times without the events
        whose residual exceeds 3 robust standard deviations (1.4826 × the median absolute residual): failed fits
        of a few calibration events must not bend the polynomial."""
        amplitude, sin_a, rho, e_em = (np.asarray(v, dtype=np.float64) for v in (amplitude, sin_a, rho, e_em))
        ok = amplitude > 0
        with np.errstate(divide="ignore", invalid="ignore"):
            y = np.log(amplitude / (e_em / 1e18 * sin_a))
        x = cls._features(sin_a, rho)
        for _ in range(4):
            coef = np.linalg.lstsq(x[ok], y[ok], rcond=None)[0]
            resid = np.abs(y - x @ coef)
            ok = (amplitude > 0) & (resid <= 3.0 * 1.4826 * np.median(resid[ok]))
        return cls(coef)

    def energy(self, amplitude: np.ndarray, sin_a: np.ndarray, rho: np.ndarray) -> np.ndarray:
        """``E_em`` (eV) of fitted ADF amplitudes (NaN where the amplitude is not positive)."""
        amplitude = np.asarray(amplitude, dtype=np.float64)
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(amplitude > 0, 1e18 * amplitude / (np.asarray(sin_a)
                                                               * np.exp(self._features(sin_a, rho) @ self.coef)),
                            np.nan)


def fit_joint(pos: np.ndarray, t: np.ndarray, amp: np.ndarray, sph: dict[str, Any], adf: dict[str, Any],
              site: Site) -> dict[str, Any]:
    """Our extension beyond the paper's sequential chain: one least-squares fit of the whole hypothesis
    ``(θ, φ, core_x, core_y, log r, δω)`` (``X_s = X_core − r K``) to the timing and amplitude χ² together, ``t_s``
    and ``A`` profiled, started from the chain's solution. It is the minimum of ``rl_energy/RadioShower-v0``'s
    energy ``χ²/2`` with a free amplitude. Returns the ADF stage's keys plus ``x_s`` and ``r``."""
    w = 1.0 / amplitude_sigma(amp, site)
    y = amp * w
    sig_t = site.timing_jitter_ns

    def unpack(p: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        k = propagation(min(p[0], THETA_MAX), p[1])
        core = np.array([p[2], p[3], site.altitude])
        return k, core - math.exp(p[4]) * k

    def resid(p: np.ndarray) -> np.ndarray:
        k, x_s = unpack(p)
        r_t = t - spherical_times(pos, x_s, np.float64(0.0), site)
        with np.errstate(all="ignore"):
            shape = adf_shape(pos, x_s, k, np.float64(p[5]), site) * w
        a = np.sum(shape * y) / max(np.sum(shape * shape), 1e-300)
        return np.nan_to_num(np.concatenate([(r_t - r_t.mean()) / sig_t, y - a * shape]), nan=1e6)

    core0 = adf["core"]
    r0 = float(np.linalg.norm(sph["x_s"] - core0))
    p0 = np.array([adf["theta"], adf["phi"], core0[0], core0[1], math.log(r0), adf["delta_omega"]])
    lo = np.array([0.0, -np.inf, -np.inf, -np.inf, math.log(1e3), DELTA_OMEGA_BOUNDS[0]])
    hi = np.array([THETA_MAX, np.inf, np.inf, np.inf, math.log(1e6), DELTA_OMEGA_BOUNDS[1]])
    sol = _least_squares()(resid, np.clip(p0, lo + 1e-9, hi - 1e-9), bounds=(lo, hi), method="trf", xtol=1e-12,
                           ftol=1e-12, x_scale=np.array([1e-4, 1e-4, 10.0, 10.0, 0.01, 0.05]))
    k, x_s = unpack(sol.x)
    with np.errstate(all="ignore"):
        shape = adf_shape(pos, x_s, k, np.float64(sol.x[5]), site) * w
    theta, phi = direction_angles(k)
    return {"theta": float(theta), "phi": float(phi), "core": np.array([sol.x[2], sol.x[3], site.altitude]),
            "x_s": x_s, "r": float(math.exp(sol.x[4])), "delta_omega": float(sol.x[5]),
            "amplitude": float(np.sum(shape * y) / max(np.sum(shape * shape), 1e-300)),
            "chi2": float(np.sum(sol.fun ** 2)),
            "sin_alpha": float(geomagnetic_frame(k, site)[0]), "rho": float(air_density(height(x_s)))}


def reconstruct(pos: np.ndarray, t: np.ndarray, amp: np.ndarray, site: Site | None = None,
                joint: bool = True) -> dict[str, dict]:
    """The chain plane → spherical → ADF on one event's triggered antennas, then (``joint``) :func:`fit_joint`;
    each stage's fit, and for the ADF and joint stages also ``sin_alpha`` and ``rho`` (air density at ``X_s``) for
    the energy calibration."""
    site = site or Site()
    plane = fit_plane(pos, t, site)
    sph = fit_spherical(pos, t, amp, plane["theta"], plane["phi"], site)
    adf = fit_adf(pos, amp, sph["x_s"], sph["theta"], sph["phi"], site)
    k = propagation(adf["theta"], adf["phi"])
    adf["sin_alpha"] = float(geomagnetic_frame(k, site)[0])
    adf["rho"] = float(air_density(height(sph["x_s"])))
    out = {"plane": plane, "spherical": sph, "adf": adf}
    if joint:
        out["joint"] = fit_joint(pos, t, amp, sph, adf, site)
    return out
