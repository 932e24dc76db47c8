"""Network building blocks: the one MLP of the project and its fused ensemble form.

:class:`EnsembleMLP` evaluates ``n`` independent MLPs (e.g. SAC's twin critics) with one batched
matrix multiply per layer instead of ``n`` separate ones, which halves the number of kernel launches
and Python calls on the hot path (LeanRL's "fused critics").
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
from torch import nn

Activation = Callable[[], nn.Module]


def mlp(
    in_dim: int,
    hidden: Sequence[int],
    out_dim: int,
    activation: Activation = nn.ReLU,
    layer_norm: bool = False,
    dropout: float = 0.0,
    output_activation: Activation | None = None,
) -> nn.Sequential:
    """``Linear -> [LayerNorm] -> act -> [Dropout]`` per hidden layer, then a linear output layer."""
    layers: list[nn.Module] = []
    last = in_dim
    for width in hidden:
        layers.append(nn.Linear(last, width))
        if layer_norm:
            layers.append(nn.LayerNorm(width))
        layers.append(activation())
        if dropout > 0:
            layers.append(nn.Dropout(dropout))
        last = width
    layers.append(nn.Linear(last, out_dim))
    if output_activation is not None:
        layers.append(output_activation())
    return nn.Sequential(*layers)


class EnsembleLinear(nn.Module):
    """``n`` independent linear layers applied as one ``baddbmm``: ``[n, B, in] -> [n, B, out]``.

    Each member is initialised exactly like :class:`torch.nn.Linear` (Kaiming-uniform weights, uniform
    bias in ``±1/sqrt(in)``).
    """

    def __init__(self, n: int, in_dim: int, out_dim: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.empty(n, in_dim, out_dim))
        self.bias = nn.Parameter(torch.empty(n, 1, out_dim))
        bound = 1.0 / math.sqrt(in_dim)
        with torch.no_grad():
            for k in range(n):
                w = torch.empty(out_dim, in_dim)
                nn.init.kaiming_uniform_(w, a=math.sqrt(5))
                self.weight[k].copy_(w.T)
            self.bias.uniform_(-bound, bound)

    def forward(self, x: torch.Tensor, detach_params: bool = False) -> torch.Tensor:
        w, b = (self.weight.detach(), self.bias.detach()) if detach_params else (self.weight, self.bias)
        return torch.baddbmm(b, x, w)


class EnsembleMLP(nn.Module):
    """``n`` MLPs of identical shape evaluated together; output ``[n, B, out_dim]``.

    ``detach_params=True`` evaluates with the parameters detached: gradients then flow to the input
    only, which is what an actor loss through a critic needs (no wasted weight-gradient GEMMs).
    """

    def __init__(
        self, n: int, in_dim: int, hidden: Sequence[int], out_dim: int, activation: Activation = nn.ReLU
    ) -> None:
        super().__init__()
        dims = [in_dim, *hidden, out_dim]
        self.n = n
        self.layers = nn.ModuleList(EnsembleLinear(n, a, b) for a, b in zip(dims[:-1], dims[1:], strict=True))
        self.activation = activation()

    def forward(self, x: torch.Tensor, detach_params: bool = False) -> torch.Tensor:
        if x.dim() == 2:  # the same input for every member
            x = x.unsqueeze(0).expand(self.n, -1, -1)
        last = len(self.layers) - 1
        for i, layer in enumerate(self.layers):
            x = layer(x, detach_params)
            if i < last:
                x = self.activation(x)
        return x


@torch.no_grad()
def polyak_update(target: nn.Module, source: nn.Module, tau: float) -> None:
    """``θ_target <- (1 - τ) θ_target + τ θ`` for all parameters, in one fused foreach call."""
    t_params = list(target.parameters())
    s_params = list(source.parameters())
    torch._foreach_lerp_(t_params, s_params, tau)
