"""GOLF (digest §16): the ConformerRelax env, batched L-BFGS, the NNP policy, the metrics and the collection loop."""

from __future__ import annotations

import math

import gymnasium as gym
import numpy as np
import pytest
import torch

pytest.importorskip("rdkit")
pytest.importorskip("ase")
pytest.importorskip("tblite")

import rl_energy  # noqa: E402,F401 - registers the envs
from rl_energy.atoms.golf import (  # noqa: E402
    BatchLBFGS,
    CountingLabeller,
    LabelledPool,
    NNPOptimizerPolicy,
    golf_train,
    min_pair_distance,
    optimization_metrics,
    separate_close_atoms,
)
from rl_energy.atoms.graph import pack  # noqa: E402
from rl_energy.atoms.labellers import KCAL_PER_MOL, make_labeller  # noqa: E402
from rl_energy.atoms.models import SchNet  # noqa: E402
from rl_energy.envs.conformer_relax import ConformerRelaxEnv  # noqa: E402
from rl_energy.errors import ConfigError  # noqa: E402

SMILES = ["CCO", "CC(=O)N"]
MAX_ATOMS = 12


@pytest.fixture(scope="module")
def env() -> ConformerRelaxEnv:
    return ConformerRelaxEnv(smiles=SMILES, max_atoms=MAX_ATOMS)


def _mmff_kcal(atoms) -> tuple[float, np.ndarray]:
    e, f = make_labeller("mmff").energy_forces(atoms)
    return e / KCAL_PER_MOL, f / KCAL_PER_MOL


def test_reward_is_the_surrogate_energy_drop(env: ConformerRelaxEnv) -> None:
    obs, info = env.reset(seed=0)
    e0, forces = _mmff_kcal(info["atoms"])
    assert info["energy"] == pytest.approx(e0, rel=1e-9)
    n = info["n_atoms"]
    assert np.allclose(obs[: 5 * n].reshape(n, 5)[:, 1:4], info["atoms"].positions, atol=1e-5)
    action = np.zeros(3 * MAX_ATOMS, dtype=np.float32)
    step = 0.005 * forces / np.abs(forces).max()  # a small step downhill (≤ 0.005 Å a coordinate)
    action[: 3 * n] = step.reshape(-1)
    action[3 * n:] = 0.5  # padding rows are ignored
    _, reward, terminated, truncated, info1 = env.step(action)
    e1, _ = _mmff_kcal(info1["atoms"])
    assert reward == pytest.approx(e0 - e1, abs=1e-6)
    assert reward > 0 and not terminated and not truncated
    assert np.allclose(info1["atoms"].positions, info["atoms"].positions + step.astype(np.float32),
                       atol=1e-6)


def test_terminates_at_the_first_negative_reward(env: ConformerRelaxEnv) -> None:
    _, info = env.reset(seed=1)
    n = info["n_atoms"]
    _, forces = _mmff_kcal(info["atoms"])
    up = np.zeros(3 * MAX_ATOMS, dtype=np.float32)
    up[: 3 * n] = (-0.01 * forces / np.abs(forces).max()).reshape(-1)  # uphill
    _, reward, terminated, _, _ = env.step(up)
    assert reward < 0 and terminated


def test_zero_step_is_not_negative_and_the_horizon_truncates() -> None:
    env = gym.make("rl_energy/ConformerRelax-v0", smiles=SMILES, max_atoms=MAX_ATOMS, max_episode_steps=2)
    env.reset(seed=0)
    zero = np.zeros(3 * MAX_ATOMS, dtype=np.float32)
    _, r1, term1, trunc1, _ = env.step(zero)
    _, r2, term2, trunc2, _ = env.step(zero)
    assert r1 == 0.0 and r2 == 0.0 and not term1 and not term2
    assert not trunc1 and trunc2


