"""Learning curves from run directories: mean and spread over seeds, one line per agent x env."""

from __future__ import annotations

import contextlib
import csv
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from rl_energy.config import ConfigError, load_yaml_file


def read_curve(run_dir: Path, column: str = "eval_return_mean") -> tuple[np.ndarray, np.ndarray]:
    """``(steps, values)`` of the rows of ``progress.csv`` where ``column`` is set."""
    path = run_dir / "progress.csv"
    if not path.is_file():
        raise ConfigError(f"{run_dir} has no progress.csv")
    steps, values = [], []
    with path.open(newline="") as f:
        reader = csv.DictReader(f)
        if column not in (reader.fieldnames or []):
            raise ConfigError(f"{path} has no column '{column}'; columns: {', '.join(reader.fieldnames or [])}")
        for row in reader:
            if row.get(column):
                steps.append(int(row["step"]))
                values.append(float(row[column]))
    return np.asarray(steps), np.asarray(values)


def run_label(run_dir: Path) -> str:
    cfg_path = run_dir / "config.yaml"
    if cfg_path.is_file():
        cfg = load_yaml_file(cfg_path)
        return f"{cfg.get('agent_name', '?')} / {cfg.get('env_id', '?')}"
    return run_dir.name


def aggregate(curves: list[tuple[np.ndarray, np.ndarray]]) -> tuple[np.ndarray, np.ndarray]:
    """Interpolate each seed's curve onto the common step grid: ``(steps, values[seed, step])``."""
    last = min(s[-1] for s, _ in curves)
    grid = np.unique(np.concatenate([s[s <= last] for s, _ in curves]))
    return grid, np.stack([np.interp(grid, s, v) for s, v in curves])


@contextlib.contextmanager
def seeded_numpy(seed: int) -> Iterator[None]:
    """Seed NumPy's global generator for the block, then restore its state: rliable 1.2's stratified resampler
    draws its indices from ``np.random`` and ignores the ``random_state`` it is given, so a seeded rliable
    bootstrap needs this."""
    state = np.random.get_state()
    np.random.seed(seed)
    try:
        yield
    finally:
        np.random.set_state(state)


def bootstrap_ci(values: np.ndarray, level: float = 0.95, resamples: int = 10_000, seed: int = 0) -> np.ndarray:
    """Percentile bootstrap confidence interval of the mean over axis 0 (seeds), at every other index: ``[2, ...]``
    (low, high). rliable's stratified bootstrap (each column resampled over seeds; the ``bench`` extra)."""
    from rl_energy.errors import import_optional

    rly = import_optional("rliable.library", "a bootstrap confidence band (--band ci95)")
    values = np.asarray(values, dtype=np.float64)
    flat = values.reshape(len(values), -1)
    with seeded_numpy(seed):
        _, cis = rly.get_interval_estimates({"x": flat}, lambda x: x.mean(0), reps=resamples,
                                            confidence_interval_size=level)
    return cis["x"].reshape(2, *values.shape[1:])


BANDS = {"minmax": "min to max over seeds", "ci95": "95% bootstrap CI of the mean"}


def plot_runs(run_dirs: list[Path], out: Path, column: str = "eval_return_mean", band: str = "minmax") -> Path:
    """Plot ``column`` against step for each group of runs (same agent and env = seeds of one curve):
    the mean over seeds and a ``band`` (see :data:`BANDS`)."""
    if band not in BANDS:
        raise ConfigError(f"unknown band {band!r}; choose from {', '.join(BANDS)}")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups: dict[str, list[tuple[np.ndarray, np.ndarray]]] = defaultdict(list)
    for d in run_dirs:
        if not d.is_dir():
            raise ConfigError(f"run directory not found: {d}")
        steps, values = read_curve(d, column)
        if len(steps):
            groups[run_label(d)].append((steps, values))
    if not groups:
        raise ConfigError(f"no '{column}' values in the given runs")
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for label, curves in sorted(groups.items()):
        grid, ys = aggregate(curves)
        line = ax.plot(grid, ys.mean(0), label=f"{label} ({len(curves)} seed{'s' if len(curves) > 1 else ''})")[0]
        if len(curves) > 1:
            lo, hi = (ys.min(0), ys.max(0)) if band == "minmax" else bootstrap_ci(ys)
            ax.fill_between(grid, lo, hi, color=line.get_color(), alpha=0.2, linewidth=0)
    ax.set_xlabel("environment steps")
    ax.set_ylabel(column.replace("_", " "))
    ax.grid(alpha=0.3)
    ax.legend()
    ax.set_title(f"mean over seeds (band: {BANDS[band]})" if any(len(c) > 1 for c in groups.values()) else "")
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return out


__all__ = ["BANDS", "aggregate", "bootstrap_ci", "plot_runs", "read_curve", "seeded_numpy"]
