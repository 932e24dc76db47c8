"""Distribution shifts of MLFFs and two test-time fixes: radius refinement and test-time training.

Kreiman & Krishnapriyan, "Understanding and mitigating distribution shifts for machine learning force fields"
(arXiv 2503.08674; digest ``one-step-tasks.md`` §14). Three pieces, on top of the atomistic core
(:mod:`rl_energy.atoms.graph`, :mod:`~rl_energy.atoms.data`, :mod:`~rl_energy.atoms.models`):

**The shifted split** (:func:`shift_smiles`, :func:`shift_frames`; label-free and deterministic). NCI molecules
(:func:`rl_energy.atoms.data.nci_smiles`):

* ``train``: molecules over C/H/N/O with ``train_heavy`` (6–10) heavy atoms; ``id``: held-out molecules of the same
  pool (the in-distribution test);
* ``shift_size``: larger molecules (``shift_heavy``, 11–16 heavy atoms) over C/H/N/O (the connectivity shift: a
  radius graph of a larger molecule is less complete than any training graph);
* ``shift_elem``: larger molecules that contain S, F or Cl (elements never seen in training: the paper's
  "atomic features" shift, together with the size shift). A model cannot embed an unseen element meaningfully —
  its embedding row keeps its random initialisation, and its per-element reference energy is 0 — so this column
  measures how far the rest of the network carries. Forces do not depend on the reference energies, so the force
  MAE is well defined. Test-time training can only move the *unfrozen* blocks (the embedding is frozen by default,
  as the paper freezes the early blocks), so it cannot learn the new elements' embeddings either.

Configurations are :func:`rl_energy.atoms.datasets.molecule_frames` (half rattles, half MMFF Langevin MD at
``temperature``); reference labels GFN2-xTB, prior labels MMFF94, both through :func:`~rl_energy.atoms.labellers.label`
with a :class:`~rl_energy.atoms.labellers.LabelCache`.

**Radius refinement (RR)** (:class:`RadiusRefinement`, paper §"Test-time radius refinement"): the connectivity of a
structure is the spectrum of the normalised Laplacian ``L = I − D^{-1/2} Ã D^{-1/2}`` of its radius graph with
self-loops (``Ã = A + I``, ``D = diag(Ã 1)``; :func:`normalized_laplacian`). Sorted eigenvalues are zero-padded to a
common length — padding a graph with isolated, self-looped nodes adds exactly zero eigenvalues, so one batched
``eigvalsh`` of the padded ``[B, A, A]`` Laplacians gives the padded spectra (:func:`laplacian_spectra`). With
``λ̄`` the mean sorted training spectrum at the training radius, each test structure gets
``r* = argmin_r ‖sort(eig L_r) − λ̄‖²`` over a radius grid, and the model predicts on the radius-``r*`` graph. No
labels are used. When the training molecules differ in size, ``λ̄`` averages spectra of different lengths into a
smooth ramp that a sparse small-radius graph matches best (on our split the paper's distance picks ≈ 3.2 Å even for
in-distribution molecules trained at 5 Å); ``padding="quantile"`` is a size-free variant of ours that compares each
structure's own spectrum resampled at fixed quantiles (it picks ≈ 5.3 Å in distribution).

*How a model is evaluated at another radius.* SchNet's radial basis multiplies every filter by a cosine envelope
at its ``rbf.cutoff`` (edges beyond it get zero weight), so changing only the graph radius inside that cutoff
changes which edges exist without changing what an edge of a given length contributes. :class:`TwoHeadSchNet`
therefore has two radii: the envelope cutoff ``cutoff`` (set at or above the largest radius of the RR grid, 8 Å by
default) and the **graph radius** ``graph_radius`` (the training radius, 5 Å by default) used when no edges are
given. RR changes only the graph radius (:func:`refined_edges` keeps, per structure, the edges shorter than that
structure's ``r*``). Training and RR therefore see the same filters for every edge length below the envelope;
edges between the training radius and ``r*`` get the filter values the network extrapolates there. (The energy
has a step when an atom crosses the graph radius; forces are ``−∇E`` of the fixed graph, as in any radius-graph
model.)

**Test-time training (TTT)** (:class:`TwoHeadSchNet`, :func:`pretrain_prior`, :func:`finetune_qm`,
:func:`test_time_train`; paper §"Test-time training", digest §14):

1. train the representation (SchNet's embedding + interaction blocks) plus a *prior head* on cheap MMFF94 labels;
2. fine-tune a *QM head* on GFN2-xTB labels (``mode="joint"``: the representation too, keeping the prior loss on the
   same frames so that the prior head stays matched to the representation; ``mode="head"``: the QM head alone on the
   frozen representation);
3. at test time, take SGD steps on the prior loss of the test structures (the frames of one test molecule, their
   MMFF labels are free), updating the representation except the frozen early blocks (the embedding and the first
   ``frozen_blocks`` interaction blocks) — neither head moves;
4. predict with the QM head on the adapted representation.

Both heads are conservative (``F = −∂E/∂r`` through the shared representation). The TTT loss is the paper's
"energy MAE + 1000 × force MAE" (MD17 config: SGD, lr 1e−5, momentum 0.9, weight decay 1e−3). Units: the paper's
kcal/mol and kcal/mol/Å are a consistent pair, as are eV and eV/Å, so the weight 1000 Å carries over unchanged.
The step size does not: it depends on the units and on the model's parametrisation (with the loss in eV, SGD
diverged at lr 1e−6 on our SchNet and helped at 2e−8–1e−7). :func:`prior_loss` therefore divides the loss by
``1000 · prior_scale`` (a force MAE in units of the prior's RMS force component), and ``lr`` is for that loss
(default 1e−4, ≈ 4e−8 on the loss in eV; chosen on a tuning split of 6 molecules each of ``id``/``shift_*`` from
a different split seed than the reproduction's test molecules). Energies enter centred on the molecule's mean over
its test frames (an unseen element has no reference energy, and a per-molecule constant says nothing about forces).
"""

