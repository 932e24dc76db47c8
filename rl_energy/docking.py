"""Rigid docking with equivariant scalar fields scored by FFTs (ESF: Jing, Jaakkola & Berger, ICLR 2024,
"Equivariant Scalar Fields for Molecular Docking with Fast Fourier Transforms", arXiv 2312.04323; digest
``papers/one-step-tasks.md`` §4). One home for each concept of the docking reproduction:

* **synthetic complexes** (:func:`make_complex`, :func:`make_split`): PDBBind cannot be downloaded, so a
  receptor is a typed point cloud (a randomly rotated, jittered cubic lattice of 2.8 Å, four atom types) cut by
  a sphere of 30 Å (the protein surface), with a **pocket carved** (3.5 Å around each ligand atom) for a rigid
  typed ligand of 8–15 atoms whose centroid lies 5 Å under the surface. The pocket-lining atoms (≤ 4.6 Å from a
  ligand atom) take, with probability 0.75, the type that pairs with their nearest ligand atom
  (:data:`COMPLEMENT`: hydrophobic–hydrophobic, donor–acceptor, polar–polar), and a receptor donor/acceptor paired
  with a ligand acceptor/donor moves in to 2.8–3.1 Å (a hydrogen bond), so that shape *and* type complementarity
  determine the pose. Receptor atoms within 16 Å of the pocket centre form the observed pocket. The **perturbed
  ("predicted-structure") split** displaces every receptor atom within 8 Å of the ligand by isotropic Gaussian
  noise of RMS ``perturb`` Å (the stand-in for the paper's ESMFold structures): it is the clean split with only
  those coordinates changed. Everything is deterministic from ``(seed, split, index)``.
* **the pose grid**: rotations from a Super-Fibonacci spiral (:func:`rotation_grid`, Alexa, CVPR 2022) times
  the translations of a cubic lattice of spacing ``h`` within ``±t_max`` (:class:`GridSpec`). A pose is
  ``x ↦ R x + t`` applied to the ligand in its own frame (centred at its centroid); ``t`` is the ligand
  centroid in the receptor frame, whose origin is the pocket centre handed to the docking program (the true
  centroid plus a uniform ±2.5 Å offset per axis). The true pose is generally *off* the grid; the **grid
  oracle** is the grid pose of least RMSD (:func:`oracle_pose`: since the ligand is centred,
  RMSD² = |t − t*|² + mean_i |(R − R*) l_i|², so it is the nearest lattice translation and the rotation of least
  ``mean_i |(R − R*) l_i|²``). Its RMSD is the floor any grid method can reach.
* **scalar fields** (paper §3, "Equivariant scalar fields"): each side has ``C`` channels
  ``φ_c(x) = Σ_atoms Σ_k w_{c, type, k} g_k(|x − x_atom|)`` with a radial basis ``g_k`` (Gaussian shells
  ``exp(−(r − μ_k)²/2s²)`` times a cosine cutoff) and learnable per-type coefficients (l = 0 only: the paper's
  GNN-predicted coefficients and higher spherical harmonics are out of this CPU budget), rasterised on the
  grid (:func:`rasterise`, a local stencil per atom; :func:`rasterise_dense` evaluates every atom at every
  point, for the tests and the brute force).
* **the score** (paper Eq. 2), discretised: ``S(R, t) = Σ_c Σ_y φ^L_{c,R}(y) φ^P_c(y + t)`` over the points
  ``y`` of the ligand window (half-width ``m h``) and the lattice translations ``|t_i| ≤ T h``. The receptor box
  has half-width ``n h`` with ``n = m + T + 1``, so every ``y + t`` lies inside it and the circular correlation
  of the ``N = 2n`` FFT equals the linear one exactly (no zero padding needed, no wrap-around):
  :func:`fft_scores` (paper §3.2, translational FFT, one ``torch.fft.rfftn`` per channel per rotation) and
  :func:`brute_force_scores` (the same sums computed directly, pose by pose) agree to rounding.
* **training objective** (paper §3.3): the pose grid is a discrete energy-based policy
  ``π(R, t) = softmax(S/τ)`` with an exact partition function, trained by cross-entropy at the true pose
  (:func:`pose_cross_entropy`). All ``n_rot × n_trans`` poses per complex and step would cost ``n_rot`` FFTs
  per channel (and their backward) per complex; we use **the full translation grid at the true rotation plus
  ``K`` rotations drawn uniformly from the grid** (their full translation grids too), with the sampled block's
  weight ``n_rot / K`` so that ``Σ exp`` over it is an unbiased estimate of the rest of the partition
  function. The ligand is rasterised with the sub-lattice offset of the true translation, so the true pose
  itself is scored exactly. ESF-N (paper §4, "noise-trained") replaces the true pose by a perturbed one
  (rotation of RMS angle ``noise_rot`` = 0.2 rad about a random axis, translation of RMS ``noise_trans`` = 0.7 Å).
* **a classical Vina-like baseline** (Trott & Olson 2010's terms and weights: gauss1, gauss2, repulsion,
  hydrophobic, hydrogen bond on surface distances, no learning): :func:`vina_pair_energy` per pose by direct
  pair sums, and a search over the same pose grid through per-ligand-type grid maps of 0.5 Å with trilinear
  interpolation (as Vina itself searches), :func:`vina_grid_scores`, and :func:`vina_refine`, a local optimisation
  of the best grid poses on the exact pair energy (Vina refines its search's poses).
* **RMSD** (:func:`pose_rmsd`) of the ligand under two poses (symmetry is ignored, as the synthetic ligands
  carry no equivalent atoms).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

# ============================================================================================ atom types
TYPE_NAMES: tuple[str, ...] = ("hydrophobic", "donor", "acceptor", "polar")
N_TYPES = len(TYPE_NAMES)
COMPLEMENT: tuple[int, ...] = (0, 2, 1, 3)
"""The receptor type that pairs with each ligand type (hydrophobic–hydrophobic, donor–acceptor, polar–polar)."""
LIGAND_TYPE_P = (0.5, 0.15, 0.2, 0.15)
RECEPTOR_TYPE_P = (0.45, 0.2, 0.2, 0.15)
VDW_RADIUS = (1.9, 1.8, 1.7, 1.8)
"""Vina's X-Score radii (Å) of C, N, O; "polar" as N."""

