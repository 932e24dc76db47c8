#!/usr/bin/env python
"""Time of one R3D analysis beside ``rdrobust`` on the same quantile regressions, in one process.

Data: ``rl_energy/DistributionalRDD-v0``'s DGP2 (``n`` logged units of ``m = 50`` draws), 9 quantiles
q = 0.1…0.9. Both sides fit local quadratics (Epanechnikov) at the same fixed bandwidth, with the bias
correction at ``b = h`` and HC3 residuals, and report conventional and robust bias-corrected estimates with
robust standard errors for every quantile:

* ours: one call of :func:`rl_energy.analysis.r3d.r3d` (``method="simple"``), which also draws the 200-draw
  multiplier bootstrap of the uniform band (rdrobust has no uniform band);
* reference: ``rdrobust.rdrobust`` called once per quantile on the column of the same quantile matrix.

The estimates are checked to agree (max abs difference printed), then each side is timed over
``--repeats`` runs (median). A second pair times the automatic bandwidths: ours (one MSE-optimal rule of
thumb per quantile) and rdrobust's ``mserd`` selector per quantile; these are different selectors, so only
the times are compared.

    python scripts/bench_r3d.py            # n = 500 and 2000, 7 repeats (about 1 min)
    python scripts/bench_r3d.py --quick    # n = 500, 3 repeats

The last line is ``r3d/rdrobust speed ratio (fixed h, n=<n>): X`` (rdrobust's time over ours: above 1 means
ours is faster).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import timeit
import warnings

import numpy as np

from rl_energy.analysis.r3d import quantile_matrix, r3d
from rl_energy.envs.tasks.distributional_rdd import simulate
from rl_energy.errors import import_optional


def _median(fn, repeats: int) -> float:
    """Median wall seconds of ``repeats`` calls of ``fn``."""
    return statistics.median(timeit.repeat(fn, number=1, repeat=repeats))

Q = np.round(np.linspace(0.1, 0.9, 9), 10)



def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--h", type=float, default=0.6, help="the fixed bandwidth")
    args = parser.parse_args(argv)
    if args.repeats < 1 or not 0 < args.h <= 1:
        parser.error("--repeats must be >= 1 and --h in (0, 1]")
    rdrobust = import_optional("rdrobust", "the reference of scripts/bench_r3d.py").rdrobust
    warnings.filterwarnings("ignore")
    repeats = 3 if args.quick else args.repeats
    sizes = (500,) if args.quick else (500, 2000)
    ratio = float("nan")
    for n in sizes:
        data = simulate("dgp2", n, 50, 1.0, rng=n)
        x, y = data["x"], data["y"]

        def ours(h=args.h, x=x, y=y):
            return r3d(x, y, q=Q, method="simple", h=h, rng=0, vce="hc3")

        def reference(h=args.h, x=x, y=y):
            qm = quantile_matrix(y, Q)
            out = []
            for k in range(Q.size):
                kw = {"h": h, "b": h} if h is not None else {"bwselect": "mserd"}
                est = rdrobust(qm[:, k], x, c=0, p=2, kernel="epanechnikov", vce="hc3", **kw)
                out.append((est.coef.values.ravel(), est.se.values.ravel()))
            return out

        res, ref = ours(), reference()
        diff = max(max(abs(res.tau[k] - c[0]), abs(res.tau_bc[k] - c[2]), abs(res.se[k] - s[2]))
                   for k, (c, s) in enumerate(ref))
        t_ours, t_ref = _median(ours, repeats), _median(reference, repeats)
        t_ours_bw = _median(lambda: ours(None), repeats)
        t_ref_bw = _median(lambda: reference(None), repeats)
        ratio = t_ref / t_ours
        print(f"n = {n:>5}, m = 50, 9 quantiles: max |ours - rdrobust| (tau, tau_bc, robust se) = {diff:.1e}")
        print(f"   fixed h = {args.h}: ours {1000 * t_ours:7.1f} ms (incl. 200-draw uniform band), rdrobust "
              f"{1000 * t_ref:7.1f} ms -> ratio {ratio:.1f}")
        print(f"   automatic bandwidths: ours {1000 * t_ours_bw:7.1f} ms, rdrobust mserd "
              f"{1000 * t_ref_bw:7.1f} ms -> ratio {t_ref_bw / t_ours_bw:.1f}")
    print(f"r3d/rdrobust speed ratio (fixed h, n={sizes[-1]}): {ratio:.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
