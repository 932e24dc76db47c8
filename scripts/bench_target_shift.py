#!/usr/bin/env python
"""Time of the target-shift estimators (``rl_energy/analysis/target_shift.py``) beside scipy, in one process.

Data: ``rl_energy/TargetShiftRegression-v0``'s generator (source y ~ N(0, 1), target N(1, 0.5²), x | y with the
task's link, d = 1), ``n`` source and ``n`` target points.

* **KDE**: :func:`rl_energy.analysis.target_shift.gaussian_kde` of the source inputs at the target inputs beside
  ``scipy.stats.gaussian_kde(data, bw_method=h / sd)`` at the same bandwidth (the same estimator: values checked
  to agree before timing);
* **ReTaSA end to end** (:func:`retasa_weights`: bandwidths, α by label-free cross-fitting over 9 values, 4
  partitions, then the n × n solve) and **KMM** (:func:`kmm_weights`), with their weight errors, for scale; no
  library implements either, so they have no reference run.

Median of ``--repeats`` runs.

    python scripts/bench_target_shift.py            # n = 1000 and 4000 (about 1 min)
    python scripts/bench_target_shift.py --quick    # n = 1000, 3 repeats

The last line is ``kde ours/scipy speed ratio (n=<n>): X`` (scipy's time over ours: above 1 means ours is faster).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
import timeit

import numpy as np

from rl_energy.analysis.target_shift import bandwidth, gaussian_kde, kmm_weights, retasa_weights, weight_error
from rl_energy.envs.tasks.target_shift import draw, true_weight
from rl_energy.errors import import_optional


def _median(fn, repeats: int) -> float:
    """Median wall seconds of ``repeats`` calls of ``fn``."""
    return statistics.median(timeit.repeat(fn, number=1, repeat=repeats))



def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args(argv)
    if args.repeats < 1:
        parser.error("--repeats must be >= 1")
    stats = import_optional("scipy.stats", "the reference of scripts/bench_target_shift.py")
    repeats = 3 if args.quick else args.repeats
    sizes = (1000,) if args.quick else (1000, 4000)
    ratio = float("nan")
    for n in sizes:
        rng = np.random.default_rng(n)
        xs, ys = draw(rng, n, "source", 1)
        xt, _ = draw(rng, n, "gaussian", 1)
        h = float(bandwidth(xs)[0])
        ref_kde = stats.gaussian_kde(xs[:, 0], bw_method=h / xs[:, 0].std(ddof=1))
        diff = float(np.max(np.abs(gaussian_kde(xt, xs, h) - ref_kde(xt[:, 0]))))
        t_ours = _median(lambda xs=xs, xt=xt, h=h: gaussian_kde(xt, xs, h), repeats)
        t_ref = _median(lambda xt=xt, ref_kde=ref_kde: ref_kde(xt[:, 0]), repeats)
        ratio = t_ref / t_ours
        omega = true_weight(ys.ravel(), "gaussian")
        t0 = time.perf_counter()
        fit = retasa_weights(xs, ys, xt)
        t_retasa = time.perf_counter() - t0
        t0 = time.perf_counter()
        beta = kmm_weights(xs, xt)
        t_kmm = time.perf_counter() - t0
        print(f"n = m = {n:>5}, d = 1: KDE at {n} points: ours {1000 * t_ours:7.2f} ms, scipy {1000 * t_ref:7.2f} ms "
              f"-> ratio {ratio:.2f} (max |diff| {diff:.1e})")
        print(f"   ReTaSA (alpha by cross-fitting, chosen {fit.alpha:.3g}): {t_retasa:6.2f} s, weight error "
              f"{weight_error(fit.omega, omega):.3f}; KMM: {t_kmm:6.2f} s, weight error "
              f"{weight_error(beta, omega):.3f}; unweighted {weight_error(np.ones(n), omega):.3f}")
    print(f"kde ours/scipy speed ratio (n={sizes[-1]}): {ratio:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
