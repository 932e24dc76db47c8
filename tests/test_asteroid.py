"""ASTEROID (digest §15): bias weights, sliced score matching, and the four-arm pipeline end to end."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from rl_energy.atoms import asteroid as A
from rl_energy.atoms.graph import Structures, pack, unpack
from rl_energy.atoms.models import AtomisticModel, SchNet
from rl_energy.errors import ConfigError

torch.set_num_threads(1)


def structures(z: np.ndarray, pos: np.ndarray) -> Structures:
    """A float64 batch of molecules ``z [A]`` at positions ``pos [B, A, 3]``."""
    obs = np.stack([pack(z, p) for p in pos])
    s = unpack(torch.as_tensor(obs))
    return s.with_pos(torch.as_tensor(pos, dtype=torch.float64).reshape(-1, 3))


# ----------------------------------------------------------------------------------------- weights
def test_bias_weights_monotone_mean_one_and_uniform_limit() -> None:
    rng = np.random.default_rng(0)
    cheap = rng.normal(size=(6, 4, 3))
    errors = np.array([0.0, 0.1, 0.3, 0.05, 0.7, 0.2])
    teacher = cheap + errors[:, None, None] * np.sign(rng.normal(size=cheap.shape))
    w = A.bias_weights(teacher, cheap, gamma=0.2)
    assert w.mean() == pytest.approx(1.0)
    order = np.argsort(errors)
    assert np.all(np.diff(w[order]) < 0)  # strictly decreasing in e_i
    assert w[1] / w[0] == pytest.approx(math.exp(-0.1 / 0.2))
    for gamma in (1e9, math.inf):
        assert np.allclose(A.bias_weights(teacher, cheap, gamma=gamma), 1.0)
    # padded atoms do not count: a huge error on a masked-out atom changes nothing
    mask = np.ones((6, 4), dtype=bool)
    mask[:, 3] = False
    teacher_pad = teacher.copy()
    teacher_pad[:, 3] += rng.uniform(0, 100, size=(6, 1))
    assert np.allclose(A.bias_weights(teacher_pad, cheap, mask, 0.2), A.bias_weights(teacher, cheap, mask, 0.2))
    assert not np.allclose(A.bias_weights(teacher_pad, cheap, None, 0.2), A.bias_weights(teacher, cheap, None, 0.2))


def test_bias_weights_bad_arguments() -> None:
    f = np.zeros((3, 2, 3))
    with pytest.raises(ValueError, match="teacher_forces and cheap_forces"):
        A.bias_weights(f, np.zeros((3, 3, 3)))
    with pytest.raises(ValueError, match="gamma"):
        A.bias_weights(f, f, gamma=0.0)
    with pytest.raises(ValueError, match="mask"):
        A.bias_weights(f, f, np.ones((3, 3), dtype=bool))
    with pytest.raises(ValueError, match="no atom in mask"):
        A.bias_weights(f, f, np.zeros((3, 2), dtype=bool))


# --------------------------------------------------------------------------------- score matching
def water_batch(n: int, seed: int) -> Structures:
    rng = np.random.default_rng(seed)
    base = np.array([[0.0, 0.0, 0.0], [0.96, 0.0, 0.0], [-0.24, 0.93, 0.0]])
    return structures(np.array([8, 1, 1]), base + rng.normal(0, 0.05, size=(n, 3, 3)))


def test_sliced_divergence_matches_exact_jacobian() -> None:
    torch.manual_seed(0)
    model = SchNet(width=8, n_layers=2, n_rbf=6, cutoff=4.0).double()
    s = water_batch(1, 0)
    # the full Jacobian dF/dr, column by column
    pos = s.pos.detach().clone().requires_grad_(True)
    model.train()
    _, forces = model(s.with_pos(pos))
    jac = torch.stack([torch.autograd.grad(forces.reshape(-1)[k], pos, retain_graph=True)[0].reshape(-1)
                       for k in range(9)])
    assert A.exact_divergence(model, s).item() == pytest.approx(jac.trace().item(), rel=1e-10)
    gen = torch.Generator().manual_seed(1)
    for _ in range(3):  # each slice is exactly vᵀ J v
        v = torch.randn(3, 3, generator=gen, dtype=torch.float64)
        assert A.sliced_divergence(model, s, v).item() == pytest.approx(float(v.reshape(-1) @ jac @ v.reshape(-1)),
                                                                        rel=1e-8, abs=1e-12)
    # and its mean over many v is the divergence (Hutchinson): 2,000 copies of the molecule, one v each
    big = structures(np.array([8, 1, 1]), np.repeat(s.pos.detach().numpy()[None], 2000, 0))
    est = A.sliced_divergence(model, big, torch.randn(big.pos.shape, generator=gen, dtype=torch.float64))
    se = est.std().item() / math.sqrt(len(est))
    assert abs(est.mean().item() - jac.trace().item()) < 4 * se
    assert se < 0.2 * abs(jac.trace().item())  # the check has teeth


class Harmonic(AtomisticModel):
    """``E = ½ c k Σ|r_i|²``: the Boltzmann density at T is Gaussian with score ``−k r/(k_B T)`` when c = 1."""

    def __init__(self, c: float, k: float) -> None:
        super().__init__(cutoff=1.0)
        self.c = torch.nn.Parameter(torch.tensor(float(c), dtype=torch.float64))
        self.k = k

    def atom_outputs(self, s, edges, vec):  # noqa: ANN001, ANN201
        return 0.5 * self.c * self.k * s.pos.square().sum(-1), None


def test_score_matching_is_minimised_by_the_true_score() -> None:
    k, temperature = 10.0, 500.0
    kt = A.K_B * temperature
    rng = np.random.default_rng(0)
    n, atoms = 2000, 3
    s = structures(np.ones(atoms, dtype=np.int64), rng.normal(0, math.sqrt(kt / k), size=(n, atoms, 3)))
    values = {}
    for c in (0.5, 1.0, 2.0):
        gen = torch.Generator().manual_seed(0)  # common random numbers across c
        values[c] = A.score_matching_loss(Harmonic(c, k).double(), s, temperature, 2, gen, per_structure=True)
        values[c] = values[c].mean().item()
    d = 3 * atoms
    # E[½|F|² + kT vᵀ∇(vᵀF)] = k d kT (½c² − c): −0.375, −0.5, 0 in units of k d kT
    for c, value in values.items():
        assert value / (k * d * kt) == pytest.approx(0.5 * c * c - c, abs=0.04)
    assert min(values, key=values.get) == 1.0
    # gradient descent on c from 0.3 finds the true score
    model = Harmonic(0.3, k).double()
    opt = torch.optim.Adam(model.parameters(), lr=0.06)
    gen = torch.Generator().manual_seed(2)
    sub = structures(np.ones(atoms, dtype=np.int64), rng.normal(0, math.sqrt(kt / k), size=(300, atoms, 3)))
    for _ in range(100):
        loss = A.score_matching_loss(model, sub, temperature, 1, gen)
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert model.c.item() == pytest.approx(1.0, abs=0.08)


def test_score_matching_bad_arguments() -> None:
    model = SchNet(width=4, n_layers=1, n_rbf=4, cutoff=3.0).double()
    s = water_batch(2, 0)
    with pytest.raises(ValueError, match="temperature"):
        A.score_matching_loss(model, s, temperature=0.0)
    with pytest.raises(ValueError, match="n_slices"):
        A.score_matching_loss(model, s, n_slices=0)
    with pytest.raises(ValueError, match="v must have the shape"):
        A.sliced_divergence(model, s, torch.zeros(2, 3))


# ----------------------------------------------------------------------------------------- pipeline
@pytest.fixture(scope="module")
def tiny_data() -> dict:
    """Ethanol: 24 MMFF frames (MMFF MD), 8 xTB training frames and 6 xTB test frames (xTB MD), short MD."""
    smi = A.MOLECULES["ethanol"]
    return {"cheap": A.md_frames(smi, "mmff", "mmff", 24, 0, every=2),
            "accurate": A.md_frames(smi, "xtb", "xtb", 8, 1, every=2),
            "test": A.md_frames(smi, "xtb", "xtb", 6, 2, every=2)}


def test_pipeline_runs_every_arm(tiny_data: dict) -> None:
    cfg = A.AsteroidConfig(width=8, n_layers=1, n_rbf=6, pretrain_steps=3, finetune_steps=3, score_steps=3,
                           batch_size=4)
    out = A.run_molecule(tiny_data["cheap"], tiny_data["accurate"], tiny_data["test"], cfg, seed=0)
    for arm in A.ARMS:
        assert math.isfinite(out[arm]) and out[arm] > 0
    lo, hi = out["weights"]
    assert lo <= 1.0 <= hi and 0 < out["weight_ess"] <= 1
    one = A.run_arm("score", tiny_data["cheap"], tiny_data["accurate"], tiny_data["test"], cfg, seed=0)
    assert one == pytest.approx(out["score"], rel=1e-5)  # same seed, same arm: the same run
    # several budgets: the pre-training is shared, each budget gets its own fine-tune and accurate-only model
    acc = tiny_data["accurate"]
    multi = A.run_molecule(tiny_data["cheap"], {4: acc.subset(range(4)), 8: acc}, tiny_data["test"], cfg, 0,
                           ("accurate", "pretrain"))
    assert sorted(multi) == [4, 8]
    assert all(math.isfinite(multi[b][a]) for b in (4, 8) for a in ("accurate", "pretrain"))
    assert multi[4]["pretrain_cheap_mae"] == multi[8]["pretrain_cheap_mae"]
    assert multi[4]["pretrain"] != multi[8]["pretrain"] and "weighted" not in multi[4]


def test_supervised_training_lowers_the_force_error(tiny_data: dict) -> None:
    cfg = A.AsteroidConfig(width=16, n_layers=2, lr=5e-3)
    acc = tiny_data["accurate"]
    agent = A.make_agent(acc, cfg, seed=0)
    agent.observe_train_split(A.batch_of(acc))
    before = A.force_mae(agent, acc)
    A.train_supervised(agent, acc, 200, 8, np.random.default_rng(0))
    assert A.force_mae(agent, acc) < 0.7 * before


def test_pipeline_bad_arguments(tiny_data: dict) -> None:
    cheap, acc, test = tiny_data["cheap"], tiny_data["accurate"], tiny_data["test"]
    with pytest.raises(ValueError, match="unknown arm"):
        A.run_arm("nope", cheap, acc, test)
    with pytest.raises(ValueError, match="unknown arm"):
        A.run_molecule(cheap, acc, test, A.AsteroidConfig(), 0, ("accurate", "bogus"))
    with pytest.raises(ConfigError, match="rho"):
        A.run_molecule(cheap, acc, test, A.AsteroidConfig(rho=1.5), 0)
    with pytest.raises(ConfigError, match="pretrain_steps"):
        A.AsteroidConfig(pretrain_steps=0).validate()
    with pytest.raises(ValueError, match="share max_atoms"):
        A.run_molecule(cheap, acc.padded_to(12), test, A.AsteroidConfig(), 0)
    with pytest.raises(ValueError, match="weight has"):
        A.batch_of(acc, np.ones(3))
