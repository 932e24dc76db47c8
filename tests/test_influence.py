"""EK-FAC influence functions (rl_energy/analysis/influence.py; Grosse et al. 2023, digest §6)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from rl_energy.analysis.influence import (
    Influence,
    layer_signals,
    low_rank,
    per_example_grads,
    rank_influences,
    sampled_gaussian_nll,
    tfidf_candidates,
)
from rl_energy.errors import ConfigError
from rl_energy.nets import mlp


def _half_sq(model: nn.Module, batch: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    x, y = batch
    return 0.5 * ((model(x) - y) ** 2).sum(-1)


def _dense_fisher(model: nn.Module, loss, batches) -> torch.Tensor:
    """E_n[vec∇W vec∇Wᵀ] of one Linear layer, from autograd one example at a time (not from the hooks)."""
    rows = []
    lin = model
    for x, y in batches:
        for i in range(len(x)):
            lin.zero_grad()
            loss(model, (x[i:i + 1], y[i:i + 1])).sum().backward()
            rows.append(torch.cat([lin.weight.grad, lin.bias.grad[:, None]], 1).reshape(-1).double())
    g = torch.stack(rows)
    return g.T @ g / len(rows)


def _factorial_layer() -> tuple[nn.Linear, list]:
    """A Linear(3->2) and a data set that is the full product of 5 inputs and 4 residuals: label = pred - r_j, so
    the per-example gradient is r_j a_iᵀ and the exact Fisher is E[r rᵀ] ⊗ E[a aᵀ] (K-FAC is exact)."""
    torch.manual_seed(0)
    lin = nn.Linear(3, 2)
    xs, rs = torch.randn(5, 3), torch.randn(4, 2) * torch.tensor([1.0, 0.3])
    x = xs.repeat_interleave(4, 0)
    r = rs.repeat(5, 1)
    with torch.no_grad():
        y = lin(x) - r
    return lin, [(x, y)]


def test_kfac_and_ekfac_equal_exact_inverse_when_fisher_is_kronecker() -> None:
    lin, data = _factorial_layer()
    dense = _dense_fisher(lin, _half_sq, data)
    lam = 0.05
    v = torch.randn(3, 2, 4, dtype=torch.float64)
    want = torch.linalg.solve(dense + lam * torch.eye(8, dtype=torch.float64), v.reshape(3, -1).T).T.reshape(3, 2, 4)
    for method in ("kfac", "ekfac", "exact"):
        inf = Influence(lin, method=method, damping=lam).fit(data, _half_sq)
        got = inf.precondition({"": v})[""]
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-7)
    # the EK-FAC eigenvalues are the Kronecker products of the factors' eigenvalues here
    f = Influence(lin, method="ekfac", damping=lam).fit(data, _half_sq).factors[""]
    torch.testing.assert_close(f.lam, torch.outer(f.eig_s, f.eig_a), rtol=1e-5, atol=1e-8)


def test_ekfac_is_exact_inverse_of_its_eigenbasis_projection_and_beats_kfac() -> None:
    """General data: EK-FAC preconditions with the exact inverse of Q diag(Λ) Qᵀ + λI, Q = Q_S ⊗ Q_A and
    Λ = diag(Qᵀ F Q) of the brute-force Fisher F; that matrix is closer to F than K-FAC's (Frobenius)."""
    torch.manual_seed(1)
    lin = nn.Linear(4, 3)
    x = torch.randn(64, 4) * torch.tensor([2.0, 1.0, 0.5, 0.1])
    y = torch.randn(64, 3) + x[:, :3] ** 2
    data = [(x[:32], y[:32]), (x[32:], y[32:])]
    dense = _dense_fisher(lin, _half_sq, data)
    ek = Influence(lin, method="ekfac", damping=0.01).fit(data, _half_sq)
    kf = Influence(lin, method="kfac", damping=0.01).fit(data, _half_sq)
    f = ek.factors[""]
    q = torch.kron(f.q_s, f.q_a)
    lam = torch.diagonal(q.T @ dense @ q)
    torch.testing.assert_close(lam.reshape(3, 5), f.lam, rtol=1e-5, atol=1e-7)
    ek_mat = q @ torch.diag(lam) @ q.T
    kf_mat = torch.kron(f.S, f.A)
    v = torch.randn(2, 3, 5, dtype=torch.float64)
    want = torch.linalg.solve(ek_mat + 0.01 * torch.eye(15, dtype=torch.float64), v.reshape(2, -1).T).T
    torch.testing.assert_close(ek.precondition({"": v})[""].reshape(2, -1), want, rtol=1e-5, atol=1e-7)
    exact = torch.linalg.solve(dense + 0.01 * torch.eye(15, dtype=torch.float64), v.reshape(2, -1).T).T
    assert (ek.precondition({"": v})[""].reshape(2, -1) - exact).abs().max() > 1e-3  # not trivially exact
    assert torch.linalg.norm(dense - ek_mat) < torch.linalg.norm(dense - kf_mat)
    torch.testing.assert_close(kf.precondition({"": v})[""].reshape(2, -1),
                               torch.linalg.solve(kf_mat + 0.01 * torch.eye(15, dtype=torch.float64),
                                                  v.reshape(2, -1).T).T, rtol=1e-5, atol=1e-7)


