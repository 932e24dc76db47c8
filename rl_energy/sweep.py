"""Sweeps: many ordinary ``rl-energy train`` runs (agents × envs × seeds × settings), each resumable, run by a
local process pool or by Ray.

A sweep spec is a YAML file (``yaml.safe_load``)::

    agents: [sac, ebflow]
    envs: [Pendulum-v1, Hopper-v4]
    seeds: [0, 1, 2]                      # or a count: 3 means seeds 0, 1, 2
    set: {train.total_steps: 20000}       # applied to every trial
    grid: {agent.lr: [0.001, 0.0003]}     # optional: every combination adds an axis
    random:                               # optional: random search, `samples` draws of `space`
      samples: 4
      seed: 0
      space:
        agent.lr: {loguniform: [0.0001, 0.01]}
        agent.tau: {uniform: [0.001, 0.02]}
        agent.hidden: {choice: [[64, 64], [256, 256]]}

Each trial is ``rl-energy train --agent A --env E --seed S --set k=v ...`` in its own run directory
``OUT/trials/<name>`` (:attr:`Trial.name`: agent, env, settings and seed), with its output in ``sweep.log`` there
and its outcome in ``sweep_status.json``. Re-running the same sweep skips the trials whose status is ``done``,
resumes (``rl-energy train --resume``) the ones that left a checkpoint, and starts the others afresh (a directory
without a checkpoint has no state to keep; it is cleared so that its ``progress.csv`` never holds a step twice). A
failed trial is reported with the tail of its log and does not stop the others.

Backends (:data:`BACKENDS`): ``local`` (default: ``jobs`` trials at a time in subprocesses, ``jobs`` defaulting to
the machine's cores, each subprocess with one torch thread unless ``threads`` says otherwise) and ``ray`` (each
trial a Ray task holding ``cpus_per_trial`` CPUs and ``gpus_per_trial`` GPUs, on the cluster at ``address`` or on a
local Ray instance started for the sweep; the extra ``ray``).
"""

from __future__ import annotations

import hashlib
import itertools
import json
import math
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rl_energy.errors import ConfigError

BACKENDS = ("local", "ray")
SPEC_KEYS = ("agents", "envs", "seeds", "set", "grid", "random")
RANDOM_KEYS = ("samples", "seed", "space")
DISTRIBUTIONS = ("uniform", "loguniform", "choice", "randint")
STATUS_FILE, LOG_FILE = "sweep_status.json", "sweep.log"


@dataclass(frozen=True)
class Trial:
    """One run of the sweep: ``rl-energy train --agent agent --env env_id --seed seed --set k=v`` for ``settings``."""

    agent: str
    env_id: str
    seed: int
    settings: tuple[tuple[str, Any], ...] = ()
    varying: tuple[str, ...] = ()
    """The keys of ``settings`` that vary across the sweep (grid and random axes): they name the directory."""

    @property
    def name(self) -> str:
        """The run directory's name: readable, unique within the sweep, the same every time the spec is expanded
        (the varying settings, hashed when long)."""
        env = re.sub(r"[^A-Za-z0-9._-]+", "_", self.env_id)
        params = ",".join(f"{k}={_format(v)}" for k, v in self.settings if k in self.varying)
        params = re.sub(r"[^A-Za-z0-9._=,+-]+", "_", params)
        if len(params) > 80:
            params = "h" + hashlib.sha1(params.encode()).hexdigest()[:10]
        return "__".join(p for p in (self.agent, env, params, f"seed{self.seed}") if p)

    def command(self, run_dir: Path, resume: bool) -> list[str]:
        """The ``rl-energy train`` command line of this trial (``--resume`` continues its checkpoint)."""
        base = [sys.executable, "-m", "rl_energy.cli", "train"]
        if resume:
            return [*base, "--resume", str(run_dir), "--quiet"]
        cmd = [*base, "--agent", self.agent, "--env", self.env_id, "--seed", str(self.seed), "--run-dir",
               str(run_dir), "--quiet"]
        for key, value in self.settings:
            cmd += ["--set", f"{key}={_format(value)}"]
        return cmd


