"""Aggregate reports of a sweep (``rl-energy report SWEEP_DIR``) with ``rliable`` (Agarwal et al., "Deep RL at the
Edge of the Statistical Precipice", NeurIPS 2021): per env × agent the final score's mean and interquartile mean
(IQM) with 95 % stratified-bootstrap confidence intervals, the probability of improvement of each agent pair, score
distributions (performance profiles) and learning curves.

The final score of a trial is the last value of ``column`` (default ``eval_return_mean``) in its ``progress.csv``;
only trials whose ``sweep_status.json`` says ``done`` count. An arm is an agent with the settings that vary across
the sweep (grid and random axes); its runs are its seeds. Every statistic is rliable's
(``library.get_interval_estimates`` with ``metrics.aggregate_mean`` / ``aggregate_iqm`` /
``probability_of_improvement``, ``library.create_performance_profile``); the bootstrap is seeded
(:func:`rl_energy.plotting.seeded_numpy`), so a report is reproducible. rliable is in the ``bench`` extra.
"""

from __future__ import annotations

import itertools
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from rl_energy.errors import ConfigError, import_optional
from rl_energy.plotting import read_curve, seeded_numpy
from rl_energy.sweep import STATUS_FILE


@dataclass
class TrialResult:
    agent: str
    """The arm: the agent's name, followed by the settings that vary across the sweep (``sac[agent.lr=0.001]``)."""
    env: str
    seed: int
    run_dir: Path
    final: float


def final_value(run_dir: Path, column: str) -> float | None:
    """The last value of ``column`` in ``run_dir/progress.csv`` (None if it was never logged)."""
    if not (run_dir / "progress.csv").is_file():
        return None
    values = read_curve(run_dir, column)[1]
    return float(values[-1]) if len(values) else None


def collect(sweep_dir: str | Path, column: str = "eval_return_mean") -> list[TrialResult]:
    """The finished trials of a sweep directory with their final scores."""
    trials = Path(sweep_dir) / "trials"
    if not trials.is_dir():
        raise ConfigError(f"{sweep_dir} is not a sweep directory (no trials/ in it); run `rl-energy sweep` first")
    found = []
    for run_dir in sorted(p for p in trials.iterdir() if p.is_dir()):
        try:
            status = json.loads((run_dir / STATUS_FILE).read_text())
        except (OSError, ValueError):
            continue
        if status.get("status") != "done":
            continue
        value = final_value(run_dir, column)
        if value is not None:
            found.append((status, run_dir, value))
    if not found:
        raise ConfigError(f"{sweep_dir} has no finished trial with a '{column}' value yet")
    keys = sorted({k for st, _, _ in found for k in st.get("settings", {})})
    varying = [k for k in keys if len({json.dumps(st.get("settings", {}).get(k)) for st, _, _ in found}) > 1]
    out = []
    for st, run_dir, value in found:
        label = ",".join(f"{k}={json.dumps(st['settings'].get(k))}" for k in varying)
        out.append(TrialResult(st["agent"] + (f"[{label}]" if label else ""), st["env"], int(st["seed"]), run_dir,
                               value))
    return out


def score_dicts(results: list[TrialResult]) -> dict[str, dict[str, np.ndarray]]:
    """``{env: {agent: scores [runs, 1]}}``, runs ordered by seed (rliable's layout: runs × tasks)."""
    out: dict[str, dict[str, list[tuple[int, float]]]] = {}
    for r in results:
        out.setdefault(r.env, {}).setdefault(r.agent, []).append((r.seed, r.final))
    return {env: {agent: np.array([v for _, v in sorted(vals)])[:, None] for agent, vals in agents.items()}
            for env, agents in out.items()}


def interval_estimates(scores: dict[str, np.ndarray], reps: int = 2000, seed: int = 0) -> dict[str, dict[str, Any]]:
    """``{agent: {"mean": (point, low, high), "iqm": (point, low, high)}}`` by rliable's stratified bootstrap."""
    rly = import_optional("rliable.library", "rl-energy report")
    metrics = import_optional("rliable.metrics", "rl-energy report")

    def agg(x: np.ndarray) -> np.ndarray:
        return np.array([metrics.aggregate_mean(x), metrics.aggregate_iqm(x)])

    with seeded_numpy(seed):
        points, cis = rly.get_interval_estimates(scores, agg, reps=reps)
    return {a: {name: (float(points[a][i]), float(cis[a][0, i]), float(cis[a][1, i]))
                for i, name in enumerate(("mean", "iqm"))} for a in scores}