from __future__ import annotations

import copy
import functools
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn as nn

from rl_energy.atoms.data import Frames, nci_smiles
from rl_energy.atoms.graph import Edges, Structures, edge_vectors, radius_graph, unpack
from rl_energy.atoms.models import AtomisticModel, SchNet
from rl_energy.errors import ConfigError
from rl_energy.optim import cosine_factor

CHNO = ("C", "H", "N", "O")
SHIFT_ELEMENTS = ("S", "F", "Cl")
SPLITS = ("train", "id", "shift_size", "shift_elem")
DEFAULT_RADII = tuple(float(r) for r in np.linspace(3.0, 7.5, 10))
"""The RR grid: 10 radii 3–7.5 Å in steps of 0.5 (the paper: 3–9 Å, 10 values; our molecules are smaller)."""
HEADS = ("qm", "prior")
PADDINGS = ("zeros", "quantile")


# ------------------------------------------------------------------------------------------------ the split
@functools.lru_cache(maxsize=16)
def _pool(min_heavy: int, max_heavy: int, elements: tuple[str, ...]) -> tuple[str, ...]:
    """:func:`rl_energy.atoms.data.nci_smiles`, parsed once per process."""
    return tuple(nci_smiles(min_heavy, max_heavy, elements))


def _elements(smiles: str) -> set[str]:
    from rdkit import Chem

    return {a.GetSymbol() for a in Chem.MolFromSmiles(smiles).GetAtoms()}


