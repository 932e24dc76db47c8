"""mini-SCN: spherical channels for modelling atomic interactions (Zitnick, Das, Kolluru, Lan, Shuaibi, Sriram,
Ulissi & Wood, NeurIPS 2022, arXiv 2206.14331; digest ``one-step-tasks.md`` §19).

A CPU-sized SCN on ``e3nn``'s real spherical harmonics and Wigner matrices (SCN itself lives only in fairchem-core
1.x, which pins an old torch; digest "Library reality"):

* **Spherical channels.** Each atom carries ``x_i ∈ R^{(l_max+1)² × C}``: ``C`` channels, each the real SH
  coefficients (``l ≤ l_max``) of a function on the sphere (e3nn's order ``l² + l + m``, y the polar axis).
* **Edge-aligned messages** (paper §3.2). For an edge ``i ← j`` the Wigner matrix ``D(r̂_ij)`` of the rotation
  taking ŷ to ``r̂_ij`` (zero roll) brings ``x_j`` and ``x_i`` into the edge frame, where only the orders
  ``|m| ≤ m_max`` are kept. The message there is ``W₂ σ_grid((W₁ [x_j; x_i]) ⊙ g(|r_ij|))``:
  a linear map, a per-channel radial gate ``g`` (an MLP of the radial basis), the sphere-grid
  non-linearity, a second linear map; then ``D`` rotates it back and messages are summed at ``i``
  (divided by ``avg_neighbors``).
* **Sphere-grid non-linearity** (paper §3.3): the coefficients are evaluated on a grid in the edge frame
  (Gauss–Legendre in cos θ × ``grid_phi`` uniform φ about the edge), SiLU is applied pointwise, and quadrature
  projects the result back onto the kept coefficients.
* **Node update**: the summed message, a per-``l`` channel mix, and an MLP on the invariant ``l = 0`` channels.
* **Readout** (``readout="grid"``, SCN's, paper §3.4): the final embedding on a global sphere grid, a pointwise MLP
  giving an energy density and a force magnitude per direction, integrated by quadrature: ``ε = ∫ e(u) du`` and
  **direct forces** (non-conservative) ``F = ∫ f(u) u du`` (:class:`SphereReadout`). ``readout="linear"`` takes the
  linear special case instead: the energy from an MLP of the ``l = 0`` channels and ``F`` from a channel mix of the
  ``l = 1`` coefficients (``∫ f(u) u du`` for ``f`` linear in the embedding), which is exactly equivariant.

**Equivariance** (digest: "relaxing equivariance trades equivariance error for accuracy"). ``message`` picks the
edge-frame linear maps:

* ``"scn"`` (SCN's own): dense layers over all kept coefficients of both atoms, as SCN flattens them. They are
  not equivariant to the roll about the edge, which the zero-roll frame fixes arbitrarily: the model is only
  approximately equivariant once ``m_max ≥ 1`` (the ``m = 0`` coefficients alone do not feel the roll, so
  ``m_max = 0`` stays exact);
* ``"so2"``: the same maps constrained to commute with rolls (per order ``m``, the ``(−m, +m)`` pair mixed as one
  complex number: Passaro & Zitnick's later eSCN form). Then every linear part is exactly equivariant at any
  ``m_max`` (truncating ``|m|`` is itself roll-invariant) and the residual errors are the grids' aliasing of
  the pointwise non-linearities (the edge grid's SiLU, which shrinks as ``grid_phi`` grows, and the grid
  readout's MLP; ``readout="linear"`` removes the latter).

:func:`rl_energy.atoms.models.equivariance_error` measures both (``scripts/reproduce_scn.py`` prints the table).
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from rl_energy.atoms.graph import Edges, Structures
from rl_energy.atoms.models import N_ELEMENTS, AtomisticModel, RadialBasis
from rl_energy.errors import ConfigError, import_optional

MESSAGES = ("scn", "so2")
READOUTS = ("grid", "linear")


def kept_orders(l_max: int, m_max: int) -> list[tuple[int, int]]:
    """``(l, m)`` of the coefficients kept in the edge frame, in e3nn's order."""
    return [(l, m) for l in range(l_max + 1) for m in range(-l, l + 1) if abs(m) <= m_max]


