"""GFlowNet training speed: trajectory balance on HyperGrid 4x8, rl-energy beside torchgfn, same process.

Both sides train the same model the same way: a forward-policy MLP ``D·H -> 256 -> 256 -> D+1`` (ReLU)
on the one-hot (k-hot) encoding, uniform backward policy, ``log Z`` initialised at 0, Adam with
lr 1e-3 (network) and 0.1 (``log Z``), on-policy sampling (ε = 0), batches of 16 trajectories
(torchgfn's ``train_hypergrid.py`` defaults, GFlowNet digest §7). The figure is wall time per 1,000
trajectories (sampling + loss + backward + optimiser step) after a warm-up, repeated alternately.

torchgfn 2.4.1 pins ``numpy<2``, so it lives in its own environment (the ``gflownet-bench`` extra):

    python -m venv .venv-gfn && .venv-gfn/bin/pip install torch==2.13.0
    .venv-gfn/bin/pip install ".[gflownet-bench]"
    .venv-gfn/bin/python scripts/bench_gflownet.py

``--l1`` instead trains both for 32k trajectories and reports the L1 distance to ``R/Z`` summed over
states from 200k fresh samples, torchgfn's ``env.validate`` (and ours also exactly), in torchgfn's
regression-test setting (``--batch 128 --pb learned``: a backward head on the forward trunk, torchgfn's
``tied`` estimator) or its tutorial's (``--batch 16``).
"""

from __future__ import annotations

import argparse
import logging
import statistics
import time
import warnings

import torch

R_KWARGS = {"R0": 0.1, "R1": 0.5, "R2": 2.0}


def ours_iteration(ndim: int, height: int, batch: int, hidden: int, pb: str, seed: int):
    """One training iteration of rl-energy's TB agent (the loop of ``rl-energy train --agent tb``)."""
    from rl_energy.agents.gflownet import GFlowNetConfig, TBGFlowNet
    from rl_energy.envs.hypergrid import HyperGrid
    from rl_energy.trajectories import sample_trajectories

    torch.manual_seed(seed)
    dag = HyperGrid(ndim, height)
    config = GFlowNetConfig(hidden=[hidden, hidden], activation="relu", lr=1e-3, lr_logz=0.1, backward_policy=pb)
    agent = TBGFlowNet(dag, config)

    def iteration() -> None:
        agent.update(sample_trajectories(dag, agent.forward_logits, batch, 0.0))

    return iteration, (dag, agent)


def torchgfn_iteration(ndim: int, height: int, batch: int, hidden: int, pb: str, seed: int,
                       store_all_states: bool = False):
    """One on-policy training iteration of torchgfn's TBGFlowNet, as its HyperGrid tutorial runs it."""
    from gfn.estimators import DiscretePolicyEstimator
    from gfn.gflownet import TBGFlowNet
    from gfn.gym import HyperGrid
    from gfn.preprocessors import KHotPreprocessor
    from gfn.utils.modules import MLP, DiscreteUniform

    torch.manual_seed(seed)
    env = HyperGrid(ndim=ndim, height=height, reward_fn_str="original", reward_fn_kwargs=dict(R_KWARGS),
                    device="cpu", debug=False, calculate_partition=store_all_states,
                    store_all_states=store_all_states)
    pre = KHotPreprocessor(height=height, ndim=ndim)
    # torchgfn 2.4's MLP counts the input projection among its hidden layers: 2 -> two hidden layers
    pf_module = MLP(input_dim=pre.output_dim, output_dim=env.n_actions, hidden_dim=hidden, n_hidden_layers=2,
                    activation_fn="relu")
    n_params = sum(p.numel() for p in pf_module.parameters())
    expected = (ndim * height + 1) * hidden + (hidden + 1) * hidden + (hidden + 1) * (ndim + 1)
    if n_params != expected:
        raise RuntimeError(f"torchgfn's MLP has {n_params} parameters, ours {expected}: not the same network")
    if pb == "uniform":
        pb_module = DiscreteUniform(env.n_actions - 1)
    else:  # our learned P_B is a head on the forward trunk: torchgfn's tied estimator
        pb_module = MLP(input_dim=pre.output_dim, output_dim=env.n_actions - 1, hidden_dim=hidden,
                        n_hidden_layers=2, activation_fn="relu", trunk=pf_module.trunk)
    pf = DiscretePolicyEstimator(pf_module, env.n_actions, preprocessor=pre, is_backward=False)
    pb_est = DiscretePolicyEstimator(pb_module, env.n_actions, preprocessor=pre, is_backward=True)
    gfn = TBGFlowNet(pf=pf, pb=pb_est, init_logZ=0.0)
    opt = torch.optim.Adam([{"params": gfn.pf_pb_parameters(), "lr": 1e-3},
                            {"params": gfn.logz_parameters(), "lr": 0.1}])

    def iteration() -> None:
        trajs = gfn.sample_trajectories(env, n=batch, save_logprobs=True, save_estimator_outputs=False, epsilon=0.0)
        opt.zero_grad()
        loss = gfn.loss(env, trajs, recalculate_all_logprobs=False)
        loss.backward()
        opt.step()

    return iteration, (env, gfn)


