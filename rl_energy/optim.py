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
