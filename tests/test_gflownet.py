"""GFlowNet envs, losses and training: exact solutions have zero loss, masks hold, samplers learn R/Z."""

from __future__ import annotations

import gymnasium as gym
import pytest
import torch
from gymnasium.utils.env_checker import check_env

from rl_energy.agents.gflownet import (
    FLDBGFlowNet,
    GFlowNetConfig,
    TBGFlowNet,
    balance_terms,
    detailed_balance_loss,
    subtrajectory_balance_loss,
    trajectory_balance_loss,
)
from rl_energy.analysis.gflownet import (
    empirical_distribution,
    exact_terminal_distribution,
    l1_distance,
)
from rl_energy.config import ConfigError, resolve_config
from rl_energy.envs.dag import DAGEnv
from rl_energy.envs.hypergrid import HyperGrid
from rl_energy.envs.set_generation import SetGeneration, element_energies
from rl_energy.registry import get_agent
from rl_energy.trainer import TrajectoryTrainer
from rl_energy.trajectories import sample_trajectories, truncate_trajectories


def small_set() -> SetGeneration:
    return SetGeneration(6, 3, element_energies(6, 0))


# ------------------------------------------------------------------------------------ environments
def test_envs_register_and_pass_env_checker():
    for env_id, kwargs in [("rl_energy/HyperGrid-v0", {"ndim": 2, "height": 4}),
                           ("rl_energy/SetGeneration-v0", {"universe": 6, "set_size": 3})]:
        env = gym.make(env_id, **kwargs)
        check_env(env.unwrapped)
        assert isinstance(env.unwrapped.dag, DAGEnv)


def test_hypergrid_reward_and_modes():
    dag = HyperGrid(4, 8)
    states = dag.all_states()
    r = dag.reward(states)
    assert sorted(r.unique().tolist()) == pytest.approx([0.1, 0.6, 2.6])
    assert int(dag.is_mode(states).sum()) == dag.num_modes == 16  # one mode state per corner of 4-D
    assert dag.reward(torch.tensor([[1, 1, 1, 1]])).item() == pytest.approx(2.6)  # |1/7 - 0.5| = 0.357
    assert dag.reward(torch.tensor([[0, 0, 0, 0]])).item() == pytest.approx(0.6)
    assert torch.allclose(dag.energy(states), -r.log())


def test_set_generation_log_partition_matches_enumeration():
    dag = SetGeneration(10, 4, element_energies(10, 3))
    states = dag.all_states()
    full = states.sum(-1) == 4
    assert int(full.sum()) == 210
    brute = float(torch.logsumexp(-dag.energy(states[full]).double(), 0))
    assert dag.true_log_partition() == pytest.approx(brute, abs=1e-5)
    log_r = -dag.energy(states[full]).double()
    assert dag.target_mean_log_reward() == pytest.approx(float((log_r.softmax(0) * log_r).sum()), abs=1e-5)
    assert torch.allclose(dag.log_reward(states[full]), -(states[full].float() @ dag.element_energy))


def test_gym_episode_semantics_and_invalid_action():
    env = gym.make("rl_energy/HyperGrid-v0", ndim=2, height=3)
    obs, info = env.reset(seed=0)
    assert obs.tolist() == [0, 0] and info["action_mask"].tolist() == [True, True, True]
    obs, reward, term, _, info = env.step(0)
    obs, reward, term, _, info = env.step(0)
    assert obs.tolist() == [2, 0] and info["action_mask"].tolist() == [False, True, True] and not term
    with pytest.raises(ValueError, match="valid actions: \\[1, 2\\]"):
        env.step(0)
    obs, reward, term, _, info = env.step(2)  # exit
    assert term and reward == pytest.approx(info["log_reward"]) and reward == pytest.approx(-info["energy"])

    env = gym.make("rl_energy/SetGeneration-v0", universe=5, set_size=2, energies=[0.5, -1, 0, 0.2, 0.9])
    env.reset(seed=0)
    assert env.action_space.n == 5  # the compulsory exit is not an action of the Gymnasium form
    _, r, term, _, info = env.step(1)
    assert not term and info["energy"] == pytest.approx(-1.0)
    with pytest.raises(ValueError, match="invalid"):
        env.step(1)
    _, r, term, _, info = env.step(3)
    assert term and r == pytest.approx(0.8)


