"""Influence functions with EK-FAC (Grosse et al. 2023, "Studying large language model generalization with
influence functions", arXiv 2308.03296; digest ``papers/one-step-tasks.md`` §6).

**Influence.** For a measurement ``f(θ)`` of a query (e.g. ``log p(completion | prompt)``, or ``−loss``) and a
training sample ``z_m`` with training loss ``L(z_m, θ)``, the influence is (paper Eq. 3 with the damped
Gauss–Newton/Fisher ``G``)

    I_f(z_m) = −∇_θ f(θ)ᵀ (G + λI)⁻¹ ∇_θ L(z_m, θ),

the first-order change of ``f`` when ``z_m``'s weight in the training objective grows (the proximal Bregman
response function's linearisation). **Sign convention**: with ``f = log-likelihood`` (or ``−loss``) of the query,
``I > 0`` means upweighting ``z_m`` raises the query's likelihood (a *helpful* sample); "ranked by influence"
means descending ``I``, most helpful first. ``kronfluence`` returns ``∇fᵀ(G+λI)⁻¹∇L`` without the minus sign
for its measurement: our score with ``f = −loss`` equals its score with measurement ``loss``.

**Curvature** ``G`` (paper §2.2–2.3), over the ``nn.Linear`` layers of any module (the bias is the last column of
``W``: activations get a trailing 1). For layer ``ℓ`` with inputs ``a`` and pre-activation gradients ``g`` of the
*Fisher loss* (labels **sampled from the model's predictive distribution**: the true Fisher;
:func:`sampled_categorical_nll`, :func:`sampled_gaussian_nll`), the per-example gradient is ``∇W = Σ_t g_t a_tᵀ``
(summed over sequence positions ``t``) and

* ``identity``: ``G = I`` (plain gradient dot products);
* ``kfac``: ``G_ℓ ≈ S ⊗ A`` with ``A = E_t[a aᵀ]`` (token mean) and ``S = E_n[Σ_t g gᵀ]`` (per example),
  eigenbases ``A = Q_A diag(α) Q_Aᵀ``, ``S = Q_S diag(σ) Q_Sᵀ``; eigenvalues ``σ_i α_j``;
* ``ekfac``: the same eigenbasis, eigenvalues re-fitted in a second pass (paper Eq. 20)
  ``Λ_ij = E_n[(Q_Sᵀ ∇W_n Q_A)_ij²]``;
* ``exact``: the dense Fisher ``E_n[vec∇θ vec∇θᵀ]`` over all tracked layers (cross-layer blocks included;
  small models only);
* ``lissa``: the stochastic Neumann-series IHVP of the same dense Fisher (Agarwal et al. 2017), the baseline.

Preconditioning (paper Eq. 21) ``V ↦ Q_S[(Q_SᵀVQ_A) ⊘ (Λ + λ)]Q_Aᵀ``, with the per-layer damping
``λ = damping_scale × mean(Λ)`` (default ``0.1``, as in the paper/kronfluence) unless ``damping`` fixes it;
``kfac`` uses the Kronecker eigenvalues ``σ⊗α`` in place of ``Λ``; ``exact``/``lissa`` damp each layer's
block by ``0.1 × mean diag(G_ℓ)`` (= mean Λ in expectation).

**Query batching** (paper §3.2.2): each layer's preconditioned query gradient ``P`` is replaced by its rank-``r``
SVD ``Σ_k s_k u_k v_kᵀ``, so a training sample's score costs ``r`` bilinear forms ``u_kᵀ ∇W v_k`` per layer.

**TF-IDF filtering** (paper §3.2.1): :func:`tfidf_candidates` keeps the training texts closest to the query text.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from rl_energy.errors import ConfigError, import_optional

METHODS = ("identity", "kfac", "ekfac", "exact", "lissa")
CHUNK = 256
"""Examples per chunk when per-example gradients are formed (bounds the memory of ``[chunk, out, in]``)."""
EXACT_MAX_PARAMS = 12_000
"""Largest number of tracked parameters the dense ``exact`` method accepts (its matrix is P×P float64)."""

LossFn = Callable[[nn.Module, Any], torch.Tensor]
"""``loss(model, batch) -> [B]`` per-example losses (or measurements) of a batch."""


# ----------------------------------------------------------------------------------- Fisher losses
def sampled_categorical_nll(logits: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """Per-example ``−log softmax(logits)[y]`` with ``y ~ Categorical(softmax(logits))`` drawn from the model (the
    true Fisher of a classifier or LM, paper §2.2), summed over every dimension but the first (sequence positions)."""
    logp = torch.log_softmax(logits, dim=-1)
    flat = logp.detach().exp().reshape(-1, logits.shape[-1])
    y = torch.multinomial(flat, 1, generator=generator).reshape(logp.shape[:-1])
    nll = -logp.gather(-1, y.unsqueeze(-1)).squeeze(-1)
    return nll.reshape(logits.shape[0], -1).sum(1)


def sampled_gaussian_nll(pred: torch.Tensor, sigma: float = 1.0, generator: torch.Generator | None = None
                         ) -> torch.Tensor:
    """Per-example ``‖pred − y‖² / (2σ²)`` with ``y ~ N(pred, σ²I)`` drawn from the model: the true Fisher of a
    Gaussian regression model, whose expectation is the Gauss–Newton matrix ``JᵀJ/σ²``."""
    noise = torch.randn(pred.shape, generator=generator, dtype=pred.dtype, device=pred.device) * sigma
    y = pred.detach() + noise
    return ((pred - y) ** 2).reshape(pred.shape[0], -1).sum(1) / (2 * sigma**2)


def expected_categorical_nll(model: nn.Module, x: torch.Tensor, n_classes: int) -> torch.Tensor:
    """The true Fisher of a classifier *without* sampling: each input is repeated once per class ``k`` with the
    pseudo-loss ``−√p_k · log p_k`` (``p_k`` detached), so the per-row gradient outer products sum to
    ``Σ_k p_k ∇log p_k ∇log p_kᵀ`` = the expected Fisher of that input. Returns ``[B·C]`` per-row values (use it as a
    ``fisher_loss``: the rows are the "examples"; a constant factor ``1/C`` in the curvature does not change scores'
    ranks under the relative damping)."""
    xr = x.repeat_interleave(n_classes, 0)
    logp = torch.log_softmax(model(xr), dim=-1)
    k = torch.arange(n_classes, device=x.device).repeat(x.shape[0])[:, None]
    lp = logp.gather(1, k).squeeze(1)
    return -lp.detach().exp().sqrt() * lp


# ----------------------------------------------------------------------------------- capture
def linear_layers(model: nn.Module, names: Sequence[str] | None = None) -> dict[str, nn.Linear]:
    """The ``nn.Linear`` modules of ``model`` by name (all of them, or those in ``names``)."""
    found = {n: m for n, m in model.named_modules() if isinstance(m, nn.Linear)}
    if names is None:
        if not found:
            raise ConfigError(f"influence needs nn.Linear layers; {type(model).__name__} has none")
        return found
    missing = [n for n in names if n not in found]
    if missing:
        raise ConfigError(f"layers {missing} are not nn.Linear modules of the model; it has {sorted(found)}")
    return {n: found[n] for n in names}


class _Capture:
    """Forward hooks that keep each tracked layer's input (with a trailing 1 for the bias) and output."""

    def __init__(self, layers: dict[str, nn.Linear]) -> None:
        self.layers = layers
        self.inputs: dict[str, torch.Tensor] = {}
        self.outputs: dict[str, torch.Tensor] = {}
        self.handles: list[Any] = []

    def __enter__(self) -> _Capture:
        for name, mod in self.layers.items():
            self.handles.append(mod.register_forward_hook(self._hook(name)))
        return self

    def __exit__(self, *exc: Any) -> None:
        for h in self.handles:
            h.remove()
        self.handles.clear()

    def _hook(self, name: str) -> Callable[..., None]:
        def hook(mod: nn.Linear, inp: tuple[torch.Tensor, ...], out: torch.Tensor) -> None:
            if name in self.outputs:
                raise ConfigError(f"layer '{name}' is called more than once per forward pass; influence supports "
                                  "layers used once (apply it to a [batch, positions, features] tensor instead)")
            a = inp[0].detach()
            if mod.bias is not None:
                a = torch.cat([a, a.new_ones(*a.shape[:-1], 1)], dim=-1)
            self.inputs[name] = a
            self.outputs[name] = out

        return hook

    def clear(self) -> None:
        self.inputs.clear()
        self.outputs.clear()