# ====================================================================================== generator knobs
LIGAND_ATOMS = (8, 15)
LIGAND_RADIUS = 4.5
"""Largest distance of a ligand atom from the ligand centroid (Å; larger draws are rejected)."""
BOND = 1.5
LATTICE = 2.8
JITTER = 0.4
RECEPTOR_BALL = 30.0
POCKET_DEPTH = 5.0
"""Depth of the ligand centroid under the receptor surface (Å)."""
CARVE = 3.5
HBOND_DISTANCE = (2.8, 3.1)
"""Lining atoms that H-bond their nearest ligand atom (donor–acceptor) sit at this distance from it (Å)."""
LINING = 4.6
P_COMPLEMENT = 0.75
KEEP_RADIUS = 16.0
"""Receptor atoms within this distance of the pocket centre are kept (the observed "pocket")."""
PERTURB_RADIUS = 8.0
POCKET_OFFSET = 2.5
DEFAULT_MAX_POCKET = 640
DEFAULT_MAX_LIGAND = LIGAND_ATOMS[1]


# ============================================================================================ rotations
def quaternion_to_matrix(q: torch.Tensor) -> torch.Tensor:
    """Unit quaternions ``[..., 4]`` (w, x, y, z) -> rotation matrices ``[..., 3, 3]``."""
    q = q / q.norm(dim=-1, keepdim=True)
    w, x, y, z = q.unbind(-1)
    rows = [1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y),
            2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x),
            2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)]
    return torch.stack(rows, -1).reshape(*q.shape[:-1], 3, 3)


def _skew(v: torch.Tensor) -> torch.Tensor:
    zero = torch.zeros_like(v[..., 0])
    x, y, z = v.unbind(-1)
    return torch.stack([zero, -z, y, z, zero, -x, -y, x, zero], -1).reshape(*v.shape[:-1], 3, 3)


def rotvec_to_matrix(v: torch.Tensor) -> torch.Tensor:
    """Rotation vectors ``[..., 3]`` (axis × angle) -> matrices ``[..., 3, 3]`` (Rodrigues' formula)."""
    theta2 = (v * v).sum(-1, keepdim=True).unsqueeze(-1)
    small = theta2 < 1e-8
    safe = torch.where(small, torch.ones_like(theta2), theta2).sqrt()  # no sqrt at 0: a finite gradient there
    a = torch.where(small, 1 - theta2 / 6, torch.sin(safe) / safe)
    b = torch.where(small, 0.5 - theta2 / 24, (1 - torch.cos(safe)) / (safe * safe))
    k = _skew(v)
    eye = torch.eye(3, dtype=v.dtype, device=v.device).expand_as(k)
    return eye + a * k + b * (k @ k)


def matrix_to_quaternion(r: torch.Tensor) -> torch.Tensor:
    """Rotation matrices ``[..., 3, 3]`` -> unit quaternions ``[..., 4]`` with ``w >= 0`` (the best-conditioned
    of the four Shepperd candidates)."""
    m = r
    d0, d1, d2 = m[..., 0, 0], m[..., 1, 1], m[..., 2, 2]
    t = torch.stack([1 + d0 + d1 + d2, 1 + d0 - d1 - d2, 1 - d0 + d1 - d2, 1 - d0 - d1 + d2], -1)
    a, b, c = m[..., 2, 1] - m[..., 1, 2], m[..., 0, 2] - m[..., 2, 0], m[..., 1, 0] - m[..., 0, 1]
    xy, xz, yz = m[..., 1, 0] + m[..., 0, 1], m[..., 0, 2] + m[..., 2, 0], m[..., 2, 1] + m[..., 1, 2]
    cands = torch.stack([torch.stack([t[..., 0], a, b, c], -1), torch.stack([a, t[..., 1], xy, xz], -1),
                         torch.stack([b, xy, t[..., 2], yz], -1), torch.stack([c, xz, yz, t[..., 3]], -1)], -2)
    best = t.argmax(-1)
    q = torch.gather(cands, -2, best[..., None, None].expand(*best.shape, 1, 4)).squeeze(-2)
    q = q / q.norm(dim=-1, keepdim=True)
    return torch.where(q[..., :1] < 0, -q, q)


def matrix_to_rotvec(r: torch.Tensor) -> torch.Tensor:
    """Rotation matrices ``[..., 3, 3]`` -> rotation vectors ``[..., 3]`` of angle in ``[0, π]``."""
    q = matrix_to_quaternion(r)
    w, xyz = q[..., :1], q[..., 1:]
    n = xyz.norm(dim=-1, keepdim=True)
    angle = 2 * torch.atan2(n, w)
    factor = torch.where(n < 1e-7, 2 / w.clamp_min(1e-12), angle / n.clamp_min(1e-12))
    return xyz * factor


def rotation_angle(r_a: torch.Tensor, r_b: torch.Tensor) -> torch.Tensor:
    """Geodesic distance (rad, in ``[0, π]``) between rotations ``r_a`` and ``r_b`` (broadcast ``[..., 3, 3]``)."""
    cos = ((r_a.transpose(-1, -2) @ r_b).diagonal(dim1=-2, dim2=-1).sum(-1) - 1) / 2
    return torch.arccos(cos.clamp(-1.0, 1.0))


