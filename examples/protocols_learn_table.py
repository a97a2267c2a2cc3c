"""Does every packaged protocol still learn? The table of protocols/sweeps/protocols_learn.yaml.

    python examples/protocols_learn_table.py runs/protocols_learn

Per protocol (its packaged model and rule): the gain over step 0 of the pooled z_AGG probe and the decrease of
the prediction loss (summary.json's ``gain``: the trained network minus the same network before training), mean ±
95 % CI over seeds (t with n - 1 degrees of freedom), and whether both are above 0 outside the CI.
"""
from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

from scipy import stats


def _ci(xs: list[float]) -> tuple[float, float]:
    n = len(xs)
    m = sum(xs) / n
    if n < 2:
        return m, float("nan")
    sd = math.sqrt(sum((x - m) ** 2 for x in xs) / (n - 1))
    return m, float(stats.t.ppf(0.975, n - 1)) * sd / math.sqrt(n)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("sweep", type=Path)
    a = ap.parse_args()
    by: dict[str, list[dict]] = {}
    for d in sorted((a.sweep / "runs").iterdir()):
        meta, summ = d / "sweep_run.json", d / "summary.json"
        if meta.exists() and summ.exists():
            m, s = json.loads(meta.read_text()), json.loads(summ.read_text())
            if s.get("status") == "completed":
                by.setdefault(m["identity"]["protocol"], []).append({**s, **m["identity"]})
    print("| protocol | rule | n | gain in pooled z_AGG | prediction-loss decrease | final pooled z_AGG | learns |")
    print("|---|---|---|---|---|---|---|")
    for proto, runs in by.items():
        g = _ci([r["gain"]["probe_acc_agg"] for r in runs])
        p = _ci([r["gain"]["prediction_loss"] for r in runs])
        f = _ci([r["probe_acc_agg"][-1] for r in runs])
        ok = g[0] - g[1] > 0 and p[0] - p[1] > 0
        print(f"| `{proto}` | {runs[0]['rule']} | {len(runs)} | {g[0]:+.3f} ± {g[1]:.3f} | {p[0]:+.3f} ± {p[1]:.3f} "
              f"| {f[0]:.3f} ± {f[1]:.3f} | {'yes' if ok else 'not resolved'} |")


if __name__ == "__main__":
    main()
