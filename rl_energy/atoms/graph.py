"""Batched atomic structures, their padded one-step-task layout, and the radius (neighbour) graph.

One home for the geometry every atomistic model shares (digest ``one-step-tasks.md`` §14–§16, §19):

* :class:`Structures`: a batch of structures as flat tensors (``z``, ``pos``, ``graph``) with a cell and
  periodic flags per structure and a ``free`` flag per atom (the fixed bottom layer of a slab is not free);
* :func:`pack` / :func:`unpack`: the fixed-size observation of ``rl_energy/S2EF-v0`` and friends, ``max_atoms``
  rows of ``(Z, x, y, z, free)`` (``Z = 0`` pads) followed by the cell (9 numbers) and the periodic flags (3);
* :func:`radius_graph`: every ordered pair ``(i, j, S)`` with ``|r_j − r_i + S·cell| < cutoff`` over the periodic
  images that can reach the cutoff, with ASE's convention (``ase.neighborlist.neighbor_list("ijS")``), written in
  torch with no compiled extension: the batch is padded to ``[B, A, A, n_shifts]`` distances, so one call serves
  molecules (one image) and slabs (a few);
* :func:`edge_vectors`: ``r_j − r_i + S·cell``, differentiable in the positions (conservative forces are
  ``−∂E/∂r`` through it);
* :func:`random_rotation` / :meth:`Structures.rotated`: the rotation-equivariance checks.

Units: Å, and the labels in eV and eV/Å.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
import torch

ATOM_COLUMNS = 5
"""Per-atom numbers of the padded layout: ``Z, x, y, z, free``."""
TAIL = 12
"""The cell (row-major 3×3) and the three periodic flags after the atom rows."""


def obs_dim(max_atoms: int) -> int:
    """Length of the padded observation of structures with at most ``max_atoms`` atoms."""
    return ATOM_COLUMNS * max_atoms + TAIL


def action_dim(max_atoms: int) -> int:
    """Length of the ``(E, F)`` action / label: the energy, then ``max_atoms`` force rows (zeros on padding)."""
    return 1 + 3 * max_atoms


def max_atoms_of(obs_size: int) -> int:
    """``max_atoms`` of a padded observation of ``obs_size`` numbers (inverse of :func:`obs_dim`)."""
    n, rest = divmod(obs_size - TAIL, ATOM_COLUMNS)
    if rest or n < 1:
        raise ValueError(f"{obs_size} numbers are not a padded structure (5·max_atoms + 12)")
    return n


@dataclass
class Structures:
    """A batch of ``n_graphs`` structures with ``N`` atoms in all (see the module docstring).

    ``index`` is each atom's row in the padded layout (``b · max_atoms + slot``), so that per-atom outputs go
    back to a ``[B, max_atoms, 3]`` action with :meth:`scatter_atoms`.
    """

    z: torch.Tensor  # [N] long, atomic numbers
    pos: torch.Tensor  # [N, 3]
    graph: torch.Tensor  # [N] long, the structure of each atom (sorted)
    cell: torch.Tensor  # [B, 3, 3], lattice vectors as rows
    pbc: torch.Tensor  # [B, 3] bool
    free: torch.Tensor  # [N] bool
    index: torch.Tensor  # [N] long, rows of the padded layout
    n_graphs: int
    max_atoms: int

    @property
    def n_atoms(self) -> torch.Tensor:
        """Atoms per structure ``[B]``."""
        return torch.bincount(self.graph, minlength=self.n_graphs)

    def with_pos(self, pos: torch.Tensor) -> Structures:
        return replace(self, pos=pos)

    def to(self, dtype: torch.dtype | None = None, device: torch.device | str | None = None) -> Structures:
        """Positions and cell in ``dtype`` on ``device``."""
        return replace(self, z=self.z.to(device), pos=self.pos.to(device=device, dtype=dtype),
                       graph=self.graph.to(device), cell=self.cell.to(device=device, dtype=dtype),
                       pbc=self.pbc.to(device), free=self.free.to(device), index=self.index.to(device))

    def rotated(self, rotation: torch.Tensor) -> Structures:
        """The same structures rotated by the matrix ``rotation`` (``r ↦ R r``, cell rows too)."""
        rotation = rotation.to(self.pos)
        return replace(self, pos=self.pos @ rotation.T, cell=self.cell @ rotation.T)

    def sum_atoms(self, per_atom: torch.Tensor) -> torch.Tensor:
        """Per-structure sums ``[B, ...]`` of a per-atom quantity ``[N, ...]``."""
        out = per_atom.new_zeros((self.n_graphs, *per_atom.shape[1:]))
        return out.index_add(0, self.graph, per_atom)

    def scatter_atoms(self, per_atom: torch.Tensor) -> torch.Tensor:
        """A per-atom quantity ``[N, k]`` in the padded layout ``[B, max_atoms, k]`` (zeros on padding)."""
        out = per_atom.new_zeros((self.n_graphs * self.max_atoms, per_atom.shape[-1]))
        out[self.index] = per_atom
        return out.reshape(self.n_graphs, self.max_atoms, per_atom.shape[-1])

    def gather_atoms(self, padded: torch.Tensor) -> torch.Tensor:
        """The real atoms' rows ``[N, k]`` of a padded per-atom quantity ``[B, max_atoms, k]``."""
        return padded.reshape(self.n_graphs * self.max_atoms, -1)[self.index]


