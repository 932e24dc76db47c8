"""Speed of the preference losses (agents/radpo.py; digest papers/one-step-tasks.md §13), in one process.

* SeqRisk's vocabulary quantile: :func:`rl_energy.agents.radpo.vocab_quantile` (a partial sort of the low tail)
  beside ``torch.quantile`` (the reference: the same linear interpolation), on ``[B, T, V]`` log-ratio tensors of
  the reproduction's size; the two must agree to float precision.
* One update of 64 pairs (forward through policy and reference, backward, AdamW) for every loss: what the nested
  risk term costs over DPO and TDPO.

The last line is the headline: ``vocab_quantile/torch.quantile speed ratio: R`` (R > 1: ours is faster).

    python scripts/bench_radpo.py            # about 1 min on one thread
"""

from __future__ import annotations

import argparse
import statistics
import timeit

import numpy as np
import torch

from rl_energy.agents.radpo import LOSSES, PreferenceAgent, PreferenceConfig, vocab_quantile
from rl_energy.envs.sentiment_preference import SentimentPreferenceEnv


def median_time(fn, repeats: int) -> float:
    fn()  # warm-up
    return statistics.median(timeit.repeat(fn, number=1, repeat=repeats))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    if args.repeats < 1 or args.threads < 1:
        parser.error("--repeats and --threads must be >= 1")
    torch.set_num_threads(args.threads)
    gen = torch.Generator().manual_seed(0)
    print(f"torch {torch.__version__}, {args.threads} thread(s), median of {args.repeats}")

    print("\nSeqRisk's vocabulary quantile (level 1 - c) over the last axis of a [64 pairs x 16 tokens x V] tensor")
    print(f"{'V':>6s} {'c':>5s} {'ours ms':>9s} {'torch.quantile ms':>18s} {'speed ratio':>12s} {'max |diff|':>11s}")
    ratio_main = float("nan")
    for vocab in (567, 4096):
        x = torch.randn(64, 16, vocab, generator=gen)
        for c in (0.95, 0.99):
            ours = median_time(lambda x=x, c=c: vocab_quantile(x, 1 - c), args.repeats)
            ref = median_time(lambda x=x, c=c: torch.quantile(x, 1 - c, dim=-1, keepdim=True), args.repeats)
            diff = float((vocab_quantile(x, 1 - c) - torch.quantile(x, 1 - c, dim=-1, keepdim=True)).abs().max())
            print(f"{vocab:>6d} {c:>5.2f} {ours * 1e3:>9.3f} {ref * 1e3:>18.3f} {ref / ours:>12.2f} {diff:>11.1e}")
            if vocab == 567 and c == 0.95:
                ratio_main = ref / ours

    env = SentimentPreferenceEnv(n_train=64, n_test=8, sft_steps=0, n_candidates=2)
    pairs = env.preference_pairs("train")
    print(f"\nOne update of 64 pairs (TinyGPT 2 x 64, V = {env.vocab_size}, 4 + 16 tokens; policy and reference)")
    print(f"{'loss':>8s} {'ms/update':>10s} {'pairs/s':>9s}")
    base = float("nan")
    for loss in LOSSES:
        torch.manual_seed(0)
        agent = PreferenceAgent(env.observation_space, env.action_space, PreferenceConfig(loss=loss, warmup_steps=1))
        agent.load_reference(env.reference_model())
        t = median_time(lambda agent=agent: agent.update(pairs), max(3, args.repeats // 4))
        base = t if loss == "dpo" else base
        print(f"{loss:>8s} {t * 1e3:>10.1f} {64 / t:>9.0f}" + ("" if loss == "dpo" else f"   ({t / base:.2f}x dpo)"))
    assert np.isfinite(ratio_main)
    print(f"vocab_quantile/torch.quantile speed ratio: {ratio_main:.2f}")


if __name__ == "__main__":
    main()