def shift_smiles(n_train: int, n_test: int, train_heavy: tuple[int, int] = (6, 10),
                 shift_heavy: tuple[int, int] = (11, 16), seed: int = 0, spare: int = 8) -> dict[str, list[str]]:
    """SMILES of the four splits :data:`SPLITS` (module docstring), each a seeded permutation of its pool;
    ``spare`` extra candidates per split stand in for molecules that RDKit cannot embed."""
    if n_train < 1 or n_test < 1:
        raise ValueError(f"n_train and n_test must be >= 1, got {n_train}, {n_test}")
    if not (1 <= train_heavy[0] <= train_heavy[1] < shift_heavy[0] <= shift_heavy[1]):
        raise ValueError(f"need 1 <= train_heavy <= shift_heavy ranges, disjoint and increasing: "
                         f"train_heavy={train_heavy}, shift_heavy={shift_heavy}")
    rng = np.random.default_rng(seed)

    def perm(pool: Sequence[str]) -> list[str]:
        return [pool[i] for i in rng.permutation(len(pool))]

    base = perm(_pool(train_heavy[0], train_heavy[1], CHNO))
    if len(base) < n_train + n_test + 2 * spare:
        raise ValueError(f"only {len(base)} train-like molecules for n_train={n_train} + n_test={n_test}")
    size = perm(_pool(shift_heavy[0], shift_heavy[1], CHNO))
    elem = perm([s for s in _pool(shift_heavy[0], shift_heavy[1], CHNO + SHIFT_ELEMENTS)
                 if _elements(s) & set(SHIFT_ELEMENTS)])
    cut = n_train + spare
    return {"train": base[:cut], "id": base[cut:cut + n_test + spare], "shift_size": size[:n_test + spare],
            "shift_elem": elem[:n_test + spare]}


@dataclass
class LabelledSplit:
    """The same configurations with the reference (``qm``, GFN2-xTB) and prior (``prior``, MMFF94) labels."""

    qm: Frames
    prior: Frames

    def __len__(self) -> int:
        return len(self.qm)

    def molecules(self) -> list[np.ndarray]:
        """Frame indices of each molecule (group), in order."""
        return [np.flatnonzero(self.qm.group == g) for g in np.unique(self.qm.group)]


def shift_frames(smiles: Sequence[str], n_molecules: int, per_molecule: int, seed: int, temperature: float = 750.0,
                 cache: Any = None) -> LabelledSplit:
    """Configurations of the first ``n_molecules`` embeddable molecules of ``smiles``
    (:func:`rl_energy.atoms.datasets.molecule_frames`), labelled by GFN2-xTB and MMFF94 (``cache``: a
    :class:`~rl_energy.atoms.labellers.LabelCache` or ``None``)."""
    from rl_energy.atoms.datasets import molecule_frames
    from rl_energy.atoms.labellers import label

    atoms, groups, kept = molecule_frames(list(smiles)[: n_molecules + 8], per_molecule, seed, temperature)
    keep = [k for k, g in enumerate(groups) if g < n_molecules]
    if len(set(groups[k] for k in keep)) < n_molecules:
        raise ValueError(f"only {len(set(groups))} of the {len(smiles)} molecules could be embedded; "
                         f"{n_molecules} were asked for")
    atoms = [atoms[k] for k in keep]
    groups = [groups[k] for k in keep]
    kept = kept[:n_molecules]
    out = {}
    for name in ("xtb", "mmff"):
        energy, forces = label(atoms, name, cache)
        out[name] = Frames.from_atoms(atoms, energy, forces, groups, kept)
    return LabelledSplit(out["xtb"], out["mmff"])


def structures(frames: Frames, dtype: torch.dtype = torch.float32) -> Structures:
    """The :class:`Structures` (positions in ``dtype``) of padded frames."""
    s = unpack(torch.as_tensor(frames.obs(), dtype=torch.float32))
    if dtype != torch.float32:  # the padded observation is float32: take the positions from the frames
        s = s.with_pos(s.gather_atoms(torch.as_tensor(frames.pos))).to(dtype=dtype)
    return s


