"""The atomistic model zoo: energy + force models on :class:`~rl_energy.atoms.graph.Structures`.

Every model maps a batch of structures to ``(E [B] eV, F [N, 3] eV/Å)`` through one base class,
:class:`AtomisticModel`, which owns what they share:

* the radius graph (:func:`rl_energy.atoms.graph.radius_graph`, ``cutoff`` Å) and a smooth radial basis
  (:class:`RadialBasis`: Gaussians times the cosine envelope, so energies are continuous at the cutoff);
* the output normalisation ``E = scale · Σ_i ε_i + Σ_i e_ref[Z_i]`` with per-element reference energies
  ``e_ref`` and a force ``scale`` fitted to the training labels (:meth:`AtomisticModel.fit_normalisation`);
* forces: for a **conservative** model ``F = −∂E/∂r`` by autograd (through the edge vectors and so through
  periodic images too); a **direct** model (mini-SCN, §19) predicts ``F`` with its own head.

The models (:func:`build_model`):

* ``schnet``: the invariant baseline, SchNet's continuous-filter convolutions (Schütt et al., 2017) on
  interatomic distances only;
* ``e3nn``: an equivariant baseline in the NequIP style (Batzner et al., 2022) on ``e3nn``: irreps features up to
  ``l_max``, edge messages ``x_j ⊗ Y(r̂_ij)`` with radially learned ``uvu`` weights, gated non-linearities;
* ``scn``: mini-SCN, :mod:`rl_energy.atoms.scn` (Zitnick et al., NeurIPS 2022).

The invariant and ``e3nn`` models are exactly rotation-equivariant (forces rotate with the structure, to
float rounding); :func:`equivariance_error` measures it for any model.
"""

from __future__ import annotations

import contextlib
import math
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from rl_energy.atoms.graph import Edges, Structures, edge_vectors, radius_graph
from rl_energy.errors import ConfigError, import_optional

N_ELEMENTS = 119


class RadialBasis(nn.Module):
    """``n`` Gaussians on ``[0, cutoff]`` of width the spacing, times ``½(cos(π d / cutoff) + 1)`` (0 beyond)."""

    def __init__(self, n: int, cutoff: float) -> None:
        super().__init__()
        self.cutoff = float(cutoff)
        self.register_buffer("centers", torch.linspace(0.0, cutoff, n))
        self.width = cutoff / (n - 1)

    def envelope(self, d: torch.Tensor) -> torch.Tensor:
        return torch.where(d < self.cutoff, 0.5 * (torch.cos(math.pi * d / self.cutoff) + 1.0), torch.zeros_like(d))

    def forward(self, d: torch.Tensor) -> torch.Tensor:
        g = torch.exp(-0.5 * ((d.unsqueeze(-1) - self.centers) / self.width) ** 2)
        return g * self.envelope(d).unsqueeze(-1)