def layer_signals(model: nn.Module, layers: dict[str, nn.Linear], loss_fn: LossFn, batch: Any
                  ) -> tuple[dict[str, tuple[torch.Tensor, torch.Tensor]], torch.Tensor]:
    """``{name: (a [B, T, in(+1)], g [B, T, out])}`` for the per-example losses ``loss_fn(model, batch)`` ``[B]``
    (``g`` = gradient of example ``b``'s own loss w.r.t. the layer output), and the losses. Parameters' ``.grad``
    is left untouched."""
    flags = {p: p.requires_grad for m in layers.values() for p in m.parameters()}
    for p in flags:
        p.requires_grad_(True)
    try:
        with _Capture(layers) as cap:
            losses = loss_fn(model, batch)
            if losses.dim() != 1:
                raise ConfigError(f"the loss function must return per-example losses [B], got shape "
                                  f"{tuple(losses.shape)}")
            names = list(layers)
            missing = [n for n in names if n not in cap.outputs]
            if missing:
                raise ConfigError(f"layers {missing} were not used by the loss function's forward pass")
            grads = torch.autograd.grad(losses.sum(), [cap.outputs[n] for n in names], allow_unused=True)
            b = losses.shape[0]
            out = {}
            for n, g in zip(names, grads, strict=True):
                a = cap.inputs[n]
                g = torch.zeros_like(cap.outputs[n]) if g is None else g
                out[n] = (a.reshape(b, -1, a.shape[-1]), g.detach().reshape(b, -1, g.shape[-1]))
    finally:
        for p, flag in flags.items():
            p.requires_grad_(flag)
    return out, losses.detach()


