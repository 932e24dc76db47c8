"""The atomistic core (rl_energy/atoms/): the periodic radius graph against ASE's, the padded layout, the labellers
against finite differences, conservative forces against finite differences, rotation equivariance of the model zoo,
the label cache, the S2EF task and the mlff agent learning."""

from __future__ import annotations

import sys

import numpy as np
import pytest
import torch

pytest.importorskip("ase")
pytest.importorskip("rdkit")
pytest.importorskip("e3nn")

from rl_energy.atoms import data, datasets, graph  # noqa: E402
from rl_energy.atoms import labellers as lab  # noqa: E402
from rl_energy.atoms.models import build_model, equivariance_error, n_parameters  # noqa: E402
from rl_energy.errors import ConfigError, MissingExtraError  # noqa: E402


@pytest.fixture(scope="module")
def slabs():
    return data.mini_oc20(6, seed=3, frames_per_run=2)


def _batch(atoms_list, max_atoms=16, dtype=torch.float64) -> graph.Structures:
    obs = np.stack([graph.pack(a.numbers, a.positions, a.cell.array, a.pbc, data.free_mask(a), max_atoms)
                    for a in atoms_list])
    return graph.unpack(torch.tensor(obs, dtype=dtype))


@pytest.mark.parametrize("cutoff", [2.0, 5.0, 9.5])
def test_radius_graph_matches_ase_neighbour_list_on_periodic_slabs(slabs, cutoff):
    from ase.neighborlist import neighbor_list

    s = _batch(slabs)
    edges = graph.radius_graph(s, cutoff)
    start = 0
    for atoms in slabs:
        i, j, shift = neighbor_list("ijS", atoms, cutoff)
        ref = sorted(zip(i.tolist(), j.tolist(), map(tuple, np.round(shift @ atoms.cell.array, 5).tolist()),
                         strict=True))
        sel = (edges.dst >= start) & (edges.dst < start + len(atoms))
        ours = sorted(zip((edges.dst[sel] - start).tolist(), (edges.src[sel] - start).tolist(),
                          map(tuple, np.round(edges.shift[sel].numpy(), 5).tolist()), strict=True))
        assert ours == ref
        start += len(atoms)
    # edge vectors are r_j - r_i + S·cell, each within the cutoff
    assert float(graph.edge_vectors(s, edges).norm(dim=-1).max()) < cutoff


def test_radius_graph_of_molecules_has_no_images_and_no_self_pairs():
    atoms = data.embed("CCO", seed=0)
    s = _batch([atoms], max_atoms=12)
    edges = graph.radius_graph(s, 100.0)
    n = len(atoms)
    assert len(edges) == n * (n - 1)  # every ordered pair once, no self pairs, no images
    assert float(edges.shift.abs().max()) == 0.0


def test_pack_unpack_round_trip_and_scatter_back(slabs):
    s = _batch(slabs[:2], max_atoms=16)
    a = slabs[1]
    assert s.n_graphs == 2 and s.n_atoms.tolist() == [len(slabs[0]), len(a)]
    np.testing.assert_allclose(s.pos[s.graph == 1].numpy(), a.positions, atol=1e-5)
    np.testing.assert_allclose(s.cell[1].numpy(), a.cell.array, atol=1e-5)
    assert s.pbc[1].tolist() == [True, True, False]
    assert s.free[s.graph == 1].tolist() == data.free_mask(a).tolist() and not s.free.all()
    padded = s.scatter_atoms(s.pos)
    assert padded.shape == (2, 16, 3) and float(padded[0, len(slabs[0]):].abs().sum()) == 0
    assert torch.equal(s.gather_atoms(padded), s.pos)
    with pytest.raises(ValueError, match="max_atoms"):
        graph.pack(a.numbers, a.positions, max_atoms=4)


@pytest.mark.parametrize("name", ["emt", "mmff", "uff", "xtb"])
def test_labeller_forces_are_minus_the_energy_gradient(name):
    pytest.importorskip("tblite") if name == "xtb" else None
    atoms = data.slab("Cu", "O", "fcc") if name == "emt" else data.rattle(data.embed("CCO", 0), 0.05,
                                                                            np.random.default_rng(0))
    labeller = lab.make_labeller(name)
    _, forces = labeller.energy_forces(atoms)
    h = 1e-4
    for atom, axis in [(len(atoms) - 1, 2), (1, 0)]:
        shifted = []
        for sign in (1, -1):
            moved = atoms.copy()
            moved.info.update(atoms.info)
            moved.positions[atom, axis] += sign * h
            shifted.append(labeller.energy_forces(moved)[0])
        assert forces[atom, axis] == pytest.approx(-(shifted[0] - shifted[1]) / (2 * h), abs=2e-4)