# --------------------------------------------------------------------------------------- radius refinement
def normalized_laplacian(adjacency: torch.Tensor, self_loops: bool = True) -> torch.Tensor:
    """``I − D^{-1/2} Ã D^{-1/2}`` of (a batch of) adjacency matrices ``[..., n, n]``, ``Ã = A + I`` with
    ``self_loops`` (the paper's choice) or ``A``; an isolated node without self-loop gets ``D^{-1/2} = 0``."""
    if adjacency.shape[-1] != adjacency.shape[-2]:
        raise ValueError(f"adjacency must be square, got shape {tuple(adjacency.shape)}")
    a = adjacency.to(torch.float64)
    n = a.shape[-1]
    eye = torch.eye(n, dtype=a.dtype)
    if self_loops:
        a = a + eye
    deg = a.sum(-1)
    inv = torch.where(deg > 0, deg.clamp_min(1e-300).rsqrt(), torch.zeros_like(deg))
    return eye - inv.unsqueeze(-1) * a * inv.unsqueeze(-2)


def adjacency(s: Structures, radius: float) -> torch.Tensor:
    """Padded adjacency ``[B, A, A]`` (``A`` = ``s.max_atoms``) of the radius-``radius`` graph of ``s``
    (:func:`rl_energy.atoms.graph.radius_graph`; periodic images add up)."""
    edges = radius_graph(s, radius)
    slot = s.index - s.graph * s.max_atoms
    adj = torch.zeros(s.n_graphs, s.max_atoms, s.max_atoms, dtype=torch.float64)
    adj.index_put_((s.graph[edges.dst], slot[edges.dst], slot[edges.src]),
                   torch.ones(len(edges), dtype=torch.float64), accumulate=True)
    return adj


def laplacian_spectra(s: Structures, radius: float, length: int | None = None) -> torch.Tensor:
    """Sorted (descending) eigenvalues of each structure's self-looped normalised Laplacian at ``radius``,
    zero-padded to ``length`` (default ``s.max_atoms``) ``[B, length]`` (module docstring)."""
    length = s.max_atoms if length is None else int(length)
    if length < int(s.n_atoms.max()):
        raise ValueError(f"length={length} is shorter than the largest structure ({int(s.n_atoms.max())} atoms)")
    eig = torch.linalg.eigvalsh(normalized_laplacian(adjacency(s, radius)))
    eig = eig.clamp_min(0.0).sort(dim=-1, descending=True).values
    out = torch.zeros(s.n_graphs, length, dtype=torch.float64)
    k = min(length, eig.shape[-1])
    out[:, :k] = eig[:, :k]
    return out


def _pad(x: torch.Tensor, length: int) -> torch.Tensor:
    return torch.nn.functional.pad(x, (0, length - x.shape[-1])) if x.shape[-1] < length else x


class RadiusRefinement:
    """Label-free test-time choice of the graph radius (module docstring, paper §"radius refinement").

    ``train``: the training structures; ``train_radius``: the radius the model was trained at; ``radii``: the grid
    (:data:`DEFAULT_RADII`); ``padding``: how spectra of different sizes are compared (:meth:`spectra`;
    ``length``: the number of quantiles of the ``"quantile"`` variant)."""

    def __init__(self, train: Structures, train_radius: float, radii: Sequence[float] = DEFAULT_RADII,
                 padding: str = "zeros", length: int = 64) -> None:
        if padding not in PADDINGS:
            raise ValueError(f"padding must be one of {PADDINGS}, got {padding!r}")
        if not (isinstance(length, int) and length >= 2):
            raise ValueError(f"length must be an int >= 2, got {length!r}")
        self.padding = padding
        self.length = length
        radii = [float(r) for r in radii]
        if not radii or any(not (math.isfinite(r) and r > 0) for r in radii):
            raise ValueError(f"radii must be a non-empty list of positive numbers, got {radii!r}")
        if not (math.isfinite(train_radius) and train_radius > 0):
            raise ValueError(f"train_radius must be a positive number of Å, got {train_radius!r}")
        self.radii = sorted(radii)
        self.train_radius = float(train_radius)
        self.mean_spectrum = self.spectra(train, self.train_radius).mean(0)

    def spectra(self, s: Structures, radius: float) -> torch.Tensor:
        """The compared spectra ``[B, L]``: zero-padded (``padding="zeros"``, the paper's) or, with
        ``padding="quantile"``, each structure's own ascending spectrum resampled (linear interpolation) at
        ``length`` evenly spaced quantiles, a size-free variant of ours."""
        if self.padding == "zeros":
            return laplacian_spectra(s, radius)
        eig = laplacian_spectra(s, radius).flip(-1)  # ascending, the padding zeros first
        out = torch.empty(s.n_graphs, self.length, dtype=torch.float64)
        q = np.linspace(0.0, 1.0, self.length)
        for b, n in enumerate(s.n_atoms.tolist()):
            own = eig[b, eig.shape[-1] - n:].numpy()
            out[b] = torch.as_tensor(np.interp(q, np.linspace(0.0, 1.0, n), own))
        return out

    def distances(self, s: Structures) -> torch.Tensor:
        """``d(r) = ‖sort(eig L_r) − λ̄‖²`` ``[B, len(radii)]`` (zero padding: both padded to the longer length)."""
        length = max(s.max_atoms, len(self.mean_spectrum)) if self.padding == "zeros" else self.length
        ref = _pad(self.mean_spectrum, length)
        return torch.stack([(_pad(self.spectra(s, r), length) - ref).pow(2).sum(-1) for r in self.radii], -1)

    def select(self, s: Structures) -> torch.Tensor:
        """``r*`` of each structure ``[B]`` (ties go to the smaller radius)."""
        return torch.tensor(self.radii, dtype=torch.float64)[self.distances(s).argmin(-1)]


