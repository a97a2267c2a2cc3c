"""Issue 31's budget table: per-layer read-out accuracy of each arm at each training budget, and ESPP's paired
differences from the untrained and rate-matched arms (the same seeds), from the budget sweeps' folders.

    colsim sweep protocols/sweeps/echospike_budget.yaml                 # ESPP (and, at step 0, untrained)
    colsim sweep protocols/sweeps/echospike_budget_rate_matched.yaml    # rate-matched random layers
    python examples/espp_budget_table.py runs/echospike_budget runs/echospike_budget_rate_matched [more folders] \
        [--png docs/results/img/espp_budget.png]

A cell: mean ± 95 % CI over seeds (colsim.analysis.compare.mean_ci); a difference row: the paired difference over
the seeds both arms have, its CI, and the minimum detectable effect at 80 % power
(colsim.analysis.compare.min_detectable_effect). Arms are the runs' rules (``espp``, ``rate_matched``, any other
rule given, e.g. a BPTT or supervised arm) plus ``untrained`` (each run's step-0 read-out); colsim.analysis.budget
reads them.
"""
from __future__ import annotations

import argparse

import numpy as np

from colsim.analysis.budget import collect, layer_names, paired
from colsim.analysis.compare import mean_ci, min_detectable_effect


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("folders", nargs="+", help="sweep or run folders")
    ap.add_argument("--vs", nargs="*", default=["untrained", "rate_matched"], help="arms ESPP is paired against")
    ap.add_argument("--arm", default="espp", help="the arm under test")
    ap.add_argument("--png", help="also draw the budget curve (colsim.analysis.figures.budget_figure) to this PNG")
    a = ap.parse_args()
    arms, names = collect(a.folders), layer_names(a.folders)
    if not arms:
        raise SystemExit(f"{', '.join(a.folders)}: no completed runs with per-layer read-outs")
    budgets = sorted({x for by in arms.values() for x in by})
    order = ["untrained", a.arm] + sorted(k for k in arms if k not in ("untrained", a.arm))
    print("| samples | arm | " + " | ".join(names) + " |")
    print("|---|---|" + "---|" * len(names))
    for x in budgets:
        for arm in order:
            by = arms.get(arm, {}).get(x)
            if not by:
                continue
            cells = []
            for li in range(len(names)):
                m, h, n = mean_ci([v[li] for v in by.values()])
                cells.append(f"{m:.3f} ± {h:.3f}" + ("" if n == 5 else f" (n={n})"))
            print(f"| {x:.0e} | {arm} | " + " | ".join(cells) + " |")
        for other in a.vs:
            if not arms.get(other, {}).get(x) or not arms.get(a.arm, {}).get(x):
                continue
            cells = []
            for li in range(len(names)):
                m, h, n = paired(arms, a.arm, other, x, li)
                A, B = arms[a.arm][x], arms[other][x]
                d = [A[s][li] - B[s][li] for s in sorted(set(A) & set(B))]
                mde = min_detectable_effect(float(np.std(d, ddof=1)), n) if n > 1 else float("nan")
                cells.append(f"**{m:+.3f} ± {h:.3f}** (MDE {mde:.3f})")
            print(f"| {x:.0e} | {a.arm} − {other} | " + " | ".join(cells) + " |")
    if a.png:
        from colsim.analysis.figures import budget_figure, save_png

        print(f"\nfigure: {save_png(budget_figure(arms, names), a.png)}")


if __name__ == "__main__":
    main()
