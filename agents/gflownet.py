"""GFlowNet samplers: detailed balance (DB), trajectory balance (TB), sub-trajectory balance (SubTB(λ)) and
forward-looking detailed balance (FL-DB, Pan et al. 2023, "Better Training of GFlowNets with Local
Credit and Incomplete Trajectories").

One network family: an MLP from the state encoding to the forward-policy logits ``P_F(·|s)`` (invalid
actions masked), the backward-policy logits ``P_B(·|s')`` when ``backward_policy: learned`` (else
``P_B`` is uniform over parents), and the log state flow ``log F(s)`` (``log F̃(s)`` for FL-DB); TB
learns a scalar ``log Z`` with its own, larger learning rate. Per update (GFlowNet digest §1–§3):

1. sample ``B`` trajectories with ``(1-ε) P_F + ε U(valid)`` (the trainer; :mod:`rl_energy.trajectories`),
   optionally cut at random lengths (``truncate``; DB and FL-DB only);
2. evaluate the network on every visited state at once, and with ``x`` the terminal object form the
   log-flows ``G_t`` along the trajectory: ``G_t = log F(s_t)``; ``G_t = log R(s_t)`` where exit is the
   only action (then ``F(x) = R(x)`` exactly, i.e. ``log F̃(x) = 0`` for FL-DB, unless
   ``terminal_flow: learned`` frees it as the FL-GFN set code does); and after the exit transition
   ``G = log R(x)``, so ``F(x) P_F(exit|x) = R(x)`` is a balance like any other;
3. the loss of the chosen objective, with ``δ_t = log P_F(s_{t+1}|s_t) - log P_B(s_t|s_{t+1})``
   (``log P_B = 0`` for exit):

   * DB: ``mean_t (G_t + δ_t - G_{t+1})²`` over all transitions;
   * FL-DB: DB with ``log F(s) = log F̃(s) - E(s)``, which gives the digest's
     ``(log F̃(s) + log P_F - log F̃(s') - log P_B + E(s') - E(s))²``: every transition carries its own
     energy increment, so truncated trajectories still teach the sampler;
   * TB: ``mean_b (log Z + Σ_t δ_t - log R(x))²`` (complete trajectories only);
   * SubTB(λ): per trajectory ``Σ_{i<j} λ^{j-i} (G_i + Σ_{i≤t<j} δ_t - G_j)² / Σ_{i<j} λ^{j-i}``
     (Madan et al. 2023), averaged over the batch;
4. one Adam step.

Run with ``rl-energy train --agent db|tb|subtb|fldb --env rl_energy/HyperGrid-v0`` (or
``rl_energy/SetGeneration-v0``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from rl_energy.agent import Agent, assert_finite
from rl_energy.envs.dag import DAGEnv
from rl_energy.errors import ConfigError, require
from rl_energy.nets import ACTIVATIONS, mlp
from rl_energy.optim import adam
from rl_energy.trajectories import Trajectories


@dataclass
class GFlowNetConfig:
    """Defaults: torchgfn's HyperGrid example and the FL-GFN set-generation code (digest §3, §7)."""

    TRAIN_DEFAULTS: ClassVar[dict] = {
        "total_steps": 32_000, "batch_size": 16, "log_every": 1_600, "eval_every": 8_000, "checkpoint_every": 8_000,
    }
    """``train`` keys in trajectories: torchgfn's HyperGrid regression runs, 32k trajectories of batch 16."""

    hidden: list[int] = field(default_factory=lambda: [256, 256])
    activation: str = "relu"
    lr: float = 1e-3
    lr_logz: float = 0.1
    """Learning rate of TB's ``log Z`` (10–100x the network's, digest §1)."""
    epsilon: float = 0.0
    """Exploration: weight of the uniform distribution over valid actions when sampling."""
    backward_policy: str = "uniform"
    """``uniform`` over parents, or ``learned`` (a head of the same network)."""
    subtb_lambda: float = 0.9
    truncate: float = 0.0
    """Fraction of the training trajectories cut at a uniformly random length (DB and FL-DB only)."""
    eval_samples: int = 2048
    """Trajectories sampled on-policy at each evaluation (top-k reward, modes)."""
    top_k: int = 100
    terminal_flow: str = "reward"
    """FL-DB at states whose only action is exit (full sets): ``reward`` clamps ``F(x) = R(x)``, i.e.
    ``log F̃(x) = 0`` (the paper's eq. 9, digest §2: the sampler targets ``R/Z``); ``learned`` leaves
    ``log F̃(x)`` a free output and skips the compulsory exit, as the FL-GFN set code does. Then nothing
    ties the terminal flow to ``R``: the sampler targets ``R(x) F̃(x)``, measured far sharper than
    ``R/Z`` (docs/reproductions.md). For reproducing the paper's set-generation curves only."""
    probe_samples: int = 0
    """On-policy trajectories sampled after every update for ``top_k_found``, the mean reward of the best
    ``top_k`` distinct objects among all probes so far (the FL-DB paper's set metric, 16 per step)."""

    def validate(self) -> None:
        require(self, "hidden", bool(self.hidden) and min(self.hidden) >= 1, "a list of positive widths")
        require(self, "activation", self.activation in ACTIVATIONS, f"one of {', '.join(ACTIVATIONS)}")
        for key in ("lr", "lr_logz"):
            require(self, key, getattr(self, key) > 0, "> 0")
        require(self, "epsilon", 0.0 <= self.epsilon <= 1.0, "in [0, 1]")
        require(self, "backward_policy", self.backward_policy in ("uniform", "learned"), "uniform or learned")
        require(self, "subtb_lambda", self.subtb_lambda > 0, "> 0")
        require(self, "truncate", 0.0 <= self.truncate <= 1.0, "in [0, 1]")
        require(self, "eval_samples", self.eval_samples >= 1, ">= 1")
        require(self, "top_k", self.top_k >= 1, ">= 1")
        require(self, "terminal_flow", self.terminal_flow in ("reward", "learned"), "reward or learned")
        require(self, "probe_samples", self.probe_samples >= 0, ">= 0")


