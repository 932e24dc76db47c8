"""The project's tiny causal transformer language model, in plain torch (no ``transformers``).

A GPT-2-style decoder (token and learned position embeddings, pre-LayerNorm blocks of causal multi-head
self-attention and a GELU MLP, a final LayerNorm and an output head tied to the token embedding) built
from a :class:`GPTConfig`; nothing is downloaded. Used as the token-level policy and reference model of
the risk-aware DPO experiments (Zhang et al. 2025, "Risk-aware direct preference optimization under
nested risk measure", arXiv 2505.20359; digest ``papers/one-step-tasks.md`` §13: "a 2-layer GPT-2 config
(64-dim embeddings) built locally").

Helpers, all on token-id tensors ``[B, L]`` (int64):

* :func:`next_token_logprobs`: the full next-token log-distributions ``log π(· | s_t)`` ``[B, L, V]``,
  where ``s_t = ids[:, :t+1]``;
* :func:`token_logprobs`: ``log π(y_t | s_t)`` of the tokens a sequence holds after position ``start``;
* :func:`generate`: ancestral sampling (or greedy decoding) of ``n_new`` tokens after a prompt.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn


@dataclass
class GPTConfig:
    """Shape of a :class:`TinyGPT` (digest §13: 2 layers, 64-dim embeddings)."""

    vocab_size: int
    block_size: int = 32
    """Longest sequence (prompt + continuation) the position embedding covers."""
    n_layer: int = 2
    n_head: int = 2
    n_embd: int = 64
    dropout: float = 0.0

    def validate(self) -> None:
        for key in ("vocab_size", "block_size", "n_layer", "n_head", "n_embd"):
            if getattr(self, key) < 1:
                raise ValueError(f"GPTConfig.{key} must be >= 1, got {getattr(self, key)}")
        if self.n_embd % self.n_head:
            raise ValueError(f"GPTConfig.n_embd ({self.n_embd}) must be a multiple of n_head ({self.n_head})")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"GPTConfig.dropout must be in [0, 1), got {self.dropout}")


class _Block(nn.Module):
    def __init__(self, cfg: GPTConfig) -> None:
        super().__init__()
        self.n_head = cfg.n_head
        self.dropout = cfg.dropout
        self.ln1 = nn.LayerNorm(cfg.n_embd)
        self.qkv = nn.Linear(cfg.n_embd, 3 * cfg.n_embd)
        self.proj = nn.Linear(cfg.n_embd, cfg.n_embd)
        self.ln2 = nn.LayerNorm(cfg.n_embd)
        self.fc = nn.Linear(cfg.n_embd, 4 * cfg.n_embd)
        self.fc_out = nn.Linear(4 * cfg.n_embd, cfg.n_embd)
        self.drop = nn.Dropout(cfg.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, d = x.shape
        q, k, v = self.qkv(self.ln1(x)).split(d, dim=-1)
        q, k, v = (t.reshape(b, n, self.n_head, d // self.n_head).transpose(1, 2) for t in (q, k, v))
        att = F.scaled_dot_product_attention(q, k, v, is_causal=True,
                                             dropout_p=self.dropout if self.training else 0.0)
        x = x + self.drop(self.proj(att.transpose(1, 2).reshape(b, n, d)))
        return x + self.drop(self.fc_out(F.gelu(self.fc(self.ln2(x)))))


class TinyGPT(nn.Module):
    """A GPT-2-style causal LM built from a :class:`GPTConfig` (see the module docstring)."""

    def __init__(self, cfg: GPTConfig) -> None:
        super().__init__()
        cfg.validate()
        self.cfg = cfg
        self.tok = nn.Embedding(cfg.vocab_size, cfg.n_embd)
        self.pos = nn.Embedding(cfg.block_size, cfg.n_embd)
        self.drop = nn.Dropout(cfg.dropout)
        self.blocks = nn.ModuleList(_Block(cfg) for _ in range(cfg.n_layer))
        self.ln_f = nn.LayerNorm(cfg.n_embd)
        self.apply(self._init)
        for name, p in self.named_parameters():  # GPT-2's scaled init of the residual projections
            if name.endswith(("proj.weight", "fc_out.weight")):
                nn.init.normal_(p, 0.0, 0.02 / math.sqrt(2 * cfg.n_layer))

    @staticmethod
    def _init(m: nn.Module) -> None:
        if isinstance(m, (nn.Linear, nn.Embedding)):
            nn.init.normal_(m.weight, 0.0, 0.02)
        if isinstance(m, nn.Linear) and m.bias is not None:
            nn.init.zeros_(m.bias)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        """Next-token logits ``[B, L, V]`` for token ids ``[B, L]`` (position t sees ``ids[:, :t+1]`` only)."""
        if ids.dim() != 2:
            raise ValueError(f"ids must be [B, L], got shape {tuple(ids.shape)}")
        n = ids.shape[1]
        if n > self.cfg.block_size:
            raise ValueError(f"sequence length {n} exceeds block_size {self.cfg.block_size}")
        x = self.drop(self.tok(ids) + self.pos(torch.arange(n, device=ids.device)))
        for block in self.blocks:
            x = block(x)
        return self.ln_f(x) @ self.tok.weight.T


def next_token_logprobs(model: TinyGPT, ids: torch.Tensor) -> torch.Tensor:
    """``log π(· | ids[:, :t+1])`` for every position t: ``[B, L, V]`` (with gradients if enabled)."""
    logits = model(ids)
    return torch.log_softmax(logits if logits.dtype == torch.float64 else logits.float(), dim=-1)


def token_logprobs(model: TinyGPT, ids: torch.Tensor, start: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token log-probabilities of the tokens ``ids[:, start:]`` given their prefixes.

    Returns ``(logp, dists)``: ``logp[b, j] = log π(ids[b, start+j] | ids[b, :start+j])`` ``[B, L-start]``
    and the full log-distributions at those states ``[B, L-start, V]`` (``start >= 1``: the first token
    is a given prompt token).
    """
    if not 1 <= start < ids.shape[1]:
        raise ValueError(f"start must be in [1, {ids.shape[1] - 1}], got {start}")
    dists = next_token_logprobs(model, ids[:, :-1])[:, start - 1:]
    logp = dists.gather(-1, ids[:, start:].unsqueeze(-1)).squeeze(-1)
    return logp, dists


@torch.no_grad()
def generate(model: TinyGPT, prompt: torch.Tensor, n_new: int, generator: torch.Generator | None = None,
             temperature: float = 1.0, greedy: bool = False) -> torch.Tensor:
    """``n_new`` tokens ``[B, n_new]`` sampled after ``prompt`` ``[B, P]`` (``greedy``: argmax decoding).

    Without a KV cache (the sequences here are ~20 tokens): each step reruns the model on the prefix.
    """
    if n_new < 1:
        raise ValueError(f"n_new must be >= 1, got {n_new}")
    if not greedy and not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    was_training = model.training
    model.eval()
    try:
        ids = prompt
        for _ in range(n_new):
            logits = model(ids)[:, -1].float()
            if greedy:
                nxt = logits.argmax(-1, keepdim=True)
            else:
                probs = torch.softmax(logits / temperature, dim=-1)
                nxt = torch.multinomial(probs, 1, generator=generator)
            ids = torch.cat([ids, nxt], dim=1)
    finally:
        model.train(was_training)
    return ids[:, prompt.shape[1]:]
