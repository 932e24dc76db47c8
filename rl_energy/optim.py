"""The project's optimiser: Adam (Kingma & Ba, 2015, Algorithm 1) with the fused kernel and a lean step.

``torch.optim.Adam(fused=True)`` already updates every parameter in one kernel, but each ``step()``
still regroups the tensors by device and dtype, looks up per-parameter state and wraps the call in
profiler hooks, which costs more than the kernel itself for a 256x256 MLP on a CPU. :class:`FusedAdam`
does that bookkeeping once, then issues two calls per step (``step += 1`` on the group's shared step
counter and ``torch._fused_adam_``), so the update, the state and ``state_dict`` are exactly those of
``torch.optim.Adam(fused=True)``.

With ``flat=True`` each group's parameters, gradients and moment estimates live in one contiguous
buffer each (the parameters and their ``.grad`` become views into it), so the step is one kernel on one
tensor and the gradient norm one reduction: on a CPU, the fused kernel over 60 small tensors costs
about five times as much as over one tensor of the same total size. Adam is elementwise, so the
update is unchanged, bit for bit, with one difference: ``zero_grad`` zeroes the gradients instead of
dropping them, so a parameter that receives no gradient in a step is stepped with a zero gradient
(its moments decay) where ``torch.optim.Adam`` would skip it. Use it where every parameter is
trained at every step.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from typing import Any

import torch


class FusedAdam(torch.optim.Adam):
    """``torch.optim.Adam(fused=True)`` with its per-step bookkeeping cached (same maths, same state)."""

    def __init__(self, params: Iterable[Any], lr: float, flat: bool = False) -> None:
        super().__init__(params, lr=lr, fused=True)
        self._plan: list[dict[str, Any]] | None = None
        self.flat = flat
        if flat:
            self._plan = [self._flatten(group) for group in self.param_groups]

    # ------------------------------------------------------------------------------- flat buffers
    _ALIGN = 16
    """Each parameter starts on a 64-byte boundary of the flat buffer (16 float32 elements)."""

    def _flatten(self, group: dict[str, Any], old: dict[str, Any] | None = None) -> dict[str, Any]:
        """Move ``group``'s parameters, gradients and Adam state into one contiguous buffer each.

        With ``old`` (the group's previous flat entry) the moments and step count carry over: this
        re-attaches parameters that were replaced from outside (``module.to()``, ``.double()``)."""
        params = [p for p in group["params"] if p.requires_grad]
        if len({(p.device, p.dtype) for p in params}) != 1:
            raise ValueError("FusedAdam(flat=True) needs the parameters of a group on one device with one dtype")
        offsets, total = [], 0
        for p in params:
            offsets.append(total)
            total += -(-p.numel() // self._ALIGN) * self._ALIGN
        p0 = params[0]
        buffers = {k: torch.zeros(total, device=p0.device, dtype=p0.dtype) for k in ("param", "grad", "m", "v")}
        views: dict[str, list[torch.Tensor]] = {k: [] for k in buffers}
        for p, o in zip(params, offsets, strict=True):
            for k, buf in buffers.items():
                views[k].append(buf[o : o + p.numel()].view_as(p))
        step = torch.zeros((), dtype=torch.float32, device=p0.device)
        for i, p in enumerate(params):
            views["param"][i].copy_(p.detach())
            if p.grad is not None:
                views["grad"][i].copy_(p.grad)
        if old is not None:
            step.copy_(old["step"])
            for i in range(len(params)):
                views["m"][i].copy_(old["views"]["m"][i])
                views["v"][i].copy_(old["views"]["v"][i])
        entry = {"group": group, "params": params, "flat": buffers, "views": views, "step": step}
        self._attach(entry)
        return entry

    def _attach(self, entry: dict[str, Any]) -> None:
        """Point every parameter, gradient and state entry at its view of the flat buffers."""
        views = entry["views"]
        for i, p in enumerate(entry["params"]):
            p.data = views["param"][i]
            p.grad = views["grad"][i]
            self.state[p] = {"step": entry["step"], "exp_avg": views["m"][i], "exp_avg_sq": views["v"][i]}
        entry["ptrs"] = [p.data_ptr() for p in entry["params"]]

    def _flat_entries(self) -> list[dict[str, Any]]:
        """The flat entries, first re-attaching anything replaced from outside: a parameter tensor
        (the group is re-flattened around its new values) or a gradient (``grad = None`` counts as zero)."""
        plan = self._plan
        assert plan is not None
        for k, entry in enumerate(plan):
            params, grads = entry["params"], entry["views"]["grad"]
            if any(p.data_ptr() != ptr for p, ptr in zip(params, entry["ptrs"], strict=True)):
                plan[k] = self._flatten(entry["group"], old=entry)
            elif any(p.grad is not g for p, g in zip(params, grads, strict=True)):
                for p, g in zip(params, grads, strict=True):
                    if p.grad is not g:
                        g.copy_(p.grad) if p.grad is not None else g.zero_()
                self._attach(entry)
        return plan

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        super().load_state_dict(state_dict)
        if not self.flat:
            self._plan = None  # the state tensors were replaced
            return
        assert self._plan is not None
        for entry in self._plan:  # copy the loaded moments into the flat buffers
            states = [self.state[p] for p in entry["params"]]
            for i, s in enumerate(states):
                entry["views"]["m"][i].copy_(s["exp_avg"])
                entry["views"]["v"][i].copy_(s["exp_avg_sq"])
            entry["step"].copy_(states[0]["step"])
            self._attach(entry)

    def _build_plan(self) -> list[dict[str, Any]] | None:
        """The per-group tensor lists of the fast path, or ``None`` where it does not apply."""
        for group in self.param_groups:
            states = [self.state.get(p) for p in group["params"]]
            if any(not s for s in states) or group["amsgrad"] or group["maximize"] or group["differentiable"]:
                return None
            if len({(p.device, p.dtype) for p in group["params"]}) > 1 or len({float(s["step"]) for s in states}) > 1:
                return None
        plan = []
        for group in self.param_groups:
            params = list(group["params"])
            states = [self.state[p] for p in params]
            # The parameters of a group are always stepped together, so they share one step counter:
            # one increment per step instead of one per parameter (the values in state_dict are unchanged).
            step = states[0]["step"]
            for s in states:
                s["step"] = step
            plan.append({
                "group": group,
                "params": params,
                "exp_avgs": [s["exp_avg"] for s in states],
                "exp_avg_sqs": [s["exp_avg_sq"] for s in states],
                "step": step,
                "steps": [step] * len(params),
            })
        return plan

    def _unshare_steps(self) -> None:
        """Give every parameter its own step counter again (``torch.optim.Adam.step`` increments each)."""
        for state in self.state.values():
            if "step" in state:
                state["step"] = state["step"].clone()

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:  # type: ignore[override]
        """One Adam step on the current gradients: the same update as ``torch.optim.Adam.step``."""
        if closure is not None:
            if not self.flat:
                return super().step(closure)
            with torch.enable_grad():
                loss = closure()
            self._step(None)
            return loss
        self._step(None)
        return None

    @torch.no_grad()
    def clip_step(self, max_norm: float) -> torch.Tensor:
        """Clip the global gradient norm to ``max_norm`` (as ``clip_grad_norm_``) and take the step.

        The clip factor goes into the fused kernel as its ``grad_scale`` (the kernel divides each
        gradient by it), so no extra pass rewrites the gradients; ``p.grad`` keeps the unclipped
        values. Returns the total gradient norm before clipping.
        """
        entries = None
        if self.flat:
            entries = self._flat_entries()
            flats = [entry["flat"]["grad"] for entry in entries]
            norm = torch.linalg.vector_norm(flats[0] if len(flats) == 1 else torch.cat(flats))
        else:
            grads = [p.grad for group in self.param_groups for p in group["params"] if p.grad is not None]
            norm = torch.linalg.vector_norm(torch.cat([g.reshape(-1) for g in grads]))
        self._step((norm / max_norm).clamp(min=1.0), entries)  # 1 / min(1, max_norm / norm)
        return norm

    def _step(self, grad_scale: torch.Tensor | None, entries: list[dict[str, Any]] | None = None) -> None:
        if self.flat:
            for entry in entries or self._flat_entries():
                group, f = entry["group"], entry["flat"]
                beta1, beta2 = group["betas"]
                entry["step"].add_(1)
                torch._fused_adam_(
                    [f["param"]], [f["grad"]], [f["m"]], [f["v"]], [], [entry["step"]], amsgrad=False,
                    lr=group["lr"], beta1=beta1, beta2=beta2, weight_decay=group["weight_decay"], eps=group["eps"],
                    maximize=False, grad_scale=grad_scale,
                )
            return
        plan = self._plan or self._build_plan()
        if plan is None or any(p.grad is None for entry in plan for p in entry["params"]):
            # the first step (no state yet), a parameter without gradient, or an unusual setting
            self._unshare_steps()
            self.grad_scale = grad_scale  # read by torch.optim.Adam.step
            try:
                super().step()
            finally:
                del self.grad_scale
            self._plan = None
            return
        self._plan = plan
        for entry in plan:
            group = entry["group"]
            beta1, beta2 = group["betas"]
            entry["step"].add_(1)
            torch._fused_adam_(
                entry["params"], [p.grad for p in entry["params"]], entry["exp_avgs"], entry["exp_avg_sqs"], [],
                entry["steps"], amsgrad=False, lr=group["lr"], beta1=beta1, beta2=beta2,
                weight_decay=group["weight_decay"], eps=group["eps"], maximize=False, grad_scale=grad_scale,
            )

    def zero_grad(self, set_to_none: bool = True) -> None:
        """Drop the gradients (or zero them with ``set_to_none=False``); with ``flat=True`` always zeroes
        the flat gradient buffer, which the parameters' ``.grad`` views keep pointing into."""
        if self.flat:
            for entry in self._plan or []:
                entry["flat"]["grad"].zero_()
            return
        if not set_to_none:
            return super().zero_grad(set_to_none=False)
        for group in self.param_groups:
            for p in group["params"]:
                p.grad = None


def adam(params: Iterable[Any], lr: float, flat: bool = False) -> FusedAdam:
    """The Adam every agent uses (see :class:`FusedAdam`; ``flat`` for one buffer per group)."""
    return FusedAdam(params, lr, flat=flat)


def cosine_factor(step: float, total: float, floor: float = 0.0) -> float:
    """The cosine learning-rate factor at ``step`` of ``total``: from 1 down to ``floor`` (held there after
    ``total``), ``floor + (1 − floor)·½(1 + cos(π·min(step/total, 1)))``."""
    t = min(step / total, 1.0)
    return floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * t))