@dataclass
class BalanceTerms:
    """Per-transition and per-position quantities of a batch, ``[B, T]`` and ``[B, T+1]``."""

    log_pf: torch.Tensor
    log_pb: torch.Tensor
    log_flow: torch.Tensor
    """``G_t`` (see the module docstring), ``[B, T+1]``."""
    valid: torch.Tensor
    """``[B, T]`` transitions that belong to their trajectory."""
    log_reward: torch.Tensor
    """``[B]`` ``log R(x)`` (meaningful where complete)."""

    @property
    def delta(self) -> torch.Tensor:
        return self.log_pf - self.log_pb


def balance_terms(
    dag: DAGEnv,
    trajs: Trajectories,
    forward_logits: torch.Tensor,
    backward_logits: torch.Tensor | None,
    log_state_flow: torch.Tensor | None,
    forward_looking: bool = False,
    free_terminal_flow: bool = False,
) -> BalanceTerms:
    """The quantities every balance loss is built from, given the network's outputs at every position
    (``forward_logits [B, T+1, n_actions]``, ``backward_logits [B, T+1, n_actions-1]`` or ``None`` for a
    uniform ``P_B``, ``log_state_flow [B, T+1]`` or ``None`` for TB).

    ``free_terminal_flow`` (FL-DB only) leaves ``log F̃(x)`` a network output at states that must exit
    and drops their exit transition, as the FL-GFN set code does, instead of clamping ``F(x) = R(x)``."""
    states, actions = trajs.states, trajs.actions
    b, t1 = states.shape[:2]
    pos = torch.arange(t1, device=states.device)
    valid = pos[None, :-1] < trajs.lengths[:, None]
    is_exit = actions == dag.exit_action
    move = valid & ~is_exit
    fmask = dag.forward_mask(states)
    log_pf_all = torch.log_softmax(forward_logits.masked_fill(~fmask, -torch.inf), -1)
    log_pf = log_pf_all[:, :-1].gather(-1, actions[..., None]).squeeze(-1)
    log_pf = torch.where(valid, log_pf, 0.0)
    undo = actions.clamp(max=dag.n_actions - 2)[..., None]  # the backward action undoing each move
    bmask = dag.backward_mask(states[:, 1:])
    if backward_logits is None:
        log_pb = -bmask.sum(-1).clamp(min=1).float().log()
    else:
        logits = backward_logits[:, 1:].masked_fill(~bmask, -torch.inf)
        log_pb = torch.log_softmax(logits, -1).gather(-1, undo).squeeze(-1)
    log_pb = torch.where(move, log_pb, 0.0)

    log_r_states = dag.log_reward(states)
    if log_state_flow is None:
        log_flow = torch.zeros(b, t1, device=states.device)
    else:
        log_flow = log_state_flow - dag.energy(states) if forward_looking else log_state_flow
    must_exit = fmask[..., -1] & (fmask.sum(-1) == 1)
    sink = (pos[None, :] == trajs.lengths[:, None]) & trajs.complete[:, None]
    if free_terminal_flow:  # FL-GFN set code: log F̃(x) is an output; the compulsory exit is not balanced
        log_flow = torch.where(sink, log_r_states, log_flow)
        valid = valid & ~(is_exit & must_exit[:, :-1])
    else:
        log_flow = torch.where(must_exit | sink, log_r_states, log_flow)
    log_reward = log_r_states[torch.arange(b, device=states.device), trajs.lengths]
    return BalanceTerms(log_pf, log_pb, log_flow, valid, log_reward)