def refined_edges(s: Structures, radius: torch.Tensor | float) -> Edges:
    """The radius graph of ``s`` with structure ``b``'s edges cut at ``radius[b]`` (a float: one radius)."""
    radius = torch.as_tensor(radius, dtype=torch.float64).reshape(-1)
    if radius.numel() == 1:
        radius = radius.expand(s.n_graphs)
    if radius.numel() != s.n_graphs or not bool((radius > 0).all()):
        raise ValueError(f"radius must be one positive number or one per structure ({s.n_graphs}), "
                         f"got {radius.numel()} values")
    edges = radius_graph(s, float(radius.max()))
    d = edge_vectors(s, edges).detach().norm(dim=-1).double()
    keep = d < radius[s.graph[edges.dst]]
    return Edges(edges.dst[keep], edges.src[keep], edges.shift[keep])


# ---------------------------------------------------------------------------------------- the two-head model
class TwoHeadSchNet(SchNet):
    """SchNet's representation (``embed``, ``filters``/``into``/``out`` interaction blocks) with two per-atom energy
    heads: ``head`` (the QM head, normalised by ``atom_ref``/``scale``) and ``prior_head`` (normalised by
    ``prior_ref``/``prior_scale``). ``cutoff`` is the envelope cutoff of the radial basis, ``graph_radius`` the
    radius of the graph built when :meth:`forward` gets no edges (module docstring)."""

    def __init__(self, width: int = 64, n_layers: int = 3, n_rbf: int = 32, cutoff: float = 8.0,
                 graph_radius: float = 5.0) -> None:
        super().__init__(width=width, n_layers=n_layers, n_rbf=n_rbf, cutoff=cutoff)
        if not (math.isfinite(graph_radius) and 0 < graph_radius <= cutoff):
            raise ConfigError(f"graph_radius must be in (0, cutoff={cutoff}], got {graph_radius!r}")
        self.graph_radius = float(graph_radius)
        self.prior_head = nn.Sequential(nn.Linear(width, width // 2), nn.Softplus(), nn.Linear(width // 2, 1))
        self.register_buffer("prior_ref", torch.zeros_like(self.atom_ref))
        self.register_buffer("prior_scale", torch.ones(()))

    def forward(self, s: Structures, edges: Edges | None = None, head: str = "qm"
                ) -> tuple[torch.Tensor, torch.Tensor]:
        """``(E [B] eV, F [N, 3] eV/Å)`` of ``head`` (``"qm"`` or ``"prior"``), ``F = −∂E/∂r``."""
        return self.heads(s, edges, (head,))[head]

    def heads(self, s: Structures, edges: Edges | None = None, heads: Sequence[str] = HEADS
              ) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        """``{head: (E, F)}`` of several heads on one pass of the representation."""
        for head in heads:
            if head not in HEADS:
                raise ValueError(f"head must be one of {HEADS}, got {head!r}")
        edges = radius_graph(s, self.graph_radius) if edges is None else edges
        pos = s.pos if s.pos.requires_grad else s.pos.detach().requires_grad_(True)
        s = s.with_pos(pos)
        out = {}
        with torch.enable_grad():
            x = self.representation(s, edges, edge_vectors(s, edges))
            for k, head in enumerate(heads):
                mlp, ref, scale = ((self.head, self.atom_ref, self.scale) if head == "qm"
                                   else (self.prior_head, self.prior_ref, self.prior_scale))
                eps = mlp(x).squeeze(-1)
                energy = scale * s.sum_atoms(eps) + s.sum_atoms(ref[s.z].to(eps))
                (grad,) = torch.autograd.grad(energy.sum(), pos, create_graph=self.training,
                                              retain_graph=self.training or k < len(heads) - 1)
                out[head] = (energy, -grad)
        return out

    @torch.no_grad()
    def fit_head_normalisation(self, frames: Frames, head: str) -> None:
        """Per-element references and scale of ``head`` from labelled ``frames``
        (:meth:`AtomisticModel.fit_normalisation`)."""
        tmp = AtomisticModel(self.cutoff)
        tmp.fit_normalisation(torch.as_tensor(frames.z), torch.as_tensor(frames.energy),
                              torch.as_tensor(frames.forces), torch.as_tensor(frames.free))
        ref, scale = (self.atom_ref, self.scale) if head == "qm" else (self.prior_ref, self.prior_scale)
        ref.copy_(tmp.atom_ref)
        scale.copy_(tmp.scale)

    def blocks(self) -> list[list[nn.Parameter]]:
        """Parameters of the representation, earliest first: the embedding, then each interaction block."""
        out = [list(self.embed.parameters())]
        for filt, into, out_ in zip(self.filters, self.into, self.out, strict=True):
            out.append([*filt.parameters(), *into.parameters(), *out_.parameters()])
        return out

    def adaptable(self, frozen_blocks: int = 1, freeze_embedding: bool = True) -> list[nn.Parameter]:
        """The representation parameters TTT updates: every interaction block after the first ``frozen_blocks``,
        and the embedding unless ``freeze_embedding``."""
        n = len(self.filters)
        if not (isinstance(frozen_blocks, int) and 0 <= frozen_blocks < n):
            raise ValueError(f"frozen_blocks must be an int in [0, {n - 1}] (n_layers={n}), got {frozen_blocks!r}")
        blocks = self.blocks()
        params = [] if freeze_embedding else list(blocks[0])
        for b in blocks[1 + frozen_blocks:]:
            params += b
        return params


# ------------------------------------------------------------------------------------------------- training
def _batches(n: int, batch: int, rng: np.random.Generator) -> Iterator[np.ndarray]:
    order = rng.permutation(n)
    for k in range(0, n, batch):
        yield order[k:k + batch]


def _dtype(model: nn.Module) -> torch.dtype:
    return next(model.parameters()).dtype


def _tensors(frames: Frames, dtype: torch.dtype = torch.float32) -> tuple[Structures, torch.Tensor, torch.Tensor]:
    s = structures(frames, dtype)
    return s, torch.as_tensor(frames.energy, dtype=dtype), s.gather_atoms(torch.as_tensor(frames.forces, dtype=dtype))


def head_losses(model: TwoHeadSchNet, s: Structures, labels: dict[str, tuple[torch.Tensor, torch.Tensor]],
                energy_weight: float = 0.1, edges: Edges | None = None) -> torch.Tensor:
    """Training loss summed over the heads of ``labels`` (``{head: (E [B], F [N, 3])}``), each in its normalised
    units: ``(ρ·mean|ΔE|/n_atoms + mean|ΔF|) / scale``; one pass of the representation."""
    preds = model.heads(s, edges, tuple(labels))
    total = 0.0
    for head, (energy, forces) in labels.items():
        e, f = preds[head]
        scale = model.scale if head == "qm" else model.prior_scale
        de = ((e - energy).abs() / s.n_atoms.to(e)).mean()
        total = total + (energy_weight * de + (f - forces).abs().mean()) / scale
    return total


def _fit(model: TwoHeadSchNet, terms: dict[str, Frames], params: list[nn.Parameter], epochs: int, lr: float,
         batch: int, seed: int) -> list[float]:
    """Adam (gradient norm clipped at 10) with a cosine schedule on :func:`head_losses` of ``{head: frames}``
    (the frames of every head share their configurations); the mean loss of each epoch."""
    if epochs < 1 or batch < 1 or not lr > 0:
        raise ValueError(f"epochs and batch must be >= 1 and lr > 0, got {epochs}, {batch}, {lr}")
    rng = np.random.default_rng(seed)
    dtype = _dtype(model)
    data = {head: _tensors(f, dtype) for head, f in terms.items()}
    s = next(iter(data.values()))[0]
    n = s.n_graphs
    opt = torch.optim.Adam(params, lr=lr)
    steps = epochs * math.ceil(n / batch)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda k: cosine_factor(k, steps))
    model.train()
    history = []
    for _ in range(epochs):
        total = 0.0
        for idx in _batches(n, batch, rng):
            atoms = _atom_index(s, idx)
            loss = head_losses(model, _subset(s, idx), {h: (e[idx], f[atoms]) for h, (_, e, f) in data.items()})
            opt.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 10.0)
            opt.step()
            sched.step()
            total += float(loss.detach()) * len(idx)
        history.append(total / n)
    model.eval()
    return history


