#!/usr/bin/env python
"""Ra-DPO (Zhang et al. 2025, "Risk-aware direct preference optimization under nested risk measure", arXiv
2505.20359; digest ``papers/one-step-tasks.md`` §13): DPO, TDPO1/2 and Ra-DPO1/2 on the token-level sentiment
MDP ``rl_energy/SentimentPreference-v0``, from offline preference pairs.

1. **Reference** (:meth:`SentimentPreferenceEnv.reference_model`): a 2-layer 64-dim GPT (:mod:`rl_energy.lm`)
   fitted to grammar reviews (1,500 AdamW steps of 64 sequences);
2. **Pairs**: for 4,000 train and 500 test prompts, 4 continuations of 16 tokens sampled from the reference,
   the VADER-best chosen and the VADER-worst rejected;
3. **Arms** (:mod:`rl_energy.agents.radpo`): DPO, TDPO1, TDPO2, Ra-DPO1 and Ra-DPO2 at ``c = 0.95`` and
   Ra-DPO2 at ``c ∈ {0.97, 0.99}``, × 3 seeds; β 0.1, α 0.5, AdamW lr 1e-4 with 150 warm-up updates, batches of
   64 pairs (epochs of reshuffled pairs), 500 updates (8 epochs);
4. **Metrics** every 100 updates: held-out reward accuracy (with each loss's own implicit reward, and with
   DPO's ``β·margin``), SeqKL(chosen) and SeqKL(rejected) on the 500 test pairs (tables 1-4, 7); the frontier:
   mean VADER of one continuation sampled from the policy for each of 200 test prompts against the policy's KL
   to the reference along those samples, ``Σ_t KL(π_θ ‖ π_ref)`` (table 5), and the sample KL at which each arm
   first reaches a mean VADER of 0.25 / 0.5 / 0.75 (table 6: the frontier at matched reward).

The paper's claim (IMDb, GPT-2 Large; abstract, no numbers read): Ra-DPO has lower KL growth at similar or
better reward accuracy than DPO and TDPO.

    python scripts/reproduce_radpo.py --json radpo.json   # 7 arms x 3 seeds: 22 CPU-min, about 13 min on 2 idle
                                                          # cores (30 min measured with the cores shared)
    python scripts/reproduce_radpo.py --quick             # smaller data, 150 updates, 1 seed (about 3 min)
    python scripts/reproduce_radpo.py --from-json radpo.json   # the tables of a saved run

The agents are driven here through their ``update()``: the ``contexts`` loop of ``rl-energy train`` serves
one-step tasks only, and this env is a token-level MDP with offline pairs.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path

import numpy as np

PAPER_CLAIM = "Ra-DPO: lower KL growth at similar or better reward accuracy than DPO/TDPO (abstract; IMDb, GPT-2 L)"


def arms(confidences: list[float]) -> list[tuple[str, str, float]]:
    """``(label, loss, c)`` of every arm: DPO, TDPO1/2, Ra-DPO1/2 at the first ``c``, Ra-DPO2 at the others."""
    c0 = confidences[0]
    out = [("DPO", "dpo", 1.0), ("TDPO1", "tdpo1", 1.0), ("TDPO2", "tdpo2", 1.0),
           (f"Ra-DPO1 c={c0:g}", "radpo1", c0), (f"Ra-DPO2 c={c0:g}", "radpo2", c0)]
    out += [(f"Ra-DPO2 c={c:g}", "radpo2", c) for c in confidences[1:]]
    return out


def run_arm(job: dict) -> dict:
    """Train one arm for one seed; the held-out figures at every evaluation."""
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    import torch

    torch.set_num_threads(1)
    from rl_energy.agents.radpo import PreferenceAgent, PreferenceConfig
    from rl_energy.envs.sentiment_preference import SentimentPreferenceEnv
    from rl_energy.lm import generate

    env = SentimentPreferenceEnv(**job["env_kwargs"])  # vocabulary and VADER scoring only (no data built)
    cfg = PreferenceConfig(loss=job["loss"], confidence=job["confidence"], lr=job["lr"], beta=job["beta"],
                           alpha=job["alpha"], warmup_steps=job["warmup"])
    cfg.validate()
    torch.manual_seed(job["seed"])
    agent = PreferenceAgent(env.observation_space, env.action_space, cfg)
    agent.load_reference(job["ref"])
    train, test = job["train"], job["test"]
    prompts = test["prompt"][:job["n_gen"]]
    rng = np.random.default_rng([job["seed"], 17])
    batch, n = job["batch"], len(train)
    order, pos = rng.permutation(n), 0
    history, start = [], time.time()
    for step in range(job["steps"] + 1):
        if step % job["eval_every"] == 0 or step == job["steps"]:
            figures = agent.evaluate_pairs(test)
            gen = torch.Generator().manual_seed(10_000 + job["seed"])
            agent.policy.eval()
            y = generate(agent.policy, prompts, env.response_len, generator=gen)
            figures["vader"] = float(env.score(y).mean())
            figures["sample_kl"] = float(agent.sample_kl(prompts, y).mean())
            figures["step"] = step
            history.append(figures)
        if step == job["steps"]:
            break
        if pos + batch > n:
            order, pos = rng.permutation(n), 0
        idx = torch.as_tensor(order[pos:pos + batch])
        pos += batch
        agent.update(train[idx])
    return {"label": job["label"], "seed": job["seed"], "history": history, "seconds": time.time() - start}


def _kl_at_reward(history: list[dict], target: float) -> float:
    """Sample KL at which the sample VADER first reaches ``target`` (linear between evaluations; nan if never)."""
    for prev, cur in zip(history, history[1:], strict=False):
        if cur["vader"] >= target > prev["vader"]:
            w = (target - prev["vader"]) / (cur["vader"] - prev["vader"])
            return prev["sample_kl"] + w * (cur["sample_kl"] - prev["sample_kl"])
    return float("nan")


def report(by_arm: dict[str, list[dict]], steps: int) -> None:
    """The tables of a run: ``by_arm[label]`` holds one ``{"history": [...]}`` per seed (arms in order)."""
    labels = list(by_arm)
    seeds = len(by_arm[labels[0]])

    def final(label: str, key: str) -> list[float]:
        return [r["history"][-1][key] for r in by_arm[label]]

    print(f"1. After {steps} updates (held-out, mean ± sd over {seeds} seeds):")
    head = (f"{'arm':16} {'reward acc':>14} {'margin acc':>14} {'SeqKL chosen':>15} {'SeqKL rejected':>15} "
            f"{'sample VADER':>15} {'sample KL':>14}")
    print(head)
    for label in labels:
        print(f"{label:16} {_ms(final(label, 'reward_acc')):>14} {_ms(final(label, 'margin_acc')):>14} "
              f"{_ms(final(label, 'seqkl_w'), '.2f'):>15} {_ms(final(label, 'seqkl_l'), '.2f'):>15} "
              f"{_ms(final(label, 'vader')):>15} {_ms(final(label, 'sample_kl'), '.2f'):>14}")

    steps_axis = [h["step"] for h in by_arm[labels[0]][0]["history"]]

    def curve(label: str, key: str) -> np.ndarray:
        return np.mean([[h[key] for h in r["history"]] for r in by_arm[label]], axis=0)

    for title, key, fmt in (("2. Held-out reward accuracy over updates (mean over seeds)", "reward_acc", ".3f"),
                            ("3. SeqKL(chosen) over updates", "seqkl_w", ".2f"),
                            ("4. SeqKL(rejected) over updates", "seqkl_l", ".2f")):
        print(f"\n{title}:")
        print(f"{'arm':16} " + " ".join(f"{s:>7}" for s in steps_axis))
        for label in labels:
            print(f"{label:16} " + " ".join(f"{v:>7{fmt}}" for v in curve(label, key)))
    print("\n5. Frontier: sample VADER / sample KL(policy ‖ ref) over updates (mean over seeds; reference at step 0):")
    print(f"{'arm':16} " + " ".join(f"{s:>12}" for s in steps_axis))
    for label in labels:
        v, k = curve(label, "vader"), curve(label, "sample_kl")
        print(f"{label:16} " + " ".join(f"{a:>+5.2f}/{b:<6.2f}" for a, b in zip(v, k, strict=True)))

    print("\n6. Sample KL(policy ‖ ref) needed to reach a mean sample VADER (frontier at matched reward; mean over "
          "the seeds that reach it):")
    targets = (0.25, 0.5, 0.75)
    print(f"{'arm':16} " + " ".join(f"{'VADER ' + format(t, '.2f'):>16}" for t in targets))
    for label in labels:
        cells = []
        for t in targets:
            kls = np.array([_kl_at_reward(r["history"], t) for r in by_arm[label]])
            ok = kls[np.isfinite(kls)]
            cells.append(f"{ok.mean():.2f} ({len(ok)}/{len(kls)})" if len(ok) else f"never (0/{len(kls)})")
        print(f"{label:16} " + " ".join(f"{c:>16}" for c in cells))

    print(f"\n7. The claim ({PAPER_CLAIM}), on the final held-out SeqKL(chosen) and reward accuracy "
          "('similar' = at most 0.02 lower):")
    holds = []
    for label in labels:
        if not label.startswith("Ra-DPO"):
            continue
        twin = "TDPO1" if label.startswith("Ra-DPO1") else "TDPO2"  # the same loss with SeqKL
        kl, acc = np.mean(final(label, "seqkl_w")), np.mean(final(label, "reward_acc"))
        parts, ok = [], True
        for base in ("DPO", twin):
            kb, ab = np.mean(final(base, "seqkl_w")), np.mean(final(base, "reward_acc"))
            ok &= bool(kl < kb and acc >= ab - 0.02)
            parts.append(f"vs {base}: SeqKL {kl:.2f} vs {kb:.2f}, acc {acc:.3f} vs {ab:.3f}")
        holds.append(ok)
        print(f"   {label}: {'holds' if ok else 'does not hold'} ({'; '.join(parts)})")
    print(f"   -> holds for {sum(holds)} of {len(holds)} Ra-DPO arms (against DPO and the TDPO of the same form)")


def _pool(jobs: list[dict], workers: int) -> list[dict]:
    if workers <= 1:
        return [run_arm(j) for j in jobs]
    with ProcessPoolExecutor(workers, mp_context=get_context("spawn")) as ex:
        return list(ex.map(run_arm, jobs))


def _ms(values: list[float], fmt: str = ".3f") -> str:
    a = np.asarray(values, dtype=float)
    return f"{a.mean():{fmt}}" + (f" ± {a.std(ddof=1):{fmt}}" if len(a) > 1 else "")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="1,000/200 pairs, 150 updates, 1 seed (a smoke run)")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=500, help="updates per arm")
    parser.add_argument("--lr", type=float, default=1e-4)
    parser.add_argument("--confidences", type=float, nargs="+", default=[0.95, 0.97, 0.99])
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--json", type=Path, default=None, help="write every arm's history here")
    parser.add_argument("--from-json", type=Path, default=None, help="print the tables of a saved --json run")
    args = parser.parse_args(argv)
    if args.from_json is not None:
        saved = json.loads(args.from_json.read_text())
        report(saved, max(h["step"] for rs in saved.values() for h in rs[0]["history"]))
        return 0
    if args.seeds < 1 or args.steps < 1 or args.workers < 1 or not all(0 < c <= 1 for c in args.confidences):
        parser.error("--seeds, --steps, --workers must be >= 1 and every confidence in (0, 1]")
    import torch

    torch.set_num_threads(1)
    from rl_energy.envs.sentiment_preference import SentimentPreferenceEnv

    start = time.time()
    env_kwargs: dict = {}
    steps, seeds, eval_every, n_gen = args.steps, args.seeds, 100, 200
    if args.quick:
        env_kwargs = {"n_train": 1000, "n_test": 200, "sft_steps": 500}
        steps, seeds, eval_every, n_gen = 150, 1, 50, 100
    env = SentimentPreferenceEnv(**env_kwargs)
    ref = env.reference_model()
    t_ref = time.time() - start
    train, test = env.preference_pairs("train"), env.preference_pairs("test")
    t_data = time.time() - start
    print(f"Ra-DPO on rl_energy/SentimentPreference-v0: vocabulary {env.vocab_size} tokens "
          f"({len(env.positive_ids)} positive, {len(env.negative_ids)} negative VADER words), prompts of "
          f"{env.prompt_len} tokens, continuations of {env.response_len}")
    print(f"reference SFT {t_ref:.0f} s; pairs ({len(train)} train / {len(test)} test, best/worst of "
          f"{env.n_candidates}) {t_data - t_ref:.0f} s; VADER chosen {float(train['chosen_score'].mean()):+.3f}, "
          f"rejected {float(train['rejected_score'].mean()):+.3f}")
    print(f"arms x {seeds} seeds, {steps} updates of 64 pairs, lr {args.lr:g}, beta 0.1, alpha 0.5, 150 warm-up "
          f"(workers={args.workers})\n", flush=True)

    ref_state = {k: v.clone() for k, v in ref.state_dict().items()}
    arm_list = arms(args.confidences)
    jobs = [{"label": label, "loss": loss, "confidence": c, "seed": s, "steps": steps, "lr": args.lr, "beta": 0.1,
             "alpha": 0.5, "warmup": 150, "batch": 64, "eval_every": eval_every, "n_gen": n_gen, "ref": ref_state,
             "train": train, "test": test, "env_kwargs": env_kwargs}
            for s in range(seeds) for (label, loss, c) in arm_list]
    results = _pool(jobs, args.workers)
    by_arm: dict[str, list[dict]] = {}
    for r in results:
        by_arm.setdefault(r["label"], []).append(r)

    report(by_arm, steps)
    per_run = [r["seconds"] for r in results]
    print(f"\nper-arm run {np.mean(per_run):.0f} s (1 thread); total {(time.time() - start) / 60:.1f} min")
    if args.json is not None:
        args.json.write_text(json.dumps({lbl: [{"seed": r["seed"], "history": r["history"]} for r in rs]
                                         for lbl, rs in by_arm.items()}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