def test_close_atoms_are_separated(env: ConformerRelaxEnv) -> None:
    _, info = env.reset(seed=2)
    pos = info["atoms"].positions
    action = np.zeros((MAX_ATOMS, 3), dtype=np.float32)
    action[1] = (pos[0] - pos[1]) * 0.98  # atom 1 almost onto atom 0
    _, _, _, _, info1 = env.step(action.reshape(-1))
    assert min_pair_distance(info1["atoms"].positions) >= 0.7 - 1e-6
    # the helper alone: two coincident-ish atoms and a third far away
    out = separate_close_atoms(np.array([[0.0, 0, 0], [0.1, 0, 0], [5.0, 0, 0]]))
    assert np.linalg.norm(out[1] - out[0]) == pytest.approx(0.7)
    assert np.allclose(out.mean(0)[1:], 0.0) and np.allclose(out[2], [5.0, 0, 0])


def test_check_env() -> None:
    from gymnasium.utils.env_checker import check_env

    check_env(ConformerRelaxEnv(smiles=SMILES, max_atoms=MAX_ATOMS), skip_render_check=True)


@pytest.mark.parametrize("key,value", [("max_atoms", 1), ("perturbation", "shake"), ("rattle_std", -0.1),
                                       ("min_distance", float("nan")), ("max_displacement", 0), ("smiles", "CCO"),
                                       ("n_molecules", True), ("surrogate", "xtb"), ("md_steps", 0)])
def test_bad_kwargs_name_the_key(key: str, value) -> None:
    kwargs = {"smiles": SMILES, key: value}
    with pytest.raises(ConfigError, match=f"env_kwargs.{key}"):
        ConformerRelaxEnv(**kwargs)


def test_max_atoms_too_small_for_a_molecule() -> None:
    env = ConformerRelaxEnv(smiles=["CCCCCC"], max_atoms=12)  # hexane has 20 atoms
    with pytest.raises(ConfigError, match="env_kwargs.max_atoms"):
        env.reset(seed=0)


def test_metrics_on_hand_made_numbers() -> None:
    e0 = np.array([10.0, 10.0, 10.0, 10.0])
    e_opt = np.array([0.0, 0.0, 0.0, 0.0])
    e_t = np.array([0.5, 5.0, 12.0, np.nan])  # success, halfway, diverged (up), diverged (non-finite)
    m = optimization_metrics(e0, e_t, e_opt)
    assert m["pct"] == pytest.approx((95.0 + 50.0) / 2)
    assert m["pct_std"] == pytest.approx(22.5)
    assert m["pct_div"] == pytest.approx(50.0)
    assert m["e_res"] == pytest.approx((0.5 + 5.0) / 2)
    assert m["pct_success"] == pytest.approx(25.0)
    # an optimiser that finds a lower minimum than the reference has pct > 100 and is a success
    m = optimization_metrics([4.0], [-1.0], [0.0])
    assert m["pct"] == pytest.approx(125.0) and m["pct_success"] == 100.0 and m["pct_div"] == 0.0
    with pytest.raises(ValueError):
        optimization_metrics([1.0], [1.0, 2.0], [0.0])


def test_lbfgs_solves_batched_quadratics_and_reset_forgets() -> None:
    gen = torch.Generator().manual_seed(0)
    dim, batch = 6, 3
    mats = []
    for _ in range(batch):
        q = torch.linalg.qr(torch.randn(dim, dim, generator=gen, dtype=torch.float64))[0]
        mats.append(q @ torch.diag(torch.linspace(0.5, 5.0, dim, dtype=torch.float64)) @ q.T)
    a = torch.stack(mats)
    center = torch.randn(batch, dim, generator=gen, dtype=torch.float64)

    def grad(x: torch.Tensor) -> torch.Tensor:
        return torch.einsum("bij,bj->bi", a, x - center)

    opt = BatchLBFGS(batch, dim, history=10, lr=1.0, max_step=None)
    x = torch.zeros(batch, dim, dtype=torch.float64)
    for _ in range(25):
        x = opt.step(x, grad(x))
    assert torch.allclose(x, center, atol=1e-6)
    # the first step of a fresh history is torch.optim.LBFGS's: −lr·min(1, 1/‖g‖₁)·g
    opt.reset()
    x0 = torch.zeros(batch, dim, dtype=torch.float64)
    g0 = grad(x0)
    x1 = opt.step(x0, g0)
    scale = torch.clamp(1.0 / g0.abs().sum(-1), max=1.0)
    assert torch.allclose(x1, -scale[:, None] * g0)
    # a mask freezes padded coordinates; a per-atom step cap holds
    capped = BatchLBFGS(1, 6, max_step=0.1)
    mask = torch.tensor([[1.0, 1, 1, 0, 0, 0]], dtype=torch.float64)
    y = capped.step(torch.zeros(1, 6, dtype=torch.float64), torch.tensor([[-0.5, 0, 0, 9.0, 9.0, 9.0]]), mask)
    assert torch.all(y[0, 3:] == 0) and y[0, :3].norm() <= 0.1 + 1e-12 and y[0, 0] > 0