def test_kfac_of_linear_regression_is_its_gauss_newton() -> None:
    """Linear regression with labels sampled from N(pred, I): A = E[aaᵀ] exactly, S → I, so S ⊗ A → JᵀJ = I ⊗ A."""
    torch.manual_seed(2)
    lin = nn.Linear(3, 2)
    x = torch.randn(20_000, 3) * torch.tensor([1.0, 2.0, 0.5]) + 1.0

    def fisher(model: nn.Module, batch: torch.Tensor) -> torch.Tensor:
        return sampled_gaussian_nll(model(batch))

    inf = Influence(lin, method="kfac").fit(list(x.split(5000)), fisher)
    f = inf.factors[""]
    a = torch.cat([x, torch.ones(len(x), 1)], 1).double()
    torch.testing.assert_close(f.A, a.T @ a / len(x), rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(f.S, torch.eye(2, dtype=torch.float64), rtol=0, atol=0.04)
    gn = torch.kron(torch.eye(2, dtype=torch.float64), a.T @ a / len(x))
    assert torch.linalg.norm(torch.kron(f.S, f.A) - gn) / torch.linalg.norm(gn) < 0.03


def test_per_example_signals_match_autograd_for_sequences() -> None:
    """∇W = Σ_t g_t a_tᵀ for a layer applied to [B, T, in] equals autograd's per-example gradient."""
    torch.manual_seed(3)
    net = mlp(4, [5], 3)
    x, y = torch.randn(3, 6, 4), torch.randn(3, 6, 3)

    def loss(model: nn.Module, batch) -> torch.Tensor:
        return ((model(batch[0]) - batch[1]) ** 2).sum((1, 2))

    layers = {"0": net[0], "2": net[2]}
    sig, _ = layer_signals(net, layers, loss, (x, y))
    assert all(p.grad is None for p in net.parameters())  # the hooks never write .grad
    grads = per_example_grads(sig)
    loss(net, (x[1:2], y[1:2])).sum().backward()
    torch.testing.assert_close(grads["0"][1].float(), torch.cat([net[0].weight.grad, net[0].bias.grad[:, None]], 1))
    torch.testing.assert_close(grads["2"][1].float(), torch.cat([net[2].weight.grad, net[2].bias.grad[:, None]], 1))


def _trained_regression(seed: int = 4):
    torch.manual_seed(seed)
    x = torch.randn(80, 3)
    y = (x @ torch.tensor([1.0, -2.0, 0.5]))[:, None] + 0.1 * torch.randn(80, 1)
    y[7] += 6.0  # an outlier: the query below duplicates it
    net = mlp(3, [16], 1, activation=nn.Tanh)
    opt = torch.optim.Adam(net.parameters(), 1e-2)
    for _ in range(300):
        opt.zero_grad()
        _half_sq(net, (x, y)).mean().backward()
        opt.step()
    return net, x, y


def test_duplicated_training_point_is_most_helpful_for_itself() -> None:
    net, x, y = _trained_regression()
    train = [(x[:40], y[:40]), (x[40:], y[40:])]

    def neg_loss(model, batch):
        return -_half_sq(model, batch)

    def fisher(model, batch):
        return sampled_gaussian_nll(model(batch[0]))

    for method in ("identity", "kfac", "ekfac", "exact"):
        inf = Influence(net, method=method).fit(train, fisher)
        s = inf.scores([(x[7:8], y[7:8])], neg_loss, train, _half_sq)
        assert s.shape == (1, 80)
        assert s[0, 7] > 0
        order, _ = rank_influences(s[0], 3)
        assert order[0] == 7, (method, order)


def test_low_rank_query_batching() -> None:
    net, x, y = _trained_regression()
    train = [(x, y)]
    inf = Influence(net, method="ekfac").fit(train, lambda m, b: sampled_gaussian_nll(m(b[0])))
    pq = inf.preconditioned_query([(x[:5], y[:5])], lambda m, b: -_half_sq(m, b))
    full = inf.scores_from_preconditioned(pq, train, _half_sq)
    torch.testing.assert_close(inf.scores_from_preconditioned(pq, train, _half_sq, rank=16), full)
    r1 = inf.scores_from_preconditioned(pq, train, _half_sq, rank=1)
    assert (r1 - full).abs().max() > 1e-6 * full.abs().max()
    u, s, v = low_rank(pq["0"], 2)
    assert u.shape == (5, 16, 2) and s.shape == (5, 2) and v.shape == (5, 4, 2)


def test_lissa_converges_to_exact() -> None:
    net, x, y = _trained_regression()
    train = [(x, y)]

    def gn(model, batch):  # scalar output: its gradient outer product is the exact Gauss-Newton matrix
        return model(batch[0]).sum(-1)

    q = [(x[:3], y[:3])]
    exact = Influence(net, method="exact", damping_scale=1.0).fit(train, gn).preconditioned_query(q, _half_sq)
    lissa = Influence(net, method="lissa", damping_scale=1.0, lissa_iterations=1000).fit(train, gn)
    got = lissa.preconditioned_query(q, _half_sq)
    for n in exact:
        assert torch.linalg.norm(got[n] - exact[n]) / torch.linalg.norm(exact[n]) < 0.05


def test_bad_arguments() -> None:
    with pytest.raises(ConfigError, match="method"):
        Influence(nn.Linear(2, 2), method="newton")
    with pytest.raises(ConfigError, match="nn.Linear"):
        Influence(nn.Linear(2, 2), layers=["nope"])
    with pytest.raises(ConfigError, match="rank"):
        low_rank(torch.zeros(1, 2, 2), 0)


def test_tfidf_candidates() -> None:
    pytest.importorskip("sklearn")
    texts = ["the capital of abc is xyz", "the river of abc is long", "dogs bark", "xyz is a city"]
    top = tfidf_candidates("capital of abc", texts, 2)
    assert list(top) == [0, 1]


def test_cli_end_to_end_and_errors(tmp_path, capsys) -> None:
    import csv

    import yaml

    from rl_energy.cli import main

    run = tmp_path / "run"
    assert main(["train", "--agent", "supervised", "--env", "rl_energy/Classification-v0", "--run-dir", str(run),
                 "--set", "train.total_steps=500", "--set", "train.eval_every=500", "--set", "env_kwargs.dataset=wine",
                 "--quiet"]) == 0
    assert main(["analyze", "influence", str(run), "--top", "3", "--query", "test:0"]) == 0
    out = capsys.readouterr().out
    assert "ekfac influence on test:0" in out and "wrote" in out
    rows = list(csv.DictReader((run / "influence.csv").open()))
    assert len(rows) > 100 and float(rows[0]["influence"]) >= float(rows[-1]["influence"])
    assert main(["analyze", "influence", str(run), "--query", "test:100000"]) == 2
    assert "out of range" in capsys.readouterr().err
    assert main(["analyze", "influence", str(run), "--query", "nonsense"]) == 2
    assert main(["analyze", "influence", str(tmp_path / "missing")]) == 2
    assert "not a run directory" in capsys.readouterr().err
    cfg = yaml.safe_load((run / "config.yaml").read_text())
    cfg["agent_name"], cfg["agent"] = "layerwise", {}
    (run / "config.yaml").write_text(yaml.safe_dump(cfg))
    assert main(["analyze", "influence", str(run)]) == 2
    assert "supports runs of the 'supervised' agent" in capsys.readouterr().err


@pytest.mark.filterwarnings("ignore::FutureWarning")
def test_kronfluence_agrees() -> None:
    """Our EK-FAC scores equal the reference implementation's on the same model, data, query and damping."""
    pytest.importorskip("kronfluence")
    from rl_energy.analysis.influence import kronfluence_scores

    net, x, y = _trained_regression()

    def gn(model, batch):  # deterministic curvature (exact Gauss-Newton), so both fit the same matrix
        return model(batch[0]).sum(-1)

    def neg_loss(model, batch):
        return -_half_sq(model, batch)

    inf = Influence(net, method="ekfac").fit([(x, y)], gn)
    ours = inf.scores([(x[7:9], y[7:9])], neg_loss, [(x, y)], _half_sq).numpy()
    theirs, _ = kronfluence_scores(net, (x, y), (x[7:9], y[7:9]), _half_sq, gn, neg_loss)
    np.testing.assert_allclose(ours, theirs, rtol=2e-3, atol=1e-4 * np.abs(ours).max())