# ================================================================================================
# Target-based surrogates (SSO)
# ================================================================================================
INNER_OPTIMIZERS: tuple[str, ...] = ("sgd", "armijo")
"""Inner optimisers of :class:`TargetSurrogate`: plain SGD (with optional momentum), or SGD whose step
size is found by an Armijo backtracking line search on the surrogate."""


class SurrogateState:
    """The surrogate ``q_t`` of one outer step of :class:`TargetSurrogate` (Lavington et al., 2023, §3).

    Holds the targets ``z_t = f(θ_t; X_t)`` (detached), the target-space gradient ``g_t = ∇_z ℓ(z_t)`` of the
    *mean* batch loss, ``ℓ(z_t)`` and ``η``; :meth:`value` evaluates, for model outputs ``f = f(θ; X_t)``,

        q_t(θ) = ℓ(z_t) + ⟨g_t, f − z_t⟩ + (1 / (2η)) · (1/n) ‖f − z_t‖²,

    ``n = z_t.shape[0]`` the number of samples of the batch (see :class:`TargetSurrogate` on this
    normalisation). ``q_t(θ_t) = ℓ(z_t)`` and ``∇_θ q_t(θ_t) = J_f(θ_t)ᵀ g_t = ∇_θ ℓ(f(θ_t))``.
    """

    def __init__(self, z: torch.Tensor, g: torch.Tensor, loss: torch.Tensor, eta: float) -> None:
        self.z, self.g, self.loss, self.eta = z, g, loss, eta
        self.n = z.shape[0] if z.dim() > 0 else 1

    def value(self, f: torch.Tensor) -> torch.Tensor:
        """``q_t`` at model outputs ``f`` (differentiable in ``f``)."""
        diff = f - self.z
        return self.loss + (self.g * diff).sum() + diff.pow(2).sum() / (2.0 * self.eta * self.n)

    def target(self) -> torch.Tensor:
        """The unconstrained minimiser of ``q_t`` over the outputs: ``z_t − η n g_t`` (= ``z_t − η ∇ℓ_i(z_i)`` per
        sample for a mean loss), the point that the inner loop projects onto the model's range (paper §3:
        SSO is projected SGD in target space)."""
        return self.z - self.eta * self.n * self.g


