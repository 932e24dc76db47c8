"""Run logs: ``progress.csv``, TensorBoard events, and console progress.

On resume the CSV is cut back to the checkpoint's step and TensorBoard is told to purge later events
(``purge_step``), so a resumed run never logs a step twice.
"""

from __future__ import annotations

import csv
import math
import sys
from pathlib import Path
from typing import Any

BASE_COLUMNS = (
    "step",
    "episode_return",
    "episode_length",
    "eval_return_mean",
    "eval_return_std",
    "sps",
    "wall_time",
)


def _fmt(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return "" if math.isnan(value) else f"{value:.6g}"
    return str(value)


class RunLogger:
    """Writes one CSV row (and TensorBoard scalars) per :meth:`log` call."""

    def __init__(
        self, run_dir: str | Path, metric_names: tuple[str, ...], resume_step: int | None = None,
        tensorboard: bool = True,
    ) -> None:
        self.run_dir = Path(run_dir)
        self.columns = list(BASE_COLUMNS) + [m for m in metric_names if m not in BASE_COLUMNS]
        self.csv_path = self.run_dir / "progress.csv"
        kept: list[dict[str, str]] = []
        if resume_step is not None and self.csv_path.is_file():
            with self.csv_path.open(newline="") as f:
                kept = [row for row in csv.DictReader(f) if row.get("step") and int(row["step"]) <= resume_step]
        self._file = self.csv_path.open("w", newline="")
        self._writer = csv.DictWriter(self._file, fieldnames=self.columns, extrasaction="ignore")
        self._writer.writeheader()
        for row in kept:
            self._writer.writerow(row)
        self._file.flush()
        self._tb = None
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            purge = resume_step + 1 if resume_step is not None else None
            self._tb = SummaryWriter(str(self.run_dir / "tb"), purge_step=purge)

    def log(self, row: dict[str, Any]) -> None:
        step = int(row["step"])
        self._writer.writerow({k: _fmt(row.get(k)) for k in self.columns})
        self._file.flush()
        if self._tb is not None:
            for key, value in row.items():
                if key != "step" and isinstance(value, (int, float)) and not math.isnan(float(value)):
                    self._tb.add_scalar(key, value, step)

    def close(self) -> None:
        if not self._file.closed:
            self._file.close()
        if self._tb is not None:
            self._tb.close()
            self._tb = None


def format_row(row: dict[str, Any], total: int) -> str:
    """One human-readable log line for non-terminal output."""
    parts = [f"step {row['step']}/{total}"]
    for key, label, fmt in (("episode_return", "return", ".1f"), ("eval_return_mean", "eval", ".1f"),
                            ("success_coverage", "coverage", ".3f"), ("goal_success", "goal success", ".2f"),
                            ("loss", "loss", ".4g"), ("l1", "L1", ".4f"), ("top_k_reward", "top-k R", ".4g"),
                            ("modes_found", "modes", ".0f"), ("sps", "sps", ".0f")):
        value = row.get(key)
        if value is not None and not (isinstance(value, float) and math.isnan(value)):
            parts.append(f"{label} {value:{fmt}}")
    return " | ".join(parts)


class Console:
    """A progress bar (steps, SPS, last eval return) on a terminal; plain log lines otherwise."""

    def __init__(self, total: int, start: int, enabled: bool = True) -> None:
        self.total = total
        self.enabled = enabled
        self.tty = enabled and sys.stdout.isatty()
        self._progress = None
        if self.tty:
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

            self._progress = Progress(
                TextColumn("[bold]train"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[info]}"),
                TimeRemainingColumn(), transient=False,
            )
            self._task = self._progress.add_task("train", total=total, completed=start, info="")
            self._progress.start()

    def advance(self, step: int, info: str) -> None:
        if self._progress is not None:
            self._progress.update(self._task, completed=step, info=info)

    def row(self, row: dict[str, Any]) -> None:
        if self.enabled and not self.tty:
            print(format_row(row, self.total), flush=True)

    def print(self, text: str) -> None:
        if not self.enabled:
            return
        if self._progress is not None:
            self._progress.console.print(text)
        else:
            print(text, flush=True)

    def close(self) -> None:
        if self._progress is not None:
            self._progress.stop()
            self._progress = None