def random_rotations(n: int, generator: torch.Generator | None = None,
                     dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """``n`` Haar-uniform rotation matrices (normalised Gaussian quaternions)."""
    return quaternion_to_matrix(torch.randn(n, 4, generator=generator, dtype=torch.float64)).to(dtype)


def rotation_grid(n: int, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """``n`` rotations of a Super-Fibonacci spiral (Alexa, "Super-Fibonacci spirals: fast, low-discrepancy sampling
    of SO(3)", CVPR 2022, Algorithm 1): a deterministic, near-uniform grid of SO(3) ``[n, 3, 3]``."""
    if n < 1:
        raise ValueError(f"rotation_grid needs n >= 1, got {n}")
    phi, psi = math.sqrt(2.0), 1.533751168755204288118041
    s = torch.arange(n, dtype=torch.float64) + 0.5
    r, big_r = torch.sqrt(s / n), torch.sqrt(1.0 - s / n)
    alpha, beta = 2 * math.pi * s / phi, 2 * math.pi * s / psi
    q = torch.stack([r * torch.sin(alpha), r * torch.cos(alpha), big_r * torch.sin(beta), big_r * torch.cos(beta)], -1)
    return quaternion_to_matrix(q).to(dtype)


def nearest_rotation(grid: torch.Tensor, r: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Index and geodesic angle of the grid rotation nearest each of ``r`` ``[B, 3, 3]`` (``grid`` ``[G, 3, 3]``)."""
    cos = (torch.einsum("gij,bij->bg", grid.to(r), r) - 1) / 2
    best = cos.argmax(-1)
    return best, torch.arccos(cos.gather(-1, best[:, None]).squeeze(-1).clamp(-1.0, 1.0))


# ============================================================================================ the grid
@dataclass(frozen=True)
class GridSpec:
    """Geometry of the pose grid and of the scalar fields (module docstring)."""

    spacing: float = 1.0
    """Lattice spacing ``h`` of the fields and of the translations (Å)."""
    t_max: float = 6.0
    """Translations searched: ``|t_i| ≤ T h`` with ``T = floor(t_max / h)`` (Å)."""
    lig_radius: float = LIGAND_RADIUS
    rec_centers: tuple[float, ...] = (0.0, 1.5, 3.0, 4.5)
    rec_width: float = 0.9
    rec_cutoff: float = 6.0
    lig_centers: tuple[float, ...] = (0.0, 1.2)
    lig_width: float = 0.9
    lig_cutoff: float = 2.5

    def __post_init__(self) -> None:
        for key in ("spacing", "t_max", "lig_radius", "rec_width", "rec_cutoff", "lig_width", "lig_cutoff"):
            value = getattr(self, key)
            if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
                raise ValueError(f"GridSpec.{key} must be a positive number, got {value!r}")
        if self.t_max < self.spacing:
            raise ValueError(f"GridSpec.t_max ({self.t_max}) must be at least the spacing ({self.spacing})")

    @property
    def m(self) -> int:
        """Half-width of the ligand window in lattice steps (covers ``lig_radius + lig_cutoff``)."""
        return math.ceil((self.lig_radius + self.lig_cutoff) / self.spacing - 1e-9)

    @property
    def T(self) -> int:  # noqa: N802 - the paper's symbol
        return math.floor(self.t_max / self.spacing + 1e-9)

    @property
    def n(self) -> int:
        """Half-width of the receptor box in lattice steps: ``m + T + 1`` (no wrap-around, module docstring)."""
        return self.m + self.T + 1

    @property
    def N(self) -> int:  # noqa: N802
        """FFT size per axis (``2 n``)."""
        return 2 * self.n

    @property
    def n_translations(self) -> int:
        return (2 * self.T + 1) ** 3

    def translations(self, dtype: torch.dtype = torch.float64) -> torch.Tensor:
        """The lattice translations ``[(2T+1)³, 3]`` (Å), in the order of :func:`fft_scores`' columns."""
        ax = torch.arange(-self.T, self.T + 1, dtype=dtype) * self.spacing
        return torch.stack(torch.meshgrid(ax, ax, ax, indexing="ij"), -1).reshape(-1, 3)

    def translation_index(self, t: torch.Tensor) -> torch.Tensor:
        """Index (into :meth:`translations`) of the lattice translation nearest ``t`` ``[B, 3]`` (clamped)."""
        k = torch.round(t / self.spacing).long().clamp(-self.T, self.T) + self.T
        side = 2 * self.T + 1
        return (k[:, 0] * side + k[:, 1]) * side + k[:, 2]


def radial_basis(r: torch.Tensor, centers: tuple[float, ...], width: float, cutoff: float) -> torch.Tensor:
    """``g_k(r) = exp(−(r − μ_k)²/2s²) · ½(1 + cos(π r/r_c))`` for ``r < r_c`` else 0: ``[..., K]``."""
    mu = torch.tensor(centers, dtype=r.dtype, device=r.device)
    env = torch.where(r < cutoff, 0.5 * (1 + torch.cos(math.pi * r / cutoff)), torch.zeros_like(r))
    return torch.exp(-(r[..., None] - mu) ** 2 / (2 * width**2)) * env[..., None]


def _cube(lo: int, size: int, dtype: torch.dtype, device: torch.device | None = None) -> torch.Tensor:
    ax = torch.arange(lo, lo + size, device=device)
    return torch.stack(torch.meshgrid(ax, ax, ax, indexing="ij"), -1).reshape(-1, 3).to(dtype)


def rasterise(pos: torch.Tensor, types: torch.Tensor, mask: torch.Tensor, lo: int, size: int, spacing: float,
              centers: tuple[float, ...], width: float, cutoff: float) -> torch.Tensor:
    """Per-type radial-basis densities on the cube of lattice indices ``[lo, lo + size)³`` (points ``index·h``):
    ``[B, N_TYPES, K, size, size, size]`` for atoms ``pos`` ``[B, A, 3]`` (types ``[A]`` or ``[B, A]``, ``mask`` the
    real atoms). Each atom writes only its stencil of lattice points within ``cutoff`` (exactly the dense sum:
    the basis is zero beyond the cutoff)."""
    b, a = pos.shape[:2]
    k = len(centers)
    q = math.ceil(cutoff / spacing + 0.5)
    off = _cube(-q, 2 * q + 1, torch.long, pos.device)
    # a point within the cutoff of an atom is within cutoff/h + √3/2 steps of the atom's nearest lattice point
    off = off[off.double().norm(dim=-1) <= cutoff / spacing + math.sqrt(3) / 2 + 1e-9]
    base = torch.round(pos / spacing).long()
    idx = base[:, :, None, :] + off  # [B, A, S, 3]
    dist = (idx.to(pos.dtype) * spacing - pos[:, :, None, :]).norm(dim=-1)
    val = radial_basis(dist, centers, width, cutoff)  # [B, A, S, K]
    local = idx - lo
    inside = ((local >= 0) & (local < size)).all(-1) & (dist < cutoff) & mask.bool().expand(b, a)[..., None]
    flat = (local[..., 0] * size + local[..., 1]) * size + local[..., 2]
    types = types.long().expand(b, a)
    chan = types[:, :, None, None] * k + torch.arange(k, device=pos.device)  # [B, A, 1, K]
    batch = torch.arange(b, device=pos.device)[:, None, None, None]
    target = (batch * (N_TYPES * k) + chan) * size**3 + flat[..., None]
    trash = b * N_TYPES * k * size**3  # one extra slot takes the points outside the cube
    target = torch.where(inside[..., None], target, trash)
    out = torch.zeros(trash + 1, dtype=pos.dtype, device=pos.device)
    out.index_add_(0, target.reshape(-1), (val * inside[..., None]).reshape(-1))
    out = out[:-1]
    return out.reshape(b, N_TYPES, k, size, size, size)


def rasterise_dense(pos: torch.Tensor, types: torch.Tensor, mask: torch.Tensor, lo: int, size: int, spacing: float,
                    centers: tuple[float, ...], width: float, cutoff: float) -> torch.Tensor:
    """:func:`rasterise` by evaluating every atom at every lattice point (the reference of the tests and of the
    brute force)."""
    b = pos.shape[0]
    pts = _cube(lo, size, pos.dtype, pos.device) * spacing
    dist = torch.cdist(pts.expand(b, -1, -1), pos)  # [B, P, A]
    val = radial_basis(dist, centers, width, cutoff) * mask.to(pos.dtype).expand(b, -1)[:, None, :, None]
    onehot = nn.functional.one_hot(types.long().expand(b, pos.shape[1]), N_TYPES).to(pos.dtype)  # [B, A, T]
    out = torch.einsum("bpak,bat->btkp", val, onehot)
    return out.reshape(b, N_TYPES, len(centers), size, size, size)


# ============================================================================================ the model
class ScalarFields(nn.Module):
    """Per-type learnable radial coefficients of the receptor and ligand fields (module docstring; paper §3 with
    the GNN replaced by one coefficient table per atom type): ``C`` channels on each side."""

    def __init__(self, spec: GridSpec, channels: int = 3, init_scale: float = 0.3, seed: int = 0) -> None:
        super().__init__()
        self.spec = spec
        gen = torch.Generator().manual_seed(seed)
        self.rec_coeff = nn.Parameter(init_scale * torch.randn(N_TYPES, len(spec.rec_centers), channels, generator=gen))
        self.lig_coeff = nn.Parameter(init_scale * torch.randn(N_TYPES, len(spec.lig_centers), channels, generator=gen))

    @property
    def channels(self) -> int:
        return self.rec_coeff.shape[-1]

    # -------------------------------------------------------------------------------- basis grids
    def receptor_basis(self, pos: torch.Tensor, types: torch.Tensor, mask: torch.Tensor, dense: bool = False
                       ) -> torch.Tensor:
        """Receptor basis densities on the box ``[−n, n)³``: ``[N_TYPES, K_P, N, N, N]`` (one complex)."""
        s = self.spec
        fn = rasterise_dense if dense else rasterise
        return fn(pos[None], types, mask, -s.n, s.N, s.spacing, s.rec_centers, s.rec_width, s.rec_cutoff)[0]

    def ligand_basis(self, pos: torch.Tensor, types: torch.Tensor, mask: torch.Tensor, dense: bool = False
                     ) -> torch.Tensor:
        """Ligand basis densities on the window ``[−m, m]³`` for posed ligands ``pos`` ``[R, A, 3]`` (centroid at
        the window centre): ``[R, N_TYPES, K_L, W, W, W]``, ``W = 2m + 1``."""
        s = self.spec
        fn = rasterise_dense if dense else rasterise
        return fn(pos, types, mask, -s.m, 2 * s.m + 1, s.spacing, s.lig_centers, s.lig_width, s.lig_cutoff)

    # ------------------------------------------------------------------------------------ fields
    def receptor_field(self, basis: torch.Tensor) -> torch.Tensor:
        """``φ^P_c`` ``[C, N, N, N]`` from :meth:`receptor_basis`."""
        return torch.einsum("tkc,tkxyz->cxyz", self.rec_coeff.to(basis), basis)

    def ligand_field(self, basis: torch.Tensor) -> torch.Tensor:
        """``φ^L_{c,R}`` ``[R, C, W, W, W]`` from :meth:`ligand_basis`."""
        return torch.einsum("tkc,rtkxyz->rcxyz", self.lig_coeff.to(basis), basis)

    # ------------------------------------------------------------------------------------ scoring
    def score_grid(self, pocket: torch.Tensor, pocket_types: torch.Tensor, pocket_mask: torch.Tensor,
                   ligand: torch.Tensor, ligand_types: torch.Tensor, ligand_mask: torch.Tensor,
                   rotations: torch.Tensor, chunk: int = 48, receptor_hat: torch.Tensor | None = None) -> torch.Tensor:
        """``S(R, t)`` ``[n_rot, n_trans]`` of one complex over ``rotations`` × :meth:`GridSpec.translations` by FFT."""
        hats = None if receptor_hat is None else [receptor_hat]
        return score_grids([self], pocket, pocket_types, pocket_mask, ligand, ligand_types, ligand_mask, rotations,
                           chunk, hats)[0]


def score_grids(models: list[ScalarFields], pocket: torch.Tensor, pocket_types: torch.Tensor,
                pocket_mask: torch.Tensor, ligand: torch.Tensor, ligand_types: torch.Tensor, ligand_mask: torch.Tensor,
                rotations: torch.Tensor, chunk: int = 48, receptor_hats: list[torch.Tensor] | None = None
                ) -> list[torch.Tensor]:
    """:meth:`ScalarFields.score_grid` of several models with one spec on one complex, the basis densities (which
    do not depend on the coefficients) computed once for all of them."""
    spec = models[0].spec
    if any(model.spec != spec for model in models):
        raise ValueError("score_grids needs models of one GridSpec")
    if receptor_hats is None:
        basis = models[0].receptor_basis(pocket, pocket_types, pocket_mask)
        receptor_hats = [receptor_spectrum(model.receptor_field(basis)) for model in models]
    out: list[list[torch.Tensor]] = [[] for _ in models]
    for rot in rotations.split(chunk):
        posed = torch.einsum("rij,aj->rai", rot.to(ligand), ligand)
        lig_basis = models[0].ligand_basis(posed, ligand_types, ligand_mask)
        for k, model in enumerate(models):
            out[k].append(fft_scores(receptor_hats[k], model.ligand_field(lig_basis), spec))
    return [torch.cat(o) for o in out]


def receptor_spectrum(field: torch.Tensor) -> torch.Tensor:
    """``rfftn`` of the receptor field ``[C, N, N, N]`` (computed once per complex, reused for every rotation)."""
    return torch.fft.rfftn(field, dim=(-3, -2, -1))


def fft_scores(receptor_hat: torch.Tensor, ligand_field: torch.Tensor, spec: GridSpec) -> torch.Tensor:
    """``S(R, t)`` for every lattice translation of each rotation's ligand field (paper §3.2, Eq. 4): the circular
    cross-correlation ``irfftn(Σ_c P̂_c · conj(L̂_c))`` with the ligand window placed at the box centre.
    ``receptor_hat`` = :func:`receptor_spectrum`, ``ligand_field`` ``[R, C, W, W, W]``; returns
    ``[R, (2T+1)³]`` in the order of :meth:`GridSpec.translations`. Since ``m + T < n`` the circular correlation
    equals the linear one (module docstring)."""
    n, m, size = spec.n, spec.m, spec.N
    r, c = ligand_field.shape[:2]
    padded = ligand_field.new_zeros(r, c, size, size, size)
    padded[:, :, n - m:n + m + 1, n - m:n + m + 1, n - m:n + m + 1] = ligand_field
    lig_hat = torch.fft.rfftn(padded, dim=(-3, -2, -1))
    corr = torch.fft.irfftn((receptor_hat[None] * lig_hat.conj()).sum(1), s=(size, size, size), dim=(-3, -2, -1))
    idx = torch.arange(-spec.T, spec.T + 1, device=corr.device) % size
    return corr[:, idx][:, :, idx][:, :, :, idx].reshape(r, -1)


def brute_force_scores(receptor_field: torch.Tensor, ligand_field: torch.Tensor, spec: GridSpec,
                       shifts: torch.Tensor | None = None) -> torch.Tensor:
    """The same ``S(R, t) = Σ_c Σ_y φ^L_{c,R}(y) φ^P_c(y + t)`` by direct sums, pose by pose: ``receptor_field``
    ``[C, N, N, N]``, ``ligand_field`` ``[R, C, W, W, W]``; ``shifts`` (lattice steps ``[S, 3]``, default all of
    them) -> ``[R, S]``."""
    n, m = spec.n, spec.m
    if shifts is None:
        shifts = torch.round(spec.translations() / spec.spacing).long()
    out = ligand_field.new_empty(ligand_field.shape[0], len(shifts))
    for j, (sx, sy, sz) in enumerate(shifts.tolist()):
        window = receptor_field[:, n - m + sx:n + m + 1 + sx, n - m + sy:n + m + 1 + sy, n - m + sz:n + m + 1 + sz]
        out[:, j] = (ligand_field * window).sum(dim=(1, 2, 3, 4))
    return out


def pose_cross_entropy(true_block: torch.Tensor, label: torch.Tensor, sampled_block: torch.Tensor | None = None,
                       n_rotations: int = 0, tau: float = 1.0) -> torch.Tensor:
    """Cross-entropy of the pose-grid policy ``softmax(S/τ)`` at the true pose (paper §3.3), per complex ``[B]``.

    ``true_block`` ``[B, n_trans]``: the scores of every translation at the true rotation (the true pose at
    column ``label``); ``sampled_block`` ``[B, K, n_trans]``: the full translation grids of ``K`` rotations drawn
    uniformly from a grid of ``n_rotations``, weighted ``n_rotations / K`` in the partition function (an unbiased
    estimate of its rotational part; ``None``: translations only, the paper's ESF-T objective)."""
    logits = true_block / tau
    parts = [logits]
    if sampled_block is not None and sampled_block.shape[1] > 0:
        k = sampled_block.shape[1]
        parts.append(sampled_block.flatten(1) / tau + math.log(n_rotations / k))
    log_z = torch.logsumexp(torch.cat(parts, -1), -1)
    return log_z - logits.gather(-1, label[:, None]).squeeze(-1)


def perturb_pose(rotation: torch.Tensor, translation: torch.Tensor, rot_rms: float, trans_rms: float,
                 generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """ESF-N's noisy pose: ``R' = exp(ω) R``, ``t' = t + ε`` with ``ω``, ``ε`` isotropic Gaussian vectors of RMS
    norm ``rot_rms`` (rad) and ``trans_rms`` (Å), i.e. per-axis standard deviations ``rms/√3``."""
    b = rotation.shape[0]
    omega = torch.randn(b, 3, generator=generator, dtype=rotation.dtype) * (rot_rms / math.sqrt(3))
    eps = torch.randn(b, 3, generator=generator, dtype=translation.dtype) * (trans_rms / math.sqrt(3))
    return rotvec_to_matrix(omega.to(rotation.device)) @ rotation, translation + eps.to(translation.device)


# ================================================================================================ RMSD
def pose_rmsd(ligand: torch.Tensor, mask: torch.Tensor, rot_a: torch.Tensor, t_a: torch.Tensor, rot_b: torch.Tensor,
              t_b: torch.Tensor) -> torch.Tensor:
    """RMSD (Å) ``[B]`` between the ligand ``[B, A, 3]`` (real atoms ``mask``) under poses ``(R_a, t_a)`` and
    ``(R_b, t_b)`` (``[B, 3, 3]``, ``[B, 3]``)."""
    xa = torch.einsum("bij,baj->bai", rot_a, ligand) + t_a[:, None]
    xb = torch.einsum("bij,baj->bai", rot_b, ligand) + t_b[:, None]
    w = mask.to(ligand.dtype)
    return torch.sqrt(((xa - xb) ** 2).sum(-1).mul(w).sum(-1) / w.sum(-1).clamp_min(1))


def oracle_pose(ligand: torch.Tensor, mask: torch.Tensor, rotation: torch.Tensor, translation: torch.Tensor,
                grid: torch.Tensor, spec: GridSpec) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The grid pose of least RMSD to the true pose (one complex: ligand ``[A, 3]``): ``(rotation index,
    translation index, RMSD)`` (module docstring: the two parts separate for a centred ligand)."""
    lig = ligand[mask.bool()].to(grid)
    diff = torch.einsum("gij,aj->gai", grid - rotation.to(grid)[None], lig)
    rot_ms = (diff**2).sum(-1).mean(-1)
    r_idx = int(rot_ms.argmin())
    t_idx = int(spec.translation_index(translation.to(grid)[None])[0])
    t_err = ((spec.translations(grid.dtype)[t_idx] - translation.to(grid)) ** 2).sum()
    return torch.tensor(r_idx), torch.tensor(t_idx), torch.sqrt(rot_ms[r_idx] + t_err)


# ======================================================================================== Vina-like score
VINA_WEIGHTS = {"gauss1": -0.035579, "gauss2": -0.005156, "repulsion": 0.840245, "hydrophobic": -0.035069,
                "hbond": -0.587439}
"""AutoDock Vina's weights (Trott & Olson, J. Comput. Chem. 2010, Table 1)."""
VINA_CUTOFF = 6.0
"""Pair cutoff (Å; Vina's is 8 Å, shortened here for the CPU budget: beyond 6 Å only gauss2 is nonzero)."""
VINA_MAP_SPACING = 0.5


def vina_pair_terms(r: torch.Tensor, t_lig: torch.Tensor, t_rec: torch.Tensor) -> torch.Tensor:
    """Vina's weighted pair energy (kcal/mol-like units; lower is better) at distances ``r`` between ligand atoms of
    type ``t_lig`` and receptor atoms of type ``t_rec`` (broadcast): surface distance ``d = r − R_i − R_j``,
    gauss1 ``e^{−(d/0.5)²}``, gauss2 ``e^{−((d−3)/2)²}``, repulsion ``d²`` (d < 0), hydrophobic (both hydrophobic:
    1 below 0.5, linear to 0 at 1.5) and hydrogen bond (donor–acceptor: 1 below −0.7, linear to 0 at 0)."""
    radius = torch.tensor(VDW_RADIUS, dtype=r.dtype, device=r.device)
    d = r - radius[t_lig] - radius[t_rec]
    w = VINA_WEIGHTS
    e = w["gauss1"] * torch.exp(-(d / 0.5) ** 2) + w["gauss2"] * torch.exp(-((d - 3.0) / 2.0) ** 2)
    e = e + w["repulsion"] * torch.where(d < 0, d * d, torch.zeros_like(d))
    hyd = ((t_lig == 0) & (t_rec == 0)).to(r.dtype)
    e = e + w["hydrophobic"] * hyd * ((1.5 - d).clamp(0.0, 1.0))
    hb = (((t_lig == 1) & (t_rec == 2)) | ((t_lig == 2) & (t_rec == 1))).to(r.dtype)
    e = e + w["hbond"] * hb * ((-d / 0.7).clamp(0.0, 1.0))
    return torch.where(r < VINA_CUTOFF, e, torch.zeros_like(e))


def vina_pair_energy(pocket: torch.Tensor, pocket_types: torch.Tensor, pocket_mask: torch.Tensor,
                     posed_ligand: torch.Tensor, ligand_types: torch.Tensor, ligand_mask: torch.Tensor) -> torch.Tensor:
    """Vina-like intermolecular energy ``[R]`` of posed ligands ``[R, A, 3]`` (receptor frame) by direct pair sums."""
    r = torch.cdist(posed_ligand, pocket[None].to(posed_ligand).expand(len(posed_ligand), -1, -1))
    e = vina_pair_terms(r, ligand_types.long()[:, None], pocket_types.long()[None, :])
    w = ligand_mask.to(r.dtype)[:, None] * pocket_mask.to(r.dtype)[None, :]
    return (e * w).sum((-1, -2))


def vina_maps(pocket: torch.Tensor, pocket_types: torch.Tensor, pocket_mask: torch.Tensor, spec: GridSpec,
              spacing: float = VINA_MAP_SPACING) -> tuple[torch.Tensor, int]:
    """Per-ligand-type energy maps ``[N_TYPES, M, M, M]`` on a lattice of ``spacing`` covering every ligand atom
    position of the pose grid, and the map's half-width in map steps."""
    half = math.ceil((spec.T * spec.spacing + spec.lig_radius + 1.0) / spacing)
    size = 2 * half + 1
    q = math.ceil(VINA_CUTOFF / spacing + 0.5)
    off = _cube(-q, 2 * q + 1, torch.long)
    off = off[off.double().norm(dim=-1) <= VINA_CUTOFF / spacing + math.sqrt(3) / 2 + 1e-9]
    keep = pocket_mask.bool()
    pos, types = pocket[keep], pocket_types[keep].long()
    maps = torch.zeros(N_TYPES, size**3, dtype=pocket.dtype)
    for chunk in torch.arange(len(pos)).split(64):
        idx = torch.round(pos[chunk] / spacing).long()[:, None, :] + off
        dist = (idx.to(pos.dtype) * spacing - pos[chunk][:, None, :]).norm(dim=-1)
        local = idx + half
        inside = ((local >= 0) & (local < size)).all(-1) & (dist < VINA_CUTOFF)
        flat = ((local[..., 0] * size + local[..., 1]) * size + local[..., 2])[inside]
        d_sel, t_rec = dist[inside], types[chunk][:, None].expand_as(dist)[inside]
        for t in range(N_TYPES):
            maps[t].index_add_(0, flat, vina_pair_terms(d_sel, torch.full_like(t_rec, t), t_rec))
    return maps.reshape(N_TYPES, size, size, size), half


def vina_grid_scores(maps: torch.Tensor, half: int, ligand: torch.Tensor, ligand_types: torch.Tensor,
                     ligand_mask: torch.Tensor, rotations: torch.Tensor, spec: GridSpec,
                     spacing: float = VINA_MAP_SPACING, chunk: int = 64) -> torch.Tensor:
    """Vina-like *scores* (minus the energy) ``[n_rot, n_trans]`` over the pose grid, each atom's energy read from
    its type's map of :func:`vina_maps` by trilinear interpolation (``grid_sample``, as Vina reads its maps)."""
    size = maps.shape[-1]
    keep = ligand_mask.bool()
    lig, types = ligand[keep].to(maps), ligand_types[keep].long()
    trans = spec.translations(maps.dtype)
    out = []
    for rot in rotations.split(chunk):
        posed = torch.einsum("rij,aj->rai", rot.to(maps), lig)[:, :, None, :] + trans  # [R, A, n_trans, 3]
        coord = (posed / spacing + half) * (2.0 / (size - 1)) - 1.0  # align_corners=True
        energy = maps.new_zeros(len(rot), len(trans))
        for t in types.unique().tolist():
            pts = coord[:, types == t].flip(-1).reshape(1, -1, 1, 1, 3)  # grid_sample reads (x, y, z) = (W, H, D)
            val = torch.nn.functional.grid_sample(maps[t][None, None], pts, mode="bilinear", align_corners=True)
            energy = energy + val.reshape(len(rot), -1, len(trans)).sum(1)
        out.append(-energy)
    return torch.cat(out)


def vina_refine(pocket: torch.Tensor, pocket_types: torch.Tensor, pocket_mask: torch.Tensor, ligand: torch.Tensor,
                ligand_types: torch.Tensor, ligand_mask: torch.Tensor, rotations: torch.Tensor,
                translations: torch.Tensor,
                steps: int = 60, lr: float = 0.05) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Local optimisation of starting poses ``(R [k, 3, 3], t [k, 3])`` on the direct Vina-like energy (Adam on a
    rotation vector ``ω`` and a shift ``δ``: ``R' = exp(ω) R``, ``t' = t + δ``), as Vina refines its search's
    poses; returns the refined ``(R, t, energy)``, each ``[k, ...]``."""
    from rl_energy.optim import adam

    omega = torch.zeros(len(rotations), 3, dtype=ligand.dtype, requires_grad=True)
    delta = torch.zeros(len(rotations), 3, dtype=ligand.dtype, requires_grad=True)
    opt = adam([omega, delta], lr)

    def pose() -> tuple[torch.Tensor, torch.Tensor]:
        return rotvec_to_matrix(omega) @ rotations.to(ligand), translations.to(ligand) + delta

    for _ in range(steps):
        rot, t = pose()
        posed = torch.einsum("kij,aj->kai", rot, ligand) + t[:, None]
        energy = vina_pair_energy(pocket, pocket_types, pocket_mask, posed, ligand_types, ligand_mask)
        opt.zero_grad()
        energy.sum().backward()
        opt.step()
    with torch.no_grad():
        rot, t = pose()
        posed = torch.einsum("kij,aj->kai", rot, ligand) + t[:, None]
        return rot, t, vina_pair_energy(pocket, pocket_types, pocket_mask, posed, ligand_types, ligand_mask)


# ======================================================================================= the complexes
def _ligand(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """A rigid, branched ligand of 8–15 atoms (bonds of 1.5 Å, no two atoms nearer than 2.3 Å unless bonded,
    every atom within :data:`LIGAND_RADIUS` of the centroid), centred at its centroid, and its types."""
    while True:
        n = int(rng.integers(LIGAND_ATOMS[0], LIGAND_ATOMS[1] + 1))
        pos, degree = [np.zeros(3)], [0]
        tries = 0
        while len(pos) < n and tries < 400:
            tries += 1
            parent = int(rng.integers(len(pos)))
            if degree[parent] >= 3:
                continue
            d = rng.standard_normal(3)
            cand = pos[parent] + BOND * d / np.linalg.norm(d)
            arr = np.asarray(pos)
            dist = np.linalg.norm(arr - cand, axis=1)
            dist[parent] = 10.0
            if dist.min() < 2.3:
                continue
            pos.append(cand)
            degree.append(1)
            degree[parent] += 1
        arr = np.asarray(pos)
        arr = arr - arr.mean(0)
        if len(arr) == n and np.linalg.norm(arr, axis=1).max() <= LIGAND_RADIUS:
            return arr, rng.choice(N_TYPES, size=n, p=LIGAND_TYPE_P)


def _uniform_rotation(rng: np.random.Generator) -> np.ndarray:
    q = rng.standard_normal(4)
    return quaternion_to_matrix(torch.as_tensor(q)).numpy()


@dataclass
class Complex:
    """One synthetic receptor–ligand complex (receptor frame: origin at the pocket centre)."""

    pocket: np.ndarray
    """Receptor atoms ``[P, 3]`` within :data:`KEEP_RADIUS` of the pocket centre."""
    pocket_types: np.ndarray
    ligand: np.ndarray
    """Ligand atoms in the ligand frame (centred) ``[A, 3]``."""
    ligand_types: np.ndarray
    rotation: np.ndarray
    """True pose: ligand atoms at ``ligand @ rotation.T + translation``."""
    translation: np.ndarray
    near: np.ndarray
    """Receptor atoms within :data:`PERTURB_RADIUS` of the ligand (the ones the perturbed split moves)."""


def make_complex(rng: np.random.Generator) -> Complex:
    """One synthetic complex (module docstring)."""
    lig, lig_types = _ligand(rng)
    rot = _uniform_rotation(rng)
    t_true = rng.uniform(-POCKET_OFFSET, POCKET_OFFSET, 3)
    placed = lig @ rot.T + t_true
    out = rng.standard_normal(3)
    out /= np.linalg.norm(out)  # the surface normal at the pocket
    centre = t_true - out * (RECEPTOR_BALL - POCKET_DEPTH)
    k = math.ceil((KEEP_RADIUS + 2) / LATTICE)
    ax = np.arange(-k, k + 1) * LATTICE
    lattice = np.stack(np.meshgrid(ax, ax, ax, indexing="ij"), -1).reshape(-1, 3)
    lattice = lattice @ _uniform_rotation(rng).T + rng.uniform(0, LATTICE, 3)
    lattice = lattice + rng.uniform(-JITTER, JITTER, lattice.shape)
    keep = (np.linalg.norm(lattice, axis=1) <= KEEP_RADIUS) \
        & (np.linalg.norm(lattice - centre, axis=1) <= RECEPTOR_BALL)
    rec = lattice[keep]
    d_lig = np.linalg.norm(rec[:, None] - placed[None], axis=-1)  # [P, A]
    rec, d_lig = rec[d_lig.min(1) > CARVE], d_lig[d_lig.min(1) > CARVE]
    types = rng.choice(N_TYPES, size=len(rec), p=RECEPTOR_TYPE_P)
    lining = d_lig.min(1) <= LINING
    comp = np.asarray(COMPLEMENT)[lig_types[d_lig.argmin(1)]]
    pick = lining & (rng.random(len(rec)) < P_COMPLEMENT)
    types = np.where(pick, comp, types)
    # a receptor donor/acceptor paired with a ligand acceptor/donor moves in to hydrogen-bond distance
    nearest = d_lig.argmin(1)
    for j in np.flatnonzero(pick & np.isin(types, (1, 2))):
        anchor = placed[nearest[j]]
        u = (rec[j] - anchor) / np.linalg.norm(rec[j] - anchor)
        cand = anchor + u * rng.uniform(*HBOND_DISTANCE)
        lig_d = np.linalg.norm(np.delete(placed, nearest[j], axis=0) - cand, axis=1)
        rec_d = np.linalg.norm(np.delete(rec, j, axis=0) - cand, axis=1)
        if lig_d.min(initial=np.inf) >= 3.2 and rec_d.min() >= 2.2:
            rec[j] = cand
    d_lig = np.linalg.norm(rec[:, None] - placed[None], axis=-1)
    return Complex(rec, types, lig, lig_types, rot, t_true, d_lig.min(1) <= PERTURB_RADIUS)


def perturb_pocket(c: Complex, rms: float, rng: np.random.Generator) -> np.ndarray:
    """Receptor coordinates with the atoms near the ligand displaced by isotropic Gaussian noise of RMS ``rms``
    Å (the "predicted-structure" pocket); the other atoms, the types and the ligand are unchanged."""
    noise = rng.standard_normal(c.pocket.shape) * (rms / math.sqrt(3))
    return c.pocket + noise * c.near[:, None]


def make_split(n: int, seed: int, split: int, perturb: float = 0.0) -> list[Complex]:
    """``n`` complexes of split number ``split`` (0 train, 1 test), each deterministic from ``(seed, split, i)``;
    ``perturb > 0`` moves the pocket atoms (:func:`perturb_pocket`, noise from ``(seed, split, i, 1)``)."""
    out = []
    for i in range(n):
        c = make_complex(np.random.default_rng([seed, split, i]))
        if perturb > 0:
            c.pocket = perturb_pocket(c, perturb, np.random.default_rng([seed, split, i, 1]))
        out.append(c)
    return out


# ============================================================================== packed observations
ROW = 5
"""Observation row: ``(x, y, z, type, mask)``."""


def obs_dim(max_pocket: int, max_ligand: int) -> int:
    return ROW * (max_pocket + max_ligand)


def pack(c: Complex, max_pocket: int, max_ligand: int) -> np.ndarray:
    """The flat float32 observation of a complex: ``max_pocket`` receptor rows then ``max_ligand`` ligand rows
    (ligand frame), each ``(x, y, z, type, mask)``; padding rows are zero."""
    if len(c.pocket) > max_pocket or len(c.ligand) > max_ligand:
        raise ValueError(f"complex of {len(c.pocket)} pocket / {len(c.ligand)} ligand atoms exceeds "
                         f"max_pocket={max_pocket} / max_ligand={max_ligand}")
    rows = np.zeros((max_pocket + max_ligand, ROW), np.float32)
    rows[: len(c.pocket), :3], rows[: len(c.pocket), 3], rows[: len(c.pocket), 4] = c.pocket, c.pocket_types, 1
    a = len(c.ligand)
    rows[max_pocket:max_pocket + a, :3], rows[max_pocket:max_pocket + a, 3] = c.ligand, c.ligand_types
    rows[max_pocket:max_pocket + a, 4] = 1
    return rows.reshape(-1)


@dataclass
class Unpacked:
    pocket: torch.Tensor
    pocket_types: torch.Tensor
    pocket_mask: torch.Tensor
    ligand: torch.Tensor
    ligand_types: torch.Tensor
    ligand_mask: torch.Tensor


def unpack(obs: torch.Tensor, max_pocket: int) -> Unpacked:
    """Observations ``[B, obs_dim]`` -> padded tensors (float64 coordinates, long types, bool masks)."""
    rows = obs.reshape(obs.shape[0], -1, ROW).double()
    p, lig = rows[:, :max_pocket], rows[:, max_pocket:]
    return Unpacked(p[..., :3], p[..., 3].round().long(), p[..., 4] > 0.5,
                    lig[..., :3], lig[..., 3].round().long(), lig[..., 4] > 0.5)


def max_pocket_of(obs_size: int, max_ligand: int = DEFAULT_MAX_LIGAND) -> int:
    """``max_pocket`` of an observation of ``obs_size`` numbers (``max_ligand`` ligand rows)."""
    rows, rest = divmod(obs_size, ROW)
    if rest or rows <= max_ligand:
        raise ValueError(f"an observation of {obs_size} numbers is not a docking observation")
    return rows - max_ligand


def pose_of_action(action: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Actions ``[B, 6]`` (translation, rotation vector) -> ``(R [B, 3, 3], t [B, 3])``."""
    a = action.reshape(-1, 6).double()
    return rotvec_to_matrix(a[:, 3:]), a[:, :3]