def pack(z: np.ndarray, pos: np.ndarray, cell: np.ndarray | None = None, pbc: np.ndarray | None = None,
         free: np.ndarray | None = None, max_atoms: int | None = None) -> np.ndarray:
    """The padded observation (float32 ``[obs_dim(max_atoms)]``) of one structure of ``len(z)`` atoms."""
    z = np.asarray(z)
    n = len(z)
    max_atoms = n if max_atoms is None else max_atoms
    if n > max_atoms:
        raise ValueError(f"a structure of {n} atoms does not fit max_atoms={max_atoms}")
    rows = np.zeros((max_atoms, ATOM_COLUMNS), dtype=np.float32)
    rows[:n, 0] = z
    rows[:n, 1:4] = pos
    rows[:n, 4] = 1.0 if free is None else np.asarray(free, dtype=np.float32)
    tail = np.zeros(TAIL, dtype=np.float32)
    if cell is not None:
        tail[:9] = np.asarray(cell, dtype=np.float32).reshape(9)
    if pbc is not None:
        tail[9:] = np.asarray(pbc, dtype=np.float32)
    return np.concatenate([rows.reshape(-1), tail])


def unpack(obs: torch.Tensor) -> Structures:
    """The :class:`Structures` of a batch of padded observations ``[B, obs_dim]`` (or one ``[obs_dim]``)."""
    obs = torch.as_tensor(obs)
    obs = obs.reshape(-1, obs.shape[-1])
    max_atoms = max_atoms_of(obs.shape[-1])
    rows = obs[:, : ATOM_COLUMNS * max_atoms].reshape(len(obs), max_atoms, ATOM_COLUMNS)
    zz = rows[..., 0].round().long()
    real = zz > 0
    b, slot = real.nonzero(as_tuple=True)
    tail = obs[:, ATOM_COLUMNS * max_atoms:]
    return Structures(
        z=zz[b, slot], pos=rows[b, slot, 1:4].clone(), graph=b, cell=tail[:, :9].reshape(-1, 3, 3).clone(),
        pbc=tail[:, 9:] > 0.5, free=rows[b, slot, 4] > 0.5, index=b * max_atoms + slot,
        n_graphs=len(obs), max_atoms=max_atoms)


@dataclass
class Edges:
    """Directed edges ``i ← j`` (messages flow from ``src = j`` to ``dst = i``) with the Cartesian image shift."""

    dst: torch.Tensor  # [E] long, i
    src: torch.Tensor  # [E] long, j
    shift: torch.Tensor  # [E, 3], S·cell

    def __len__(self) -> int:
        return int(self.dst.numel())


def _image_counts(s: Structures, cutoff: float) -> torch.Tensor:
    """``[B, 3]`` periodic images to visit each way along each lattice vector: ``ceil(cutoff / h_k)`` with ``h_k``
    the spacing of the lattice planes (``1 / |b_k|``, ``b`` the reciprocal rows), 0 along non-periodic axes."""
    counts = torch.zeros(s.n_graphs, 3, dtype=torch.long)
    periodic = s.pbc.any(-1)
    if periodic.any():
        cell = s.cell[periodic].double().cpu()
        if (torch.linalg.det(cell).abs() < 1e-9).any():
            raise ValueError("a periodic structure needs a cell of non-zero volume")
        recip = torch.linalg.inv(cell).transpose(-1, -2)  # rows b_k with a_i · b_k = δ_ik
        spacing = 1.0 / recip.norm(dim=-1)
        need = torch.ceil(cutoff / spacing).long()
        counts[periodic] = torch.where(s.pbc[periodic].cpu(), need, torch.zeros_like(need))
    return counts