# ----------------------------------------------------------------------------------------- masks
@pytest.mark.parametrize("dag", [HyperGrid(3, 4), small_set()], ids=["hypergrid", "set"])
def test_sampler_never_takes_an_invalid_action(dag):
    torch.manual_seed(0)
    masks_hit = []

    def adversarial(obs: torch.Tensor) -> torch.Tensor:
        # a policy that puts almost all its mass on actions that are invalid where it is evaluated
        logits = torch.randn(obs.shape[0], dag.n_actions)
        masks_hit.append(True)
        return logits + 50.0 * torch.rand(obs.shape[0], dag.n_actions)

    for eps in (0.0, 0.5):
        trajs = sample_trajectories(dag, adversarial, 512, eps)
        b, t = trajs.actions.shape
        valid = torch.arange(t)[None] < trajs.lengths[:, None]
        mask = dag.forward_mask(trajs.states[:, :-1]).gather(-1, trajs.actions[..., None]).squeeze(-1)
        assert bool(mask[valid].all())
        assert bool(trajs.complete.all())
        assert bool((trajs.actions.gather(1, (trajs.lengths - 1)[:, None]) == dag.exit_action).all())
    # the exact evaluation masks the same way: only terminable states get probability
    p = exact_terminal_distribution(dag, adversarial)
    states = dag.all_states()
    assert float(p[~dag.forward_mask(states)[:, -1]].abs().sum()) == 0.0
    assert float(p.sum()) == pytest.approx(1.0, abs=1e-12)


def test_exact_distribution_matches_sampling():
    torch.manual_seed(1)
    dag = HyperGrid(2, 5)
    agent = TBGFlowNet(dag, GFlowNetConfig(hidden=[32]))
    p = exact_terminal_distribution(dag, agent.forward_logits)
    trajs = sample_trajectories(dag, agent.forward_logits, 200_000)
    q = empirical_distribution(dag, trajs.terminal_states())
    assert l1_distance(p, q) < 0.02  # sampling noise of 200k draws over 25 states is about 0.008


# ------------------------------------------------------------------------------- exact solutions
def exact_flows(dag: DAGEnv) -> tuple[torch.Tensor, torch.Tensor]:
    """``log F(s)`` and ``log P_F(·|s)`` over ``dag.all_states()`` for uniform ``P_B`` by the backward
    recursion ``F(s) = R(s)·1[exit ok] + Σ_{s→s'} F(s') P_B(s|s')`` (in float64)."""
    states = dag.all_states()
    n = states.shape[0]
    mask = dag.forward_mask(states)
    level = dag.level(states)
    flow = torch.zeros(n, dtype=torch.float64)
    edge = torch.zeros(n, dag.n_actions, dtype=torch.float64)
    reward = dag.log_reward(states).double().exp()
    for lv in range(int(level.max()), -1, -1):
        idx = torch.nonzero(level == lv).flatten()
        edge[idx, -1] = torch.where(mask[idx, -1], reward[idx], 0.0)
        for a in range(dag.n_actions - 1):
            ok = idx[mask[idx, a]]
            child = dag.state_index(dag.step(states[ok], torch.full((len(ok),), a)))
            n_parents = dag.backward_mask(states[child]).sum(-1).double()
            edge[ok, a] = flow[child] / n_parents
        flow[idx] = edge[idx].sum(-1)
    return flow.log(), (edge / flow[:, None]).log()