def test_unknown_labeller_and_missing_smiles_are_named():
    with pytest.raises(ConfigError, match="valid: emt, mmff, uff, xtb"):
        lab.make_labeller("dft")
    atoms = data.embed("CCO", 0)
    atoms.info.pop("smiles")
    with pytest.raises(ValueError, match="SMILES"):
        lab.make_labeller("mmff").energy_forces(atoms)


def test_label_cache_returns_the_stored_labels(tmp_path):
    atoms = [data.rattle(data.embed("CCO", 0), 0.05, np.random.default_rng(k)) for k in range(3)]
    cache = lab.LabelCache(tmp_path / "labels.sqlite")
    e1, f1 = lab.label(atoms, "mmff", cache)
    assert (cache.hits, cache.misses) == (0, 3)
    e2, f2 = lab.label(atoms, "mmff", cache)
    assert (cache.hits, cache.misses) == (3, 3)
    np.testing.assert_array_equal(e1, e2)
    for a, b in zip(f1, f2, strict=True):
        np.testing.assert_array_equal(a, b)
    assert lab.LabelCache.key("mmff", atoms[0]) != lab.LabelCache.key("xtb", atoms[0])


@pytest.mark.parametrize("kind", ["schnet", "e3nn"])
def test_conservative_forces_match_finite_differences_through_periodic_images(slabs, kind):
    torch.manual_seed(0)
    model = build_model(kind, cutoff=4.0).double()
    s = _batch(slabs[:2])
    _, forces = model(s)
    h = 1e-5
    for atom, axis in [(0, 0), (12, 2), (15, 1)]:
        energies = []
        for sign in (1, -1):
            pos = s.pos.detach().clone()
            pos[atom, axis] += sign * h
            energies.append(model(s.with_pos(pos))[0].sum())
        fd = -(energies[0] - energies[1]) / (2 * h)
        assert float(forces[atom, axis].detach()) == pytest.approx(float(fd.detach()), rel=1e-5, abs=1e-8)


@pytest.mark.parametrize(("kind", "kwargs"), [
    ("schnet", {}), ("e3nn", {"l_max": 2}),
    ("scn", {"message": "so2", "l_max": 2, "m_max": 0}), ("scn", {"message": "so2", "l_max": 2, "m_max": 1}),
    ("scn", {"message": "so2", "l_max": 2, "m_max": 2}), ("scn", {"message": "scn", "l_max": 2, "m_max": 0}),
    ("scn", {"message": "so2", "l_max": 2, "m_max": 2, "readout": "linear"}),
])
def test_models_are_rotation_equivariant(slabs, kind, kwargs):
    torch.manual_seed(0)
    model = build_model(kind, cutoff=5.0, **kwargs).double()
    rotation = graph.random_rotation(torch.Generator().manual_seed(1))
    err = equivariance_error(model, _batch(slabs), rotation)
    assert err["force"] < 1e-5 and err["energy"] < 1e-5


def test_scn_dense_edge_layers_break_equivariance_once_m_max_reaches_one(slabs):
    """SCN's own (dense) edge-frame layers feel the arbitrary roll about the edge when orders |m| = 1 are kept."""
    torch.manual_seed(0)
    s = _batch(slabs)
    rotation = graph.random_rotation(torch.Generator().manual_seed(1))
    err = equivariance_error(build_model("scn", cutoff=5.0, message="scn", l_max=2, m_max=1).double(), s, rotation)
    assert err["force_rel"] > 1e-2


def test_scn_and_models_reject_bad_settings():
    with pytest.raises(ConfigError, match="m_max"):
        build_model("scn", l_max=2, m_max=3)
    with pytest.raises(ConfigError, match="message"):
        build_model("scn", message="dense")
    with pytest.raises(ConfigError, match="valid: schnet, e3nn, scn"):
        build_model("painn")
    with pytest.raises(ConfigError, match="cutoff"):
        build_model("schnet", cutoff=-1.0)


