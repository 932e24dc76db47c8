"""State-conditioned normalizing flows over actions in ``[-1, 1]^A`` (EBFlow, Chao et al. 2024, §3).

A flow maps an action ``a`` to a latent ``ε`` through invertible layers (the *density* direction) and
back (the *sampling* direction). Following the EBFlow factorisation (MEow Eq. 8–9) every layer says
whether its Jacobian depends on its input:

* **non-linear** layers (``linear = False``): the tanh squash and the additive couplings. Their
  log-determinants, with the unnormalised prior ``-½‖ε‖²``, form the energy: ``Q(s,a)/α``;
* **linear** layers (``linear = True``): the state-conditioned element-wise scale ``z = σ(s) ε``. Its
  log-determinant depends on ``s`` only and, with the prior's normaliser ``-½ A log 2π``, forms the
  normalising constant: ``V(s)/α = ½ A log 2π + Σ log σ(s)``.

Hence ``log π(a|s) = (Q(s,a) - V(s)) / α`` exactly (MEow Proposition 1). The additive couplings are
volume-preserving (log-determinant 0); the squash and the scale are not.

Layout. The couplings use alternating masks ``[1,0,1,0,…]`` and ``[0,1,0,1,…]``. Instead of masking,
the flow keeps its coordinates permuted as ``[even dims, odd dims]`` between the squash and the
prior, so each coupling is ``x_B += t(x_A, s)`` on two contiguous halves. The permutation has
determinant ±1 and the scale net's outputs are per-dimension parameters, so the model family is that
of the masked formulation, with half-width coupling inputs/outputs instead of zero-masked ones.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass

import torch
from torch import nn

from rl_energy.nets import Swish, mlp

SQUASH_EPS = float(torch.finfo(torch.float32).eps)
"""``ε`` in the squash log-determinant ``-Σ log(1 - a² + ε)`` (MEow's code: float32 machine epsilon)."""
ACTION_CLAMP = 1.0 - 1e-5
"""Actions are clamped to ``±(1 - 1e-5)`` before ``atanh`` in the density direction."""


@dataclass
class FlowDensity:
    """The pieces of ``log π(a|s)`` from one density pass; all of shape ``[B]``.

    ``energy_term`` is the non-linear part (``-½‖ε‖²`` plus the squash log-det; ``Q/α`` without the
    reward shift) and ``normaliser`` the linear part (``½ A log 2π + Σ log σ(s)``; ``V/α`` without the
    shift), so ``log π = energy_term - normaliser``.
    """

    energy_term: torch.Tensor
    normaliser: torch.Tensor

    @property
    def log_prob(self) -> torch.Tensor:
        return self.energy_term - self.normaliser


class TanhSquash(nn.Module):
    """``a = tanh(u)``; density direction ``u = atanh(a)`` with log-det ``-Σ log(1 - a² + ε)``. Non-linear."""

    linear = False
    volume_preserving = False

    def log_det(self, a: torch.Tensor) -> torch.Tensor:
        """``log |det ∂u/∂a|`` of the density direction (MEow §3, the squash term of Q)."""
        return -torch.log1p(SQUASH_EPS - a.square()).sum(-1)

    def inverse(self, a: torch.Tensor) -> torch.Tensor:
        return torch.atanh(a.clamp(-ACTION_CLAMP, ACTION_CLAMP))

    def forward(self, u: torch.Tensor) -> torch.Tensor:
        return torch.tanh(u).clamp(-1.0, 1.0)


class AdditiveCoupling(nn.Module):
    """NICE coupling (Dinh et al., 2015): ``x_B <- x_B + t(x_A, s)``; log-det 0 (volume-preserving).

    ``t`` is MEow's coupling net: ``(|A| + S) -> 64 -> 64 -> |B|`` with orthogonal weights, LayerNorm,
    learnable-β Swish and dropout after each hidden layer. ``condition_first`` says whether the first
    half of the coordinates conditions (and the second is shifted) or the other way round.
    """

    linear = False
    volume_preserving = True

    def __init__(
        self, n_first: int, n_second: int, obs_dim: int, hidden: list[int], dropout: float, condition_first: bool
    ) -> None:
        super().__init__()
        self.condition_first = condition_first
        n_cond, n_shift = (n_first, n_second) if condition_first else (n_second, n_first)
        with warnings.catch_warnings():  # a 1-D action leaves one half empty: a zero-width output layer
            warnings.filterwarnings("ignore", "Initializing zero-element tensors")
            self.net = mlp(n_cond + obs_dim, hidden, n_shift, activation=Swish, layer_norm=True, dropout=dropout)
        for m in self.net:
            if isinstance(m, nn.Linear):
                nn.init.orthogonal_(m.weight)

    def shift(self, first: torch.Tensor, second: torch.Tensor, obs: torch.Tensor) -> torch.Tensor:
        cond = first if self.condition_first else second
        return self.net(torch.cat([cond, obs], -1))

    def forward(
        self, first: torch.Tensor, second: torch.Tensor, obs: torch.Tensor, sign: float = 1.0
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Sampling direction (``sign=+1``) or density direction (``sign=-1``)."""
        t = self.shift(first, second, obs)
        if self.condition_first:
            return first, (second + t if sign > 0 else second - t)
        return (first + t if sign > 0 else first - t), second


class StateScale(nn.Module):
    """``z = σ(s) ⊙ ε`` with ``log σ = σ_min + ½(σ_max - σ_min)(tanh h(s) + 1)``. Linear (state-only log-det).

    ``h`` is ``S -> 64 -> 64 -> A`` with all weights zero-initialised (biases keep their default
    initialisation), as in MEow's code; its log-determinant ``Σ log σ(s)`` is the normalising
    constant that V carries.
    """

    linear = True
    volume_preserving = False

    def __init__(self, obs_dim: int, action_dim: int, hidden: list[int], log_std_min: float, log_std_max: float):
        super().__init__()
        self.net = mlp(obs_dim, hidden, action_dim, activation=nn.SiLU)
        for m in self.net:
            if isinstance(m, nn.Linear):
                nn.init.zeros_(m.weight)
        self.log_std_min, self.log_std_max = log_std_min, log_std_max

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        """``log σ(s)``, bounded in ``[σ_min, σ_max]``."""
        return self.log_std_min + 0.5 * (self.log_std_max - self.log_std_min) * (torch.tanh(self.net(obs)) + 1.0)


class ConditionalFlow(nn.Module):
    """Squash ∘ couplings ∘ state scale over a standard normal prior; ``sample`` and ``log_prob`` are inverses.

    Sampling: ``ε ~ N(0, I)``, ``z = σ(s) ε``, couplings ``1..K``, ``a = tanh(·)``. Density: the same
    layers inverted in reverse order. ``deterministic`` sampling pushes the prior mean ``ε = 0``
    through the flow (MEow §6).
    """

    def __init__(
        self,
        obs_dim: int,
        action_dim: int,
        hidden: list[int],
        num_couplings: int = 4,
        dropout: float = 0.1,
        log_std_min: float = -5.0,
        log_std_max: float = -0.3,
    ) -> None:
        super().__init__()
        self.action_dim = action_dim
        even, odd = list(range(0, action_dim, 2)), list(range(1, action_dim, 2))
        perm = torch.tensor(even + odd)
        self.register_buffer("perm", perm, persistent=False)
        self.register_buffer("inv_perm", torch.argsort(perm), persistent=False)
        self.n_first = len(even)
        self.squash = TanhSquash()
        self.couplings = nn.ModuleList(
            AdditiveCoupling(len(even), len(odd), obs_dim, hidden, dropout, condition_first=(k % 2 == 0))
            for k in range(num_couplings)
        )
        self.scale = StateScale(obs_dim, action_dim, hidden, log_std_min, log_std_max)
        self.log_norm_const = 0.5 * action_dim * math.log(2 * math.pi)

    def layers(self) -> list[nn.Module]:
        """The layers in the sampling direction (prior side first); see ``linear``/``volume_preserving``."""
        return [self.scale, *self.couplings, self.squash]

    def _split(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = x.index_select(-1, self.perm)
        return x[..., : self.n_first], x[..., self.n_first :]

    def _merge(self, first: torch.Tensor, second: torch.Tensor) -> torch.Tensor:
        return torch.cat([first, second], -1).index_select(-1, self.inv_perm)

    def normaliser(self, obs: torch.Tensor, log_std: torch.Tensor | None = None) -> torch.Tensor:
        """``½ A log 2π + Σ log σ(s)``: minus the log-det of the linear layers and the prior normaliser."""
        if log_std is None:
            log_std = self.scale(obs)
        return self.log_norm_const + log_std.sum(-1)

    def push(self, eps: torch.Tensor, obs: torch.Tensor, log_std: torch.Tensor | None = None) -> torch.Tensor:
        """The sampling map ``ε -> z = σ(s) ε -> couplings 1..K -> a = tanh(·)``."""
        if log_std is None:
            log_std = self.scale(obs)
        first, second = self._split(eps * log_std.exp())
        for coupling in self.couplings:
            first, second = coupling(first, second, obs)
        return self.squash(self._merge(first, second))

    def inverse(self, action: torch.Tensor, obs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The density map ``a -> u -> z -> ε`` (the inverse of :meth:`push`); returns ``ε`` and ``log σ(s)``."""
        first, second = self._split(self.squash.inverse(action))
        for coupling in reversed(self.couplings):
            first, second = coupling(first, second, obs, sign=-1.0)
        log_std = self.scale(obs)
        return self._merge(first, second) * torch.exp(-log_std), log_std

    def log_prob(self, action: torch.Tensor, obs: torch.Tensor) -> FlowDensity:
        """``log π(a|s)`` by change of variables, split into the non-linear and the linear parts."""
        eps, log_std = self.inverse(action, obs)
        energy = self.squash.log_det(action.clamp(-ACTION_CLAMP, ACTION_CLAMP)) - 0.5 * eps.square().sum(-1)
        return FlowDensity(energy_term=energy, normaliser=self.normaliser(obs, log_std))

    def sample(
        self, obs: torch.Tensor, deterministic: bool = False, with_log_prob: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """An action from ``π(·|s)`` (``ε ~ N(0, I)``, or ``ε = 0`` if ``deterministic``), optionally with
        its ``log π(a|s)``."""
        log_std = self.scale(obs)
        eps = torch.zeros_like(log_std) if deterministic else torch.randn_like(log_std)
        action = self.push(eps, obs, log_std)
        if not with_log_prob:
            return action, None
        squash = self.squash.log_det(action.clamp(-ACTION_CLAMP, ACTION_CLAMP))
        return action, -0.5 * eps.square().sum(-1) + squash - self.normaliser(obs, log_std)