class TargetSurrogate:
    """SSO: stochastic optimisation with target-based surrogates (Lavington, Vaswani, Babanezhad, Schmidt &
    Le Roux, ICML 2023, "Target-based surrogates for stochastic optimization", arXiv 2302.02607, Algorithm 1
    and §3; digest ``papers/one-step-tasks.md`` §12).

    The objective is ``ℓ(f(θ))``: a model ``f(θ; X)`` produces *targets* ``z`` (logits, actions) and a loss
    ``ℓ(z)`` scores them; the gradient of ``ℓ`` with respect to the targets is the *expensive* part (labels,
    an expert, a simulator), the model's own gradients are cheap. Per outer step :meth:`step`

    1. calls ``forward()`` once: ``z_t = f(θ_t; X_t)``, and computes ``g_t = ∇_z ℓ(z_t)`` — the one expensive
       gradient (counted in :attr:`expensive_calls`);
    2. builds the surrogate (:class:`SurrogateState`; paper §3, the target-space surrogate)

           q_t(θ) = ℓ(z_t) + ⟨g_t, f(θ; X_t) − z_t⟩ + (1 / 2η) · (1/n) ‖f(θ; X_t) − z_t‖²  (+ R(θ) + (λ/2)‖θ‖²),

       with the constant ``ℓ(z_t)`` kept so that ``q_t(θ_t) = ℓ(z_t)``;
    3. takes ``m`` cheap inner steps on ``q_t`` over ``θ``: plain SGD (``inner="sgd"``, optional heavy-ball
       momentum whose buffer persists across outer steps) or SGD with an Armijo line search on ``q_t``
       (``inner="armijo"``, as the official code's inner optimiser): from the trial step ``α`` accept
       ``θ − α∇q`` when ``q(θ − α∇q) ≤ q(θ) − c α ‖∇q‖²``, else ``α ← β α``. ``α`` restarts at ``inner_lr`` at
       every outer step (the code resets it, to 10) and each later inner step first tries ``grow × α``. The
       inner loop stops early once ``‖∇q‖ ≤ grad_tol`` (the code's 1e-6): there the float32 surrogate cannot
       show the sufficient decrease any more and every line search would backtrack to its limit.

    **Normalisation of η (mean over the batch).** ``loss(z)`` must be the *mean* of per-sample losses
    ``ℓ_i(z_i)`` over the ``n = z.shape[0]`` samples of the batch, and the proximity term is the mean too:
    ``(1/2η) (1/n) Σ_i ‖f_i − z_i‖²``. Multiplying by ``n`` gives the paper's form for the summed loss,
    ``Σ_i ℓ_i(z_t,i) + ⟨∇ℓ_sum, f − z_t⟩ + (1/2η)‖f − z_t‖²``, so ``η`` is a per-sample step size in target
    space (the minimiser over ``f`` is ``z_i − η ∇ℓ_i(z_i)``), independent of the batch size. **Upper bound**
    (paper §3, "full batch: majorisation–minimisation"): if every ``ℓ_i`` is ``L``-smooth in ``z_i`` and
    ``η ≤ 1/L``, then ``q_t(θ) ≥ ℓ(f(θ; X_t))`` for *every* θ (any model: the bound is in target space),
    so with the full batch each outer step cannot increase the loss. Examples: the squared error
    ``‖z − y‖²`` has ``L = 2`` (η ≤ 1/2, and η = 1/2 makes ``q_t = ℓ``); softmax cross-entropy has
    ``L = 1/2`` (the Hessian ``diag(p) − ppᵀ`` has eigenvalues ≤ 1/2), so η ≤ 2.

    **The official code's scaling** (digest §12, [derived] from its ``SGD_FMDOpt``): its surrogate is
    ``S = mean over the N = n·k output elements of [g·f / η_c + (f − z_t)²]``, i.e. the *linear* term is scaled
    by ``1/η_c`` instead of the quadratic one by ``1/η``. With ``g`` the gradient of the mean batch loss (as
    here), ``S = q_t / (N η_c)`` up to a constant, with ``η = 1 / (2 n η_c)``: its ``eta`` is an *inverse*
    step size that also depends on the batch size, and its inner step sizes are ``N η_c`` times ours. Match
    step sizes by meaning, not by name.

    With ``m = 1`` and ``inner="sgd"``, the single inner step is exactly one SGD step on ``ℓ(f(θ))`` with
    step ``inner_lr`` (``∇q_t(θ_t) = ∇ℓ(f(θ_t))``), whatever ``η``. Counters: :attr:`expensive_calls` (target
    gradients ``g_t``), :attr:`model_grads` (backward passes through the model, one per inner step) and
    :attr:`model_evals` (extra forward passes of the line search); all are in :meth:`state_dict`.

    Usable by any full-information learner: it sees only ``forward`` (a closure evaluating the model on the
    outer step's batch with the current parameters) and ``loss`` (the targets' loss); ``extra`` is an
    optional cheap term ``R(θ)`` (a regulariser) added to the surrogate and minimised with it.
    """

    def __init__(
        self,
        params: Iterable[torch.Tensor],
        m: int = 10,
        eta: float = 1.0,
        inner: str = "armijo",
        inner_lr: float = 1.0,
        momentum: float = 0.0,
        weight_decay: float = 0.0,
        armijo_c: float = 0.5,
        armijo_beta: float = 0.5,
        armijo_grow: float = 2.0,
        max_backtracks: int = 40,
        grad_tol: float = 1e-6,
    ) -> None:
        self.params = [p for p in params if p.requires_grad]
        if not self.params:
            raise ValueError("TargetSurrogate got no trainable parameters")
        if isinstance(m, bool) or not isinstance(m, int) or m < 1:
            raise ValueError(f"TargetSurrogate 'm' (inner steps) must be an integer >= 1, got {m!r}")
        checks = {"eta": (eta, eta > 0), "inner_lr": (inner_lr, inner_lr > 0),
                  "momentum": (momentum, 0 <= momentum < 1), "weight_decay": (weight_decay, weight_decay >= 0),
                  "armijo_c": (armijo_c, 0 < armijo_c < 1), "armijo_beta": (armijo_beta, 0 < armijo_beta < 1),
                  "armijo_grow": (armijo_grow, armijo_grow >= 1)}
        for name, (value, ok) in checks.items():
            if not (ok and math.isfinite(value)):
                raise ValueError(f"TargetSurrogate '{name}' is out of range: {value!r}")
        if inner not in INNER_OPTIMIZERS:
            raise ValueError(f"TargetSurrogate 'inner' must be one of {INNER_OPTIMIZERS}, got {inner!r}")
        if inner == "armijo" and momentum != 0:
            raise ValueError("TargetSurrogate 'momentum' applies to inner='sgd' only (the line search takes plain "
                             "gradient steps)")
        if not grad_tol >= 0:
            raise ValueError(f"TargetSurrogate 'grad_tol' must be >= 0, got {grad_tol!r}")
        if max_backtracks < 1:
            raise ValueError(f"TargetSurrogate 'max_backtracks' must be >= 1, got {max_backtracks!r}")
        self.m, self.eta, self.inner, self.inner_lr = m, float(eta), inner, float(inner_lr)
        self.weight_decay = float(weight_decay)
        self.armijo_c, self.armijo_beta, self.armijo_grow = armijo_c, armijo_beta, armijo_grow
        self.max_backtracks = max_backtracks
        self.grad_tol = float(grad_tol)
        self.sgd = torch.optim.SGD(self.params, lr=inner_lr, momentum=momentum) if inner == "sgd" else None
        self.expensive_calls = 0
        self.model_grads = 0
        self.model_evals = 0
        self.step_size = float(inner_lr)
        """The last inner step size (the accepted Armijo step; ``inner_lr`` for SGD)."""

    # ---------------------------------------------------------------------------------- the surrogate
    def prepare(self, forward: Callable[[], torch.Tensor], loss: Callable[[torch.Tensor], torch.Tensor]
                ) -> tuple[SurrogateState, torch.Tensor]:
        """The expensive call: ``z_t = forward()``, ``ℓ(z_t)`` and ``g_t = ∇_z ℓ(z_t)``. Returns the surrogate and
        ``z_t`` still attached to the model's graph (its backward with ``g_t`` is ``∇_θ q_t(θ_t)``)."""
        z = forward()
        z_leaf = z.detach().requires_grad_(True)
        with torch.enable_grad():
            value = loss(z_leaf)
            if value.dim() != 0:
                raise ValueError(f"TargetSurrogate's loss must return a scalar (the mean batch loss), got shape "
                                 f"{tuple(value.shape)}")
            (g,) = torch.autograd.grad(value, z_leaf)
        self.expensive_calls += 1
        return SurrogateState(z.detach(), g.detach(), value.detach(), self.eta), z

    def _penalty(self, extra: Callable[[], torch.Tensor] | None) -> torch.Tensor | float:
        out: torch.Tensor | float = 0.0
        if extra is not None:
            out = extra()
        if self.weight_decay > 0:
            out = out + 0.5 * self.weight_decay * sum(p.pow(2).sum() for p in self.params)
        return out

    def _objective(self, state: SurrogateState, forward: Callable[[], torch.Tensor],
                   extra: Callable[[], torch.Tensor] | None) -> torch.Tensor:
        return state.value(forward()) + self._penalty(extra)

    def _zero_grad(self) -> None:
        for p in self.params:
            p.grad = None

    # ---------------------------------------------------------------------------------- the step
    def step(self, forward: Callable[[], torch.Tensor], loss: Callable[[torch.Tensor], torch.Tensor],
             extra: Callable[[], torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
        """One outer step (Algorithm 1): one expensive target gradient, then ``m`` inner steps on ``q_t``.

        ``forward()`` must evaluate the model on the *same* batch ``X_t`` at every call (it is called once
        per inner step, and by the line search); ``loss(z)`` is the mean batch loss of targets ``z``;
        ``extra()`` an optional cheap regulariser of the parameters. Returns detached 0-d tensors: ``loss``
        (``ℓ(z_t)``), ``surrogate`` (``q_t`` at the last inner iterate before its step) and ``step_size``."""
        state, z = self.prepare(forward, loss)
        q_value = state.loss
        alpha = self.inner_lr
        for j in range(self.m):
            self._zero_grad()
            with torch.enable_grad():
                if j == 0:  # at θ_t: f = z_t, so q = ℓ(z_t) + R and ∇q = Jᵀg + ∇R (reuse the expensive forward)
                    penalty = self._penalty(extra)
                    q = state.loss + penalty
                    if isinstance(penalty, torch.Tensor) and penalty.requires_grad:
                        torch.autograd.backward([z, penalty], [state.g, torch.ones_like(penalty)])
                    else:
                        z.backward(state.g)
                else:
                    q = self._objective(state, forward, extra)
                    q.backward()
            self.model_grads += 1
            q_value = q.detach()
            if self.sgd is not None:
                self.sgd.step()
                continue
            alpha = alpha if j == 0 else alpha * self.armijo_grow
            alpha, moved = self._armijo(state, forward, extra, q_value, alpha)
            if not moved:
                break
        self._zero_grad()
        self.step_size = alpha
        return {"loss": state.loss, "surrogate": q_value, "step_size": torch.tensor(alpha)}

    @torch.no_grad()
    def _armijo(self, state: SurrogateState, forward: Callable[[], torch.Tensor],
                extra: Callable[[], torch.Tensor] | None, q0: torch.Tensor, alpha: float) -> tuple[float, bool]:
        """Backtrack from ``alpha`` until ``q(θ − α∇q) ≤ q(θ) − c α ‖∇q‖²``; take that step. Returns ``α`` and
        whether the parameters moved: they stay when ``‖∇q‖ ≤ grad_tol`` or no trial passes within
        ``max_backtracks``."""
        grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in self.params]
        sq_norm = float(sum(g.pow(2).sum() for g in grads))
        if sq_norm <= self.grad_tol**2:
            return alpha, False
        start = [p.detach().clone() for p in self.params]
        for _ in range(self.max_backtracks):
            for p, p0, g in zip(self.params, start, grads, strict=True):
                p.copy_(p0 - alpha * g)
            trial = self._objective(state, forward, extra)
            self.model_evals += 1
            if bool(torch.isfinite(trial)) and float(trial) <= float(q0) - self.armijo_c * alpha * sq_norm:
                return alpha, True
            alpha *= self.armijo_beta
        for p, p0 in zip(self.params, start, strict=True):
            p.copy_(p0)
        return alpha, False

    # ---------------------------------------------------------------------------------- checkpoints
    def state_dict(self) -> dict[str, Any]:
        """Counters, the last step size and the inner SGD's state (momentum buffers)."""
        return {"expensive_calls": self.expensive_calls, "model_grads": self.model_grads,
                "model_evals": self.model_evals, "step_size": self.step_size,
                "sgd": self.sgd.state_dict() if self.sgd is not None else None}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.expensive_calls = int(state["expensive_calls"])
        self.model_grads = int(state["model_grads"])
        self.model_evals = int(state["model_evals"])
        self.step_size = float(state["step_size"])
        if self.sgd is not None and state.get("sgd") is not None:
            self.sgd.load_state_dict(state["sgd"])

    def zero_grad(self, set_to_none: bool = True) -> None:
        self._zero_grad()
