"""SSO (Lavington et al., ICML 2023, "Target-based surrogates for stochastic optimization"; digest §12): the
target-space surrogate of :class:`rl_energy.optim.TargetSurrogate`, the Classification-v0 and LQRImitation-v0
tasks, and the ``supervised`` agent."""

from __future__ import annotations

import io
import math

import gymnasium as gym
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from gymnasium.utils.env_checker import check_env

import rl_energy.envs  # noqa: F401  (registers the envs)
from rl_energy.agents.supervised import Supervised, SupervisedConfig
from rl_energy.config import resolve_config
from rl_energy.envs.tasks.classification import ClassificationTask
from rl_energy.envs.tasks.lqr_imitation import LQRImitationTask, solve_dare
from rl_energy.errors import ConfigError
from rl_energy.nets import mlp
from rl_energy.optim import TargetSurrogate


@pytest.fixture(autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# ------------------------------------------------------------------------------------------ helpers
def problem(kind: str, n: int = 64, d: int = 5, k: int = 3, hidden: tuple[int, ...] = (16,), seed: int = 0):
    """A small double-precision MLP, its full batch ``x`` and the mean loss ``ℓ(z)`` of ``kind`` (ce or mse)."""
    torch.manual_seed(seed)
    net = mlp(d, list(hidden), k, activation=torch.nn.Tanh).double()
    x = torch.randn(n, d, dtype=torch.float64)
    if kind == "ce":
        y = torch.randint(k, (n,))

        def loss(z: torch.Tensor) -> torch.Tensor:
            return F.cross_entropy(z, y)
    else:
        y = torch.randn(n, k, dtype=torch.float64)

        def loss(z: torch.Tensor) -> torch.Tensor:
            return (z - y).pow(2).sum(-1).mean()
    return net, x, loss


def flat_params(net: torch.nn.Module) -> torch.Tensor:
    return torch.cat([p.detach().reshape(-1) for p in net.parameters()])


def set_params(net: torch.nn.Module, flat: torch.Tensor) -> None:
    torch.nn.utils.vector_to_parameters(flat, list(net.parameters()))


# --------------------------------------------------------------------------------- the surrogate
@pytest.mark.parametrize("kind", ["ce", "mse"])
def test_surrogate_matches_the_loss_and_its_gradient_at_theta_t(kind):
    net, x, loss = problem(kind)
    opt = TargetSurrogate(net.parameters(), m=1, eta=0.3, inner="sgd", inner_lr=0.1)
    state, _ = opt.prepare(lambda: net(x), loss)
    q = state.value(net(x))
    assert float(q.detach()) == pytest.approx(float(loss(net(x))), rel=1e-12)  # q_t(θ_t) = ℓ(z_t)
    grad_q = torch.autograd.grad(q, list(net.parameters()))
    grad_l = torch.autograd.grad(loss(net(x)), list(net.parameters()))
    for a, b in zip(grad_q, grad_l, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)
    # and numerically: central differences of q along a random direction equal ∇ℓ · v
    theta, v = flat_params(net), torch.randn(flat_params(net).shape, dtype=torch.float64)
    h = 1e-5
    set_params(net, theta + h * v)
    q_plus = float(state.value(net(x)))
    set_params(net, theta - h * v)
    q_minus = float(state.value(net(x)))
    directional = float(torch.cat([g.reshape(-1) for g in grad_l]) @ v)
    assert (q_plus - q_minus) / (2 * h) == pytest.approx(directional, rel=1e-6, abs=1e-9)
    assert opt.expensive_calls == 1


@pytest.mark.parametrize(("kind", "eta"), [("ce", 2.0), ("ce", 0.5), ("mse", 0.5), ("mse", 0.2)])
def test_surrogate_upper_bounds_the_full_batch_loss_when_eta_le_one_over_L(kind, eta):
    """Paper §3: with the full batch and every ℓ_i (1/η)-smooth (CE: L = 1/2; squared error: L = 2),
    q_t(θ) ≥ ℓ(f(θ)) for every θ: at random θ (near and far) and along the inner iterates."""
    net, x, loss = problem(kind, hidden=(16, 16))
    opt = TargetSurrogate(net.parameters(), m=25, eta=eta, inner="sgd", inner_lr=0.05)
    state, _ = opt.prepare(lambda: net(x), loss)
    theta = flat_params(net)
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for scale in (1e-3, 1e-2, 0.1, 0.5, 2.0):
            for _ in range(10):
                set_params(net, theta + scale * torch.randn(theta.shape, generator=gen, dtype=torch.float64))
                f = net(x)
                assert float(state.value(f)) >= float(loss(f)) - 1e-12
    set_params(net, theta)
    gaps: list[float] = []

    def forward() -> torch.Tensor:  # every inner iterate: record q_t - ℓ at it
        f = net(x)
        gaps.append(float(state.value(f.detach())) - float(loss(f.detach())))
        return f

    opt.step(forward, loss)
    assert len(gaps) == 25 and min(gaps) >= -1e-12
    assert max(gaps) > 0  # the iterates moved: the bound is not trivially an equality


def test_full_batch_sso_is_majorisation_minimisation():
    """With q_t ≥ ℓ, q_t(θ_t) = ℓ(θ_t) and an inner loop that lowers q_t (Armijo), ℓ never increases."""
    net, x, loss = problem("ce", hidden=(16,))
    opt = TargetSurrogate(net.parameters(), m=10, eta=2.0, inner="armijo", inner_lr=10.0)
    values = [float(loss(net(x)))]
    for _ in range(15):
        out = opt.step(lambda: net(x), loss)
        values.append(float(loss(net(x))))
        assert float(out["loss"]) == pytest.approx(values[-2], rel=1e-12)
    assert all(b <= a + 1e-12 for a, b in zip(values, values[1:], strict=False))
    assert values[-1] < 0.8 * values[0]
    assert opt.expensive_calls == 15 and 15 <= opt.model_grads <= 150 and opt.model_evals >= opt.model_grads


@pytest.mark.parametrize("kind", ["ce", "mse"])
def test_the_bound_fails_for_eta_above_one_over_L(kind):
    """The test above could fail: with η > 1/L the surrogate dips below the loss near θ_t. For the squared
    error q_t − ℓ = (1/(2η) − 1) mean‖f − z_t‖² exactly; for CE the curvature 1/2 is reached at small logits."""
    net, x, loss = problem(kind, hidden=())
    with torch.no_grad():  # small logits: p uniform over the 3 classes, curvature up to 1/2 along (1, −1, 0)
        for p in net.parameters():
            p.mul_(0.01)
    eta = 1.0 if kind == "mse" else 8.0
    opt = TargetSurrogate(net.parameters(), m=1, eta=eta, inner="sgd", inner_lr=0.1)
    state, _ = opt.prepare(lambda: net(x), loss)
    theta = flat_params(net)
    gen = torch.Generator().manual_seed(2)
    below = 0
    with torch.no_grad():
        for _ in range(20):
            set_params(net, theta + 0.05 * torch.randn(theta.shape, generator=gen, dtype=torch.float64))
            f = net(x)
            gap = float(state.value(f)) - float(loss(f))
            below += gap < -1e-9
            if kind == "mse":
                expected = (1 / (2 * eta) - 1) * float((f - state.z).pow(2).sum(-1).mean())
                assert gap == pytest.approx(expected, rel=1e-9)
    assert below >= 15


def test_m1_with_sgd_inner_steps_is_sgd():
    """∇q_t(θ_t) = ∇ℓ(f(θ_t)): one inner SGD step is one SGD step (any η), momentum and weight decay included."""
    net, x, _ = problem("ce", hidden=(8,))
    y = torch.randint(3, (len(x),), generator=torch.Generator().manual_seed(3))
    twin = mlp(5, [8], 3, activation=torch.nn.Tanh).double()
    twin.load_state_dict(net.state_dict())
    sso = TargetSurrogate(net.parameters(), m=1, eta=123.0, inner="sgd", inner_lr=0.2, momentum=0.9,
                          weight_decay=0.01)
    sgd = torch.optim.SGD(twin.parameters(), lr=0.2, momentum=0.9, weight_decay=0.01)
    gen = torch.Generator().manual_seed(0)
    for _ in range(5):
        idx = torch.randint(len(x), (16,), generator=gen)
        sso.step(lambda idx=idx: net(x[idx]), lambda z, idx=idx: F.cross_entropy(z, y[idx]))
        sgd.zero_grad()
        F.cross_entropy(twin(x[idx]), y[idx]).backward()
        sgd.step()
    for a, b in zip(net.parameters(), twin.parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
    assert sso.expensive_calls == 5 and sso.model_grads == 5 and sso.model_evals == 0


def test_expensive_calls_are_counted_once_per_outer_step_and_checkpointed():
    net, x, loss = problem("mse")
    calls = {"loss": 0}

    def counted(z: torch.Tensor) -> torch.Tensor:
        calls["loss"] += 1
        return loss(z)

    opt = TargetSurrogate(net.parameters(), m=7, eta=0.5, inner="sgd", inner_lr=0.01, momentum=0.5)
    for _ in range(3):
        opt.step(lambda: net(x), counted)
    assert calls["loss"] == 3 == opt.expensive_calls  # ℓ is only ever evaluated at z_t
    assert opt.model_grads == 21
    other = TargetSurrogate(net.parameters(), m=7, eta=0.5, inner="sgd", inner_lr=0.01, momentum=0.5)
    other.load_state_dict(opt.state_dict())
    assert other.expensive_calls == 3 and other.model_grads == 21
    with pytest.raises(ValueError, match="'m'"):
        TargetSurrogate(net.parameters(), m=0)
    with pytest.raises(ValueError, match="'eta'"):
        TargetSurrogate(net.parameters(), eta=-1.0)
    with pytest.raises(ValueError, match="'inner'"):
        TargetSurrogate(net.parameters(), inner="lbfgs")


# --------------------------------------------------------------------------------------- the tasks
@pytest.fixture(scope="module")
def wine() -> ClassificationTask:
    pytest.importorskip("sklearn", reason="Classification-v0 reads scikit-learn's bundled data (extra 'sklearn')")
    return ClassificationTask(dataset="wine", n_test=40, data_seed=3)


def test_classification_contract_reward_is_minus_cross_entropy(wine):
    check_env(wine, skip_render_check=True)
    assert wine.action_space.shape == (3,) and wine.observation_space.shape == (13,)
    batch = wine.contexts("train", 32, np.random.default_rng(0))
    logits = torch.randn(32, 3) * 3
    expected = -F.cross_entropy(logits, batch["target"][:, 0].long(), reduction="none")
    torch.testing.assert_close(wine.score(batch, logits), expected)
    metrics = wine.metrics(batch, logits)
    assert metrics["nll"] == pytest.approx(float(-expected.mean()), rel=1e-6)
    assert metrics["accuracy"] == pytest.approx(float((logits.argmax(-1) == batch["target"][:, 0]).float().mean()))
    obs, info = wine.reset(seed=4)
    _, reward, terminated, _, _ = wine.step(np.array([1.0, -2.0, 0.5], dtype=np.float32))
    label = int(info["target"][0])
    assert terminated and reward == pytest.approx(float(torch.log_softmax(torch.tensor([1.0, -2.0, 0.5]), 0)[label]))


def test_classification_splits_are_fixed_disjoint_and_standardised_on_train(wine):
    assert set(wine.train_index).isdisjoint(wine.test_index)
    assert len(wine.train_index) == 138 and len(wine.test_index) == 40
    small = ClassificationTask(dataset="wine", n_test=40, n_train=50, data_seed=3)
    assert np.array_equal(small.test_index, wine.test_index)  # n_train does not move the test split
    raw = small._x[small.train_index] * small.std + small.mean
    assert np.allclose(small.mean, raw.mean(0)) and np.allclose(small.std, raw.std(0))  # train statistics
    train = small.contexts("train")
    assert train["obs"].shape == (50, 13) and train["target"].dtype == torch.float32
    torch.testing.assert_close(train["obs"].mean(0), torch.zeros(13), atol=1e-5, rtol=0)
    other = ClassificationTask(dataset="wine", n_test=40, data_seed=4)
    assert not np.array_equal(other.test_index, wine.test_index)
    with pytest.raises(ValueError, match="'dataset'"):
        ClassificationTask(dataset="mnist")
    with pytest.raises(ValueError, match="'n_train'"):
        ClassificationTask(dataset="wine", n_train=170, n_test=40)


def test_lqr_expert_is_the_riccati_fixed_point_and_stabilises():
    task = gym.make("rl_energy/LQRImitation-v0", n_train=500, n_test=200).unwrapped
    check_env(task, skip_render_check=True)
    a, b, q, r, p, k = task.A, task.B, task.Q, task.R, task.P, task.K
    assert a.shape == (6, 6) and b.shape == (6, 2)
    assert np.max(np.abs(np.linalg.eigvals(a))) > 1.0  # open-loop unstable ...
    assert np.max(np.abs(np.linalg.eigvals(a - b @ k))) < 1.0  # ... stabilised by the expert
    riccati = q + a.T @ p @ a - a.T @ p @ b @ np.linalg.solve(r + b.T @ p @ b, b.T @ p @ a)
    np.testing.assert_allclose(riccati, p, rtol=1e-9, atol=1e-9)
    np.testing.assert_allclose(k, np.linalg.solve(r + b.T @ p @ b, b.T @ p @ a), rtol=1e-12)
    scipy_linalg = pytest.importorskip("scipy.linalg")
    np.testing.assert_allclose(p, scipy_linalg.solve_discrete_are(a, b, q, r), rtol=1e-7)
    batch = task.contexts("train")
    torch.testing.assert_close(batch["target"], (-batch["obs"].double() @ torch.as_tensor(k.T)).float())
    u = torch.randn(500, 2)
    torch.testing.assert_close(task.score(batch, u), -(u - batch["target"]).pow(2).sum(-1))
    assert task.metrics(batch, torch.zeros(500, 2))["rel_mse"] == pytest.approx(1.0)
    test_a = task.contexts("test")
    test_b = LQRImitationTask(n_train=50, n_test=200).contexts("test")
    assert torch.equal(test_a["obs"], test_b["obs"])
    with pytest.raises(ValueError, match="stabilisable"):
        solve_dare(np.diag([2.0, 0.5]), np.array([[0.0], [1.0]]), np.eye(2), np.eye(1), max_iter=2000)


# ---------------------------------------------------------------------------------------- the agent
def make_agent(task, **kwargs) -> Supervised:
    cfg = SupervisedConfig(**kwargs)
    cfg.validate()
    agent = Supervised(task.observation_space, task.action_space, cfg)
    agent.observe_train_split(task.contexts("train"))
    return agent


def test_auto_loss_is_ce_for_class_targets_and_mse_otherwise(wine):
    assert make_agent(wine).loss_kind == "ce"
    assert make_agent(LQRImitationTask(n_train=100, n_test=50)).loss_kind == "mse"
    hier = gym.make("rl_energy/HierPoly-v0", d=4, n_train=64, n_test=32).unwrapped
    assert make_agent(hier).loss_kind == "mse"
    with pytest.raises(ConfigError, match="agent.loss"):
        Supervised(hier.observation_space, hier.action_space, SupervisedConfig(loss="ce"))


@pytest.mark.parametrize(("key", "value"), [
    ("optimizer", "lbfgs"), ("loss", "hinge"), ("sso_m", 0), ("sso_eta", 0), ("sso_inner", "newton"),
    ("sso_inner_lr", -1), ("lr", 0), ("momentum", 1.0), ("weight_decay", -0.1), ("hidden", "[0]"),
    ("activation", "sine"),
])
def test_bad_config_values_name_the_key(key, value):
    with pytest.raises(ConfigError, match=f"agent.{key}"):
        resolve_config("supervised", "rl_energy/Classification-v0", SupervisedConfig,
                       overrides=[f"agent.{key}={value}"])


def test_sso_with_armijo_rejects_momentum():
    with pytest.raises(ConfigError, match="agent.momentum"):
        resolve_config("supervised", "rl_energy/Classification-v0", SupervisedConfig,
                       overrides=["agent.optimizer=sso", "agent.sso_inner=armijo", "agent.momentum=0.9"])


@pytest.mark.parametrize("optimizer", ["sso", "sgd", "adam"])
def test_checkpoint_round_trip_gives_identical_actions(wine, optimizer):
    torch.manual_seed(0)
    extra = {"sso_inner": "sgd", "sso_inner_lr": 0.1} if optimizer == "sso" else {"lr": 0.05}
    extra["momentum"] = 0.0 if optimizer == "adam" else 0.9
    agent = make_agent(wine, hidden=[8], optimizer=optimizer, sso_m=3, **extra)
    rng = np.random.default_rng(0)
    for _ in range(4):
        metrics = agent.update(wine.contexts("train", 16, rng))
    assert set(metrics) == set(agent.metric_names)
    assert float(metrics["expensive_grads"]) == 4 == agent.expensive_grads()
    assert float(metrics["model_grads"]) == (12 if optimizer == "sso" else 4)
    torch.manual_seed(1)
    fresh = make_agent(wine, hidden=[8], optimizer=optimizer, sso_m=3, **extra)
    obs = wine.contexts("test")["obs"]
    assert not torch.equal(fresh.act(obs), agent.act(obs))
    buffer = io.BytesIO()  # through torch.save, as checkpoints are (in memory the momentum buffers are shared)
    torch.save(agent.checkpoint_state(), buffer)
    buffer.seek(0)
    fresh.load_checkpoint_state(torch.load(buffer, weights_only=False))
    torch.testing.assert_close(fresh.act(obs, deterministic=True), agent.act(obs, deterministic=True), rtol=0, atol=0)
    assert fresh.expensive_grads() == 4
    batch = wine.contexts("train", 16, np.random.default_rng(5))  # and the next update is the same too
    agent.update(batch)
    fresh.update(batch)
    torch.testing.assert_close(fresh.act(obs), agent.act(obs), rtol=0, atol=0)


def test_sso_learns_the_lqr_expert():
    task = LQRImitationTask(n_train=1000, n_test=500)
    torch.manual_seed(0)
    agent = make_agent(task, hidden=[], optimizer="sso", sso_m=10, sso_eta=0.5)
    rng = np.random.default_rng(0)
    for _ in range(100):
        agent.update(task.contexts("train", 100, rng))
    test = task.contexts("test")
    assert task.metrics(test, agent.act(test["obs"]))["rel_mse"] < 0.05
    assert agent.expensive_grads() == 100


def test_trains_digits_through_the_contexts_loop(tmp_path):
    pytest.importorskip("sklearn", reason="Classification-v0 reads scikit-learn's bundled data (extra 'sklearn')")
    from rl_energy.trainer import make_trainer

    overrides = ["env_kwargs.dataset=digits", "agent.hidden=[]", "agent.optimizer=sso", "agent.sso_m=5",
                 "train.batch_size=125", f"train.total_steps={125 * 60}", "train.eval_every=0", "train.log_every=2500",
                 "train.checkpoint_every=0", "train.device=cpu", "train.torch_threads=1"]
    cfg = resolve_config("supervised", "rl_energy/Classification-v0", SupervisedConfig, overrides=overrides)
    result = make_trainer(cfg, tmp_path / "run", verbose=False).train()
    assert result["accuracy"] > 0.85  # chance is 0.1 (10 classes); measured 0.95
    assert math.isfinite(result["nll"]) and result["eval_return_mean"] == pytest.approx(-result["nll"], rel=1e-5)


def test_a_diverging_sso_step_raises_and_leaves_the_parameters():
    from rl_energy.agent import NonFiniteError

    task = LQRImitationTask(n_train=200, n_test=50)
    agent = make_agent(task, hidden=[], optimizer="sso", sso_m=50, sso_inner="sgd", sso_inner_lr=1e6)
    before = [p.detach().clone() for p in agent.net.parameters()]
    with pytest.raises(NonFiniteError, match="parameters"):
        agent.update(task.contexts("train", 100, np.random.default_rng(0)))
    for p, p0 in zip(agent.net.parameters(), before, strict=True):
        assert torch.equal(p, p0)
