"""Does every packaged protocol still learn? The table of protocols/sweeps/protocols_learn.yaml.

    python examples/protocols_learn_table.py runs/protocols_learn

Per protocol (its packaged model and rule): the gain over step 0 of the pooled z_AGG probe and the decrease of
the prediction loss (summary.json's ``gain``: the trained network minus the same network before training), mean ±
95 % CI over seeds (t with n - 1 degrees of freedom), and whether both are above 0 outside the CI.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from colsim.analysis.compare import mean_ci


def _ci(xs: list[float]) -> tuple[float, float]:
    m, h, _ = mean_ci(xs)
    return m, h


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
        gains = [r["gain"]["probe_acc_agg"] for r in runs]
        g = _ci(gains)
        p = _ci([r["gain"]["prediction_loss"] for r in runs])
        f = _ci([r["probe_acc_agg"][-1] for r in runs])
        g_ok, p_ok = g[0] - g[1] > 0, p[0] - p[1] > 0
        seeds = "" if g_ok else " (" + ", ".join(f"{x:+.3f}" for x in gains) + ")"  # per seed where the CI reaches 0
        learns = "yes" if g_ok and p_ok else ("objective yes; pooled probe not resolved" if p_ok else "not resolved")
        print(f"| `{proto}` | {runs[0]['rule']} | {len(runs)} | {g[0]:+.3f} ± {g[1]:.3f}{seeds} "
              f"| {p[0]:+.3f} ± {p[1]:.3f} | {f[0]:.3f} ± {f[1]:.3f} | {learns} |")

if __name__ == "__main__":
    main()