@pytest.mark.parametrize("dag", [HyperGrid(2, 4), HyperGrid(3, 3), small_set()], ids=["grid2x4", "grid3x3", "set"])
def test_balance_losses_vanish_at_the_exact_solution(dag):
    torch.manual_seed(0)
    log_flow, log_pf = exact_flows(dag)
    trajs = sample_trajectories(dag, lambda obs: torch.zeros(obs.shape[0], dag.n_actions), 256)
    idx = dag.state_index(trajs.states)
    fwd, flow = log_pf[idx], log_flow[idx]
    energy = dag.energy(trajs.states).double()
    log_z = log_flow[dag.state_index(dag.initial_states(1))][0]
    assert float(log_z) == pytest.approx(dag.true_log_partition(), abs=1e-6)  # float32 energies

    fl = balance_terms(dag, trajs, fwd, None, flow + energy, forward_looking=True)  # log F̃ = log F + E
    db = balance_terms(dag, trajs, fwd, None, flow)
    assert float(detailed_balance_loss(fl)) < 1e-10
    assert float(detailed_balance_loss(db)) < 1e-10
    assert float(trajectory_balance_loss(db, log_z)) < 1e-10
    assert float(subtrajectory_balance_loss(db, 0.9)) < 1e-10
    # a uniform learned backward policy is the uniform one
    fl_learned = balance_terms(dag, trajs, fwd, torch.zeros(*trajs.states.shape[:2], dag.n_actions - 1,
                                                            dtype=torch.float64), flow + energy, True)
    assert float(detailed_balance_loss(fl_learned)) < 1e-10
    # the losses see a wrong flow and a wrong policy (the test can fail)
    wrong = balance_terms(dag, trajs, fwd, None, flow + energy + 0.1 * torch.randn_like(flow), True)
    assert float(detailed_balance_loss(wrong)) > 1e-4
    skewed = balance_terms(dag, trajs, fwd + 0.3 * torch.randn_like(fwd), None, flow + energy, True)
    assert float(detailed_balance_loss(skewed)) > 1e-4
    assert float(trajectory_balance_loss(db, log_z + 0.1)) == pytest.approx(0.01, rel=1e-6)


def test_fldb_equals_db_with_forward_looking_flow():
    """Digest §2: FL-DB is DB with F(s) = F̃(s) exp(-E(s)), for any network output."""
    torch.manual_seed(0)
    dag = small_set()
    trajs = truncate_trajectories(sample_trajectories(dag, lambda o: torch.zeros(o.shape[0], 7), 64), 0.5)
    shape = trajs.states.shape[:2]
    fwd, bwd, log_f_tilde = torch.randn(*shape, 7), torch.randn(*shape, 6), torch.randn(shape)
    fl = balance_terms(dag, trajs, fwd, bwd, log_f_tilde, forward_looking=True)
    db = balance_terms(dag, trajs, fwd, bwd, log_f_tilde - dag.energy(trajs.states))
    assert float(detailed_balance_loss(fl)) == pytest.approx(float(detailed_balance_loss(db)), rel=1e-6)
    # written out as in the digest, on the non-terminal transitions
    e = dag.energy(trajs.states)
    t = fl.valid & (trajs.actions != dag.exit_action) & ~dag.forward_mask(trajs.states[:, 1:])[..., -1]
    manual = log_f_tilde[:, :-1] + fl.log_pf - log_f_tilde[:, 1:] - fl.log_pb + e[:, 1:] - e[:, :-1]
    res = fl.log_flow[:, :-1] + fl.delta - fl.log_flow[:, 1:]
    assert torch.allclose(res[t], manual[t], atol=1e-5)


def test_free_terminal_flow_is_the_fl_gfn_code_form():
    """``terminal_flow: learned``: log F̃(x) of a full set enters the last move's residual (it is clamped to 0
    otherwise), the compulsory exit carries no loss, and the other residuals are unchanged."""
    torch.manual_seed(0)
    dag = small_set()
    trajs = sample_trajectories(dag, lambda o: torch.zeros(o.shape[0], 7), 64)
    shape = trajs.states.shape[:2]
    fwd, bwd, log_f_tilde = torch.randn(*shape, 7), torch.randn(*shape, 6), torch.randn(shape)
    clamped = balance_terms(dag, trajs, fwd, bwd, log_f_tilde, True)
    free = balance_terms(dag, trajs, fwd, bwd, log_f_tilde, True, free_terminal_flow=True)
    before_sink = torch.arange(shape[1])[None] < trajs.lengths[:, None]
    full = dag.forward_mask(trajs.states)[..., -1] & before_sink  # full sets, before their exit
    e = dag.energy(trajs.states)
    assert torch.allclose(free.log_flow[full], log_f_tilde[full] - e[full])
    assert torch.allclose(clamped.log_flow[full], -e[full])
    exits = clamped.valid & (trajs.actions == dag.exit_action)
    assert int(exits.sum()) == 64 and not bool((free.valid & exits).any())
    moves = clamped.valid & ~exits
    assert torch.equal(free.valid, moves)
    last_move = moves & full[:, 1:]
    res = lambda t: t.log_flow[:, :-1] + t.delta - t.log_flow[:, 1:]  # noqa: E731
    assert torch.allclose(res(free)[last_move], res(clamped)[last_move] - log_f_tilde[:, 1:][last_move])
    assert torch.allclose(res(free)[moves & ~last_move], res(clamped)[moves & ~last_move])
    with pytest.raises(ConfigError, match="agent.terminal_flow"):
        TBGFlowNet(dag, GFlowNetConfig(terminal_flow="learned"))
    with pytest.raises(ConfigError, match="agent.terminal_flow"):
        GFlowNetConfig(terminal_flow="free").validate()