def detailed_balance_loss(terms: BalanceTerms) -> torch.Tensor:
    """``mean over transitions of (G_t + δ_t - G_{t+1})²`` (DB, and FL-DB through ``forward_looking``)."""
    residual = terms.log_flow[:, :-1] + terms.delta - terms.log_flow[:, 1:]
    return (residual.square() * terms.valid).sum() / terms.valid.sum().clamp(min=1)


def trajectory_balance_loss(terms: BalanceTerms, log_z: torch.Tensor) -> torch.Tensor:
    """``mean_b (log Z + Σ_t δ_t - log R(x))²`` over complete trajectories."""
    residual = log_z + terms.delta.sum(-1) - terms.log_reward
    return residual.square().mean()


def subtrajectory_balance_loss(terms: BalanceTerms, lam: float) -> torch.Tensor:
    """SubTB(λ): every sub-trajectory ``i < j ≤ n`` weighted by ``λ^{j-i}``, normalised per trajectory."""
    b, t1 = terms.log_flow.shape
    cum = F.pad(terms.delta.cumsum(-1), (1, 0))  # Σ_{t<j} δ_t, [B, T+1]
    g = terms.log_flow
    residual = g[:, :, None] - cum[:, :, None] + cum[:, None, :] - g[:, None, :]  # [B, i, j]
    pos = torch.arange(t1, device=g.device)
    span = (pos[None, :] - pos[:, None]).float()  # j - i
    n = terms.valid.sum(-1)
    inside = (span > 0)[None] & (pos[None, None, :] <= n[:, None, None])
    weight = torch.where(inside, lam ** span.clamp(min=0)[None], 0.0)
    per_traj = (weight * residual.square()).sum((1, 2)) / weight.sum((1, 2)).clamp(min=1e-30)
    return per_traj.mean()


