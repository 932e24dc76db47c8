"""Trajectory collection for GFlowNet samplers: batches of whole (or truncated) trajectories through a
:class:`~rl_energy.envs.dag.DAGEnv`.

A batch of ``B`` trajectories is padded to a common length ``T``: ``states[b, t]`` for ``t ≤ T``
and ``actions[b, t]`` for ``t < T``; trajectory ``b`` has ``lengths[b]`` transitions. A complete
trajectory's last transition is the exit action, which leaves the state unchanged, so
``states[b, lengths[b]]`` is its terminal object ``x``. Positions past the end repeat the last state.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from rl_energy.envs.dag import DAGEnv


@dataclass
class Trajectories:
    states: torch.Tensor
    """``[B, T+1, state_dim]`` int64."""
    actions: torch.Tensor
    """``[B, T]`` int64 (padding repeats the exit action)."""
    lengths: torch.Tensor
    """``[B]`` transitions per trajectory."""
    complete: torch.Tensor
    """``[B]`` bool: the trajectory ends with the exit action."""

    @property
    def batch_size(self) -> int:
        return self.states.shape[0]

    def terminal_states(self) -> torch.Tensor:
        """``x`` of each trajectory (meaningful where ``complete``)."""
        return self.states[torch.arange(self.batch_size, device=self.states.device), self.lengths]


@torch.no_grad()
def sample_trajectories(
    dag: DAGEnv,
    forward_logits: Callable[[torch.Tensor], torch.Tensor],
    n: int,
    epsilon: float = 0.0,
) -> Trajectories:
    """``n`` complete trajectories from ``s0``, each action drawn from the masked policy mixed with the
    uniform distribution over valid actions: ``(1-ε) P_F(·|s) + ε U(valid)`` (the exploration of
    digest §3). ``forward_logits`` maps ``dag.encode(states)`` to ``[n, n_actions]`` logits."""
    states = dag.initial_states(n)
    out_states = [states]
    out_actions = []
    done = torch.zeros(n, dtype=torch.bool, device=states.device)
    lengths = torch.zeros(n, dtype=torch.long, device=states.device)
    exit_action = dag.exit_action
    for _ in range(dag.max_length):
        mask = dag.forward_mask(states)
        probs = torch.softmax(forward_logits(dag.encode(states)).masked_fill(~mask, -torch.inf), -1)
        if epsilon > 0:
            probs = (1.0 - epsilon) * probs + epsilon * mask / mask.sum(-1, keepdim=True)
        actions = torch.multinomial(probs, 1).squeeze(-1).masked_fill_(done, exit_action)
        lengths += ~done
        done = done | (actions == exit_action)
        states = dag.step(states, actions)
        out_actions.append(actions)
        out_states.append(states)
        if bool(done.all()):
            break
    return Trajectories(torch.stack(out_states, 1), torch.stack(out_actions, 1), lengths, done)


def truncate_trajectories(trajs: Trajectories, fraction: float) -> Trajectories:
    """Cut a random ``fraction`` of the trajectories after a uniformly drawn number of transitions in
    ``1 .. length`` (so a cut one is complete with probability ``1/length``): incomplete trajectories,
    whose terminal reward is never seen, as in the FL-DB paper's incomplete-trajectory experiments."""
    if fraction <= 0:
        return trajs
    b = trajs.batch_size
    cut = torch.rand(b, device=trajs.lengths.device) < fraction
    new_len = (torch.rand(b, device=trajs.lengths.device) * trajs.lengths).long() + 1
    lengths = torch.where(cut, torch.minimum(new_len, trajs.lengths), trajs.lengths)
    complete = trajs.complete & (lengths == trajs.lengths)
    # pad past the new end with the last kept state, as for a trajectory that stopped there
    pos = torch.arange(trajs.states.shape[1], device=lengths.device)
    keep = torch.minimum(pos[None, :], lengths[:, None])
    states = trajs.states.gather(1, keep[..., None].expand_as(trajs.states))
    return Trajectories(states, trajs.actions, lengths, complete)