def _format(value: Any) -> str:
    """A setting as ``--set`` parses it back (YAML flow style for lists and mappings)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (list, tuple, dict)):
        return json.dumps(value, separators=(",", ":"))
    return str(value)


@dataclass
class SweepSpec:
    """A parsed, validated sweep spec (see the module docstring)."""

    agents: list[str]
    envs: list[str]
    seeds: list[int]
    fixed: dict[str, Any] = field(default_factory=dict)
    grid: dict[str, list[Any]] = field(default_factory=dict)
    random: dict[str, Any] = field(default_factory=dict)

    def trials(self) -> list[Trial]:
        """Every trial, in a fixed order: agents × envs × (grid points, or random samples) × seeds."""
        points = self._points()
        varying = tuple(sorted(set(self.grid) | set(self.random.get("space", {}))))
        out = []
        for agent, env_id, point, seed in itertools.product(self.agents, self.envs, points, self.seeds):
            settings = dict(self.fixed) | point
            out.append(Trial(agent, env_id, int(seed), tuple(sorted(settings.items())), varying))
        return out

    def _points(self) -> list[dict[str, Any]]:
        keys = sorted(self.grid)
        grid = [dict(zip(keys, combo, strict=True)) for combo in itertools.product(*(self.grid[k] for k in keys))]
        if not self.random:
            return grid
        import numpy as np

        rng = np.random.default_rng(self.random.get("seed", 0))
        samples = []
        for _ in range(self.random["samples"]):
            draw = {}
            for key in sorted(self.random["space"]):
                (kind, arg), = self.random["space"][key].items()
                if kind == "uniform":
                    draw[key] = float(rng.uniform(arg[0], arg[1]))
                elif kind == "loguniform":
                    draw[key] = float(math.exp(rng.uniform(math.log(arg[0]), math.log(arg[1]))))
                elif kind == "randint":
                    draw[key] = int(rng.integers(arg[0], arg[1] + 1))
                else:
                    draw[key] = arg[int(rng.integers(len(arg)))]
            samples.append(draw)
        return [g | s for g in grid for s in samples]


def load_spec(path: str | Path) -> SweepSpec:
    """Read and validate a sweep spec; every problem is a :class:`ConfigError` naming the key."""
    import yaml

    from rl_energy.registry import AGENTS, check_env_id

    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"sweep spec {path} does not exist")
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise ConfigError(f"sweep spec {path} is not valid YAML: {exc}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"sweep spec {path} must be a mapping with keys {', '.join(SPEC_KEYS)}")
    unknown = sorted(set(raw) - set(SPEC_KEYS))
    if unknown:
        raise ConfigError(f"sweep spec key '{unknown[0]}' is unknown; valid keys: {', '.join(SPEC_KEYS)}")
    for key in ("agents", "envs", "seeds"):
        if key not in raw:
            raise ConfigError(f"sweep spec needs '{key}'")
    agents, envs = _names(raw, "agents"), _names(raw, "envs")
    for agent in agents:
        if agent not in AGENTS:
            raise ConfigError(f"sweep spec 'agents': unknown agent '{agent}'; valid: {', '.join(sorted(AGENTS))}")
    for env_id in envs:
        check_env_id(env_id)
    seeds = raw["seeds"]
    if _is_int(seeds):
        if not 1 <= seeds <= 10_000:
            raise ConfigError(f"sweep spec 'seeds' must be a count in [1, 10000] or a list of seeds, got {seeds}")
        seeds = list(range(seeds))
    if not isinstance(seeds, list) or not seeds or not all(_is_int(s) and s >= 0 for s in seeds) \
            or len(set(seeds)) != len(seeds):
        raise ConfigError(f"sweep spec 'seeds' must be a count or a list of distinct integers >= 0, got {seeds!r}")
    fixed = raw.get("set") or {}
    if not isinstance(fixed, dict) or not all(isinstance(k, str) and "." in k for k in fixed):
        raise ConfigError("sweep spec 'set' must map config keys (section.key) to values")
    for key in ("train.seed",):
        if key in fixed:
            raise ConfigError(f"sweep spec 'set' may not hold '{key}': the sweep's 'seeds' set it")
    grid = raw.get("grid") or {}
    if not isinstance(grid, dict) or not all(isinstance(k, str) and "." in k for k in grid):
        raise ConfigError("sweep spec 'grid' must map config keys (section.key) to lists of values")
    for key, values in grid.items():
        if not isinstance(values, list) or not values:
            raise ConfigError(f"sweep spec 'grid.{key}' must be a non-empty list of values, got {values!r}")
    random = _random(raw.get("random"))
    overlap = sorted((set(fixed) & set(grid)) | (set(fixed) & set(random.get("space", {})))
                     | (set(grid) & set(random.get("space", {}))))
    if overlap:
        raise ConfigError(f"sweep spec key '{overlap[0]}' is given twice (set, grid and random.space must differ)")
    return SweepSpec(agents, envs, list(seeds), dict(fixed), dict(grid), random)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _names(raw: dict, key: str) -> list[str]:
    value = raw[key]
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not value or not all(isinstance(v, str) and v for v in value):
        raise ConfigError(f"sweep spec '{key}' must be a non-empty list of names, got {value!r}")
    if len(set(value)) != len(value):
        raise ConfigError(f"sweep spec '{key}' lists a name twice: {value!r}")
    return list(value)


def _random(raw: Any) -> dict[str, Any]:
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise ConfigError("sweep spec 'random' must be a mapping with 'samples', 'space' and optionally 'seed'")
    unknown = sorted(set(raw) - set(RANDOM_KEYS))
    if unknown:
        raise ConfigError(f"sweep spec key 'random.{unknown[0]}' is unknown; valid keys: {', '.join(RANDOM_KEYS)}")
    samples, seed, space = raw.get("samples"), raw.get("seed", 0), raw.get("space")
    if not _is_int(samples) or not 1 <= samples <= 100_000:
        raise ConfigError(f"sweep spec 'random.samples' must be an integer in [1, 100000], got {samples!r}")
    if not _is_int(seed) or seed < 0:
        raise ConfigError(f"sweep spec 'random.seed' must be an integer >= 0, got {seed!r}")
    if not isinstance(space, dict) or not space:
        raise ConfigError("sweep spec 'random.space' must map config keys to distributions, e.g. "
                          "{agent.lr: {loguniform: [0.0001, 0.01]}}")
    for key, dist in space.items():
        where = f"random.space.{key}"
        if not isinstance(key, str) or "." not in key:
            raise ConfigError(f"sweep spec '{where}' must be a config key (section.key)")
        if not isinstance(dist, dict) or len(dist) != 1 or next(iter(dist)) not in DISTRIBUTIONS:
            raise ConfigError(f"sweep spec '{where}' must be one of {{{', '.join(DISTRIBUTIONS)}: ...}}, got {dist!r}")
        (kind, arg), = dist.items()
        if kind == "choice":
            if not isinstance(arg, list) or not arg:
                raise ConfigError(f"sweep spec '{where}.choice' must be a non-empty list, got {arg!r}")
            continue
        numeric = isinstance(arg, list) and len(arg) == 2 and all(
            isinstance(a, (int, float)) and not isinstance(a, bool) and math.isfinite(a) for a in arg)
        if not numeric or not arg[0] < arg[1] or (kind == "loguniform" and arg[0] <= 0) \
                or (kind == "randint" and not all(_is_int(a) for a in arg)):
            raise ConfigError(f"sweep spec '{where}.{kind}' must be [low, high] with low < high"
                              + (" and low > 0" if kind == "loguniform" else "")
                              + (" (integers)" if kind == "randint" else "") + f", got {arg!r}")
    return {"samples": samples, "seed": seed, "space": dict(space)}


# ------------------------------------------------------------------------------------------------- running
@dataclass
class TrialOutcome:
    """What became of a trial in this invocation: ``done`` (ran to the end now), ``skipped`` (done before),
    ``failed`` (non-zero exit; ``log_tail`` holds the end of its log), ``interrupted`` (stopped by a signal, from
    its last checkpoint on the next run) or ``pending`` (not started: the sweep was interrupted first)."""

    trial: Trial
    status: str
    returncode: int | None = None
    seconds: float = 0.0
    log_tail: str = ""


def trial_dir(out: Path, trial: Trial) -> Path:
    return out / "trials" / trial.name


def read_status(run_dir: Path) -> dict[str, Any]:
    path = run_dir / STATUS_FILE
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def prepare(trial: Trial, run_dir: Path) -> list[str] | None:
    """The command that brings a trial to its end: ``None`` if it is done, ``--resume`` if it left a checkpoint,
    else a fresh run (a directory without a checkpoint is cleared first)."""
    from rl_energy.checkpoint import has_checkpoint

    if read_status(run_dir).get("status") == "done":
        return None
    if has_checkpoint(run_dir / "checkpoints"):
        return trial.command(run_dir, resume=True)
    if run_dir.exists():
        shutil.rmtree(run_dir)
    return trial.command(run_dir, resume=False)


def _write_status(run_dir: Path, trial: Trial, status: str, returncode: int | None, seconds: float) -> None:
    run_dir.mkdir(parents=True, exist_ok=True)
    info = {"status": status, "returncode": returncode, "seconds": round(seconds, 3), "agent": trial.agent,
            "env": trial.env_id, "seed": trial.seed, "settings": dict(trial.settings)}
    tmp = run_dir / (STATUS_FILE + ".tmp")
    tmp.write_text(json.dumps(info, indent=1))
    tmp.replace(run_dir / STATUS_FILE)


def _tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


def trial_env(threads: int) -> dict[str, str]:
    """The subprocess environment: ``threads`` torch/BLAS threads (one by default: trials run side by side)."""
    env = dict(os.environ)
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        env[var] = str(threads)
    return env


def run_trial(trial: Trial, out: Path, threads: int = 1, procs: dict | None = None) -> TrialOutcome:
    """Bring one trial to its end in a subprocess (the unit of work of both backends)."""
    run_dir = trial_dir(out, trial)
    cmd = prepare(trial, run_dir)
    if cmd is None:
        return TrialOutcome(trial, "skipped", 0)
    run_dir.mkdir(parents=True, exist_ok=True)
    start = time.time()
    with (run_dir / LOG_FILE).open("a") as log:
        log.write(f"$ {' '.join(cmd)}\n")
        log.flush()
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=trial_env(threads))
        if procs is not None:
            procs[trial.name] = proc
        code = proc.wait()
        if procs is not None:
            procs.pop(trial.name, None)
    seconds = time.time() - start
    if code == 0:
        _write_status(run_dir, trial, "done", code, seconds)
        return TrialOutcome(trial, "done", code, seconds)
    status = "interrupted" if code in (128 + signal.SIGINT, 128 + signal.SIGTERM, -signal.SIGINT,
                                       -signal.SIGTERM) else "failed"
    _write_status(run_dir, trial, status, code, seconds)
    return TrialOutcome(trial, status, code, seconds, _tail(run_dir / LOG_FILE))


def run_local(trials: Sequence[Trial], out: Path, jobs: int, threads: int = 1,
              report: Callable[[TrialOutcome], None] | None = None) -> list[TrialOutcome]:
    """``jobs`` trials at a time in subprocesses. SIGINT/SIGTERM to the sweep are passed to the running trials
    (which checkpoint and stop); the sweep then returns with their outcomes ``interrupted``."""
    procs: dict[str, subprocess.Popen] = {}
    stop = threading.Event()
    outcomes: list[TrialOutcome] = []

    def one(trial: Trial) -> TrialOutcome:
        if stop.is_set():
            return TrialOutcome(trial, "pending")
        result = run_trial(trial, out, threads, procs)
        if report is not None:
            report(result)
        return result

    def forward(signum: int, frame: Any) -> None:  # noqa: ARG001
        stop.set()
        for proc in list(procs.values()):
            if proc.poll() is None:
                proc.send_signal(signal.SIGINT)

    in_main = threading.current_thread() is threading.main_thread()
    previous = {s: signal.signal(s, forward) for s in (signal.SIGINT, signal.SIGTERM)} if in_main else {}
    try:
        with ThreadPoolExecutor(max_workers=jobs) as pool:
            outcomes = list(pool.map(one, trials))
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
    return outcomes


def run_ray(trials: Sequence[Trial], out: Path, address: str | None = None, cpus_per_trial: float = 1.0,
            gpus_per_trial: float = 0.0, threads: int = 1,
            report: Callable[[TrialOutcome], None] | None = None) -> list[TrialOutcome]:
    """Each trial a Ray task holding ``cpus_per_trial`` CPUs and ``gpus_per_trial`` GPUs (Ray schedules them over
    the cluster at ``address``, or over a local instance started here and shut down at the end). The task runs the
    same subprocess as the local backend, so a trial writes the same run directory either way; ``out`` must be a
    path every node can reach (a shared file system) when the cluster has more than one machine."""
    from rl_energy.errors import import_optional

    ray = import_optional("ray", "rl-energy sweep --backend ray")
    started = not ray.is_initialized()
    if started:
        ray.init(address=address, include_dashboard=False, log_to_driver=False, configure_logging=False)
    try:
        remote = ray.remote(num_cpus=cpus_per_trial, num_gpus=gpus_per_trial, max_retries=0)(run_trial)
        pending = {remote.remote(t, out.resolve(), threads): i for i, t in enumerate(trials)}
        outcomes: list[TrialOutcome | None] = [None] * len(trials)
        while pending:
            done, _ = ray.wait(list(pending), num_returns=1)
            i = pending.pop(done[0])
            try:
                result = ray.get(done[0])
            except Exception as exc:  # a task that died (the node went away): reported like a failed trial
                result = TrialOutcome(trials[i], "failed", None, 0.0, f"ray task failed: {exc}")
            outcomes[i] = result
            if report is not None:
                report(result)
        return [o for o in outcomes if o is not None]
    finally:
        if started:
            ray.shutdown()


def write_manifest(out: Path, spec_path: Path, trials: Sequence[Trial]) -> None:
    """``OUT/sweep.json``: the spec's text and the trials (names, agents, envs, seeds, settings)."""
    out.mkdir(parents=True, exist_ok=True)
    manifest = {"spec": spec_path.read_text(), "trials": [
        {"name": t.name, "agent": t.agent, "env": t.env_id, "seed": t.seed, "settings": dict(t.settings)}
        for t in trials]}
    (out / "sweep.json").write_text(json.dumps(manifest, indent=1))