class AtomisticModel(nn.Module):
    """Base of the zoo (module docstring). Subclasses implement :meth:`atom_outputs`."""

    conservative: bool = True

    def __init__(self, cutoff: float) -> None:
        super().__init__()
        if not (math.isfinite(cutoff) and cutoff > 0):
            raise ConfigError(f"cutoff must be a positive number of Å, got {cutoff!r}")
        self.cutoff = float(cutoff)
        self.register_buffer("atom_ref", torch.zeros(N_ELEMENTS))
        self.register_buffer("scale", torch.ones(()))

    def atom_outputs(self, s: Structures, edges: Edges, vec: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Per-atom normalised energies ``ε`` ``[N]`` and, for a direct model, normalised forces ``[N, 3]``."""
        raise NotImplementedError

    def forward(self, s: Structures, edges: Edges | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        edges = radius_graph(s, self.cutoff) if edges is None else edges
        need_grad = self.conservative
        pos = s.pos
        if need_grad and not pos.requires_grad:
            pos = pos.detach().requires_grad_(True)
        s = s.with_pos(pos)
        with torch.enable_grad() if need_grad else contextlib.nullcontext():
            vec = edge_vectors(s, edges)
            eps, direct = self.atom_outputs(s, edges, vec)
            energy = self.scale * s.sum_atoms(eps) + s.sum_atoms(self.atom_ref[s.z].to(eps))
            if self.conservative:
                (grad,) = torch.autograd.grad(energy.sum(), pos, create_graph=self.training)
                forces = -grad
            else:
                assert direct is not None
                forces = self.scale * direct
        return energy, forces

    @torch.no_grad()
    def fit_normalisation(self, z: torch.Tensor, energy: torch.Tensor, forces: torch.Tensor, free: torch.Tensor,
                          ridge: float = 1e-6) -> None:
        """Per-element reference energies by least squares of ``E`` on the composition, and ``scale`` = the RMS
        force component (padded arrays ``z [n, A]``, ``energy [n]``, ``forces [n, A, 3]``, ``free [n, A]``)."""
        counts = torch.zeros(len(z), N_ELEMENTS, dtype=torch.float64)
        counts.scatter_add_(1, z.long(), torch.ones_like(z, dtype=torch.float64))
        counts[:, 0] = 0
        used = counts.sum(0) > 0
        a = counts[:, used]
        sol = torch.linalg.solve(a.T @ a + ridge * torch.eye(a.shape[1], dtype=torch.float64),
                                 a.T @ energy.double())
        self.atom_ref.zero_()
        self.atom_ref[used] = sol.to(self.atom_ref)
        mask = free & (z > 0)
        rms = forces[mask].double().pow(2).mean().sqrt() if mask.any() else torch.tensor(1.0)
        residual = (energy.double() - a @ sol).std() if len(energy) > 1 else torch.tensor(1.0)
        self.scale.fill_(float(max(rms, 1e-3 * max(float(residual), 1e-3))))


def _ssp(x: torch.Tensor) -> torch.Tensor:
    """Shifted softplus ``log(½eˣ + ½)`` (SchNet's activation)."""
    return F.softplus(x) - math.log(2.0)


class SchNet(AtomisticModel):
    """The invariant baseline: ``n_layers`` continuous-filter convolutions of width ``width`` over ``n_rbf``
    radial features, then a per-atom energy MLP (Schütt et al., 2017, Eqs. 3–5)."""

    def __init__(self, width: int = 64, n_layers: int = 3, n_rbf: int = 32, cutoff: float = 5.0) -> None:
        super().__init__(cutoff)
        self.embed = nn.Embedding(N_ELEMENTS, width)
        self.rbf = RadialBasis(n_rbf, cutoff)
        self.filters = nn.ModuleList(nn.Sequential(nn.Linear(n_rbf, width), nn.Softplus(), nn.Linear(width, width))
                                     for _ in range(n_layers))
        self.into = nn.ModuleList(nn.Linear(width, width, bias=False) for _ in range(n_layers))
        self.out = nn.ModuleList(nn.Sequential(nn.Linear(width, width), nn.Softplus(), nn.Linear(width, width))
                                 for _ in range(n_layers))
        self.head = nn.Sequential(nn.Linear(width, width // 2), nn.Softplus(), nn.Linear(width // 2, 1))

    def representation(self, s: Structures, edges: Edges, vec: torch.Tensor) -> torch.Tensor:
        """Per-atom features ``[N, width]`` after the interaction blocks (the input of the energy head)."""
        d = vec.norm(dim=-1)
        rbf = self.rbf(d)
        env = self.rbf.envelope(d).unsqueeze(-1)
        x = self.embed(s.z)
        for filt, into, out in zip(self.filters, self.into, self.out, strict=True):
            msg = into(x)[edges.src] * filt(rbf) * env
            x = x + out(torch.zeros_like(x).index_add(0, edges.dst, msg))
        return x

    def atom_outputs(self, s: Structures, edges: Edges, vec: torch.Tensor) -> tuple[torch.Tensor, None]:
        return self.head(self.representation(s, edges, vec)).squeeze(-1), None


class E3NN(AtomisticModel):
    """The equivariant baseline (NequIP-style, on ``e3nn``): features ``channels × (0e + 1o + 2e + …)`` up to
    ``l_max``; each layer sends ``x_j ⊗ Y(r̂_ij)`` with per-edge ``uvu`` weights from an MLP of the radial basis,
    sums at ``i`` (divided by ``avg_neighbors``), mixes linearly, gates, and adds a linear self-connection."""

    def __init__(self, channels: int = 16, l_max: int = 2, n_layers: int = 3, n_rbf: int = 16, cutoff: float = 5.0,
                 avg_neighbors: float = 10.0) -> None:
        super().__init__(cutoff)
        o3 = import_optional("e3nn.o3", "the e3nn model")
        from e3nn.nn import FullyConnectedNet, Gate

        self.l_max = int(l_max)
        self.avg_neighbors = float(avg_neighbors)
        self.irreps_sh = o3.Irreps.spherical_harmonics(self.l_max)
        hidden = o3.Irreps([(channels, (l, (-1) ** l)) for l in range(self.l_max + 1)])
        self.embed = nn.Embedding(N_ELEMENTS, channels)
        self.rbf = RadialBasis(n_rbf, cutoff)
        self.layers = nn.ModuleList()
        irreps_in = o3.Irreps(f"{channels}x0e")
        for _ in range(n_layers):
            mid, instructions = [], []
            for i, (mul, ir_in) in enumerate(irreps_in):
                for j, (_, ir_sh) in enumerate(self.irreps_sh):
                    for ir_out in ir_in * ir_sh:
                        if ir_out in hidden:
                            instructions.append((i, j, len(mid), "uvu", True))
                            mid.append((mul, ir_out))
            irreps_mid = o3.Irreps(mid)
            tp = o3.TensorProduct(irreps_in, self.irreps_sh, irreps_mid, instructions,
                                  shared_weights=False, internal_weights=False)
            scalars = o3.Irreps([(m, ir) for m, ir in hidden if ir.l == 0])
            gated = o3.Irreps([(m, ir) for m, ir in hidden if ir.l > 0])
            gates = o3.Irreps(f"{gated.num_irreps}x0e")
            gate = Gate(scalars, [F.silu], gates, [torch.sigmoid], gated) if gated.num_irreps else None
            irreps_pre = (scalars + gates + gated).simplify() if gate is not None else scalars
            layer = nn.ModuleDict({
                "radial": FullyConnectedNet([n_rbf, 32, tp.weight_numel], F.silu),
                "lin_in": o3.Linear(irreps_in, irreps_in),
                "tp": tp,
                "lin_out": o3.Linear(irreps_mid, gate.irreps_in if gate is not None else irreps_pre),
                "self": o3.Linear(irreps_in, gate.irreps_out if gate is not None else irreps_pre),
            })
            layer.gate = gate
            self.layers.append(layer)
            irreps_in = gate.irreps_out if gate is not None else irreps_pre
        self.head = o3.Linear(irreps_in, o3.Irreps("1x0e"))

    def atom_outputs(self, s: Structures, edges: Edges, vec: torch.Tensor) -> tuple[torch.Tensor, None]:
        from e3nn import o3

        d = vec.norm(dim=-1)
        sh = o3.spherical_harmonics(self.irreps_sh, vec, normalize=True, normalization="component")
        rbf = self.rbf(d)
        x = self.embed(s.z)
        for layer in self.layers:
            h = layer["lin_in"](x)
            msg = layer["tp"](h[edges.src], sh, layer["radial"](rbf))
            agg = msg.new_zeros(len(x), msg.shape[-1]).index_add(0, edges.dst, msg) / math.sqrt(self.avg_neighbors)
            out = layer["lin_out"](agg)
            out = layer.gate(out) if layer.gate is not None else F.silu(out)
            x = layer["self"](x) + out
        return self.head(x).squeeze(-1), None


MODELS = ("schnet", "e3nn", "scn")


def build_model(kind: str, **kwargs: Any) -> AtomisticModel:
    """The model ``kind`` (one of :data:`MODELS`) with its keyword arguments."""
    if kind == "schnet":
        return SchNet(**kwargs)
    if kind == "e3nn":
        return E3NN(**kwargs)
    if kind == "scn":
        from rl_energy.atoms.scn import MiniSCN

        return MiniSCN(**kwargs)
    raise ConfigError(f"unknown atomistic model {kind!r}; valid: {', '.join(MODELS)}")


def n_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def equivariance_error(model: AtomisticModel, s: Structures, rotation: torch.Tensor) -> dict[str, float]:
    """Rotation errors of ``model`` on ``s``: ``force`` = mean ``|F(Rs) − R F(s)|`` (eV/Å), ``energy`` = mean
    ``|E(Rs) − E(s)|`` (eV), and ``force_rel`` = the force error over the mean ``|F(s)|``."""
    was = model.training
    model.eval()
    rotation = rotation.to(s.pos)
    e0, f0 = (t.detach() for t in model(s))
    e1, f1 = (t.detach() for t in model(s.rotated(rotation)))
    model.train(was)
    err = (f1 - f0 @ rotation.T).abs().mean()
    return {"force": float(err), "energy": float((e1 - e0).abs().mean()),
            "force_rel": float(err / f0.abs().mean().clamp_min(1e-30))}
