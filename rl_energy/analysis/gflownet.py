"""Exact evaluation of GFlowNet samplers on enumerable DAGs, and the distances reported for them.

:func:`exact_terminal_distribution` computes the terminal distribution ``P_T(x)`` a forward policy
induces, by one pass over the DAG in topological order (no sampling noise):

    P(s0) = 1,   P(s') = Σ_{s → s'} P(s) P_F(s'|s),   P_T(x) = P(x) P_F(exit|x).

Distances follow torchgfn's conventions (GFlowNet digest §6): :func:`l1_distance` is the **sum**
``Σ_x |p(x) - q(x)|`` (torchgfn's ``l1_dist``), not the per-state mean some papers report.
"""

from __future__ import annotations

from collections.abc import Callable

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