def improvement(scores: dict[str, np.ndarray], reps: int = 2000, seed: int = 0) -> dict[str, tuple[float, ...]]:
    """``{"X > Y": (P(X > Y), low, high)}`` for every ordered pair with equal run counts (rliable's probability
    of improvement)."""
    rly = import_optional("rliable.library", "rl-energy report")
    metrics = import_optional("rliable.metrics", "rl-energy report")
    pairs = {f"{x} > {y}": (scores[x], scores[y]) for x, y in itertools.permutations(sorted(scores), 2)
             if len(scores[x]) == len(scores[y])}
    if not pairs:
        return {}
    with seeded_numpy(seed):
        points, cis = rly.get_interval_estimates(pairs, metrics.probability_of_improvement, reps=reps)
    return {k: (float(np.squeeze(points[k])), *(float(c) for c in np.ravel(cis[k]))) for k in pairs}


def write_report(sweep_dir: str | Path, out: str | Path | None = None, column: str = "eval_return_mean",
                 reps: int = 2000, seed: int = 0) -> Path:
    """``report.md`` with the tables, and per env ``profile_<env>.png`` and ``curves_<env>.png``, in ``out``
    (default: the sweep directory). Returns the markdown file."""
    results = collect(sweep_dir, column)
    out = Path(out) if out is not None else Path(sweep_dir)
    out.mkdir(parents=True, exist_ok=True)
    lines = [f"# Sweep report: {Path(sweep_dir).name}", "",
             f"Final `{column}` of each finished trial; mean and IQM with 95 % stratified-bootstrap CIs "
             f"(rliable, {reps} resamples, seed {seed}).", ""]
    for env, scores in sorted(score_dicts(results).items()):
        est = interval_estimates(scores, reps, seed)
        lines += [f"## {env}", "", "| agent | runs | mean [95 % CI] | IQM [95 % CI] |", "|---|---|---|---|"]
        for agent in sorted(scores):
            m, q = est[agent]["mean"], est[agent]["iqm"]
            lines.append(f"| {agent} | {len(scores[agent])} | {m[0]:.4g} [{m[1]:.4g}, {m[2]:.4g}] | "
                         f"{q[0]:.4g} [{q[1]:.4g}, {q[2]:.4g}] |")
        poi = improvement(scores, reps, seed)
        if poi:
            lines += ["", "| probability of improvement | P [95 % CI] |", "|---|---|"]
            lines += [f"| {k} | {v[0]:.3f} [{v[1]:.3f}, {v[2]:.3f}] |" for k, v in poi.items()]
        slug = "".join(c if c.isalnum() or c in "-_." else "_" for c in env)
        _plots(env, scores, [r for r in results if r.env == env], out, slug, column)
        lines += ["", f"![profile]({f'profile_{slug}.png'}) ![curves]({f'curves_{slug}.png'})", ""]
    path = out / "report.md"
    path.write_text("\n".join(lines) + "\n")
    return path


def _plots(env: str, scores: dict[str, np.ndarray], results: list[TrialResult], out: Path, slug: str,
           column: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from rl_energy.plotting import aggregate

    rly = import_optional("rliable.library", "rl-energy report")
    lo = min(float(v.min()) for v in scores.values())
    hi = max(float(v.max()) for v in scores.values())
    taus = np.linspace(lo, hi if hi > lo else lo + 1.0, 101)
    with seeded_numpy(0):
        profiles, cis = rly.create_performance_profile(scores, taus, reps=500)
    fig, ax = plt.subplots(figsize=(5, 3.5))
    for agent in sorted(scores):
        ax.plot(taus, profiles[agent], label=agent)
        ax.fill_between(taus, cis[agent][0], cis[agent][1], alpha=0.2)
    ax.set(xlabel=f"final {column} τ", ylabel="fraction of runs > τ", title=env)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / f"profile_{slug}.png", dpi=100)
    plt.close(fig)
    fig, ax = plt.subplots(figsize=(5, 3.5))
    for agent in sorted(scores):
        curves = [read_curve(r.run_dir, column) for r in results if r.agent == agent]
        steps, ys = aggregate(curves)
        ax.plot(steps, ys.mean(0), label=agent)
        ax.fill_between(steps, ys.min(0), ys.max(0), alpha=0.2)
    ax.set(xlabel="step", ylabel=column, title=f"{env} (mean, min–max over seeds)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / f"curves_{slug}.png", dpi=100)
    plt.close(fig)