def l1_after_training(args: argparse.Namespace, seed: int) -> dict[str, float]:
    """Train both for ``args.trajectories``; L1 (summed) from 200k fresh samples, and ours exactly."""
    from rl_energy.analysis.gflownet import empirical_distribution, exact_terminal_distribution, l1_distance
    from rl_energy.trajectories import sample_trajectories

    setup = (args.ndim, args.height, args.batch, args.hidden, args.pb, seed)
    iterations = -(-args.trajectories // args.batch)
    step, (dag, agent) = ours_iteration(*setup)
    for _ in range(iterations):
        step()
    xs = [sample_trajectories(dag, agent.forward_logits, 20_000).terminal_states() for _ in range(10)]
    target = dag.target_distribution()
    out = {"ours_l1_200k": l1_distance(empirical_distribution(dag, torch.cat(xs)), target),
           "ours_l1_exact": l1_distance(exact_terminal_distribution(dag, agent.forward_logits), target)}
    step, (env, gfn) = torchgfn_iteration(*setup, store_all_states=True)
    for _ in range(iterations):
        step()
    with torch.no_grad():
        info, _ = env.validate(gfn, 200_000)
    out["torchgfn_l1_200k"] = float(info["l1_dist"])
    return out


def _timed(iteration, iterations: int, batch: int, warmup: int = 20) -> float:
    for _ in range(warmup):
        iteration()
    start = time.perf_counter()
    for _ in range(iterations):
        iteration()
    return 1000.0 * (time.perf_counter() - start) / (iterations * batch)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ndim", type=int, default=4)
    parser.add_argument("--height", type=int, default=8)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--iterations", type=int, default=300, help="timed training iterations per repeat")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=0, help="torch.set_num_threads (0: PyTorch's default)")
    parser.add_argument("--pb", choices=["uniform", "learned"], default="uniform", help="backward policy")
    parser.add_argument("--l1", action="store_true", help="compare the L1 to R/Z after training instead of speed")
    parser.add_argument("--trajectories", type=int, default=32_000, help="with --l1: training trajectories")
    args = parser.parse_args()
    try:
        import gfn  # noqa: F401
    except ImportError:
        raise SystemExit("torchgfn is not installed; it pins numpy<2, so install it in its own venv "
                         "(see this script's docstring: pip install \".[gflownet-bench]\")") from None
    logging.disable(logging.WARNING)
    warnings.filterwarnings("ignore")
    if args.threads:
        torch.set_num_threads(args.threads)
    head = (f"TB on HyperGrid {args.ndim}x{args.height}, batch {args.batch}, MLP 2x{args.hidden}, {args.pb} P_B, "
            f"{torch.get_num_threads()} threads, torch {torch.__version__}")
    if args.l1:
        print(f"{head}: L1 to R/Z (summed over states) after {args.trajectories} trajectories, {args.repeats} seeds")
        rows = []
        for seed in range(args.repeats):
            rows.append(l1_after_training(args, seed))
            print(f"  seed {seed}: " + ", ".join(f"{k} {v:.3f}" for k, v in rows[-1].items()), flush=True)
        mean = {k: statistics.mean(r[k] for r in rows) for k in rows[0]}
        print("mean: " + ", ".join(f"{k} {v:.3f}" for k, v in mean.items()))
        print(f"rl-energy/torchgfn TB L1 (200k samples) ratio: {mean['ours_l1_200k'] / mean['torchgfn_l1_200k']:.3f}")
        return
    print(f"{head}, {args.iterations} iterations x {args.repeats} repeats")
    setup = (args.ndim, args.height, args.batch, args.hidden, args.pb)
    ours, theirs = [], []
    for r in range(args.repeats):
        ours.append(_timed(ours_iteration(*setup, seed=r)[0], args.iterations, args.batch))
        theirs.append(_timed(torchgfn_iteration(*setup, seed=r)[0], args.iterations, args.batch))
        print(f"  repeat {r}: rl-energy {ours[-1]:.3f} s / 1k trajectories, torchgfn {theirs[-1]:.3f}", flush=True)
    o, t = statistics.median(ours), statistics.median(theirs)
    print(f"median: rl-energy {o:.3f} s, torchgfn {t:.3f} s per 1k trajectories")
    print(f"rl-energy/torchgfn TB time per 1k trajectories ratio: {o / t:.3f}")


if __name__ == "__main__":
    main()