def per_example_grads(signals: dict[str, tuple[torch.Tensor, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """``∇W_b = Σ_t g_bt a_btᵀ`` ``[B, out, in(+1)]`` per layer (float64)."""
    return {n: torch.einsum("bto,bti->boi", g.double(), a.double()) for n, (a, g) in signals.items()}


def _batches(data: Iterable[Any] | Callable[[], Iterable[Any]]) -> Iterable[Any]:
    return data() if callable(data) else data


# ----------------------------------------------------------------------------------- factors
@dataclass
class LayerFactors:
    """Per-layer curvature: K-FAC covariances and eigenbases, EK-FAC eigenvalues, the damping in use."""

    A: torch.Tensor
    S: torch.Tensor
    q_a: torch.Tensor | None = None
    eig_a: torch.Tensor | None = None
    q_s: torch.Tensor | None = None
    eig_s: torch.Tensor | None = None
    lam: torch.Tensor | None = None
    """EK-FAC eigenvalues ``Λ`` ``[out, in(+1)]``."""
    diag: torch.Tensor | None = None
    """``E[∇W²]`` ``[out, in(+1)]``: the diagonal of the layer's Fisher block."""
    damping: float = 0.0


@dataclass
class Influence:
    """Influence scores of training samples on queries for a model's ``nn.Linear`` layers (module docstring).

    ``fit(train, fisher_loss)`` estimates the curvature of ``method``; ``scores(query, measurement, train, loss)``
    returns ``I_f(z_m)`` ``[Q, N]``. ``train``/``query`` are iterables of batches (or callables returning one) that
    the loss functions understand; ``fisher_loss`` returns per-example losses on labels sampled from the model.
    """

    model: nn.Module
    method: str = "ekfac"
    layers: Sequence[str] | None = None
    damping: float | None = None
    """A fixed damping ``λ`` for every layer; ``None``: ``damping_scale × mean eigenvalue`` per layer."""
    damping_scale: float = 0.1
    lissa_iterations: int = 200
    lissa_scale: float | None = None
    """LiSSA's ``s`` (must exceed the largest eigenvalue of ``G + λ``); ``None``: 2 × a power-iteration estimate."""
    seed: int = 0
    factors: dict[str, LayerFactors] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ConfigError(f"influence method must be one of {', '.join(METHODS)}, got {self.method!r}")
        if self.damping is not None and not self.damping >= 0:
            raise ConfigError(f"damping must be >= 0, got {self.damping}")
        if not self.damping_scale > 0:
            raise ConfigError(f"damping_scale must be > 0, got {self.damping_scale}")
        self._layers = linear_layers(self.model, self.layers)
        self._dense: torch.Tensor | None = None
        self._fitted = self.method == "identity"

    # ------------------------------------------------------------------ shapes
    def shapes(self) -> dict[str, tuple[int, int]]:
        return {n: (m.out_features, m.in_features + (m.bias is not None)) for n, m in self._layers.items()}

    def num_params(self) -> int:
        return sum(o * i for o, i in self.shapes().values())

    def _flat(self, grads: dict[str, torch.Tensor]) -> torch.Tensor:
        return torch.cat([grads[n].reshape(grads[n].shape[0], -1) for n in self._layers], dim=1)

    def _unflat(self, flat: torch.Tensor) -> dict[str, torch.Tensor]:
        out, k = {}, 0
        for n, (o, i) in self.shapes().items():
            out[n] = flat[:, k:k + o * i].reshape(-1, o, i)
            k += o * i
        return out

    # ------------------------------------------------------------------ fitting
    def fit(self, train: Iterable[Any] | Callable[[], Iterable[Any]], fisher_loss: LossFn) -> Influence:
        """Estimate the curvature of ``method`` from ``train`` (one pass for the covariances, a second for EK-FAC's
        eigenvalues; ``exact``/``lissa`` one pass for the dense matrix or the damping)."""
        t0 = time.perf_counter()
        torch.manual_seed(self.seed)
        if self.method in ("kfac", "ekfac"):
            self._fit_covariances(train, fisher_loss)
            self.timings["covariance"] = time.perf_counter() - t0
            t1 = time.perf_counter()
            for f in self.factors.values():
                f.eig_a, f.q_a = torch.linalg.eigh(f.A)
                f.eig_s, f.q_s = torch.linalg.eigh(f.S)
                f.eig_a.clamp_(min=0)
                f.eig_s.clamp_(min=0)
            self.timings["eigendecomposition"] = time.perf_counter() - t1
            if self.method == "ekfac":
                t2 = time.perf_counter()
                self._fit_lambda(train, fisher_loss)
                self.timings["lambda"] = time.perf_counter() - t2
            for f in self.factors.values():
                eig = f.lam if self.method == "ekfac" else torch.outer(f.eig_s, f.eig_a)
                f.damping = self._damping(float(eig.mean()))
        elif self.method in ("exact", "lissa"):
            if self.method == "exact" and self.num_params() > EXACT_MAX_PARAMS:
                raise ConfigError(f"method 'exact' builds a dense {self.num_params()}² matrix; it supports at most "
                                  f"{EXACT_MAX_PARAMS} tracked parameters (use ekfac, or pass layers=...)")
            self._fit_dense(train, fisher_loss)
            if self.method == "lissa":
                self._train, self._fisher_loss = list(_batches(train)), fisher_loss
        self.timings["fit"] = time.perf_counter() - t0
        self._fitted = True
        return self

    def _damping(self, mean_eig: float) -> float:
        return float(self.damping) if self.damping is not None else self.damping_scale * mean_eig

    def _fit_covariances(self, train: Any, fisher_loss: LossFn) -> None:
        acc: dict[str, list[torch.Tensor]] = {}
        n_examples, n_tokens = 0, 0
        for batch in _batches(train):
            sig, losses = layer_signals(self.model, self._layers, fisher_loss, batch)
            n_examples += losses.shape[0]
            for n, (a, g) in sig.items():
                a2, g2 = a.reshape(-1, a.shape[-1]).double(), g.reshape(-1, g.shape[-1]).double()
                if n not in acc:
                    acc[n] = [a2.T @ a2, g2.T @ g2]
                else:
                    acc[n][0] += a2.T @ a2
                    acc[n][1] += g2.T @ g2
            n_tokens += next(iter(sig.values()))[0].shape[0] * next(iter(sig.values()))[0].shape[1]
        if n_examples == 0:
            raise ConfigError("influence fit got no training batches")
        tokens_per_example = n_tokens / n_examples
        for n, (aa, gg) in acc.items():
            # A: token mean; S: per-example sum over tokens (module docstring)
            self.factors[n] = LayerFactors(A=aa / n_tokens, S=gg / n_examples)
        self._tokens_per_example = tokens_per_example

    def _fit_lambda(self, train: Any, fisher_loss: LossFn) -> None:
        lam = {n: torch.zeros(self.shapes()[n], dtype=torch.float64) for n in self._layers}
        n_examples = 0
        for batch in _batches(train):
            sig, losses = layer_signals(self.model, self._layers, fisher_loss, batch)
            n_examples += losses.shape[0]
            for n, (a, g) in sig.items():
                f = self.factors[n]  # rotations in the model's precision (float32, as kronfluence), sums in float64
                q_s, q_a = f.q_s.to(g.dtype), f.q_a.to(a.dtype)
                for gc, ac in zip((g @ q_s).split(CHUNK), (a @ q_a).split(CHUNK), strict=True):
                    lam[n] += (torch.einsum("bto,bti->boi", gc, ac) ** 2).sum(0).double()
        for n in self._layers:
            self.factors[n].lam = lam[n] / n_examples

    def _fit_dense(self, train: Any, fisher_loss: LossFn) -> None:
        p = self.num_params()
        dense = torch.zeros(p, p, dtype=torch.float64) if self.method == "exact" else None
        diag = {n: torch.zeros(s, dtype=torch.float64) for n, s in self.shapes().items()}
        n_examples = 0
        for batch in _batches(train):
            sig, losses = layer_signals(self.model, self._layers, fisher_loss, batch)
            grads = per_example_grads(sig)
            n_examples += losses.shape[0]
            for n, gr in grads.items():
                diag[n] += (gr**2).sum(0)
            if dense is not None:
                flat = self._flat(grads)
                dense += flat.T @ flat
        for n in self._layers:
            self.factors[n] = LayerFactors(A=torch.empty(0), S=torch.empty(0), diag=diag[n] / n_examples)
            self.factors[n].damping = self._damping(float(self.factors[n].diag.mean()))
        self._damp_vec = torch.cat([torch.full((o * i,), self.factors[n].damping, dtype=torch.float64)
                                    for n, (o, i) in self.shapes().items()])
        if dense is not None:
            dense /= n_examples
            self._dense = torch.linalg.cholesky(dense + torch.diag(self._damp_vec))

    # ------------------------------------------------------------------ preconditioning
    def precondition(self, grads: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """``(G + λI)⁻¹ V`` for a batch of gradients ``{name: [Q, out, in(+1)]}`` (identity: ``V`` itself)."""
        if not self._fitted:
            raise RuntimeError("call fit() before precondition()")
        grads = {n: grads[n].double() for n in self._layers}
        if self.method == "identity":
            return grads
        if self.method in ("kfac", "ekfac"):
            out = {}
            for n, v in grads.items():
                f = self.factors[n]
                eig = f.lam if self.method == "ekfac" else torch.outer(f.eig_s, f.eig_a)
                rot = f.q_s.T @ v @ f.q_a
                out[n] = f.q_s @ (rot / (eig + f.damping)) @ f.q_a.T
            return out
        flat = self._flat(grads)
        if self.method == "exact":
            return self._unflat(torch.cholesky_solve(flat.T, self._dense).T)
        return self._unflat(self._lissa(flat))

    def _fisher_mvp(self, batch: Any, vec: torch.Tensor) -> torch.Tensor:
        """``Ĝ V`` (``V`` ``[P, Q]``) from one batch's per-example Fisher gradients."""
        sig, losses = layer_signals(self.model, self._layers, self._fisher_loss, batch)
        flat = self._flat(per_example_grads(sig))
        return flat.T @ (flat @ vec) / losses.shape[0]

    def _lissa(self, flat: torch.Tensor) -> torch.Tensor:
        """Neumann series ``h ← v + h − (Ĝ_j + λ) h / s``; ``(G + λ)⁻¹ v ≈ h / s`` (Agarwal et al. 2017)."""
        gen = torch.Generator().manual_seed(self.seed)
        v = flat.T.clone()
        damp = self._damp_vec[:, None]
        scale = self.lissa_scale
        if scale is None:  # power iteration on G + λ for its top eigenvalue
            x = torch.randn(v.shape[0], 1, dtype=torch.float64, generator=gen)
            top = 1.0
            for k in range(20):
                x = x / x.norm()
                y = self._fisher_mvp(self._train[k % len(self._train)], x) + damp * x
                top = float(x.T @ y)
                x = y
            scale = 2.0 * top
            self.lissa_scale_used = scale
        h = v.clone()
        for _ in range(self.lissa_iterations):
            batch = self._train[int(torch.randint(len(self._train), (1,), generator=gen))]
            h = v + h - (self._fisher_mvp(batch, h) + damp * h) / scale
        return (h / scale).T

    # ------------------------------------------------------------------ gradients and scores
    def gradients(self, data: Iterable[Any] | Callable[[], Iterable[Any]], loss_fn: LossFn) -> dict[str, torch.Tensor]:
        """Per-example gradients ``{name: [N, out, in(+1)]}`` of ``loss_fn`` over all batches of ``data``."""
        parts: dict[str, list[torch.Tensor]] = {n: [] for n in self._layers}
        for batch in _batches(data):
            sig, _ = layer_signals(self.model, self._layers, loss_fn, batch)
            for n, gr in per_example_grads(sig).items():
                parts[n].append(gr)
        return {n: torch.cat(v) for n, v in parts.items()}

    def preconditioned_query(self, query: Iterable[Any] | Callable[[], Iterable[Any]], measurement: LossFn
                             ) -> dict[str, torch.Tensor]:
        """``(G + λI)⁻¹ ∇f`` per query ``{name: [Q, out, in(+1)]}``."""
        return self.precondition(self.gradients(query, measurement))

    def scores(self, query: Iterable[Any] | Callable[[], Iterable[Any]], measurement: LossFn,
               train: Iterable[Any] | Callable[[], Iterable[Any]], train_loss: LossFn,
               rank: int | None = None) -> torch.Tensor:
        """``I_f(z_m) = −∇fᵀ(G + λI)⁻¹∇L(z_m)`` ``[Q, N]`` (module docstring: positive = helpful for ``f``);
        ``rank``: query batching by a rank-``rank`` SVD of each layer's preconditioned query gradient."""
        pq = self.preconditioned_query(query, measurement)
        return self.scores_from_preconditioned(pq, train, train_loss, rank)

    def scores_from_preconditioned(self, pq: dict[str, torch.Tensor],
                                   train: Iterable[Any] | Callable[[], Iterable[Any]], train_loss: LossFn,
                                   rank: int | None = None) -> torch.Tensor:
        """Scores ``[Q, N]`` of the training samples for already preconditioned query gradients ``pq``."""
        low = {n: low_rank(p, rank) for n, p in pq.items()} if rank is not None else None
        cols = []
        for batch in _batches(train):
            sig, _ = layer_signals(self.model, self._layers, train_loss, batch)
            total = None
            for n, (a, g) in sig.items():
                a, g = a.double(), g.double()
                if low is None and a.shape[1] == 1:  # one position: gᵀ P a, no per-example gradient formed
                    s = torch.einsum("bo,qob->qb", g[:, 0], torch.einsum("qoi,bi->qob", pq[n], a[:, 0]))
                elif low is None:
                    s = torch.cat([torch.einsum("qoi,boi->qb", pq[n], torch.einsum("bto,bti->boi", gc, ac))
                                   for gc, ac in zip(g.split(CHUNK), a.split(CHUNK), strict=True)], dim=1)
                else:
                    u, sv, v = low[n]  # [Q, out, r], [Q, r], [Q, in, r]
                    s = torch.einsum("qr,btqr->qb", sv,
                                     torch.einsum("bto,qor->btqr", g, u) * torch.einsum("bti,qir->btqr", a, v))
                total = s if total is None else total + s
            cols.append(-total)
        return torch.cat(cols, dim=1)


def low_rank(p: torch.Tensor, rank: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Rank-``rank`` truncated SVD ``P ≈ U diag(s) Vᵀ`` of each ``[out, in]`` matrix of ``p`` ``[Q, out, in]``
    (paper §3.2.2 query batching); a rank at or above ``min(out, in)`` is exact."""
    if rank < 1:
        raise ConfigError(f"query-batching rank must be >= 1, got {rank}")
    u, s, vh = torch.linalg.svd(p, full_matrices=False)
    r = min(rank, s.shape[-1])
    return u[..., :r], s[..., :r], vh[..., :r, :].transpose(-1, -2)


def rank_influences(scores: torch.Tensor | np.ndarray, top: int) -> tuple[np.ndarray, np.ndarray]:
    """Indices and values of the ``top`` most helpful training samples (descending influence) of one query."""
    s = np.asarray(scores, dtype=np.float64).reshape(-1)
    order = np.argsort(-s, kind="stable")[:top]
    return order, s[order]


def tfidf_candidates(query_text: str, train_texts: Sequence[str], top_n: int) -> np.ndarray:
    """Indices of the ``top_n`` training texts with the highest TF-IDF cosine similarity to ``query_text`` (paper
    §3.2.1's candidate filtering before exact scoring), best first."""
    text = import_optional("sklearn.feature_extraction.text", "TF-IDF candidate filtering")
    if top_n < 1:
        raise ConfigError(f"top_n must be >= 1, got {top_n}")
    vec = text.TfidfVectorizer(token_pattern=r"(?u)\b\w+\b")
    mat = vec.fit_transform(list(train_texts) + [query_text])
    sims = (mat[:-1] @ mat[-1].T).toarray().reshape(-1)
    return np.argsort(-sims, kind="stable")[:top_n]


def kronfluence_scores(model: nn.Module, train: Sequence[torch.Tensor], query: Sequence[torch.Tensor],
                       train_loss: LossFn, fisher_loss: LossFn, measurement: LossFn, strategy: str = "ekfac",
                       damping: float | None = None, batch_size: int = 512, seed: int = 0,
                       fit_data: Sequence[torch.Tensor] | None = None) -> tuple[np.ndarray, dict[str, float]]:
    """The reference implementation's scores ``[Q, N]`` on the same model (a deep copy: kronfluence wraps its
    modules) and tensors, in our sign convention (module docstring), with timings. ``train``/``query`` are tuples of
    tensors (``TensorDataset`` columns); the loss functions get ``(model, tuple_of_batch_tensors)`` and return
    per-example values, as for :class:`Influence`. ``damping=None`` is kronfluence's ``0.1 × mean(Λ)`` per layer,
    the same heuristic as ours. ``fit_data``: the tensors the factors are fitted on (default ``train``). Outputs go
    to a temporary directory that is removed."""
    import copy
    import logging
    import tempfile

    kf = import_optional("kronfluence", "the kronfluence comparison")
    from kronfluence.arguments import FactorArguments, ScoreArguments
    from kronfluence.task import Task
    from torch.utils.data import TensorDataset

    class _Task(Task):
        def compute_train_loss(self, batch: Any, model: nn.Module, sample: bool = False) -> torch.Tensor:
            return (fisher_loss if sample else train_loss)(model, tuple(batch)).sum()

        def compute_measurement(self, batch: Any, model: nn.Module) -> torch.Tensor:
            # kronfluence scores ∇mᵀ(G+λ)⁻¹∇L; ours is −∇fᵀ(G+λ)⁻¹∇L: measure m = −f
            return -measurement(model, tuple(batch)).sum()

    torch.manual_seed(seed)
    task = _Task()
    copy_ = kf.prepare_model(copy.deepcopy(model), task)
    times: dict[str, float] = {}
    logging.getLogger("kronfluence").setLevel(logging.ERROR)
    with tempfile.TemporaryDirectory() as tmp:
        analyzer = kf.Analyzer("rl_energy", copy_, task, cpu=True, disable_tqdm=True, output_dir=tmp,
                               log_level=logging.ERROR)
        t0 = time.perf_counter()
        fit_set = TensorDataset(*(train if fit_data is None else fit_data))
        analyzer.fit_all_factors("f", fit_set, per_device_batch_size=batch_size,
                                 factor_args=FactorArguments(strategy=strategy), overwrite_output_dir=True)
        times["fit"] = time.perf_counter() - t0
        t1 = time.perf_counter()
        analyzer.compute_pairwise_scores("s", "f", TensorDataset(*query), TensorDataset(*train),
                                         per_device_query_batch_size=len(query[0]),
                                         per_device_train_batch_size=batch_size,
                                         score_args=ScoreArguments(damping_factor=damping), overwrite_output_dir=True)
        times["score"] = time.perf_counter() - t1
        scores = analyzer.load_pairwise_scores("s")["all_modules"]
    return scores.double().numpy(), times
