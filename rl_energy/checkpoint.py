"""Checkpoints that resume a run exactly where it stopped.

A checkpoint is two files in ``RUN_DIR/checkpoints/``: ``last.pt`` (agent, optimisers, RNG states,
step counter, logger position) and ``buffer.pt`` (the written part of the replay buffer). Both are
written atomically (temporary file, then rename), so an interruption during a save never leaves a
half-written checkpoint behind. They are read with ``torch.load(..., weights_only=True)``: a
checkpoint holds only tensors and plain Python containers and can never execute code.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

STATE_FILE = "last.pt"
BUFFER_FILE = "buffer.pt"


def _atomic_save(obj: Any, path: Path) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def save_checkpoint(directory: str | Path, state: dict[str, Any], buffer_state: dict[str, Any] | None) -> None:
    """Write ``buffer.pt`` first, then ``last.pt``: ``last.pt`` existing means the pair is complete."""
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    if buffer_state is not None:
        _atomic_save(buffer_state, d / BUFFER_FILE)
    _atomic_save(state, d / STATE_FILE)


def has_checkpoint(directory: str | Path) -> bool:
    return (Path(directory) / STATE_FILE).is_file()


def load_checkpoint(directory: str | Path, with_buffer: bool = True) -> tuple[dict[str, Any], dict[str, Any] | None]:
    d = Path(directory)
    state = torch.load(d / STATE_FILE, map_location="cpu", weights_only=True)
    buffer_state = None
    if with_buffer and (d / BUFFER_FILE).is_file():
        buffer_state = torch.load(d / BUFFER_FILE, map_location="cpu", weights_only=True)
    return state, buffer_state


def load_agent_state(agent: Any, run_dir: str | Path) -> int:
    """Load the agent state of a finished run's last checkpoint (``RUN_DIR/checkpoints``) into ``agent``; return the
    run's step counter. What ``rl-energy evaluate`` of every loop starts from."""
    state, _ = load_checkpoint(Path(run_dir) / "checkpoints", with_buffer=False)
    agent.load_checkpoint_state(state["agent"])
    return int(state["step"])