def _atom_index(s: Structures, idx: np.ndarray) -> torch.Tensor:
    """The atoms of structures ``idx`` of ``s``, structure by structure (``s.graph`` is sorted)."""
    counts = s.n_atoms
    ptr = torch.cumsum(counts, 0) - counts
    return torch.cat([torch.arange(int(ptr[b]), int(ptr[b] + counts[b])) for b in idx])


def _subset(s: Structures, idx: np.ndarray) -> Structures:
    """Structures ``idx`` of ``s`` (in that order) as a batch of their own."""
    atoms = _atom_index(s, idx)
    counts = s.n_atoms[torch.as_tensor(idx)]
    graph = torch.repeat_interleave(torch.arange(len(idx)), counts)
    slot = s.index[atoms] - s.graph[atoms] * s.max_atoms
    return Structures(z=s.z[atoms], pos=s.pos[atoms], graph=graph, cell=s.cell[torch.as_tensor(idx)],
                      pbc=s.pbc[torch.as_tensor(idx)], free=s.free[atoms], index=graph * s.max_atoms + slot,
                      n_graphs=len(idx), max_atoms=s.max_atoms)


def pretrain_prior(model: TwoHeadSchNet, prior: Frames, epochs: int = 20, lr: float = 1e-3, batch: int = 16,
                   seed: int = 0) -> list[float]:
    """Step 1: the representation plus the prior head on prior (MMFF94) labels; per-epoch losses."""
    model.fit_head_normalisation(prior, "prior")
    params = [p for b in model.blocks() for p in b] + list(model.prior_head.parameters())
    return _fit(model, {"prior": prior}, params, epochs, lr, batch, seed)


