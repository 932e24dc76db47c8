"""The ``rl-energy`` command line: train, evaluate, list, plot, analyze, sweep, report, reproduce.

User errors (unknown names, bad config values, missing run directories) print one line to stderr
and exit with status 2, never a traceback.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import threading
import warnings
from collections.abc import Sequence
from pathlib import Path

EXIT_USER_ERROR = 2


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="rl-energy", description="Train, evaluate and compare energy-based RL agents."
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    tr = sub.add_parser("train", help="train an agent on an environment",
                        description="Train AGENT on ENV_ID (any Gymnasium id, or rl_energy/...).")
    tr.add_argument("--agent", help="agent name (see `rl-energy list`)")
    tr.add_argument("--env", dest="env_id", help="Gymnasium environment id, e.g. Ant-v4")
    tr.add_argument("--config", help="YAML file with train/agent/env_kwargs sections")
    tr.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                    help="override a config value, e.g. --set agent.lr=1e-3 (repeatable)")
    tr.add_argument("--seed", type=int, help="shorthand for --set train.seed=N")
    tr.add_argument("--total-steps", type=int, help="shorthand for train.total_steps (with --resume: extend)")
    tr.add_argument("--run-dir", help="where to write the run (default runs/<agent>/<env>/<seed>-<time>)")
    tr.add_argument("--resume", metavar="RUN_DIR", help="continue the run in RUN_DIR from its last checkpoint")
    tr.add_argument("--device", choices=["cpu", "cuda", "auto"], help="shorthand for train.device")
    tr.add_argument("--num-envs", type=int, help="shorthand for train.num_envs")
    tr.add_argument("--curriculum", choices=["none", "uniform_box", "uniform_valid", "svgg", "mega", "random"],
                    help="goal curriculum for goal envs (shorthand for --set curriculum.name=NAME)")
    tr.add_argument("--quiet", action="store_true", help="no progress output except the final line")

    ev = sub.add_parser("evaluate", help="evaluate the last checkpoint of a run, or a controller with nothing "
                        "to train (--agent, --env)")
    ev.add_argument("run_dir", nargs="?", help="a run directory written by `rl-energy train`")
    ev.add_argument("--agent", help="instead of RUN_DIR: an agent with nothing to train, e.g. bubble_linear")
    ev.add_argument("--env", dest="env_id", help="with --agent: the environment id")
    ev.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                    help="with --agent: override a config value, e.g. --set agent.amplitude=0.3")
    ev.add_argument("--episodes", type=int, default=10)
    ev.add_argument("--deterministic", dest="deterministic", action="store_true", default=True)
    ev.add_argument("--stochastic", dest="deterministic", action="store_false")
    ev.add_argument("--seed", type=int, default=None, help="reset seed of the first episode (default: the run's)")
    ev.add_argument("--video", metavar="DIR", help="also record the episodes as MP4 files in DIR")
    ev.add_argument("--device", choices=["cpu", "cuda", "auto"], default="cpu")

    sub.add_parser("list", help="list agents, rl-energy environments and shipped configs")

    sw = sub.add_parser("sweep", help="run a sweep spec (agents x envs x seeds x settings), each trial a resumable "
                        "`rl-energy train` run; re-running it skips finished trials and resumes the rest",
                        description="Run every trial of SPEC (a YAML file; see rl_energy/sweep.py) in its own run "
                        "directory under OUT/trials.")
    sw.add_argument("spec", metavar="SPEC.yaml")
    sw.add_argument("--out", required=True, help="sweep directory (trials, logs and sweep.json)")
    sw.add_argument("--jobs", type=int, default=None, help="local backend: trials at a time (default: the cores)")
    sw.add_argument("--backend", choices=["local", "ray"], default="local")
    sw.add_argument("--address", default=None, help="ray backend: a running cluster (e.g. HEAD_IP:6379); "
                    "default: start a local Ray instance for the sweep")
    sw.add_argument("--threads", type=int, default=1, help="torch threads per trial (default 1)")
    sw.add_argument("--cpus-per-trial", type=float, default=1.0, help="ray backend: CPUs each trial holds")
    sw.add_argument("--gpus-per-trial", type=float, default=0.0, help="ray backend: GPUs each trial holds")
    sw.add_argument("--dry-run", action="store_true", help="list the trials and their state; run nothing")

    rr = sub.add_parser("reproduce", help="list the 24 papers with their status and runtime, or run one's "
                        "reproduction script (its table: the paper's claim beside ours)",
                        description="rl-energy reproduce --list | rl-energy reproduce NAME [-- SCRIPT ARGS]")
    rr.add_argument("name", nargs="?", metavar="NAME", help="a paper's short name (see --list)")
    rr.add_argument("--list", action="store_true", help="the papers, their status and measured runtime")
    rr.add_argument("--markdown", action="store_true", help="with --list: the summary table of docs/reproductions.md")
    rr.add_argument("script_args", nargs=argparse.REMAINDER, help="arguments for the script, after --")

    rp = sub.add_parser("report", help="aggregate a sweep with rliable: mean and IQM with bootstrap CIs, probability "
                        "of improvement, performance profiles, learning curves (the `bench` extra)")
    rp.add_argument("sweep_dir", metavar="SWEEP_DIR")
    rp.add_argument("--out", default=None, help="where to write report.md and the plots (default: SWEEP_DIR)")
    rp.add_argument("--column", default="eval_return_mean", help="progress.csv column whose last value is the score")
    rp.add_argument("--reps", type=int, default=2000, help="bootstrap resamples (default 2000)")
    rp.add_argument("--seed", type=int, default=0, help="bootstrap seed")

    pl = sub.add_parser("plot", help="plot learning curves (mean and spread over seeds)")
    pl.add_argument("run_dirs", nargs="+", metavar="RUN_DIR")
    pl.add_argument("--out", required=True, help="output image, e.g. curves.png")
    pl.add_argument("--column", default="eval_return_mean", help="progress.csv column to plot")
    pl.add_argument("--band", choices=["minmax", "ci95"], default="minmax",
                    help="spread over seeds: min-max, or 95%% bootstrap CI of the mean")

    an = sub.add_parser("analyze", help="analyses: `analyze td` (TD / target-network stability of a linear MDP), "
                                        "`analyze rdd` (distributional regression discontinuity), "
                                        "`analyze influence` (EK-FAC influence of training samples on a query)")
    an_sub = an.add_subparsers(dest="analysis", required=True, metavar="ANALYSIS")
    td = an_sub.add_parser(
        "td", help="expected-update matrices, PFPE spectral radius, condition function, expected and sampled runs",
        description="Stability of TD with a target network refreshed every k updates (PFPE; Fellows et al. "
                    "2023) on an env exposing a linear MDP (unwrapped.linear_mdp()): prints a table per k "
                    "and writes value_error.png and spectral_radius.png.")
    td.add_argument("--env", dest="env_id", required=True, help="e.g. rl_energy/Baird-v0")
    td.add_argument("--alpha", type=float, default=0.01, help="step size")
    td.add_argument("--k", default="1,10,100,500", help="comma-separated target periods")
    td.add_argument("--updates", type=int, default=50_000, help="updates of each expected and sampled run")
    td.add_argument("--seeds", type=int, default=5, help="sampled runs per k")
    td.add_argument("--out", help="folder for the figures (default runs/analysis/<env>)")
    rdd = an_sub.add_parser(
        "rdd", help="R3D: distributional regression discontinuity on logged units (quantile effects, uniform "
                    "band, tests)",
        description="Local average quantile treatment effects at the cutoff of an env's logged units (R3D; Van "
                    "Dijcke 2025), with the robust bias-corrected 95%% uniform band and the nullity and "
                    "homogeneity tests; the fuzzy design when the env logs non-compliance. Off-policy evaluation "
                    "of the threshold policy: prints the estimate beside the env's true effect.")
    rdd.add_argument("--env", dest="env_id", default="rl_energy/DistributionalRDD-v0")
    rdd.add_argument("--set", dest="env_kwargs", action="append", default=[], metavar="KEY=VALUE",
                     help="an env kwarg, e.g. --set dgp=dgp3 --set n_units=1000 (repeatable)")
    rdd.add_argument("--method", choices=["frechet", "simple"], default="frechet")
    rdd.add_argument("--q", default="0.1,0.2,0.3,0.4,0.5,0.6,0.7,0.8,0.9", help="comma-separated quantile levels")
    rdd.add_argument("--bandwidth", type=float, default=None, help="fixed bandwidth (default: MSE-optimal)")
    rdd.add_argument("--boot", type=int, default=500, help="multiplier bootstrap draws")
    rdd.add_argument("--seed", type=int, default=0)
    inf = an_sub.add_parser(
        "influence", help="EK-FAC influence functions: the training samples of a finished run ranked by influence "
                          "on a query",
        description="Influence functions (Grosse et al. 2023; rl_energy/analysis/influence.py) for a finished "
                    "run of the supervised agent on a one-step task: I(z) = -grad f^T (G + damping)^-1 grad L(z) "
                    "with f = -loss of the query, so positive = upweighting z lowers the query's loss (helpful). "
                    "Prints the top training samples, most helpful first, and writes a CSV.")
    inf.add_argument("run_dir", metavar="RUN_DIR", help="a run directory written by `rl-energy train`")
    inf.add_argument("--query", default="worst",
                     help="test:INDEX or train:INDEX, or 'worst' (the test sample with the largest loss; default)")
    inf.add_argument("--method", choices=["ekfac", "kfac", "identity", "exact", "lissa"], default="ekfac")
    inf.add_argument("--top", type=int, default=10, help="training samples to print")
    inf.add_argument("--damping", type=float, default=None, help="fixed damping (default 0.1 x mean eigenvalue)")
    inf.add_argument("--out", help="CSV of all training samples' scores (default RUN_DIR/influence.csv)")
    inf.add_argument("--seed", type=int, default=0, help="seed of the labels sampled for the Fisher")
    return parser


def _analyze(args: argparse.Namespace) -> int:
    if args.analysis == "rdd":
        return _analyze_rdd(args)
    if args.analysis == "influence":
        return _analyze_influence(args)
    import gymnasium as gym
    import numpy as np

    from rl_energy.analysis.td_stability import format_report, td_report, write_figures
    from rl_energy.config import ConfigError
    from rl_energy.envs import linear_mdp_env_ids
    from rl_energy.registry import check_env_id

    check_env_id(args.env_id)
    try:
        ks = [int(k) for k in args.k.split(",") if k.strip()]
    except ValueError:
        raise ConfigError(f"--k must be comma-separated integers, got {args.k!r}") from None
    if not ks or min(ks) < 1:
        raise ConfigError(f"--k must list target periods >= 1, got {args.k!r}")
    if not (args.alpha > 0 and np.isfinite(args.alpha)):
        raise ConfigError(f"--alpha must be a positive step size, got {args.alpha}")
    if args.updates < 1 or args.seeds < 1:
        raise ConfigError("--updates and --seeds must be >= 1")
    env = gym.make(args.env_id)
    if not hasattr(env.unwrapped, "linear_mdp"):
        env.close()
        raise ConfigError(f"environment '{args.env_id}' exposes no linear MDP (unwrapped.linear_mdp()); "
                          f"the TD analysis supports: {', '.join(linear_mdp_env_ids())}")
    mdp = env.unwrapped.linear_mdp()
    w0 = np.asarray(getattr(env.unwrapped, "init_weights", np.zeros(mdp.features.shape[1])), dtype=np.float64)
    env.close()
    rows = td_report(mdp, args.alpha, ks, w0, args.updates, args.seeds)
    print(format_report(rows, mdp, args.alpha, args.updates, args.env_id))
    out = Path(args.out) if args.out else Path("runs") / "analysis" / args.env_id.replace("/", "__")
    for path in write_figures(rows, mdp, args.alpha, out):
        print(f"wrote {path}")
    return 0


def _analyze_rdd(args: argparse.Namespace) -> int:
    import warnings

    import gymnasium as gym
    import numpy as np
    import yaml

    from rl_energy.analysis.r3d import R3DError, WeakFirstStageWarning, r3d
    from rl_energy.config import ConfigError
    from rl_energy.registry import check_env_id

    check_env_id(args.env_id)
    kwargs = {}
    for item in args.env_kwargs:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--set expects KEY=VALUE (an env kwarg), got {item!r}")
        kwargs[key.strip()] = yaml.safe_load(raw) if raw.strip() else ""
    try:
        q = np.array([float(v) for v in args.q.split(",") if v.strip()])
    except ValueError:
        raise ConfigError(f"--q must be comma-separated numbers in (0, 1), got {args.q!r}") from None
    if args.boot < 10:
        raise ConfigError(f"--boot must be >= 10, got {args.boot}")
    try:
        env = gym.make(args.env_id, **kwargs)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{args.env_id}: {exc}") from None
    task = env.unwrapped
    if not callable(getattr(task, "logged", None)):
        raise ConfigError(f"environment '{args.env_id}' logs no RD units (unwrapped.logged()); "
                          "use rl_energy/DistributionalRDD-v0")
    data = task.logged("train")
    fuzzy = bool(getattr(task, "fuzzy", False))
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", WeakFirstStageWarning)
            res = r3d(data["x"], data["y"], cutoff=float(getattr(task, "cutoff", 0.0)), q=q, method=args.method,
                      h=args.bandwidth, treatment=data["d"] if fuzzy else None, n_boot=args.boot, rng=args.seed)
    except R3DError as exc:
        raise ConfigError(str(exc)) from None
    for w in caught:
        print(f"warning: {w.message}", file=sys.stderr)
    truth = task.true_effect(res.q) if callable(getattr(task, "true_effect", None)) else np.full(res.q.shape, np.nan)
    print(f"R3D ({res.method}{', fuzzy' if fuzzy else ''}) on {args.env_id} {kwargs or ''}: {res.n_minus} units below "
          f"and {res.n_plus} above the cutoff, p = {res.p}, bandwidth {np.mean(res.h):.3f}"
          + (f", first stage {res.first_stage:.3f}" if fuzzy else ""))
    print(f"{'q':>5} {'tau':>8} {'tau_bc':>8} {'se':>7} {'band lo':>8} {'band hi':>8} {'truth':>8}")
    for k, level in enumerate(res.q):
        print(f"{level:>5.2f} {res.tau[k]:>8.3f} {res.tau_bc[k]:>8.3f} {res.se[k]:>7.3f} {res.lower[k]:>8.3f} "
              f"{res.upper[k]:>8.3f} {truth[k]:>8.3f}")
    null, homo = res.nullity_test(), res.homogeneity_test() if res.q.size > 1 else None
    print(f"95% uniform band (critical value {res.critical_value:.2f}) covers the truth: {res.covers(truth)}")
    print(f"nullity test (tau = 0 for all q): stat {null.statistic:.2f}, p = {null.p_value:.3f}")
    if homo is not None:
        print(f"homogeneity test (tau constant in q): stat {homo.statistic:.2f}, p = {homo.p_value:.3f}")
    env.close()
    return 0


def _analyze_influence(args: argparse.Namespace) -> int:
    import csv

    import torch

    from rl_energy.analysis.influence import Influence, rank_influences
    from rl_energy.config import ConfigError
    from rl_energy.trainer import load_run_config, loop_for

    if args.top < 1:
        raise ConfigError(f"--top must be >= 1, got {args.top}")
    run_dir = Path(args.run_dir)
    cfg = load_run_config(run_dir, what="analyze influence")
    if cfg.agent_name != "supervised":
        raise ConfigError(f"analyze influence supports runs of the 'supervised' agent on one-step tasks (its net and "
                          f"its loss on `target`); {run_dir} is a run of '{cfg.agent_name}'")
    run, step = loop_for(cfg).load(run_dir, cfg, torch.device("cpu"))
    try:
        agent, task = run.agent, run.task
        train, test = task.contexts("train"), task.contexts("test")
        kind = agent.resolve_loss(train["target"])
        net = agent.net.float()
        torch.set_grad_enabled(True)

        def per_example(model: torch.nn.Module, batch: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
            out = model(batch[0])
            if kind == "ce":
                return torch.nn.functional.cross_entropy(out, batch[1].reshape(-1).long(), reduction="none")
            return (out - batch[1].reshape(out.shape)).pow(2).sum(-1)

        gen = torch.Generator().manual_seed(args.seed)

        def fisher(model: torch.nn.Module, batch: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
            out = model(batch[0])
            if kind == "ce":  # labels sampled from the model: the true Fisher
                y = torch.multinomial(out.detach().softmax(-1), 1, generator=gen).reshape(-1)
                return torch.nn.functional.cross_entropy(out, y, reduction="none")
            y = out.detach() + torch.randn(out.shape, generator=gen) * 0.5**0.5  # ||z - y||^2 = NLL of N(z, I/2)
            return (out - y).pow(2).sum(-1)

        def measurement(model: torch.nn.Module, batch: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
            return -per_example(model, batch)

        def split_batches(data: object) -> list[tuple[torch.Tensor, torch.Tensor]]:
            return list(zip(data["obs"].float().split(1024), data["target"].float().split(1024), strict=True))

        train_b, test_b = split_batches(train), split_batches(test)
        with torch.no_grad():
            test_loss = torch.cat([per_example(net, b) for b in test_b])
        where, _, idx = args.query.partition(":")
        if args.query == "worst":
            where, index = "test", int(test_loss.argmax())
        elif where in ("test", "train") and idx.strip().lstrip("-").isdigit():
            index = int(idx)
            size = len(test_loss) if where == "test" else len(train["obs"])
            if not 0 <= index < size:
                raise ConfigError(f"--query {args.query}: index out of range for the {where} split of {size} samples")
        else:
            raise ConfigError(f"--query must be test:INDEX, train:INDEX or worst, got {args.query!r}")
        src = test if where == "test" else train
        query = [(src["obs"][index:index + 1].float(), src["target"][index:index + 1].float())]
        inf = Influence(net, method=args.method, damping=args.damping, seed=args.seed).fit(train_b, fisher)
        scores = inf.scores(query, measurement, train_b, per_example)[0].numpy()
        with torch.no_grad():
            train_loss = torch.cat([per_example(net, b) for b in train_b]).numpy()
            q_loss = float(per_example(net, query[0])[0])
    finally:
        run.env.close()
    order, _ = rank_influences(scores, len(scores))
    out = Path(args.out) if args.out else run_dir / "influence.csv"
    out.parent.mkdir(parents=True, exist_ok=True)
    with out.open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["rank", "train_index", "influence", "train_loss", "target"])
        for r, i in enumerate(order, 1):
            writer.writerow([r, int(i), f"{scores[i]:.6g}", f"{train_loss[i]:.6g}",
                             " ".join(f"{v:g}" for v in train["target"][i].reshape(-1).tolist())])
    target = " ".join(f"{v:g}" for v in src["target"][index].reshape(-1).tolist())
    print(f"{args.method} influence on {where}:{index} (target {target}, loss {q_loss:.4g}) of the {len(scores)} "
          f"training samples of {run_dir} (context {step}; {kind} loss; positive = lowers the query's loss)")
    print(f"{'rank':>4} {'train':>6} {'influence':>11} {'loss':>8} target")
    for r, i in enumerate(order[:args.top], 1):
        tgt = " ".join(f"{v:g}" for v in train["target"][i].reshape(-1).tolist())
        print(f"{r:>4} {int(i):>6} {scores[i]:>11.4g} {train_loss[i]:>8.4g} {tgt}")
    print(f"wrote {out}")
    return 0


def _train(args: argparse.Namespace) -> int:
    from rl_energy.config import ConfigError, resolve_config
    from rl_energy.registry import check_env_id, get_agent
    from rl_energy.trainer import TrainingError, TrainingInterrupted, default_run_dir, load_run_config, make_trainer

    if args.resume:
        run_dir = Path(args.resume)
        cfg = load_run_config(run_dir, need_checkpoint=False, what="--resume")
        if args.config or args.overrides or args.agent or args.env_id or args.seed is not None or args.curriculum:
            raise ConfigError("--resume continues a run as configured; only --total-steps, --device "
                              "and --quiet may be given with it")
        if args.total_steps is not None:
            cfg.train.total_steps = args.total_steps
        if args.device is not None:
            cfg.train.device = args.device
        cfg.train.validate()
    else:
        if not args.agent or not args.env_id:
            raise ConfigError("train needs --agent NAME and --env ENV_ID (or --resume RUN_DIR)")
        spec = get_agent(args.agent)
        if not spec.cls.trainable:
            raise ConfigError(f"agent '{args.agent}' has nothing to train; evaluate it with "
                              f"`rl-energy evaluate --agent {args.agent} --env ENV_ID`")
        check_env_id(args.env_id)
        overrides = list(args.overrides)
        for flag, key in (("seed", "train.seed"), ("total_steps", "train.total_steps"),
                          ("device", "train.device"), ("num_envs", "train.num_envs"),
                          ("curriculum", "curriculum.name")):
            value = getattr(args, flag)
            if value is not None:
                overrides.append(f"{key}={value}")
        cfg = resolve_config(args.agent, args.env_id, spec.config_cls, args.config, overrides)
        run_dir = Path(args.run_dir) if args.run_dir else default_run_dir(cfg)
        if (run_dir / "checkpoints").exists():
            raise ConfigError(f"--run-dir {run_dir} already holds a run; use --resume {run_dir} to continue it")

    trainer = make_trainer(cfg, run_dir, resume=bool(args.resume), verbose=not args.quiet)
    if not args.quiet:
        facts = cfg.resolved
        compiled = ", torch.compile" if facts.get("compile") else ""
        print(f"run directory: {run_dir} (device {trainer.device}, {facts.get('matmul_precision', 'fp32')} "
              f"matmuls{compiled})", flush=True)
    try:
        result = trainer.train()
    except TrainingInterrupted as exc:
        print(str(exc), file=sys.stderr, flush=True)
        return 128 + exc.signum
    except TrainingError as exc:
        print(f"error: {exc}", file=sys.stderr, flush=True)
        return 1
    print(trainer.final_line(result), flush=True)
    return 0


def _evaluate(args: argparse.Namespace) -> int:
    from rl_energy.config import ConfigError, resolve_config
    from rl_energy.registry import check_env_id, get_agent
    from rl_energy.trainer import EvalOptions, evaluate_run, loop_for

    if args.episodes < 1:
        raise ConfigError("--episodes must be >= 1")
    opts = EvalOptions(episodes=args.episodes, seed=args.seed, deterministic=args.deterministic,
                       video=args.video, device=args.device)
    if args.agent or args.env_id:  # a controller without parameters: no run directory
        if args.run_dir or not (args.agent and args.env_id):
            raise ConfigError("evaluate takes either RUN_DIR, or --agent NAME --env ENV_ID (no run directory)")
        spec = get_agent(args.agent)
        if spec.cls.trainable:
            raise ConfigError(f"agent '{args.agent}' learns its policy; evaluate one of its runs: "
                              "`rl-energy evaluate RUN_DIR`")
        check_env_id(args.env_id)
        cfg = resolve_config(args.agent, args.env_id, spec.config_cls, overrides=args.overrides)
        print(loop_for(cfg).evaluate_controller(cfg, opts))
        return 0
    if args.overrides:
        raise ConfigError("--set applies to --agent/--env evaluations; a run is evaluated as it was trained")
    if not args.run_dir:
        raise ConfigError("evaluate needs RUN_DIR (or --agent NAME --env ENV_ID for a controller)")
    print(evaluate_run(args.run_dir, opts))
    return 0


def _list(args: argparse.Namespace) -> int:
    from rl_energy.config import available_configs
    from rl_energy.registry import agent_specs, env_ids

    print("Agents:")
    for name, spec in agent_specs().items():
        print(f"  {name:13s} {spec if isinstance(spec, Exception) else spec.summary}")
    ids = env_ids()
    own = [i for i in ids if i.startswith("rl_energy/")]
    print("\nrl-energy environments (gym.make('rl_energy/...')):")
    print("  " + ("\n  ".join(own) if own else "(none registered yet)"))
    mujoco = [i for i in ids if i.split("-v")[0] in _MUJOCO_NAMES]
    print(f"\nAny Gymnasium id works with --env ({len(ids)} registered), e.g. MuJoCo: {', '.join(mujoco)}")
    print("\nShipped configs (agent: envs with a per-env config; others use default.yaml):")
    for agent, envs in sorted(available_configs().items()):
        print(f"  {agent:10s} {', '.join(envs) if envs else '(default only)'}")
    return 0


_MUJOCO_NAMES = {
    "Ant", "HalfCheetah", "Hopper", "Humanoid", "HumanoidStandup", "InvertedDoublePendulum",
    "InvertedPendulum", "Pusher", "Reacher", "Swimmer", "Walker2d",
}


def _sweep(args: argparse.Namespace) -> int:
    from rl_energy import sweep
    from rl_energy.config import ConfigError

    spec = sweep.load_spec(args.spec)
    trials = spec.trials()
    out = Path(args.out)
    cores = os.cpu_count() or 1
    if args.jobs is not None and not 1 <= args.jobs <= 4 * cores:
        raise ConfigError(f"--jobs must be in [1, {4 * cores}] (4 x the cores), got {args.jobs}")
    if not 1 <= args.threads <= cores:
        raise ConfigError(f"--threads must be in [1, {cores}] (the cores), got {args.threads}")
    if not (math.isfinite(args.cpus_per_trial) and 0 < args.cpus_per_trial <= 1024):
        raise ConfigError(f"--cpus-per-trial must be in (0, 1024], got {args.cpus_per_trial}")
    if not (math.isfinite(args.gpus_per_trial) and 0 <= args.gpus_per_trial <= 64):
        raise ConfigError(f"--gpus-per-trial must be in [0, 64], got {args.gpus_per_trial}")
    if args.backend == "local" and args.address is not None:
        raise ConfigError("--address is for --backend ray")
    if args.dry_run:
        for t in trials:
            state = sweep.read_status(sweep.trial_dir(out, t)).get("status", "new")
            print(f"{state:<12} {t.name}")
        print(f"{len(trials)} trials")
        return 0
    if args.backend == "ray":
        from rl_energy.errors import import_optional

        import_optional("ray", "rl-energy sweep --backend ray")
    sweep.write_manifest(out, Path(args.spec), trials)
    done = [0]
    lock = threading.Lock()

    def report(o: sweep.TrialOutcome) -> None:
        with lock:
            done[0] += 1
            took = f" ({o.seconds:.1f} s)" if o.seconds else ""
            print(f"[{done[0]}/{len(trials)}] {o.status:<11} {o.trial.name}{took}", flush=True)

    jobs = args.jobs or cores
    print(f"sweep: {len(trials)} trials -> {out}/trials ({args.backend} backend"
          + (f", {jobs} at a time" if args.backend == "local" else f", {args.cpus_per_trial:g} CPU per trial")
          + f", {args.threads} thread(s) each)", flush=True)
    if args.backend == "local":
        outcomes = sweep.run_local(trials, out, jobs, args.threads, report)
    else:
        outcomes = sweep.run_ray(trials, out, args.address, args.cpus_per_trial, args.gpus_per_trial, args.threads,
                                 report)
    counts = {s: sum(o.status == s for o in outcomes) for s in ("done", "skipped", "failed", "interrupted", "pending")}
    for o in outcomes:
        if o.status == "failed":
            log = sweep.trial_dir(out, o.trial) / sweep.LOG_FILE
            print(f"\nfailed: {o.trial.name} (exit {o.returncode}); log {log}\n{o.log_tail}", file=sys.stderr)
    print(f"sweep finished: {counts['done']} run, {counts['skipped']} already done, {counts['failed']} failed, "
          f"{counts['interrupted']} interrupted, {counts['pending']} not started (re-run the same command to resume)",
          flush=True)
    if counts["interrupted"] or counts["pending"]:
        return 130
    return 1 if counts["failed"] else 0


def _reproduce(args: argparse.Namespace) -> int:
    from rl_energy import reproductions as rep
    from rl_energy.config import ConfigError

    if args.list or not args.name:
        if args.name:
            raise ConfigError("give NAME or --list, not both")
        if args.markdown:
            print(rep.summary_markdown())
            return 0
        width = max(len(r.name) for r in rep.REPRODUCTIONS)
        print(f"{'name':<{width}}  {'status':<15} {'runtime (2 cores)':<34} paper")
        for r in rep.REPRODUCTIONS:
            print(f"{r.name:<{width}}  {r.status:<15} {r.runtime:<34} {r.paper}")
        print(f"\n{len(rep.REPRODUCTIONS)} papers; `rl-energy reproduce NAME [-- ARGS]` runs one "
              "(e.g. `rl-energy reproduce radio -- --quick`); details in docs/reproductions.md")
        return 0
    extra = args.script_args[1:] if args.script_args[:1] == ["--"] else args.script_args
    r = rep.by_name(args.name)
    print(f"{r.paper}: scripts/{r.script} {' '.join(extra)} (status: {r.status}; measured {r.runtime})", flush=True)
    return rep.run(args.name, extra)


def _report(args: argparse.Namespace) -> int:
    from rl_energy.config import ConfigError
    from rl_energy.report import write_report

    if not 100 <= args.reps <= 1_000_000:
        raise ConfigError(f"--reps must be in [100, 1000000], got {args.reps}")
    if args.seed < 0:
        raise ConfigError(f"--seed must be >= 0, got {args.seed}")
    path = write_report(args.sweep_dir, args.out, args.column, args.reps, args.seed)
    print(path.read_text())
    print(f"wrote {path}")
    return 0


def _plot(args: argparse.Namespace) -> int:
    from rl_energy.plotting import plot_runs

    out = plot_runs([Path(d) for d in args.run_dirs], Path(args.out), column=args.column, band=args.band)
    print(f"wrote {out}")
    return 0


COMMANDS = {"train": _train, "evaluate": _evaluate, "list": _list, "plot": _plot, "analyze": _analyze,
            "sweep": _sweep, "report": _report, "reproduce": _reproduce}


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``rl-energy`` console script."""
    warnings.filterwarnings("ignore", category=DeprecationWarning)  # gymnasium's v4 notices
    warnings.filterwarnings("ignore", message=".*precision lowered by casting.*")
    args = _build_parser().parse_args(argv)
    from rl_energy.config import ConfigError

    try:
        return COMMANDS[args.command](args)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USER_ERROR
    except BrokenPipeError:  # the output went to `head` or a closed pager
        sys.stderr.close()
        return 0


if __name__ == "__main__":
    sys.exit(main())
