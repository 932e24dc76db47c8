"""Benchmark: our EK-FAC (rl_energy/analysis/influence.py) vs kronfluence's EK-FAC, same model, data, queries and
damping heuristic, in the same process (one thread each; best of ``--repeats``).

Two settings: ``load_diabetes`` with an MLP 10-64-64-1 (squared error, exact Gauss-Newton curvature) and
``load_digits`` with an MLP 64-256-256-10 (cross-entropy, labels sampled from the model). Each timing is factor
fitting (covariances, eigendecomposition, EK-FAC eigenvalues) plus pairwise scoring of all training samples against
the queries. Prints a table, the Spearman agreement of the two implementations' scores, and finally
``ekfac/kronfluence time ratio: R`` = our total seconds / kronfluence's (below 1: ours is faster).

Usage: ``python scripts/bench_influence.py [--repeats 3] [--quick]``.
"""

from __future__ import annotations

import argparse
import math
import time

import numpy as np
import torch
from torch import nn

from rl_energy.analysis.influence import (
    Influence,
    expected_categorical_nll,
    kronfluence_scores,
    sampled_categorical_nll,
)
from rl_energy.errors import import_optional
from rl_energy.nets import mlp


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    ra, rb = np.argsort(np.argsort(a)), np.argsort(np.argsort(b))
    return float(np.corrcoef(ra, rb)[0, 1])


def fit_model(net: nn.Module, x: torch.Tensor, y: torch.Tensor, loss, steps: int) -> None:
    opt = torch.optim.Adam(net.parameters(), 3e-3, weight_decay=1e-3)
    for _ in range(steps):
        opt.zero_grad()
        loss(net, (x, y)).mean().backward()
        opt.step()


def setting_diabetes() -> tuple:
    datasets = import_optional("sklearn.datasets", "bench_influence")
    x, y = datasets.load_diabetes(return_X_y=True)
    x = torch.as_tensor((x - x.mean(0)) / x.std(0), dtype=torch.float32)
    y = torch.as_tensor((y - y.mean()) / y.std(), dtype=torch.float32)[:, None]
    torch.manual_seed(0)
    net = mlp(10, [64, 64], 1, activation=nn.Tanh)

    def loss(m, b):
        return ((m(b[0]) - b[1]) ** 2).sum(-1)

    def curv(m, b):
        return math.sqrt(2) * m(b[0]).sum(-1)

    fit_model(net, x, y, loss, 500)
    return "diabetes, MLP 10-64-64-1, MSE, exact GN", net, x, y, loss, curv, 16


def setting_digits() -> tuple:
    datasets = import_optional("sklearn.datasets", "bench_influence")
    x, y = datasets.load_digits(return_X_y=True)
    x = torch.as_tensor(x / 16.0, dtype=torch.float32)
    y = torch.as_tensor(y, dtype=torch.long)
    torch.manual_seed(0)
    net = mlp(64, [256, 256], 10)

    def loss(m, b):
        return nn.functional.cross_entropy(m(b[0]), b[1], reduction="none")

    def curv(m, b):
        return expected_categorical_nll(m, b[0], 10)

    fit_model(net, x, y, loss, 300)
    return "digits, MLP 64-256-256-10, CE, expected Fisher", net, x, y, loss, curv, 16


def sampled_noise(net: nn.Module, x: torch.Tensor, y: torch.Tensor, loss, n_q: int = 8) -> str:
    """How far labels sampled once per example (the paper's Monte-Carlo true Fisher) move the scores: Spearman of
    ours vs kronfluence and of ours vs ours with another draw."""
    gen = torch.Generator().manual_seed(0)

    def sampled(m, b):
        return sampled_categorical_nll(m(b[0]), generator=gen)

    def measurement(m, b):
        return -loss(m, b)

    q = (x[:n_q], y[:n_q])
    runs = [Influence(net, method="ekfac").fit([(x, y)], sampled).scores([q], measurement, [(x, y)], loss).numpy()
            for _ in range(2)]
    kron, _ = kronfluence_scores(net, (x, y), q, loss, sampled, measurement, batch_size=len(x))
    a = np.mean([spearman(runs[0][i], kron[i]) for i in range(n_q)])
    b = np.mean([spearman(runs[0][i], runs[1][i]) for i in range(n_q)])
    return (f"digits with 1 sampled label per example (independent draws): Spearman ours vs kronfluence {a:.3f}, "
            f"ours vs ours (another draw) {b:.3f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=256, help="examples per batch, both implementations")
    parser.add_argument("--quick", action="store_true", help="one repeat, diabetes only")
    args = parser.parse_args()
    torch.set_num_threads(1)
    settings = [setting_diabetes] if args.quick else [setting_diabetes, setting_digits]
    repeats = 1 if args.quick else args.repeats
    print(f"{'setting':48s} {'N':>5s} {'Q':>3s} {'ours fit s':>10s} {'ours score s':>12s} {'kron fit s':>10s} "
          f"{'kron score s':>12s} {'ratio':>6s} {'Spearman':>8s}")
    ours_total, kron_total = 0.0, 0.0
    for make in settings:
        name, net, x, y, loss, curv, n_q = make()
        query = (x[:n_q], y[:n_q])

        def measurement(m, b, loss=loss):
            return -loss(m, b)

        best_ours, best_kron = (math.inf, math.inf), (math.inf, math.inf)
        for _ in range(repeats):
            t0 = time.perf_counter()
            batches = list(zip(x.split(args.batch_size), y.split(args.batch_size), strict=True))
            inf = Influence(net, method="ekfac").fit(batches, curv)
            t1 = time.perf_counter()
            ours = inf.scores([query], measurement, batches, loss).numpy()
            t2 = time.perf_counter()
            if sum(best_ours) > t2 - t0:
                best_ours = (t1 - t0, t2 - t1)
            kron, times = kronfluence_scores(net, (x, y), query, loss, curv, measurement, batch_size=args.batch_size)
            if sum(best_kron) > times["fit"] + times["score"]:
                best_kron = (times["fit"], times["score"])
        rho = np.mean([spearman(ours[q], kron[q]) for q in range(n_q)])
        ratio = sum(best_ours) / sum(best_kron)
        ours_total += sum(best_ours)
        kron_total += sum(best_kron)
        print(f"{name:48s} {len(x):>5d} {n_q:>3d} {best_ours[0]:>10.3f} {best_ours[1]:>12.3f} {best_kron[0]:>10.3f} "
              f"{best_kron[1]:>12.3f} {ratio:>6.2f} {rho:>8.4f}")
    if not args.quick:
        _, net, x, y, loss, _, _ = setting_digits()
        print(sampled_noise(net, x, y, loss))
    print(f"(best of {repeats}; one thread; batches of {args.batch_size}; ratio = ours / kronfluence, fit + score; "
          "Spearman = agreement of the two implementations' scores, mean over queries)")
    print(f"ekfac/kronfluence time ratio: {ours_total / kron_total:.3f}")


if __name__ == "__main__":
    main()