def finetune_qm(model: TwoHeadSchNet, data: LabelledSplit, epochs: int = 20, lr: float = 1e-3, batch: int = 16,
                mode: str = "joint", seed: int = 0) -> list[float]:
    """Step 2: the QM head on reference (GFN2-xTB) labels; ``mode="joint"`` trains the representation too, with
    the prior loss on the same frames kept, ``mode="head"`` the QM head alone; per-epoch losses."""
    if mode not in ("joint", "head"):
        raise ValueError(f"mode must be 'joint' or 'head', got {mode!r}")
    model.fit_head_normalisation(data.qm, "qm")
    if mode == "head":
        return _fit(model, {"qm": data.qm}, list(model.head.parameters()), epochs, lr, batch, seed)
    params = [p for b in model.blocks() for p in b] + list(model.head.parameters()) + list(
        model.prior_head.parameters())
    return _fit(model, {"qm": data.qm, "prior": data.prior}, params, epochs, lr, batch, seed)


@dataclass
class TTTConfig:
    """Test-time training (module docstring): ``steps`` SGD steps (``lr``, ``momentum``, ``weight_decay``) on
    ``|ΔE_centred| + force_weight · MAE_F`` (eV, eV/Å) of the prior head; the embedding (``freeze_embedding``) and
    the first ``frozen_blocks`` interaction blocks stay frozen."""

    steps: int = 20
    lr: float = 1e-4
    momentum: float = 0.9
    weight_decay: float = 1e-3
    force_weight: float = 1000.0
    frozen_blocks: int = 1
    freeze_embedding: bool = True

    def __post_init__(self) -> None:
        if not (isinstance(self.steps, int) and self.steps >= 0):
            raise ValueError(f"steps must be an int >= 0, got {self.steps!r}")
        for key in ("lr", "force_weight"):
            if not getattr(self, key) > 0:
                raise ValueError(f"{key} must be > 0, got {getattr(self, key)!r}")
        for key in ("momentum", "weight_decay"):
            if not getattr(self, key) >= 0:
                raise ValueError(f"{key} must be >= 0, got {getattr(self, key)!r}")