class EdgeLinear(nn.Module):
    """A linear map between kept edge-frame coefficients ``[E, K, c_in] → [E, K, c_out]``.

    ``so2=False``: one dense matrix over all ``K·c_in`` numbers (SCN). ``so2=True``: for each order ``m`` a map
    mixing degrees ``l ≥ |m|`` and channels, applied to ``m = 0`` as a real matrix and to each ``(−m, +m)`` pair
    as a complex one ``(A + iB)``, which commutes with the roll ``e^{imγ}`` (eSCN's SO(2) convolution).
    """

    def __init__(self, l_max: int, m_max: int, c_in: int, c_out: int, so2: bool) -> None:
        super().__init__()
        self.orders = kept_orders(l_max, m_max)
        self.so2 = so2
        self.c_in, self.c_out = c_in, c_out
        k = len(self.orders)
        if not so2:
            self.dense = nn.Linear(k * c_in, k * c_out)
            return
        self.index: dict[int, list[list[int]]] = {}
        self.weights = nn.ParameterDict()
        for m in range(m_max + 1):
            plus = [i for i, (l, mm) in enumerate(self.orders) if mm == m]
            minus = [i for i, (l, mm) in enumerate(self.orders) if mm == -m]
            n = len(plus) * c_in
            scale = 1.0 / math.sqrt(n * (1 if m == 0 else 2))
            self.index[m] = [plus, minus]
            self.weights[f"a{m}"] = nn.Parameter(torch.randn(n, len(plus) * c_out) * scale)
            if m > 0:
                self.weights[f"b{m}"] = nn.Parameter(torch.randn(n, len(plus) * c_out) * scale)
        self.bias = nn.Parameter(torch.zeros(c_out))  # on m = 0 only (a constant field is roll-invariant)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        e = x.shape[0]
        if not self.so2:
            return self.dense(x.reshape(e, -1)).reshape(e, len(self.orders), self.c_out)
        out = x.new_zeros(e, len(self.orders), self.c_out)
        for m, (plus, minus) in self.index.items():
            a = self.weights[f"a{m}"]
            xp = x[:, plus].reshape(e, -1)
            if m == 0:
                out[:, plus] = (xp @ a).reshape(e, len(plus), self.c_out) + self.bias
                continue
            b = self.weights[f"b{m}"]
            xm = x[:, minus].reshape(e, -1)
            # (x₋ + i x₊)(A + iB) keeps the pair's rotation law: y₋ = x₋A − x₊B, y₊ = x₊A + x₋B
            out[:, minus] = (xm @ a - xp @ b).reshape(e, len(plus), self.c_out)
            out[:, plus] = (xp @ a + xm @ b).reshape(e, len(plus), self.c_out)
        return out