def test_fit_normalisation_recovers_per_element_reference_energies():
    rng = np.random.default_rng(0)
    z = torch.as_tensor(rng.choice([1, 6, 8], size=(50, 9)))
    z[:, 7:] = 0  # padding
    ref = {1: -13.6, 6: -1030.0, 8: -2040.0}
    energy = torch.tensor([sum(ref[int(v)] for v in row if v) for row in z], dtype=torch.float64)
    model = build_model("schnet", width=8, n_layers=1)
    model.fit_normalisation(z, energy, torch.ones(50, 9, 3), torch.ones(50, 9, dtype=torch.bool))
    for element, value in ref.items():
        assert float(model.atom_ref[element]) == pytest.approx(value, rel=1e-4)
    assert float(model.scale) == pytest.approx(1.0)


def test_s2ef_task_scores_and_rejects_bad_kwargs():
    import gymnasium as gym

    env = gym.make("rl_energy/S2EF-v0", n_train=16, n_test=8)
    task = env.unwrapped
    batch = task.contexts("test")
    target = batch["target"]
    assert torch.allclose(task.score(batch, target), torch.zeros(len(target)))
    worse = target.clone()
    worse[:, 0] += 0.5
    worse[:, 1:] += 0.1 * (batch["obs"][:, :80].reshape(-1, 16, 5)[..., :1] > 0).repeat(1, 1, 3).reshape(-1, 48)
    # fixed atoms are not scored: the 0.1 eV/Å offset counts on the free atoms only
    assert torch.allclose(task.score(batch, worse), torch.full((len(target),), -0.6), atol=1e-5)
    assert task.metrics(batch, target)["efwt"] == 100.0
    for key, value in [("dataset", "qm9"), ("n_train", 0), ("labeller", "mmff"), ("max_atoms", 4),
                       ("energy_weight", float("nan")), ("n_test", "many")]:
        with pytest.raises(ConfigError, match=f"env_kwargs.{key}"):
            kwargs = {"n_train": 16, "n_test": 8, key: value}
            gym.make("rl_energy/S2EF-v0", **kwargs).unwrapped.contexts("train")


def test_mlff_learns_mini_oc20_forces(tmp_path):
    from rl_energy.config import resolve_config
    from rl_energy.registry import get_agent
    from rl_energy.trainer import make_trainer

    ov = ["env_kwargs.n_train=200", "env_kwargs.n_test=60", "train.total_steps=2400", "train.batch_size=16",
          "train.eval_every=2400", "train.log_every=2400", "agent.width=32", "agent.n_layers=2",
          "agent.lr_decay_updates=150", "agent.lr=3e-3"]
    cfg = resolve_config("mlff", "rl_energy/S2EF-v0", get_agent("mlff").config_cls, overrides=ov)
    trainer = make_trainer(cfg, tmp_path / "run", verbose=False)
    task = trainer.task
    before = task.metrics(task.contexts("test"), trainer.agent.act(task.contexts("test")["obs"]))
    trainer.train()
    after = task.metrics(task.contexts("test"), trainer.agent.act(task.contexts("test")["obs"]))
    zero = task.metrics(task.contexts("test"), torch.zeros(60, task.action_space.shape[0]))
    assert after["force_mae"] < 0.6 * zero["force_mae"] and after["force_mae"] < before["force_mae"]


def test_mlff_config_errors_name_the_key():
    from rl_energy.config import resolve_config
    from rl_energy.registry import get_agent

    for key, value in [("model", "painn"), ("cutoff", "0"), ("m_max", "5"), ("lr", "-1"), ("loss", "huber"),
                       ("grid_phi", "2"), ("readout", "mean")]:
        with pytest.raises(ConfigError, match=f"agent.{key}"):
            resolve_config("mlff", "rl_energy/S2EF-v0", get_agent("mlff").config_cls,
                           overrides=[f"agent.{key}={value}", "agent.model=scn" if key != "model" else "agent.lr=1e-3"])


def test_missing_chemistry_packages_name_the_atoms_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "ase", None)
    monkeypatch.setitem(sys.modules, "ase.calculators.emt", None)
    with pytest.raises(MissingExtraError, match=r"rl-energy\[atoms\]"):
        lab.make_labeller("emt")
    with pytest.raises(MissingExtraError, match=r"rl-energy\[atoms\]"):
        datasets.build("mini_oc20", 4, cache=False)


def test_parameter_counts_are_counted():
    assert n_parameters(build_model("schnet", width=8, n_layers=1, n_rbf=4)) == (
        119 * 8 + (4 * 8 + 8 + 8 * 8 + 8) + 8 * 8 + (8 * 8 + 8 + 8 * 8 + 8) + (8 * 4 + 4 + 4 + 1))
