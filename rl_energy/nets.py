"""Network building blocks: the one MLP of the project and its fused ensemble form.

:class:`EnsembleMLP` evaluates ``n`` independent MLPs (e.g. SAC's twin critics) with one batched
matrix multiply per layer instead of ``n`` separate ones, which halves the number of kernel launches
and Python calls on the hot path (LeanRL's "fused critics").

Matrix-product precision. :class:`MLP` and :class:`EnsembleMLP` evaluate their layers either in float32
or with bfloat16 inputs and float32 accumulation (``torch.autocast``), and always return float32, so
losses, log-densities and TD targets are computed in float32 either way. On a CPU with native
bfloat16 dot products (AVX512-BF16, AMX) the products run about 4x faster; this is the precision
JAX uses by default for matrix products on TPUs. Batches of fewer than ``BF16_MIN_ROWS`` rows (acting
in the environment) stay in float32, where bfloat16 only adds casts. :func:`set_matmul_precision`
switches every network of a module, and :func:`resolve_matmul_precision` turns ``"auto"`` into a choice
for the device.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
from torch import nn

Activation = Callable[..., nn.Module]

ACTIVATIONS: dict[str, Activation] = {
    "relu": nn.ReLU, "tanh": nn.Tanh, "leaky_relu": nn.LeakyReLU, "silu": nn.SiLU, "gelu": nn.GELU,
}
"""Activations a config may name (``agent.activation: relu``); the one table every agent uses."""
"""A module factory: called with no argument, or with the layer width if it has ``per_unit = True``."""
PRECISIONS = ("fp32", "bf16")
BF16_MIN_ROWS = 32


def resolve_matmul_precision(name: str, device: torch.device | str) -> str:
    """``"auto"`` -> ``"bf16"`` on a CPU that multiplies bfloat16 natively, else ``"fp32"``."""
    if name != "auto":
        if name not in PRECISIONS:
            raise ValueError(f"matmul precision must be auto, fp32 or bf16, got {name!r}")
        return name
    if torch.device(device).type == "cpu":
        native = torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported()
        return "bf16" if native else "fp32"
    return "fp32"


def set_matmul_precision(module: nn.Module, precision: str) -> None:
    """Set the matrix-product precision of every :class:`MLP`/:class:`EnsembleMLP` inside ``module``."""
    if precision not in PRECISIONS:
        raise ValueError(f"matmul precision must be fp32 or bf16, got {precision!r}")
    for m in module.modules():
        if isinstance(m, (MLP, EnsembleMLP)) and not m.keep_fp32:
            m.bf16 = precision == "bf16"


class MLP(nn.Sequential):
    """A ``Sequential`` whose matrix products may run in bfloat16; its output is always float32.

    Each forward pass opens its own autocast region, so the bfloat16 copies of the weights are made
    afresh every call (never stale after an optimiser step). ``keep_fp32 = True`` exempts a network
    from :func:`set_matmul_precision` (for outputs whose rounding a model amplifies).
    """

    bf16: bool = False
    keep_fp32: bool = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.bf16 or x.numel() < BF16_MIN_ROWS * x.shape[-1]:
            return super().forward(x)
        with torch.autocast(x.device.type, dtype=torch.bfloat16):
            return super().forward(x).float()


class Swish(nn.Module):
    """``x · sigmoid(β x)`` with a learnable ``β`` per unit, initialised to 1 (Ramachandran et al., 2017).

    Pass the class itself as an :func:`mlp` activation: ``per_unit`` tells :func:`mlp` to give it the width.
    """

    per_unit = True

    def __init__(self, width: int) -> None:
        super().__init__()
        self.beta = nn.Parameter(torch.ones(width))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.sigmoid(self.beta * x)


_GOLDEN = 0x9E3779B1 - 2**32  # 2^32 / golden ratio, odd; 32-bit constants written as wrapped int32
_FMIX1 = 0x85EBCA6B - 2**32
_FMIX2 = 0xC2B2AE35 - 2**32


def fmix32(h: torch.Tensor) -> torch.Tensor:
    """MurmurHash3's 32-bit finaliser on int32 tensors (a bijection with full avalanche). Logical right
    shifts are an arithmetic shift followed by a mask of the copied sign bits; products wrap."""
    h = h ^ ((h >> 16) & 0xFFFF)
    h = h * _FMIX1
    h = h ^ ((h >> 13) & 0x7FFFF)
    h = h * _FMIX2
    return h ^ ((h >> 16) & 0xFFFF)


class Dropout(nn.Dropout):
    """:class:`torch.nn.Dropout` whose mask is a counter-based hash of a seed: element ``i`` is kept when
    the low 16 bits of ``fmix32(i·φ + fmix32(seed))`` are at least ``round(65536 p)`` (keep probability
    ``1 - p`` to within ``2^-16``), then scaled by ``1 / (1 - p)``.

    ``seed`` is a buffer drawn from PyTorch's generator at construction. **The training loop advances
    it** (:func:`advance_dropout_seeds`, once per gradient step, after the backward pass): the
    same seed gives the same mask, so masks are reproducible, resume from checkpoints, and are equal
    with and without ``torch.compile``. The forward pass never mutates the seed, because a compiled
    backward that recomputes the mask would read the mutated value.

    Why a hash: it is only integer multiplies, shifts and xors, which Inductor vectorises into the
    layer's own kernel and recomputes in the backward one (see :class:`rl_energy.agent.CompiledFn`).
    The previous mask, 16 bits per element from ``torch.randint``, ran as scalar Philox code inside
    compiled graphs and was saved for the backward as bool tensors: dropout was a fifth of a compiled
    EBFlow update (2.58 ms with it, 2.05 ms without dropout, 2.21 ms with this one).
    """

    def __init__(self, p: float = 0.5) -> None:
        super().__init__(p)
        self.register_buffer("seed", torch.randint(-(2**31), 2**31 - 1, (1,), dtype=torch.int32))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0.0:
            return x
        counter = torch.arange(x.numel(), dtype=torch.int32, device=x.device).view(x.shape)
        keep = (fmix32(counter * _GOLDEN + fmix32(self.seed)) & 0xFFFF) >= round(self.p * 65536)
        return x * keep * (1.0 / (1.0 - self.p))


def advance_dropout_seeds(layers: Sequence[Dropout]) -> None:
    """Move every :class:`Dropout` layer to its next mask (one step of each seed, in one call)."""
    if layers:
        torch._foreach_add_([m.seed for m in layers], 1)


def mlp(
    in_dim: int,
    hidden: Sequence[int],
    out_dim: int,
    activation: Activation = nn.ReLU,
    layer_norm: bool = False,
    dropout: float = 0.0,
    output_activation: Activation | None = None,
) -> MLP:
    """``Linear -> [LayerNorm] -> act -> [Dropout]`` per hidden layer, then a linear output layer."""
    layers: list[nn.Module] = []
    last = in_dim
    for width in hidden:
        layers.append(nn.Linear(last, width))
        if layer_norm:
            layers.append(nn.LayerNorm(width))
        layers.append(activation(width) if getattr(activation, "per_unit", False) else activation())
        if dropout > 0:
            layers.append(Dropout(dropout))
        last = width
    layers.append(nn.Linear(last, out_dim))
    if output_activation is not None:
        layers.append(output_activation())
    return MLP(*layers)


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
        if w.shape[-1] == 1:
            # A scalar head (e.g. a Q-value) as multiply-and-sum: BLAS runs this [B, in] x [in, 1]
            # product, and the outer product of its backward, about 4x slower than the elementwise ops.
            return (x * w.transpose(-1, -2)).sum(-1, keepdim=True) + b
        return torch.baddbmm(b, x, w)


class EnsembleMLP(nn.Module):
    """``n`` MLPs of identical shape evaluated together; output ``[n, B, out_dim]``.

    ``detach_params=True`` evaluates with the parameters detached: gradients then flow to the input
    only, which is what an actor loss through a critic needs (no wasted weight-gradient GEMMs).
    The output is float32 whatever the matmul precision (see the module docstring).
    """

    bf16: bool = False
    keep_fp32: bool = False

    def __init__(
        self, n: int, in_dim: int, hidden: Sequence[int], out_dim: int, activation: Activation = nn.ReLU
    ) -> None:
        super().__init__()
        dims = [in_dim, *hidden, out_dim]
        self.n = n
        self.layers = nn.ModuleList(EnsembleLinear(n, a, b) for a, b in zip(dims[:-1], dims[1:], strict=True))
        # ReLU overwrites the product it follows: autograd needs neither value (baddbmm's backward reads its
        # inputs, ReLU's reads its own output), and the hidden [n, B, width] activation then needs one buffer
        # instead of two. The same numbers, bit for bit (timings in docs/benchmarks.md).
        self.activation = activation(inplace=True) if activation is nn.ReLU else activation()

    def forward(self, x: torch.Tensor, detach_params: bool = False) -> torch.Tensor:
        if not self.bf16 or x.numel() < BF16_MIN_ROWS * x.shape[-1]:
            return self._forward(x, detach_params)
        with torch.autocast(x.device.type, dtype=torch.bfloat16):
            return self._forward(x, detach_params).float()

    def _forward(self, x: torch.Tensor, detach_params: bool) -> torch.Tensor:
        if x.dim() == 2:  # the same input for every member
            x = x.unsqueeze(0).expand(self.n, -1, -1)
        last = len(self.layers) - 1
        for i, layer in enumerate(self.layers):
            x = layer(x, detach_params)
            if i < last:
                x = self.activation(x)
        return x


class DeepSets(nn.Module):
    """A permutation-invariant network of a padded, masked set (Zaheer et al., NeurIPS 2017): each element through
    ``φ`` (an MLP), the masked mean and max over the set, concatenated, through ``ρ`` (an MLP). ``x [B, N, d]``,
    ``mask [B, N]`` (true for real elements; every set needs one) -> ``[B, out_dim]``."""

    def __init__(self, in_dim: int, hidden: Sequence[int], out_dim: int, activation: Activation = nn.ReLU) -> None:
        super().__init__()
        width = hidden[-1] if hidden else in_dim
        self.phi = mlp(in_dim, list(hidden[:-1]), width, activation, output_activation=activation) if hidden \
            else nn.Identity()
        self.rho = mlp(2 * width, list(hidden), out_dim, activation)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        h = self.phi(x)
        m = mask.unsqueeze(-1).to(h.dtype)
        mean = (h * m).sum(1) / m.sum(1).clamp_min(1.0)
        top = h.masked_fill(m == 0, float("-inf")).amax(1)
        return self.rho(torch.cat([mean, top], dim=-1))


def _params_of(x: nn.Module | Sequence[nn.Module | torch.Tensor]) -> list[torch.Tensor]:
    items = [x] if isinstance(x, nn.Module) else x
    return [p for m in items for p in (m.parameters() if isinstance(m, nn.Module) else [m])]


@torch.no_grad()
def polyak_update(
    target: nn.Module | Sequence[nn.Module | torch.Tensor],
    source: nn.Module | Sequence[nn.Module | torch.Tensor],
    tau: float,
) -> None:
    """``θ_target <- (1 - τ) θ_target + τ θ`` for all parameters, in one fused foreach call.

    ``target`` and ``source`` are modules, sequences of paired modules, or parameter lists (cache
    those on a hot path: listing a module's parameters costs more than the update itself)."""
    torch._foreach_lerp_(_params_of(target), _params_of(source), tau)


# ------------------------------------------------------------------------ minimum hyperspherical energy
MHE_POWERS = (0.0, 1.0, 2.0)
MHE_VARIANTS: dict[str, tuple[float, bool, bool]] = {
    f"{'half_' if half else ''}{'a' if angular else 's'}{int(s)}": (s, angular, half)
    for half in (False, True) for angular in (False, True) for s in MHE_POWERS
}
"""``agent.mhe`` names -> ``(s, angular, half_space)``: ``s0``/``s1``/``s2`` (Euclidean distance), ``a0``/``a1``/
``a2`` (angle/π), each with a ``half_`` form (Liu et al., NeurIPS 2018, §3 and §4.1)."""


def hyperspherical_energy(
    w: torch.Tensor, s: float = 1.0, angular: bool = False, half_space: bool = False, reduction: str = "mean",
    eps: float = 1e-6,
) -> torch.Tensor:
    """Hyperspherical energy of the rows of ``w`` (``[..., N, d]``: one neuron or point per row, any batch
    dimensions in front; the result has shape ``[...]``), Liu et al., "Learning towards minimum
    hyperspherical energy", NeurIPS 2018, Eq. (1)-(2):

        E_s = Σ_{i<j} f_s(‖ŵ_i − ŵ_j‖),   ŵ_i = w_i/‖w_i‖,   f_s(z) = z^{−s} (s > 0),   f_0(z) = log(1/z).

    ``angular`` replaces the distance by the geodesic one, ``arccos(ŵ_iᵀŵ_j)/π`` (the paper's A-MHE, §4.2);
    ``half_space`` computes the energy of ``{ŵ_i} ∪ {−ŵ_i}`` (§4.1, "half-space MHE": collinear neurons are
    then penalised whatever their sign). ``reduction="sum"`` gives ``E_s`` itself (the Thomson problem's
    energy for ``s = 1``, ``d = 3``), ``"mean"`` the average over the pairs (the regulariser of the paper's
    code). ``eps`` keeps ``z`` (and the arccos argument) away from the singularities, so coincident
    neurons give a large but finite energy and gradient.
    """
    if w.dim() < 2 or w.shape[-2] < 2:
        raise ValueError(f"hyperspherical_energy needs [..., N >= 2, d] rows, got shape {tuple(w.shape)}")
    if not (math.isfinite(s) and s >= 0):
        raise ValueError(f"hyperspherical_energy: s must be a finite number >= 0, got {s!r}")
    if reduction not in ("mean", "sum"):
        raise ValueError(f"hyperspherical_energy: reduction must be 'mean' or 'sum', got {reduction!r}")
    u = w / w.norm(dim=-1, keepdim=True).clamp_min(eps)
    n = u.shape[-2]
    i, j = torch.triu_indices(n, n, offset=1, device=u.device)
    cos = (u @ u.transpose(-1, -2))[..., i, j]  # the Gram matrix: one product instead of N² row gathers

    def f(c: torch.Tensor) -> torch.Tensor:
        if angular:
            z = torch.arccos(c.clamp(-1.0 + eps, 1.0 - eps)) / math.pi
        else:
            z = (2.0 - 2.0 * c).clamp_min(eps * eps).sqrt()  # ‖û_i − û_j‖ for unit rows
        return -torch.log(z) if s == 0 else z.pow(-s)

    total = f(cos).sum(-1)
    pairs = n * (n - 1) // 2
    if half_space:
        # pairs of {û} ∪ {−û}: (i, j) and (−i, −j) share cos; (i, −j) and (−i, j) have −cos; the n pairs
        # (i, −i) are antipodal (z = 2, or 1 for the angle), a constant
        antipodal = 1.0 if angular else 2.0
        const = -math.log(antipodal) if s == 0 else antipodal ** -s
        total = 2.0 * (total + f(-cos).sum(-1)) + n * const
        pairs = n * (2 * n - 1)
    return total if reduction == "sum" else total / pairs


def mhe_regularizer(
    net: nn.Module, variant: str, hidden_weight: float, output_weight: float, eps: float = 1e-6
) -> torch.Tensor:
    """The MHE term of the paper's loss, ``λ_h Σ_hidden E(W_l) + λ_o E(W_out)`` (Liu et al., NeurIPS 2018,
    Eq. (3)), over the :class:`torch.nn.Linear` layers of ``net`` in order: every layer but the last is
    hidden, the last is the output layer (its rows are the class embeddings). Each layer's energy is the
    pair average of :func:`hyperspherical_energy` over its neurons (the rows of ``weight``); the
    half-space form applies to hidden layers only (the paper's choice: an output neuron and its negation
    are different classes)."""
    if variant not in MHE_VARIANTS:
        raise ValueError(f"MHE variant must be one of {sorted(MHE_VARIANTS)}, got {variant!r}")
    s, angular, half = MHE_VARIANTS[variant]
    layers = [m for m in net.modules() if isinstance(m, nn.Linear)]
    if not layers:
        raise ValueError("mhe_regularizer: the network has no Linear layer")
    total = layers[0].weight.new_zeros(())
    for k, layer in enumerate(layers):
        last = k == len(layers) - 1
        weight = output_weight if last else hidden_weight
        if weight == 0 or layer.weight.shape[0] < 2:
            continue
        total = total + weight * hyperspherical_energy(layer.weight, s, angular, half and not last, "mean", eps)
    return total