def test_paper_energies_and_large_universes():
    from rl_energy.envs.set_generation import paper_energies

    env = gym.make("rl_energy/SetGeneration-v0", size="medium", energies="paper")
    dag = env.unwrapped.dag
    assert (dag.universe, dag.set_size) == (80, 60)
    values, counts = dag.element_energy.unique(return_counts=True)
    assert len(values) == 10 and counts.tolist() == [8] * 10
    assert sorted(paper_energies("small"))[:3] == pytest.approx([-0.43814, -0.43814, -0.43814], abs=1e-5)
    with pytest.raises(ValueError, match="paper's size small"):
        gym.make("rl_energy/SetGeneration-v0", universe=10, set_size=4, energies="paper")
    # 80 elements do not fit an int64 index; the probe keys stay exact and distinct
    states = torch.zeros(4, 80, dtype=torch.long)
    states[1, 79] = states[2, 0] = states[3, 61] = states[3, 62] = 1
    assert dag.state_keys(states) == [0, 2**79, 1, 2**61 + 2**62]
    with pytest.raises(ValueError, match="state_keys"):
        dag.state_index(states)


def test_bad_env_kwargs_name_the_key(tmp_path):
    cfg = resolve_config("fldb", "rl_energy/SetGeneration-v0", get_agent("fldb").config_cls,
                         overrides=["env_kwargs.energies=papr"])
    with pytest.raises(ConfigError, match="env_kwargs.*'paper'"):
        TrajectoryTrainer(cfg, tmp_path / "x", verbose=False)


def test_truncation():
    torch.manual_seed(0)
    dag = HyperGrid(3, 6)
    trajs = sample_trajectories(dag, lambda o: torch.zeros(o.shape[0], 4), 2000)
    cut = truncate_trajectories(trajs, 1.0)
    assert bool((cut.lengths >= 1).all() and (cut.lengths <= trajs.lengths).all())
    assert bool((cut.complete == (cut.lengths == trajs.lengths)).all())
    expected = float((1.0 / trajs.lengths.float()).mean())  # a cut trajectory stays complete w.p. 1/length
    assert float(cut.complete.float().mean()) == pytest.approx(expected, abs=0.04)
    # the kept prefix is unchanged, the rest repeats the last kept state
    b = torch.arange(2000)
    assert torch.equal(cut.states[b, cut.lengths], trajs.states[b, cut.lengths])
    assert torch.equal(cut.states[:, -1], trajs.states[b, cut.lengths])
    with pytest.raises(ConfigError, match="agent.truncate"):
        TBGFlowNet(dag, GFlowNetConfig(truncate=0.5))


# ---------------------------------------------------------------------------------------- learning
@pytest.mark.parametrize("cls", [TBGFlowNet, FLDBGFlowNet], ids=["tb", "fldb"])
def test_sampler_learns_the_exact_target_on_2x4_hypergrid(cls):
    torch.manual_seed(0)
    dag = HyperGrid(2, 4)
    agent = cls(dag, GFlowNetConfig())
    target = dag.target_distribution()
    before = l1_distance(exact_terminal_distribution(dag, agent.forward_logits), target)
    for _ in range(400):
        agent.update(sample_trajectories(dag, agent.forward_logits, 16))
    after = l1_distance(exact_terminal_distribution(dag, agent.forward_logits), target)
    assert before > 0.3
    assert after < 0.05, after
    assert float(agent.log_z_estimate()) == pytest.approx(dag.true_log_partition(), abs=0.05)


