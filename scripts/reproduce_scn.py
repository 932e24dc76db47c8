#!/usr/bin/env python
"""SCN (Zitnick et al., NeurIPS 2022, arXiv 2206.14331; digest ``papers/one-step-tasks.md`` §19, "CPU experiment"):
force and energy MAE on mini-OC20 of mini-SCN against the invariant SchNet baseline (at about the same parameter
count) and the e3nn equivariant baseline, mini-SCN's ``l_max`` and ``m_max`` varied, and every model's
rotation-equivariance error.

Data (``rl_energy/S2EF-v0``, ``dataset=mini_oc20``): EMT Cu/Pt/Au(111) 2×2×3 slabs with one O/H/C/N adsorbate,
bottom layer fixed; frames from EMT relaxations, 300–1000 K Langevin MD and rattles (``rl_energy.atoms.data``);
``--n-train`` training frames and 500 test frames from other slab recipes. Every arm trains through the
``contexts`` loop (``configs/mlff/rl_energy__S2EF-v0.yaml``: Adam 1e-3 with cosine decay, loss 0.1·E + 1·F in
normalised units, batches of 16) for ``--updates`` updates at a 4.5 Å cutoff. Force MAE is over the free atoms
(OC20's convention), in meV/Å. The equivariance error is the mean ``|F(Rs) − R F(s)|`` (meV/Å) of the trained model
in float64 on 64 test structures, one random rotation each seed.

    python scripts/reproduce_scn.py            # 2 seeds x 4 arms, 1,000 updates (≈ 30 min on 2 idle cores)
    python scripts/reproduce_scn.py --quick    # 1 seed, 300 updates, 3 arms (≈ 5 min)
    python scripts/reproduce_scn.py --arms scn_l4_m1 scn_l2_m1_so2_c16 schnet_w140  # docs/reproductions.md's extra arms
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context

import numpy as np

from rl_energy.errors import require_extra, run_script

ENV_ID = "rl_energy/S2EF-v0"
CUTOFF = 4.5
ARMS: dict[str, list[str]] = {
    "schnet": ["agent.model=schnet", "agent.width=128"],
    "schnet_w140": ["agent.model=schnet", "agent.width=140"],  # the SO(2) l_max-2 arm's parameter count
    "e3nn": ["agent.model=e3nn", "agent.channels=24", "agent.l_max=2"],
    "scn_l2_m1": ["agent.model=scn", "agent.l_max=2", "agent.m_max=1", "agent.channels=16", "agent.hidden=32"],
    "scn_l4_m1": ["agent.model=scn", "agent.l_max=4", "agent.m_max=1", "agent.channels=16", "agent.hidden=32"],
    "scn_l2_m0": ["agent.model=scn", "agent.l_max=2", "agent.m_max=0", "agent.channels=16", "agent.hidden=48"],
    "scn_l2_m1_so2": ["agent.model=scn", "agent.l_max=2", "agent.m_max=1", "agent.channels=32", "agent.hidden=48",
                      "agent.message=so2"],
    # l_max 2 in the SO(2) form at l_max-4 SO(2)'s width (16 channels): l_max at a fixed width
    "scn_l2_m1_so2_c16": ["agent.model=scn", "agent.l_max=2", "agent.m_max=1", "agent.channels=16",
                          "agent.hidden=32", "agent.message=so2"],
    # l_max 4 in the SO(2) form at the l_max-2 SO(2) arm's parameter count (278k vs 272k)
    "scn_l4_m1_so2": ["agent.model=scn", "agent.l_max=4", "agent.m_max=1", "agent.channels=16", "agent.hidden=32",
                      "agent.message=so2"],
}
DEFAULT_ARMS = ["schnet", "scn_l2_m1", "scn_l2_m1_so2", "scn_l4_m1_so2"]
LABELS = {"schnet": "SchNet (invariant)", "schnet_w140": "SchNet (invariant, width 140)",
          "e3nn": "e3nn NequIP-style (l=2)", "scn_l2_m0": "mini-SCN l=2 m=0",
          "scn_l2_m1": "mini-SCN l=2 m=1", "scn_l4_m1": "mini-SCN l=4 m=1", "scn_l2_m1_so2": "mini-SCN l=2 m=1 (SO(2))",
          "scn_l4_m1_so2": "mini-SCN l=4 m=1 (SO(2))", "scn_l2_m1_so2_c16": "mini-SCN l=2 m=1 (SO(2), C=16)"}
PAPER = ("SCN: OC20 S2EF force MAE 17.2 meV/Å (val avg, 8 Å, l_max 6, ~100M+ params) [read-3p]; qualitative: "
         "higher l_max helps forces, and SCN beats invariant models such as SchNet")


def _threads() -> None:
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    import torch

    torch.set_num_threads(1)


def run_arm(job: dict) -> dict:
    """Train one arm on one seed; its test metrics, parameter count and equivariance error."""
    _threads()
    import torch

    from rl_energy.atoms.graph import random_rotation, unpack
    from rl_energy.atoms.models import equivariance_error
    from rl_energy.config import resolve_config
    from rl_energy.registry import get_agent
    from rl_energy.trainer import make_trainer

    start = time.time()
    steps = job["updates"] * 16
    over = [f"env_kwargs.n_train={job['n_train']}", "env_kwargs.n_test=500", f"train.seed={job['seed']}",
            "train.batch_size=16", f"train.total_steps={steps}", f"train.eval_every={steps}",
            f"train.log_every={steps}", "train.checkpoint_every=0", f"agent.cutoff={CUTOFF}",
            f"agent.lr_decay_updates={job['updates']}", "agent.grid_phi=8", *ARMS[job["arm"]]]
    cfg = resolve_config("mlff", ENV_ID, get_agent("mlff").config_cls, overrides=over)
    with tempfile.TemporaryDirectory() as tmp:
        trainer = make_trainer(cfg, tmp, verbose=False)
        result = trainer.train()
        agent = trainer.agent
        test = trainer.task.contexts("test")
    model = agent.model.double().eval()
    rotation = random_rotation(torch.Generator().manual_seed(1000 + job["seed"]))
    err = equivariance_error(model, unpack(test["obs"][:64].double()), rotation)
    return {**job, "force_mae": 1000 * result["force_mae"], "energy_mae": 1000 * result["energy_mae"],
            "efwt": result["efwt"], "params": agent.n_parameters, "equiv": 1000 * err["force"],
            "seconds": time.time() - start}


def equivariance_table(l_max: int = 2, seed: int = 0) -> list[tuple[str, int, float, float]]:
    """Rotation errors of untrained mini-SCNs (float64, 16 mini-OC20 test frames) for every ``m_max ≤ l_max``,
    SCN's dense edge layers beside the roll-equivariant (SO(2)) ones: ``(message, m_max, force err meV/Å,
    relative err)``."""
    _threads()
    import gymnasium as gym
    import torch

    import rl_energy  # noqa: F401
    from rl_energy.atoms.graph import random_rotation, unpack
    from rl_energy.atoms.models import build_model, equivariance_error

    test = gym.make(ENV_ID, n_train=16, n_test=16).unwrapped.contexts("test")
    s = unpack(test["obs"].double())
    rotation = random_rotation(torch.Generator().manual_seed(seed))
    rows = []
    for message in ("scn", "so2"):
        for m_max in range(l_max + 1):
            torch.manual_seed(seed)
            model = build_model("scn", l_max=l_max, m_max=m_max, message=message, cutoff=CUTOFF).double()
            err = equivariance_error(model, s, rotation)
            rows.append((message, m_max, 1000 * err["force"], err["force_rel"]))
    return rows


def _mean_se(values: list[float]) -> str:
    v = np.asarray(values, dtype=float)
    se = v.std(ddof=1) / np.sqrt(len(v)) if len(v) > 1 else float("nan")
    return f"{v.mean():7.1f} ± {se:4.1f}" if len(v) > 1 else f"{v.mean():7.1f}       "


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, default=2)
    parser.add_argument("--updates", type=int, default=1000)
    parser.add_argument("--n-train", type=int, default=3000)
    parser.add_argument("--arms", nargs="+", default=DEFAULT_ARMS, choices=list(ARMS),
                        help=f"default: {' '.join(DEFAULT_ARMS)}")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--quick", action="store_true", help="1 seed, 300 updates, 3 arms")
    args = parser.parse_args(argv)
    require_extra("atoms", "scripts/reproduce_scn.py")
    if args.quick:
        args.seeds, args.updates, args.arms = 1, 300, ["schnet", "scn_l2_m1", "scn_l2_m1_so2"]
    for key in ("seeds", "updates", "n_train", "workers"):
        if getattr(args, key) < 1:
            parser.error(f"--{key.replace('_', '-')} must be >= 1")
    start = time.time()
    # build (and cache) the data once before the workers read it
    import gymnasium as gym

    import rl_energy  # noqa: F401  (registers the envs)

    task = gym.make(ENV_ID, n_train=args.n_train, n_test=500).unwrapped
    task.contexts("train"), task.contexts("test")
    print(f"mini-OC20: {args.n_train} train / 500 test frames ready in {time.time() - start:.0f} s; "
          f"{len(args.arms)} arms x {args.seeds} seeds x {args.updates} updates of 16 frames", flush=True)
    jobs = [{"arm": arm, "seed": seed, "updates": args.updates, "n_train": args.n_train}
            for seed in range(args.seeds) for arm in args.arms]
    jobs.sort(key=lambda j: -("l4" in j["arm"]))  # longest first
    results = []
    with ProcessPoolExecutor(args.workers, mp_context=get_context("spawn")) as ex:
        for res in ex.map(run_arm, jobs):
            results.append(res)
            print(f"  {res['arm']:<14} seed {res['seed']}: force MAE {res['force_mae']:.1f} meV/Å "
                  f"({res['seconds']:.0f} s)", flush=True)
    print(f"\nmini-OC20 S2EF, {args.seeds} seed(s), {args.updates} updates; paper: {PAPER}\n")
    print(f"{'model':<31} {'params':>8} {'force MAE meV/Å':>17} {'energy MAE meV':>17} {'EFwT %':>7} "
          f"{'equiv. err meV/Å':>17} {'min/run':>8}")
    by_arm: dict[str, list[dict]] = {}
    for r in results:
        by_arm.setdefault(r["arm"], []).append(r)
    for arm in args.arms:
        rs = by_arm[arm]
        print(f"{LABELS[arm]:<31} {rs[0]['params']:>8d} {_mean_se([r['force_mae'] for r in rs]):>17} "
              f"{_mean_se([r['energy_mae'] for r in rs]):>17} {np.mean([r['efwt'] for r in rs]):>7.1f} "
              f"{np.mean([r['equiv'] for r in rs]):>17.2e} {np.mean([r['seconds'] for r in rs]) / 60:>8.1f}")
    print("\nper seed force MAE (meV/Å):")
    for arm in args.arms:
        print(f"  {arm:<14} " + " ".join(f"{r['force_mae']:.1f}" for r in sorted(by_arm[arm], key=lambda r: r["seed"])))
    print("\nrotation error of untrained mini-SCNs (l_max = 2, float64): mean |F(Rs) - R F(s)|")
    print(f"{'edge layers':<22} {'m_max':>5} {'meV/Å':>10} {'relative':>10}")
    for message, m_max, err, rel in equivariance_table():
        name = "SCN (dense)" if message == "scn" else "SO(2) (eSCN form)"
        print(f"{name:<22} {m_max:>5d} {err:>10.2e} {rel:>10.2e}")
    print(f"\ntotal wall time {(time.time() - start) / 60:.1f} min")
    if "schnet" in by_arm:
        schnet = np.mean([r["force_mae"] for r in by_arm["schnet"]])
        for arm in ("scn_l2_m1", "scn_l2_m1_so2"):  # dense first: the SO(2) form's line is the headline
            if arm in by_arm:
                ratio = np.mean([r["force_mae"] for r in by_arm[arm]]) / schnet
                print(f"{LABELS[arm]} / SchNet force-MAE ratio: {ratio:.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(run_script(main))
