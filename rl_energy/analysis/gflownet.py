"""Exact evaluation of GFlowNet samplers on enumerable DAGs, and the distances reported for them.

:func:`exact_terminal_distribution` computes the terminal distribution ``P_T(x)`` a forward policy
induces, by one pass over the DAG in topological order (no sampling noise):

    P(s0) = 1,   P(s') = Σ_{s → s'} P(s) P_F(s'|s),   P_T(x) = P(x) P_F(exit|x).

Distances follow torchgfn's conventions (GFlowNet digest §6): :func:`l1_distance` is the **sum**
``Σ_x |p(x) - q(x)|`` (torchgfn's ``l1_dist``), not the per-state mean some papers report.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from rl_energy.envs.dag import DAGEnv


@torch.no_grad()
def exact_terminal_distribution(
    dag: DAGEnv, forward_logits: Callable[[torch.Tensor], torch.Tensor], batch: int = 65536
) -> torch.Tensor:
    """``P_T`` over ``dag.all_states()`` (float64) of the policy with logits ``forward_logits(encode(s))``.

    Invalid actions are masked; states without any valid action (unreachable ones, e.g. sets larger
    than ``k``) get probability zero.
    """
    states = dag.all_states()
    n = states.shape[0]
    mask = dag.forward_mask(states)
    probs = torch.empty(n, dag.n_actions, dtype=torch.float64, device=states.device)
    for i in range(0, n, batch):
        logits = forward_logits(dag.encode(states[i : i + batch])).double()
        probs[i : i + batch] = torch.softmax(logits.masked_fill(~mask[i : i + batch], -torch.inf), -1)
    probs = torch.nan_to_num(probs, nan=0.0)  # rows with no valid action
    moves = mask[:, :-1]
    children = torch.full((n, dag.n_actions - 1), n, dtype=torch.long, device=states.device)  # n: a dump slot
    for a in range(dag.n_actions - 1):
        ok = moves[:, a]
        act = torch.full((int(ok.sum()),), a, dtype=torch.long, device=states.device)
        children[ok, a] = dag.state_index(dag.step(states[ok], act))
    reach = torch.zeros(n + 1, dtype=torch.float64, device=states.device)
    reach[dag.state_index(dag.initial_states(1))] = 1.0
    level = dag.level(states)
    order = torch.argsort(level, stable=True)
    bounds = torch.searchsorted(level[order], torch.arange(int(level.max()) + 2, device=states.device))
    for lv in range(len(bounds) - 1):
        idx = order[bounds[lv] : bounds[lv + 1]]
        flow = reach[idx, None] * probs[idx, :-1]
        reach.index_add_(0, children[idx].flatten(), flow.flatten())
    return reach[:n] * probs[:, -1]


def l1_distance(p: torch.Tensor, q: torch.Tensor) -> float:
    """``Σ_x |p(x) - q(x)|`` (torchgfn's summed L1; divide by the number of states for the mean form)."""
    return float((p - q).abs().sum())


def jensen_shannon(p: torch.Tensor, q: torch.Tensor) -> float:
    """Jensen–Shannon divergence in nats, ``½ KL(p‖m) + ½ KL(q‖m)`` with ``m = (p + q)/2``."""
    p, q = p.double(), q.double()
    m = 0.5 * (p + q)

    def kl(a: torch.Tensor) -> torch.Tensor:
        pos = a > 0
        return (a[pos] * (a[pos] / m[pos]).log()).sum()

    return float(0.5 * kl(p) + 0.5 * kl(q))


def empirical_distribution(dag: DAGEnv, terminal_states: torch.Tensor) -> torch.Tensor:
    """Frequencies of sampled terminal states over ``dag.all_states()`` (float64)."""
    counts = torch.bincount(dag.state_index(terminal_states), minlength=dag.num_states).double()
    return counts / counts.sum()


EVAL_COLUMNS = ("l1", "jsd", "log_z_error", "top_k_reward", "mean_log_reward", "modes_found", "top_k_found")
"""``progress.csv`` columns of a GFlowNet evaluation (besides the agent's loss and ``log_z``)."""


@torch.no_grad()
def sampler_metrics(agent: Any, dag: DAGEnv, n_samples: int, top_k: int = 100) -> dict[str, float]:
    """Evaluation of a GFlowNet agent (``forward_logits``, ``log_z_estimate``) on ``dag``:

    * ``top_k_reward``: mean ``R(x)`` of the ``top_k`` best distinct objects among ``n_samples``
      on-policy samples (the set-generation metric of the FL-DB paper); ``mean_log_reward`` over all;
    * ``log_z_error``: ``|log Ẑ - log Z|`` with the exact ``log Z`` of the env;
    * on enumerable envs, ``l1`` (summed) and ``jsd`` between the **exact** terminal distribution and
      ``R/Z``.
    """
    from rl_energy.trajectories import sample_trajectories

    trajs = sample_trajectories(dag, agent.forward_logits, n_samples)
    x = trajs.terminal_states()
    distinct = torch.unique(x, dim=0)
    log_r = dag.log_reward(distinct).double()
    out = {
        "top_k_reward": float(log_r.topk(min(top_k, len(log_r))).values.exp().mean()),
        "mean_log_reward": float(dag.log_reward(x).double().mean()),
    }
    try:
        out["log_z_error"] = abs(float(agent.log_z_estimate()) - dag.true_log_partition())
    except ValueError:  # too large to enumerate and no closed form
        pass
    if dag.enumerable:
        p = exact_terminal_distribution(dag, agent.forward_logits)
        target = dag.target_distribution()
        out["l1"] = l1_distance(p, target)
        out["jsd"] = jensen_shannon(p, target)
    return out


def format_metrics(metrics: dict[str, float]) -> str:
    """One line of the metrics :func:`sampler_metrics` (and the trainer) report."""
    parts = []
    for key, label, fmt in (("l1", "L1 (exact, summed)", ".4f"), ("jsd", "JSD", ".5f"),
                            ("log_z_error", "|log Z error|", ".4f"), ("top_k_reward", "top-k mean reward", ".4g"),
                            ("mean_log_reward", "mean log R", ".3f"), ("modes_found", "modes found", ".0f"),
                            ("top_k_found", "top-k found (probes)", ".4g")):
        if key in metrics:
            parts.append(f"{label} {metrics[key]:{fmt}}")
    return " | ".join(parts)
