"""ESF docking (rl_energy/docking.py, envs/tasks/docking.py, agents/esf.py): the FFT score is the brute-force
score at every pose, the rotation grid covers SO(3), RMSD and rotation conversions are right, training lowers the
pose cross-entropy and ranks the true pose up, the Vina-like score prefers the true pose, the perturbed split moves
only pocket atoms, and bad agent settings are refused by name."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from rl_energy import docking as D
from rl_energy.agents.esf import ESF, ESFConfig
from rl_energy.config import ConfigError
from rl_energy.envs.tasks.docking import DockingTask


def _unpacked(c: D.Complex) -> D.Unpacked:
    return D.unpack(torch.as_tensor(D.pack(c, D.DEFAULT_MAX_POCKET, D.DEFAULT_MAX_LIGAND))[None], D.DEFAULT_MAX_POCKET)


@torch.no_grad()
def test_fft_score_equals_brute_force_at_every_pose_float64():
    spec = D.GridSpec(spacing=1.5, t_max=3.0)  # a small grid: T = 2, 125 translations
    c = D.make_complex(np.random.default_rng(3))
    u = _unpacked(c)
    model = D.ScalarFields(spec, channels=2, seed=1).double()
    rots = D.rotation_grid(6)
    posed = torch.einsum("rij,aj->rai", rots, u.ligand[0])
    # FFT path: stencil rasterisation; brute force: every atom at every point, then direct sums pose by pose
    fast = D.fft_scores(D.receptor_spectrum(model.receptor_field(model.receptor_basis(
        u.pocket[0], u.pocket_types[0], u.pocket_mask[0]))),
        model.ligand_field(model.ligand_basis(posed, u.ligand_types[0], u.ligand_mask[0])), spec)
    rec = model.receptor_field(model.receptor_basis(u.pocket[0], u.pocket_types[0], u.pocket_mask[0], dense=True))
    lig = model.ligand_field(model.ligand_basis(posed, u.ligand_types[0], u.ligand_mask[0], dense=True))
    slow = D.brute_force_scores(rec, lig, spec)
    assert fast.shape == slow.shape == (6, spec.n_translations)
    assert slow.abs().max() > 1.0  # a nontrivial score
    torch.testing.assert_close(fast, slow, rtol=0, atol=1e-5 * float(slow.abs().max()))
    assert int(fast.argmax()) == int(slow.argmax())
    # and the receptor box covers every translation: no wrap-around (m + T < n)
    assert spec.m + spec.T < spec.n


@torch.no_grad()
def test_score_grid_matches_a_pose_scored_from_scratch():
    """score_grid's (rotation, translation) indexing: recompute one pose's score by a dense direct sum."""
    spec = D.GridSpec()
    c = D.make_complex(np.random.default_rng(5))
    u = _unpacked(c)
    model = D.ScalarFields(spec, seed=2).double()
    rots = D.rotation_grid(8)
    s = model.score_grid(u.pocket[0], u.pocket_types[0], u.pocket_mask[0], u.ligand[0], u.ligand_types[0],
                         u.ligand_mask[0], rots)
    r, j = 5, 1234
    t = spec.translations()[j]
    rec = model.receptor_field(model.receptor_basis(u.pocket[0], u.pocket_types[0], u.pocket_mask[0], dense=True))
    posed = (u.ligand[0] @ rots[r].T)[None]
    lig = model.ligand_field(model.ligand_basis(posed, u.ligand_types[0], u.ligand_mask[0], dense=True))
    direct = D.brute_force_scores(rec, lig, spec, torch.round(t / spec.spacing).long()[None])
    assert float(s[r, j]) == pytest.approx(float(direct[0, 0]), rel=1e-9, abs=1e-9)


def test_rotation_grid_covers_so3_and_conversions_round_trip():
    grid = D.rotation_grid(576)
    assert torch.allclose(grid @ grid.transpose(-1, -2), torch.eye(3, dtype=grid.dtype).expand_as(grid), atol=1e-10)
    assert torch.allclose(torch.linalg.det(grid), torch.ones(576, dtype=grid.dtype))
    probes = D.random_rotations(4000, torch.Generator().manual_seed(0))
    _, angle = D.nearest_rotation(grid, probes)
    # a uniform cell of 1/576 of SO(3) has radius ≈ 0.32 rad ((θ − sin θ)/π = 1/576); the covering radius is larger
    assert float(angle.max()) < math.radians(30) and float(angle.mean()) < math.radians(17)
    v = torch.randn(100, 3, dtype=torch.float64) * 1.2
    v = v[v.norm(dim=-1) < math.pi - 1e-3]
    torch.testing.assert_close(D.matrix_to_rotvec(D.rotvec_to_matrix(v)), v)
    torch.testing.assert_close(D.rotvec_to_matrix(D.matrix_to_rotvec(probes)), probes)


def test_rmsd_and_grid_oracle():
    lig = torch.tensor([[[1.0, 0, 0], [-1.0, 0, 0], [0, 2.0, 0], [0, -2.0, 0], [9.0, 9, 9]]], dtype=torch.float64)
    mask = torch.tensor([[1, 1, 1, 1, 0]], dtype=torch.bool)
    eye = torch.eye(3, dtype=torch.float64)[None]
    shift = torch.tensor([[0.0, 0, 3.0]], dtype=torch.float64)
    assert float(D.pose_rmsd(lig, mask, eye, shift, eye, torch.zeros(1, 3, dtype=torch.float64))) == pytest.approx(3.0)
    rz = D.rotvec_to_matrix(torch.tensor([[0, 0, math.pi]], dtype=torch.float64))  # half turn about z: all move 2r
    zero = torch.zeros(1, 3, dtype=torch.float64)
    assert float(D.pose_rmsd(lig, mask, rz, zero, eye, zero)) == pytest.approx(math.sqrt((4 + 4 + 16 + 16) / 4))
    spec, grid = D.GridSpec(), D.rotation_grid(576)
    c = D.make_complex(np.random.default_rng(1))
    u = _unpacked(c)
    rot, t = torch.as_tensor(c.rotation), torch.as_tensor(c.translation)
    r_idx, t_idx, floor = D.oracle_pose(u.ligand[0], u.ligand_mask[0], rot, t, grid, spec)
    all_rmsd = D.pose_rmsd(u.ligand.expand(576, -1, -1), u.ligand_mask.expand(576, -1), grid,
                           spec.translations()[t_idx].expand(576, 3), rot.expand(576, 3, 3), t.expand(576, 3))
    assert float(floor) == pytest.approx(float(all_rmsd.min()), rel=1e-6) and int(all_rmsd.argmin()) == int(r_idx)
    assert float(floor) < 1.5


def test_task_reward_is_minus_rmsd_and_the_true_pose_scores_zero():
    task = DockingTask(n_train=4, n_test=4)
    batch = task.contexts("test")
    assert torch.allclose(task.score(batch, batch["target"]), torch.zeros(4), atol=1e-4)
    moved = batch["target"].clone()
    moved[:, 0] += 1.5
    assert torch.allclose(task.score(batch, moved), torch.full((4,), -1.5), atol=1e-4)
    assert task.metrics(batch, moved) == {"rmsd_median": pytest.approx(1.5, abs=1e-4), "success_2A": 1.0}


def test_perturbed_split_moves_only_pocket_atoms_near_the_ligand():
    clean = DockingTask(n_train=2, n_test=6).contexts("test")
    pert = DockingTask(n_train=2, n_test=6, perturb=1.0).contexts("test")
    torch.testing.assert_close(clean["target"], pert["target"])
    rows_c = clean["obs"].reshape(6, -1, D.ROW)
    rows_p = pert["obs"].reshape(6, -1, D.ROW)
    p = D.DEFAULT_MAX_POCKET
    assert torch.equal(rows_c[:, p:], rows_p[:, p:])  # the ligand is untouched
    assert torch.equal(rows_c[:, :p, 3:], rows_p[:, :p, 3:])  # types and masks too
    moved = (rows_c[:, :p, :3] - rows_p[:, :p, :3]).norm(dim=-1)
    assert (moved > 0).any(-1).all()
    # only atoms near the ligand move, by an RMS of about 1 Å
    cs = DockingTask(n_train=2, n_test=6).complexes("test")
    for i, c in enumerate(cs):
        near = torch.zeros(p, dtype=torch.bool)
        near[: len(c.pocket)] = torch.as_tensor(c.near)
        assert (moved[i][~near] == 0).all() and (moved[i][near] > 0).all()
    assert 0.7 < float(moved[moved > 0].square().mean().sqrt()) < 1.3


def test_vina_like_score_prefers_the_true_pose_to_random_poses():
    gen = torch.Generator().manual_seed(0)
    wins = []
    for k in range(3):
        c = D.make_complex(np.random.default_rng([7, k]))
        u = _unpacked(c)
        rot, t = torch.as_tensor(c.rotation), torch.as_tensor(c.translation)
        rots = torch.cat([rot[None], D.random_rotations(64, gen)])
        trans = torch.cat([t[None], (torch.rand(64, 3, generator=gen, dtype=torch.float64) - 0.5) * 8])
        posed = torch.einsum("rij,aj->rai", rots, u.ligand[0]) + trans[:, None]
        energy = D.vina_pair_energy(u.pocket[0], u.pocket_types[0], u.pocket_mask[0], posed, u.ligand_types[0],
                                    u.ligand_mask[0])
        wins.append(float(energy[0]) < float(energy[1:].min()))
        # the map search reads the same energy: the grid pose nearest the truth, by maps and by pair sums
        spec, grid = D.GridSpec(), D.rotation_grid(64)
        maps, half = D.vina_maps(u.pocket[0], u.pocket_types[0], u.pocket_mask[0], spec)
        scores = D.vina_grid_scores(maps, half, u.ligand[0], u.ligand_types[0], u.ligand_mask[0], grid[:2], spec)
        j = 1000
        direct = D.vina_pair_energy(u.pocket[0], u.pocket_types[0], u.pocket_mask[0],
                                    (u.ligand[0] @ grid[1].T + spec.translations()[j])[None], u.ligand_types[0],
                                    u.ligand_mask[0])
        assert float(-scores[1, j]) == pytest.approx(float(direct[0]), abs=0.1 + 0.1 * abs(float(direct[0])))
    assert all(wins)


def _small_agent(**kw) -> tuple[DockingTask, ESF]:
    task = DockingTask(n_train=6, n_test=4)
    torch.manual_seed(0)
    cfg = ESFConfig(n_rotations=48, rot_samples=2, lr=0.05, **kw)
    cfg.validate()
    return task, ESF(task.observation_space, task.action_space, cfg)


def test_training_lowers_the_pose_cross_entropy_and_ranks_the_true_pose_up():
    torch.set_num_threads(1)
    task, agent = _small_agent()
    data = task.contexts("train")
    with torch.no_grad():
        before, rank_before = agent.loss(data, torch.Generator().manual_seed(0))
    for _ in range(25):
        agent.update(data)
    with torch.no_grad():
        after, rank_after = agent.loss(data, torch.Generator().manual_seed(0))
    assert float(after) < 0.5 * float(before)
    assert float(rank_after) < float(rank_before) and float(rank_after) < 0.01
    action = agent.act(data["obs"][:2], deterministic=True)
    assert action.shape == (2, 6) and task.action_space.contains(action[0].numpy())
    sampled = agent.act(data["obs"][:1], deterministic=False)
    assert sampled.shape == (1, 6)


def test_esf_n_perturbs_the_training_pose():
    task, agent = _small_agent(noise_rot=0.2, noise_trans=0.7)
    data = task.contexts("train")
    a = agent.loss(data, torch.Generator().manual_seed(0))[0]
    b = agent.loss(data, torch.Generator().manual_seed(1))[0]
    assert float(a) != float(b)  # the positive pose is drawn afresh


@pytest.mark.parametrize(("key", "value"), [("channels", 0), ("n_rotations", 0), ("rot_samples", -1), ("lr", 0.0),
                                            ("tau", -1.0), ("noise_rot", -0.1), ("noise_trans", float("nan")),
                                            ("spacing", 0.1), ("chunk", 0), ("channels", 2.5)])
def test_bad_agent_settings_raise_naming_the_key(key, value):
    with pytest.raises(ConfigError, match=f"agent.{key}"):
        ESFConfig(**{key: value}).validate()


@pytest.mark.parametrize(("key", "value"), [("n_train", 0), ("n_test", -1), ("seed", -2), ("perturb", -0.5),
                                            ("max_pocket", 3), ("t_max", 0.5), ("perturb", "x")])
def test_bad_task_kwargs_raise_naming_the_key(key, value):
    with pytest.raises(ConfigError, match=f"env_kwargs.{key}"):
        DockingTask(**{key: value})