def radius_graph(s: Structures, cutoff: float, chunk: int = 64) -> Edges:
    """All directed pairs within ``cutoff`` (Å), periodic images included (see the module docstring).

    The self pair ``(i, i, 0)`` is left out; an atom's own periodic images are kept, as ASE does. Processed in
    chunks of ``chunk`` structures to bound the ``[B, A, A, n_shifts]`` distance block.
    """
    if not cutoff > 0:
        raise ValueError(f"cutoff must be > 0, got {cutoff}")
    device = s.pos.device
    counts = _image_counts(s, cutoff)
    ptr = torch.zeros(s.n_graphs + 1, dtype=torch.long)
    ptr[1:] = torch.cumsum(s.n_atoms.cpu(), 0)
    dsts, srcs, shifts = [], [], []
    with torch.no_grad():
        for start in range(0, s.n_graphs, chunk):
            stop = min(start + chunk, s.n_graphs)
            sel = slice(int(ptr[start]), int(ptr[stop]))
            g = s.graph[sel].cpu() - start
            nb = stop - start
            n_atoms = torch.bincount(g, minlength=nb)
            width = int(n_atoms.max()) if len(g) else 0
            if width == 0:
                continue
            slot = torch.arange(len(g)) - (ptr[start:stop] - ptr[start])[g]
            padded = torch.zeros(nb, width, 3, dtype=s.pos.dtype)
            padded[g, slot] = s.pos[sel].detach().cpu()
            mask = torch.zeros(nb, width, dtype=torch.bool)
            mask[g, slot] = True
            reach = counts[start:stop].max(0).values
            grid = torch.cartesian_prod(*[torch.arange(-int(n), int(n) + 1) for n in reach]).reshape(-1, 3)
            ok_shift = (grid.abs().unsqueeze(0) <= counts[start:stop].unsqueeze(1)).all(-1)  # [nb, S]
            cart = grid.to(s.pos.dtype) @ s.cell[start:stop].detach().cpu().to(s.pos.dtype)  # [nb, S, 3]
            # d[b, i, j, s] = r_j + S_s·cell − r_i
            diff = padded[:, None, :, None, :] + cart[:, None, None, :, :] - padded[:, :, None, None, :]
            dist = diff.norm(dim=-1)
            keep = (dist < cutoff) & mask[:, :, None, None] & mask[:, None, :, None] & ok_shift[:, None, None, :]
            zero = (grid == 0).all(-1)
            eye = torch.eye(width, dtype=torch.bool)
            keep &= ~(eye[None, :, :, None] & zero[None, None, None, :])
            b, i, j, k = keep.nonzero(as_tuple=True)
            base = ptr[start:stop][b]
            dsts.append(base + i)
            srcs.append(base + j)
            shifts.append(cart[b, k])
    if not dsts:
        empty = torch.zeros(0, dtype=torch.long, device=device)
        return Edges(empty, empty.clone(), torch.zeros(0, 3, dtype=s.pos.dtype, device=device))
    return Edges(torch.cat(dsts).to(device), torch.cat(srcs).to(device), torch.cat(shifts).to(device))


def edge_vectors(s: Structures, edges: Edges) -> torch.Tensor:
    """``r_j − r_i + S·cell`` ``[E, 3]``, differentiable in ``s.pos``."""
    return s.pos[edges.src] - s.pos[edges.dst] + edges.shift.to(s.pos)


def random_rotation(generator: torch.Generator | None = None, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """A uniformly random proper rotation matrix (QR of a Gaussian matrix, sign-fixed, det +1)."""
    q, r = torch.linalg.qr(torch.randn(3, 3, generator=generator, dtype=torch.float64))
    q = q * torch.sign(torch.diagonal(r)).unsqueeze(0)
    if torch.det(q) < 0:
        q[:, 0] = -q[:, 0]
    return q.to(dtype)