def test_nnp_policy_lowers_the_nnp_energy(env: ConformerRelaxEnv) -> None:
    torch.manual_seed(0)
    model = SchNet(width=16, n_layers=2, n_rbf=8, cutoff=4.0)
    _, info = env.reset(seed=3)
    obs = pack(info["atoms"].numbers, info["atoms"].positions, max_atoms=MAX_ATOMS)[None]
    policy = NNPOptimizerPolicy(model, 1, MAX_ATOMS, n_iter=5, lr=1.0, max_step=0.05)
    x0 = torch.as_tensor(obs[0, : 5 * MAX_ATOMS].reshape(MAX_ATOMS, 5)[:, 1:4].reshape(1, -1)).double()
    e_before, _ = policy.energy_grad(torch.as_tensor(obs), x0)
    disp = policy.act(obs)
    assert policy.nnp_calls == 1 + 5
    n = info["n_atoms"]
    assert np.all(disp[0, 3 * n:] == 0) and np.abs(disp).sum() > 0
    e_after, _ = policy.energy_grad(torch.as_tensor(obs), x0 + torch.as_tensor(disp).double())
    assert float(e_after) < float(e_before)


def test_collection_loop_labels_flagged_states_and_counts_oracle_calls() -> None:
    from rl_energy.agents.mlff import MLFF, MLFFConfig
    from rl_energy.atoms.graph import action_dim, obs_dim

    torch.manual_seed(0)
    agent = MLFF(gym.spaces.Box(-np.inf, np.inf, (obs_dim(MAX_ATOMS),)),
                 gym.spaces.Box(-1.0, 1.0, (action_dim(MAX_ATOMS),)),
                 MLFFConfig(width=16, n_layers=2, n_rbf=8, cutoff=4.0, energy_weight=0.01, force_weight=0.99))
    envs = [gym.make("rl_energy/ConformerRelax-v0", smiles=SMILES, max_atoms=MAX_ATOMS, max_episode_steps=3)
            for _ in range(2)]
    oracle = CountingLabeller(make_labeller("xtb"))
    pool = LabelledPool(MAX_ATOMS)
    seed_atoms = envs[0].reset(seed=9)[1]["atoms"]
    e, f = make_labeller("xtb").energy_forces(seed_atoms)
    pool.add(seed_atoms, e, f)  # a one-frame "D0"
    labelled = []
    before = [p.detach().clone() for p in agent.model.parameters()]
    stats = golf_train(agent, envs, pool, budget=3, oracle=oracle, updates_per_step=1, batch_size=2,
                       rng=np.random.default_rng(0), total_updates=4,
                       on_label=lambda atoms, energy, forces: labelled.append((atoms, energy)))
    assert oracle.calls == stats.oracle_calls == 3 == len(labelled)
    assert len(pool) == 1 + 3
    assert stats.flagged_negative + stats.flagged_horizon == 3 and stats.updates == 4
    assert stats.episodes >= 1 and stats.env_steps >= 2
    atoms, energy = labelled[-1]
    assert energy == pytest.approx(make_labeller("xtb").energy_forces(atoms)[0])
    assert math.isclose(float(pool.batch(64, np.random.default_rng(1))["target"][:, 0].abs().max()),
                        max(abs(e), *(abs(x) for _, x in labelled)), rel_tol=1e-5)
    assert any(not torch.equal(a, b) for a, b in zip(before, agent.model.parameters(), strict=True))