class SphereGrid(nn.Module):
    """Evaluation of kept edge-frame coefficients on a sphere grid and quadrature back (paper §3.3).

    Grid: ``n_theta`` Gauss–Legendre nodes in ``cos θ`` (θ from the edge axis ŷ) × ``n_phi`` uniform φ about it;
    ``to_grid[g, k] = Y_k(u_g)`` and ``from_grid[k, g] = w_g Y_k(u_g)`` (SH normalised to unit integral).
    """

    def __init__(self, l_max: int, m_max: int, n_theta: int, n_phi: int) -> None:
        super().__init__()
        o3 = import_optional("e3nn.o3", "mini-SCN")
        cos_t, w_t = np.polynomial.legendre.leggauss(n_theta)
        phi = np.arange(n_phi) * 2 * np.pi / n_phi
        ct, ph = np.meshgrid(cos_t, phi, indexing="ij")
        st = np.sqrt(1 - ct**2)
        # θ from ŷ; φ measured in the z-x plane
        u = np.stack([st * np.sin(ph), ct, st * np.cos(ph)], -1).reshape(-1, 3)
        w = (w_t[:, None] * np.full(n_phi, 2 * np.pi / n_phi)[None, :]).reshape(-1)
        sh = o3.spherical_harmonics(list(range(l_max + 1)), torch.tensor(u, dtype=torch.float64), normalize=True,
                                    normalization="integral")
        keep = [l * l + l + m for l, m in kept_orders(l_max, m_max)]
        y = sh[:, keep]
        self.register_buffer("to_grid", y.float())
        self.register_buffer("from_grid", (y * torch.tensor(w)[:, None]).T.contiguous().float())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``SiLU`` on the grid of ``x`` ``[E, K, C]``, projected back to ``[E, K, C]``."""
        to_grid, from_grid = self.to_grid.to(x.dtype), self.from_grid.to(x.dtype)
        return torch.einsum("kg,egc->ekc", from_grid, F.silu(torch.einsum("gk,ekc->egc", to_grid, x)))


class SphereReadout(nn.Module):
    """SCN's readout (paper §3.4): the embedding is evaluated on a global sphere grid (``2(l_max+1)`` Gauss–Legendre
    nodes in cos θ × ``4(l_max+1)`` φ), a pointwise MLP over the channels gives an energy density ``e(u)`` and a
    force magnitude ``f(u)``, and quadrature integrates them: ``ε = ∫ e(u) du``, ``F = ∫ f(u) u du``. Rotation
    equivariant up to the grid's quadrature error on the non-linear MLP."""

    def __init__(self, l_max: int, channels: int, hidden: int) -> None:
        super().__init__()
        o3 = import_optional("e3nn.o3", "mini-SCN")
        n_theta, n_phi = 2 * (l_max + 1), 4 * (l_max + 1)
        cos_t, w_t = np.polynomial.legendre.leggauss(n_theta)
        phi = np.arange(n_phi) * 2 * np.pi / n_phi
        ct, ph = np.meshgrid(cos_t, phi, indexing="ij")
        st = np.sqrt(1 - ct**2)
        u = torch.tensor(np.stack([st * np.sin(ph), ct, st * np.cos(ph)], -1).reshape(-1, 3))
        w = torch.tensor((w_t[:, None] * np.full(n_phi, 2 * np.pi / n_phi)[None, :]).reshape(-1))
        sh = o3.spherical_harmonics(list(range(l_max + 1)), u, normalize=True, normalization="integral")
        self.register_buffer("to_grid", sh.float())
        self.register_buffer("weights", (w / (4 * np.pi)).float())
        self.register_buffer("points", u.float())
        self.energy = nn.Sequential(nn.Linear(channels, hidden), nn.SiLU(), nn.Linear(hidden, 1))
        self.force = nn.Sequential(nn.Linear(channels, hidden), nn.SiLU(), nn.Linear(hidden, 1))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-atom ``(ε [N], F [N, 3])`` of the embedding ``x`` ``[N, K, C]``."""
        grid = torch.einsum("gk,nkc->ngc", self.to_grid.to(x.dtype), x)
        w = self.weights.to(x.dtype)
        energy = (self.energy(grid).squeeze(-1) * w).sum(-1)
        forces = torch.einsum("ng,g,gd->nd", self.force(grid).squeeze(-1), w, self.points.to(x.dtype))
        return energy, forces


class MiniSCN(AtomisticModel):
    """mini-SCN (module docstring); ``m_max ≤ l_max``, direct forces."""

    conservative = False

    def __init__(self, channels: int = 16, l_max: int = 2, m_max: int = 1, n_layers: int = 3, hidden: int = 32,
                 n_rbf: int = 16, cutoff: float = 5.0, message: str = "scn", grid_phi: int = 16,
                 grid_theta: int | None = None, avg_neighbors: float = 10.0, readout: str = "grid") -> None:
        super().__init__(cutoff)
        if message not in MESSAGES:
            raise ConfigError(f"mini-SCN message must be one of {', '.join(MESSAGES)}, got {message!r}")
        if readout not in READOUTS:
            raise ConfigError(f"mini-SCN readout must be one of {', '.join(READOUTS)}, got {readout!r}")
        if not (isinstance(l_max, int) and l_max >= 1):
            raise ConfigError(f"mini-SCN l_max must be an integer >= 1, got {l_max!r}")
        if not (isinstance(m_max, int) and 0 <= m_max <= l_max):
            raise ConfigError(f"mini-SCN m_max must be an integer in [0, l_max={l_max}], got {m_max!r}")
        self.o3 = import_optional("e3nn.o3", "mini-SCN")
        self.l_max, self.m_max, self.channels = l_max, m_max, channels
        self.avg_neighbors = float(avg_neighbors)
        self.keep = [l * l + l + m for l, m in kept_orders(l_max, m_max)]
        self.degree = torch.tensor([l for l in range(l_max + 1) for _ in range(2 * l + 1)])
        self.embed = nn.Embedding(N_ELEMENTS, channels)
        self.rbf = RadialBasis(n_rbf, cutoff)
        so2 = message == "so2"
        self.first = nn.ModuleList(EdgeLinear(l_max, m_max, 2 * channels, hidden, so2) for _ in range(n_layers))
        self.second = nn.ModuleList(EdgeLinear(l_max, m_max, hidden, channels, so2) for _ in range(n_layers))
        self.radial = nn.ModuleList(nn.Sequential(nn.Linear(n_rbf, hidden), nn.SiLU(), nn.Linear(hidden, hidden))
                                    for _ in range(n_layers))
        self.grid = SphereGrid(l_max, m_max, grid_theta or l_max + 2, grid_phi)
        self.mix = nn.ParameterList(nn.Parameter(torch.eye(channels).repeat(l_max + 1, 1, 1)) for _ in range(n_layers))
        self.scalar = nn.ModuleList(nn.Sequential(nn.Linear(channels, hidden), nn.SiLU(), nn.Linear(hidden, channels))
                                    for _ in range(n_layers))
        self.readout = SphereReadout(l_max, channels, hidden) if readout == "grid" else None
        self.energy_head = nn.Sequential(nn.Linear(channels, hidden), nn.SiLU(), nn.Linear(hidden, 1))
        self.force_head = nn.Linear(channels, 1, bias=False)

    def wigner(self, vec: torch.Tensor) -> torch.Tensor:
        """Block-diagonal ``D(r̂)`` ``[E, K, K]`` (K = (l_max+1)²) of the zero-roll rotation taking ŷ to ``r̂``."""
        alpha, beta = self.o3.xyz_to_angles(vec)
        gamma = torch.zeros_like(alpha)
        k = (self.l_max + 1) ** 2
        d = vec.new_zeros(len(vec), k, k)
        for l in range(self.l_max + 1):
            sl = slice(l * l, (l + 1) ** 2)
            d[:, sl, sl] = self.o3.wigner_D(l, alpha, beta, gamma)
        return d

    def atom_outputs(self, s: Structures, edges: Edges, vec: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        n, c, k = len(s.z), self.channels, (self.l_max + 1) ** 2
        x = vec.new_zeros(n, k, c)
        x[:, 0] = self.embed(s.z)
        d = vec.norm(dim=-1)
        rbf = self.rbf(d)
        env = self.rbf.envelope(d)[:, None, None]
        rot = self.wigner(vec)[:, :, :]  # [E, K, K]
        rot_keep = rot[:, :, self.keep]  # columns of the kept edge-frame coefficients
        degree = self.degree.to(vec.device)
        for first, second, radial, mix, scalar in zip(self.first, self.second, self.radial, self.mix, self.scalar,
                                                      strict=True):
            # into the edge frame (D^T x), kept orders only
            xs = torch.einsum("ekq,ekc->eqc", rot_keep, x[edges.src])
            xt = torch.einsum("ekq,ekc->eqc", rot_keep, x[edges.dst])
            h = first(torch.cat([xs, xt], dim=-1)) * radial(rbf).unsqueeze(1)
            h = second(self.grid(h)) * env
            msg = torch.einsum("ekq,eqc->ekc", rot_keep, h)  # back to the global frame
            agg = x.new_zeros(n, k, c).index_add(0, edges.dst, msg) / math.sqrt(self.avg_neighbors)
            x = x + torch.einsum("nkc,kcd->nkd", agg, mix[degree])
            x = torch.cat([x[:, :1] + scalar(x[:, 0]).unsqueeze(1), x[:, 1:]], dim=1)
        if self.readout is not None:
            return self.readout(x)
        energy = self.energy_head(x[:, 0]).squeeze(-1)
        forces = self.force_head(x[:, 1:4]).squeeze(-1)  # e3nn's l = 1 order is (x, y, z)
        return energy, forces