def test_fldb_learns_set_generation_from_truncated_trajectories():
    torch.manual_seed(0)
    dag = SetGeneration(12, 6, element_energies(12, 0))
    agent = FLDBGFlowNet(dag, GFlowNetConfig(hidden=[64, 64], truncate=1.0, epsilon=1.0))
    target = dag.target_distribution()
    before = l1_distance(exact_terminal_distribution(dag, agent.forward_logits), target)
    for _ in range(300):
        agent.update(truncate_trajectories(sample_trajectories(dag, agent.forward_logits, 16, 1.0), 1.0))
    after = l1_distance(exact_terminal_distribution(dag, agent.forward_logits), target)
    assert after < 0.5 * before, (before, after)


# ----------------------------------------------------------------------------------------- trainer
def gfn_config(agent: str, env_id: str, **train):
    spec = get_agent(agent)
    overrides = [f"train.{k}={v}" for k, v in train.items()]
    return resolve_config(agent, env_id, spec.config_cls,
                          overrides=overrides + ["env_kwargs.ndim=2", "env_kwargs.height=4", "agent.hidden=[64]"])


def test_trajectory_trainer_logs_and_resumes_exactly(tmp_path):
    cfg = gfn_config("fldb", "rl_energy/HyperGrid-v0", total_steps=640, eval_every=320, log_every=160,
                     checkpoint_every=0)
    straight = TrajectoryTrainer(cfg, tmp_path / "a", verbose=False)
    result = straight.train()
    assert set(result) >= {"l1", "jsd", "log_z_error", "top_k_reward"}

    half = gfn_config("fldb", "rl_energy/HyperGrid-v0", total_steps=320, eval_every=320, log_every=160,
                      checkpoint_every=0)
    TrajectoryTrainer(half, tmp_path / "b", verbose=False).train()
    half.train.total_steps = 640
    resumed = TrajectoryTrainer(half, tmp_path / "b", resume=True, verbose=False)
    assert resumed.step == 320 and resumed.updates == 20
    resumed.train()
    for p, q in zip(straight.agent.parameters(), resumed.agent.parameters(), strict=True):
        assert torch.equal(p, q)
    rows = (tmp_path / "b" / "progress.csv").read_text().splitlines()
    assert [r.split(",")[0] for r in rows[1:]] == ["160", "320", "480", "640"]
    assert "l1" in rows[0].split(",") and rows[-1].split(",")[rows[0].split(",").index("l1")] != ""


def test_gflownet_agent_needs_a_dag_env(tmp_path):
    cfg = resolve_config("tb", "Pendulum-v1", get_agent("tb").config_cls)
    with pytest.raises(ConfigError, match="rl_energy/HyperGrid-v0, rl_energy/SetGeneration-v0"):
        TrajectoryTrainer(cfg, tmp_path / "x", verbose=False)


def test_cli_trains_and_evaluates_a_sampler(tmp_path, capsys):
    from rl_energy.cli import main

    run = tmp_path / "run"
    assert main(["train", "--agent", "fldb", "--env", "rl_energy/HyperGrid-v0", "--total-steps", "320",
                 "--set", "env_kwargs.ndim=2", "--set", "env_kwargs.height=4", "--set", "agent.hidden=[32]",
                 "--run-dir", str(run), "--quiet"]) == 0
    assert "final: L1 (exact, summed)" in capsys.readouterr().out
    assert main(["evaluate", str(run), "--episodes", "2"]) == 0
    assert "trajectory 320: L1 (exact, summed)" in capsys.readouterr().out
    assert main(["train", "--agent", "tb", "--env", "Pendulum-v1", "--run-dir", str(tmp_path / "bad")]) == 2
    assert "GFlowNet environments: rl_energy/HyperGrid-v0" in capsys.readouterr().err