class GFlowNet(Agent):
    """GFlowNet sampler (set ``objective`` in a subclass: db, tb, subtb or fldb)."""

    Config = GFlowNetConfig
    collection = "trajectories"
    objective: ClassVar[str] = "tb"
    metric_names = ("loss", "log_z")

    def __init__(self, dag: DAGEnv, config: GFlowNetConfig, device: torch.device | str = "cpu") -> None:
        super().__init__(dag.observation_space(), None, config, device)
        c = config
        if c.truncate > 0 and self.objective in ("tb", "subtb"):
            raise ConfigError(f"config key 'agent.truncate': {self.objective} balances whole trajectories and "
                              "cannot learn from truncated ones; use db or fldb")
        if c.terminal_flow != "reward" and self.objective != "fldb":
            raise ConfigError(f"config key 'agent.terminal_flow': only fldb can leave the terminal flow free "
                              f"({self.objective} would never see the reward); use reward")
        self.dag = dag
        self.forward_looking = self.objective == "fldb"
        self.learned_pb = c.backward_policy == "learned"
        self.uses_flow = self.objective != "tb"
        n_out = dag.n_actions + (dag.n_actions - 1 if self.learned_pb else 0) + int(self.uses_flow)
        self.net = mlp(dag.obs_dim, c.hidden, n_out, ACTIVATIONS[c.activation]).to(self.device)
        self.net.keep_fp32 = True  # log-probabilities summed along a trajectory amplify bf16 rounding
        self.log_z = nn.Parameter(torch.zeros((), device=self.device))
        groups = [{"params": list(self.net.parameters()), "lr": c.lr}]
        if self.objective == "tb":
            groups.append({"params": [self.log_z], "lr": c.lr_logz})
        self.optimizers["model"] = adam(groups, c.lr)

    def forward_logits(self, obs: torch.Tensor) -> torch.Tensor:
        """Unmasked ``P_F`` logits for encoded states (the sampler masks them)."""
        return self.net(obs)[..., : self.dag.n_actions]

    def terms(self, trajs: Trajectories) -> BalanceTerms:
        out = self.net(self.dag.encode(trajs.states))
        a = self.dag.n_actions
        bwd = out[..., a : 2 * a - 1] if self.learned_pb else None
        flow = out[..., -1] if self.uses_flow else None
        return balance_terms(self.dag, trajs, out[..., :a], bwd, flow, self.forward_looking,
                             self.forward_looking and self.config.terminal_flow == "learned")

    def loss(self, trajs: Trajectories) -> torch.Tensor:
        terms = self.terms(trajs)
        if self.objective == "tb":
            if not bool(trajs.complete.all()):
                raise ValueError("trajectory balance needs complete trajectories")
            return trajectory_balance_loss(terms, self.log_z)
        if self.objective == "subtb":
            return subtrajectory_balance_loss(terms, self.config.subtb_lambda)
        return detailed_balance_loss(terms)

    def update(self, trajs: Trajectories) -> dict[str, torch.Tensor]:  # type: ignore[override]
        loss = self.loss(trajs)
        assert_finite("loss", loss)
        opt = self.optimizers["model"]
        opt.zero_grad()
        loss.backward()
        opt.step()
        self.num_updates += 1
        return {"loss": loss.detach(), "log_z": self.log_z_estimate().detach()}

    @torch.no_grad()
    def log_z_estimate(self) -> torch.Tensor:
        """TB's ``log Z``; for the flow objectives ``log F(s0)`` (``log F̃(s0) - E(s0)`` for FL-DB)."""
        if not self.uses_flow:
            return self.log_z.detach().clone()
        s0 = self.dag.initial_states(1)
        log_f = self.net(self.dag.encode(s0))[0, -1]
        return log_f - self.dag.energy(s0)[0] if self.forward_looking else log_f


class DBGFlowNet(GFlowNet):
    """GFlowNet, detailed balance (Bengio et al. 2023, "GFlowNet Foundations")."""

    objective = "db"


class TBGFlowNet(GFlowNet):
    """GFlowNet, trajectory balance (Malkin et al. 2022)."""

    objective = "tb"


class SubTBGFlowNet(GFlowNet):
    """GFlowNet, sub-trajectory balance SubTB(λ) (Madan et al. 2023)."""

    objective = "subtb"


class FLDBGFlowNet(GFlowNet):
    """GFlowNet, forward-looking detailed balance with energies of intermediate states (Pan et al. 2023)."""

    objective = "fldb"


__all__ = [
    "BalanceTerms",
    "GFlowNet",
    "GFlowNetConfig",
    "balance_terms",
    "detailed_balance_loss",
    "subtrajectory_balance_loss",
    "trajectory_balance_loss",
]