def prior_loss(model: TwoHeadSchNet, s: Structures, energy: torch.Tensor, forces: torch.Tensor,
               force_weight: float = 1000.0, edges: Edges | None = None) -> torch.Tensor:
    """The TTT loss of the prior head, the paper's ``mean|ΔE| + force_weight · mean|ΔF|`` (eV, eV/Å) divided by
    ``force_weight · prior_scale`` (so it reads as a force MAE in units of the prior's RMS force component, and the
    step size does not depend on the units), with both energies centred on their mean over the batch when it holds
    more than one structure (the frames of one molecule)."""
    e, f = model(s, edges, head="prior")
    if len(e) > 1:
        e, energy = e - e.mean(), energy - energy.mean()
    raw = (e - energy).abs().mean() + force_weight * (f - forces).abs().mean()
    return raw / (force_weight * model.prior_scale)


def test_time_train(model: TwoHeadSchNet, prior: Frames, config: TTTConfig | None = None,
                    edges: Edges | None = None) -> tuple[TwoHeadSchNet, list[float]]:
    """Step 3: an adapted copy of ``model`` after ``config.steps`` SGD steps on the prior loss of the structures
    ``prior`` (one test molecule's frames with their prior labels), and the loss before each step and after the
    last. ``model`` itself is not changed."""
    config = config or TTTConfig()
    adapted = copy.deepcopy(model)
    params = adapted.adaptable(config.frozen_blocks, config.freeze_embedding)
    for p in adapted.parameters():
        p.requires_grad_(False)
    for p in params:
        p.requires_grad_(True)
    s, e, f = _tensors(prior, _dtype(model))
    opt = torch.optim.SGD(params, lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay)
    adapted.train()  # keeps the graph of the forces for the parameter gradient (no dropout or batch norm)
    losses = []
    for _ in range(config.steps):
        loss = prior_loss(adapted, s, e, f, config.force_weight, edges)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    adapted.eval()
    losses.append(float(prior_loss(adapted, s, e, f, config.force_weight, edges).detach()))
    for p in adapted.parameters():
        p.requires_grad_(True)
    return adapted, losses


def force_errors(model: TwoHeadSchNet, frames: Frames, edges: Edges | None = None, head: str = "qm"
                 ) -> np.ndarray:
    """Absolute force-component errors (eV/Å) of ``head`` on ``frames``, flat over atoms and components."""
    s, _, f = _tensors(frames, _dtype(model))
    model.eval()
    _, pred = model(s, edges, head=head)
    return (pred.detach() - f).abs().reshape(-1).numpy()
