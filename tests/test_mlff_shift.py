"""Tests of :mod:`rl_energy.atoms.shift` (MLFF distribution shifts, digest §14): the normalised Laplacian and its
spectra, radius refinement, the two-head SchNet (conservative heads), test-time training and the split."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

pytest.importorskip("ase")
pytest.importorskip("rdkit")

from rl_energy.atoms import shift  # noqa: E402
from rl_energy.atoms.data import Frames  # noqa: E402
from rl_energy.atoms.graph import pack, radius_graph, unpack  # noqa: E402
from rl_energy.errors import ConfigError  # noqa: E402

torch.set_num_threads(1)


def _structures(positions: list[np.ndarray], numbers: list[np.ndarray], dtype: torch.dtype = torch.float64):
    a = max(len(z) for z in numbers)
    obs = np.stack([pack(z, p, max_atoms=a) for z, p in zip(numbers, positions, strict=True)])
    s = unpack(torch.as_tensor(obs))
    pos = torch.cat([torch.as_tensor(p, dtype=dtype) for p in positions])
    return s.with_pos(pos).to(dtype=dtype)


def _molecule(rng: np.random.Generator, n: int = 6, spread: float = 1.6) -> tuple[np.ndarray, np.ndarray]:
    """A random blob of ``n`` atoms (C, H, O) without close contacts."""
    while True:
        pos = rng.normal(0.0, spread, size=(n, 3))
        d = np.linalg.norm(pos[:, None] - pos[None], axis=-1) + 10 * np.eye(n)
        if d.min() > 0.9:
            return pos, rng.choice([1, 6, 8], size=n)


def _frames(rng: np.random.Generator, n_frames: int, n_atoms: int = 6) -> Frames:
    """Labelled frames of one synthetic molecule with a toy pair-potential label (prior) for TTT tests."""
    base, z = _molecule(rng, n_atoms)
    pos = np.stack([base + rng.normal(0, 0.05, base.shape) for _ in range(n_frames)])
    d = pos[:, :, None] - pos[:, None]
    r = np.linalg.norm(d, axis=-1) + np.eye(n_atoms)
    energy = (0.5 * np.where(np.eye(n_atoms) > 0, 0.0, (r - 1.5) ** 2)).sum((1, 2)) / 2
    forces = -np.where(np.eye(n_atoms)[None, :, :, None] > 0, 0.0, ((r - 1.5) / r)[..., None] * d).sum(2)
    return Frames(z=np.tile(z, (n_frames, 1)), pos=pos, cell=np.zeros((n_frames, 3, 3)),
                  pbc=np.zeros((n_frames, 3), bool), free=np.ones((n_frames, n_atoms), bool), energy=energy,
                  forces=forces, group=np.zeros(n_frames, np.int64))


# ------------------------------------------------------------------------------------------ Laplacian
def test_path_graph_normalised_laplacian_without_self_loops() -> None:
    n = 6
    adj = torch.zeros(n, n)
    for i in range(n - 1):
        adj[i, i + 1] = adj[i + 1, i] = 1
    eig = torch.linalg.eigvalsh(shift.normalized_laplacian(adj, self_loops=False))
    expected = torch.tensor([1 - math.cos(math.pi * k / (n - 1)) for k in range(n)], dtype=torch.float64)
    assert torch.allclose(eig.sort().values, expected.sort().values, atol=1e-10)


def test_complete_graph_with_self_loops_and_isolated_padding() -> None:
    n = 5
    adj = torch.ones(n, n) - torch.eye(n)
    eig = torch.linalg.eigvalsh(shift.normalized_laplacian(adj))  # Ã = J: L = I − J/n
    assert torch.allclose(eig, torch.tensor([0.0] + [1.0] * (n - 1), dtype=torch.float64), atol=1e-10)
    # without self-loops K_n has eigenvalues 0 and n/(n-1)
    eig_plain = torch.linalg.eigvalsh(shift.normalized_laplacian(adj, self_loops=False))
    assert torch.allclose(eig_plain[1:], torch.full((n - 1,), n / (n - 1), dtype=torch.float64), atol=1e-10)
    # an isolated self-looped node adds exactly one zero eigenvalue (why padding = zero padding)
    padded = torch.zeros(n + 2, n + 2)
    padded[:n, :n] = adj
    eig_pad = torch.linalg.eigvalsh(shift.normalized_laplacian(padded))
    assert torch.allclose(eig_pad, torch.tensor([0.0] * 3 + [1.0] * (n - 1), dtype=torch.float64), atol=1e-10)
    with pytest.raises(ValueError, match="square"):
        shift.normalized_laplacian(torch.zeros(2, 3))


def test_spectra_of_a_chain_follow_the_radius() -> None:
    # 4 atoms on a line 1.5 Å apart: radius 2 gives the path P4, radius 10 the complete graph
    pos = np.array([[1.5 * k, 0.0, 0.0] for k in range(4)])
    s = _structures([pos, pos[:2]], [np.array([6, 6, 6, 6]), np.array([6, 6])])
    full = shift.laplacian_spectra(s, 10.0, length=6)
    assert full.shape == (2, 6)
    assert torch.allclose(full[0], torch.tensor([1.0, 1.0, 1.0, 0, 0, 0], dtype=torch.float64), atol=1e-10)
    assert torch.allclose(full[1], torch.tensor([1.0, 0, 0, 0, 0, 0], dtype=torch.float64), atol=1e-10)
    path = shift.laplacian_spectra(s, 2.0)[0]
    adj = torch.zeros(4, 4)
    for i in range(3):
        adj[i, i + 1] = adj[i + 1, i] = 1
    ref = torch.linalg.eigvalsh(shift.normalized_laplacian(adj)).sort(descending=True).values
    assert torch.allclose(path, ref, atol=1e-10)
    assert not torch.allclose(path, full[0, :4])
    with pytest.raises(ValueError, match="length"):
        shift.laplacian_spectra(s, 2.0, length=3)


# ---------------------------------------------------------------------------------------- radius refinement
def test_radius_refinement_picks_the_training_radius_on_training_structures() -> None:
    rng = np.random.default_rng(0)
    mols = [_molecule(rng, n=8, spread=2.0) for _ in range(3)]
    s = _structures([m[0] for m in mols], [m[1] for m in mols])
    radii = (2.0, 3.0, 4.0, 5.0, 6.0)
    one = _structures([mols[0][0]], [mols[0][1]])
    rr = shift.RadiusRefinement(one, train_radius=4.0, radii=radii)
    assert float(rr.select(one)) == 4.0  # its own spectrum: d(r_train) = 0
    assert float(rr.distances(one)[0, radii.index(4.0)]) < 1e-20
    # a structure whose spectrum at 3 Å equals the training mean at 4 Å: scale the geometry by 3/4
    scaled = one.with_pos(one.pos * 0.75)
    assert float(rr.select(scaled)) == 3.0
    rr_q = shift.RadiusRefinement(one, train_radius=4.0, radii=radii, padding="quantile")
    assert float(rr_q.select(one)) == 4.0 and float(rr_q.select(scaled)) == 3.0
    with pytest.raises(ValueError, match="padding"):
        shift.RadiusRefinement(one, 4.0, padding="mean")
    rr_all = shift.RadiusRefinement(s, train_radius=4.0, radii=radii)
    assert rr_all.select(s).shape == (3,)
    for bad in ((), (0.0, 3.0), (float("nan"),)):
        with pytest.raises(ValueError, match="radii"):
            shift.RadiusRefinement(s, 4.0, radii=bad)
    with pytest.raises(ValueError, match="train_radius"):
        shift.RadiusRefinement(s, -1.0)


def test_refined_edges_cut_each_structure_at_its_own_radius() -> None:
    pos = np.array([[1.5 * k, 0.0, 0.0] for k in range(4)])
    s = _structures([pos, pos], [np.full(4, 6), np.full(4, 6)])
    edges = shift.refined_edges(s, torch.tensor([2.0, 10.0]))
    per = torch.bincount(s.graph[edges.dst], minlength=2)
    assert per.tolist() == [6, 12]  # P4 (3 bonds both ways) and K4
    assert len(shift.refined_edges(s, 2.0)) == len(radius_graph(s, 2.0))
    with pytest.raises(ValueError, match="radius"):
        shift.refined_edges(s, torch.tensor([2.0, 3.0, 4.0]))


# -------------------------------------------------------------------------------------- two-head model
def test_both_heads_are_conservative() -> None:
    torch.manual_seed(0)
    rng = np.random.default_rng(1)
    model = shift.TwoHeadSchNet(width=16, n_layers=2, n_rbf=8, cutoff=6.0, graph_radius=4.0).double()
    model.prior_ref.uniform_(-1, 1)
    model.scale.fill_(2.0)
    pos, z = _molecule(rng, 5)
    s = _structures([pos], [z])
    edges = radius_graph(s, 4.0)  # a fixed graph: no edge crosses the radius in the small steps below
    for head in shift.HEADS:
        e, f = model(s, edges, head=head)
        num = torch.zeros_like(f)
        h = 1e-5
        for i in range(len(pos)):
            for k in range(3):
                dp = torch.zeros_like(s.pos)
                dp[i, k] = h
                ep = model(s.with_pos(s.pos + dp), edges, head=head)[0]
                em = model(s.with_pos(s.pos - dp), edges, head=head)[0]
                num[i, k] = -(ep - em).sum() / (2 * h)
        assert torch.allclose(f, num, atol=1e-6), head
    e_qm, _ = model(s, edges, head="qm")
    e_prior, _ = model(s, edges, head="prior")
    assert not torch.allclose(e_qm, e_prior)  # two different heads
    both = model.heads(s, edges)
    assert torch.allclose(both["qm"][0], e_qm) and torch.allclose(both["prior"][1], model(s, edges, "prior")[1])
    with pytest.raises(ValueError, match="head"):
        model(s, head="dft")
    with pytest.raises(ConfigError, match="graph_radius"):
        shift.TwoHeadSchNet(cutoff=5.0, graph_radius=6.0)


def test_test_time_training_lowers_the_prior_loss_and_leaves_the_qm_head_alone() -> None:
    torch.manual_seed(0)
    rng = np.random.default_rng(2)
    frames = _frames(rng, 6)
    model = shift.TwoHeadSchNet(width=16, n_layers=3, n_rbf=8, cutoff=6.0, graph_radius=5.0)
    model.fit_head_normalisation(frames, "prior")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    config = shift.TTTConfig(steps=25, lr=0.1, force_weight=10.0)
    adapted, losses = shift.test_time_train(model, frames, config)
    assert len(losses) == 26
    assert losses[-1] < 0.9 * losses[0]
    after = adapted.state_dict()
    for k, v in before.items():  # the original model is untouched
        assert torch.equal(model.state_dict()[k], v), k
    frozen = ("head.", "prior_head.", "embed.", "filters.0.", "into.0.", "out.0.", "atom_ref", "scale", "prior_")
    for k, v in before.items():
        moved = not torch.equal(after[k], v)
        if k.startswith(frozen):
            assert not moved, f"{k} moved under TTT"
    assert not torch.equal(after["filters.2.0.weight"], before["filters.2.0.weight"])
    # the QM head's predictions change only through the representation
    s = shift.structures(frames)
    assert not torch.allclose(adapted(s)[1], model(s)[1])
    for bad in ({"steps": -1}, {"lr": 0.0}, {"momentum": -0.1}, {"force_weight": -1.0}):
        with pytest.raises(ValueError, match=next(iter(bad))):
            shift.TTTConfig(**bad)
    with pytest.raises(ValueError, match="frozen_blocks"):
        model.adaptable(frozen_blocks=3)


def test_training_steps_lower_the_losses() -> None:
    torch.manual_seed(0)
    rng = np.random.default_rng(3)
    frames = _frames(rng, 16)
    model = shift.TwoHeadSchNet(width=16, n_layers=2, n_rbf=8, cutoff=6.0, graph_radius=5.0)
    hist = shift.pretrain_prior(model, frames, epochs=8, lr=3e-3, batch=8)
    assert hist[-1] < hist[0]
    noisy = Frames(frames.z, frames.pos, frames.cell, frames.pbc, frames.free, 2 * frames.energy, 2 * frames.forces,
                   frames.group)
    head_before = [p.clone() for p in model.prior_head.parameters()]
    hist = shift.finetune_qm(model, shift.LabelledSplit(noisy, frames), epochs=6, lr=3e-3, batch=8, mode="head")
    assert hist[-1] < hist[0]
    assert all(torch.equal(a, b) for a, b in zip(head_before, model.prior_head.parameters(), strict=True))
    with pytest.raises(ValueError, match="mode"):
        shift.finetune_qm(model, shift.LabelledSplit(noisy, frames), mode="all")


def test_shift_split_is_label_free_disjoint_and_deterministic() -> None:
    a = shift.shift_smiles(10, 4, seed=0)
    b = shift.shift_smiles(10, 4, seed=0)
    assert a == b
    assert set(a) == set(shift.SPLITS)
    assert not set(a["train"]) & set(a["id"])
    from rdkit import Chem

    for name, pool in a.items():
        for smi in pool:
            mol = Chem.MolFromSmiles(smi)
            elements = {x.GetSymbol() for x in mol.GetAtoms()}
            heavy = mol.GetNumHeavyAtoms()
            if name in ("train", "id"):
                assert elements <= set(shift.CHNO) and 6 <= heavy <= 10
            elif name == "shift_size":
                assert elements <= set(shift.CHNO) and heavy >= 11
            else:
                assert elements & set(shift.SHIFT_ELEMENTS) and heavy >= 11
    with pytest.raises(ValueError, match="n_train"):
        shift.shift_smiles(0, 4)
    with pytest.raises(ValueError, match="shift_heavy"):
        shift.shift_smiles(10, 4, train_heavy=(6, 12), shift_heavy=(11, 16))
