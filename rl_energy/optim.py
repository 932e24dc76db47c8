"""The project's optimiser: Adam (Kingma & Ba, 2015, Algorithm 1) with the fused kernel and a lean step.

``torch.optim.Adam(fused=True)`` already updates every parameter in one kernel, but each ``step()``
still regroups the tensors by device and dtype, looks up per-parameter state and wraps the call in
profiler hooks, which costs more than the kernel itself for a 256x256 MLP on a CPU. :class:`FusedAdam`
does that bookkeeping once, then issues two calls per step (``step += 1`` on the group's shared step
counter and ``torch._fused_adam_``), so the update, the state and ``state_dict`` are exactly those of
``torch.optim.Adam(fused=True)``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import torch


class FusedAdam(torch.optim.Adam):
    """``torch.optim.Adam(fused=True)`` with its per-step bookkeeping cached (same maths, same state)."""

    def __init__(self, params: Iterable[Any], lr: float) -> None:
        super().__init__(params, lr=lr, fused=True)
        self._plan: list[dict[str, Any]] | None = None

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        super().load_state_dict(state_dict)
        self._plan = None  # the state tensors were replaced

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
            return super().step(closure)
        self._step(None)
        return None

    @torch.no_grad()
    def clip_step(self, max_norm: float) -> torch.Tensor:
        """Clip the global gradient norm to ``max_norm`` (as ``clip_grad_norm_``) and take the step.

        The clip factor goes into the fused kernel as its ``grad_scale`` (the kernel divides each
        gradient by it), so no extra pass rewrites the gradients; ``p.grad`` keeps the unclipped
        values. Returns the total gradient norm before clipping.
        """
        grads = [p.grad for group in self.param_groups for p in group["params"] if p.grad is not None]
        norm = torch.linalg.vector_norm(torch.cat([g.reshape(-1) for g in grads]))
        self._step((norm / max_norm).clamp(min=1.0))  # 1 / min(1, max_norm / norm)
        return norm

    def _step(self, grad_scale: torch.Tensor | None) -> None:
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
        if not set_to_none:
            return super().zero_grad(set_to_none=False)
        for group in self.param_groups:
            for p in group["params"]:
                p.grad = None


def adam(params: Iterable[Any], lr: float) -> FusedAdam:
    """The Adam every agent uses (see :class:`FusedAdam`)."""
    return FusedAdam(params, lr)
