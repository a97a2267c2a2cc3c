"""The forgetting tables of docs/results/forgetting.md, generated from a sweep folder (nothing typed by hand).

    colsim sweep protocols/sweeps/forgetting_action_shift.yaml        # -> runs/forgetting_action_shift/
    python examples/forgetting_tables.py runs/forgetting_action_shift  # markdown on stdout

Reads each run's in-run ``summary.json`` (colsim.evaluate's read-outs; the same numbers ``colsim
compare --vs`` shows after ``colsim analyze``) and its ``sweep_run.json`` (rule, seed). Prints:

1. per rule, mean ± t-based 95 % CI half-width over seeds of the frozen read-out's, the task probe's and
   the prediction loss's forgetting, the final pooled z_AGG accuracy and its gain over step 0;
2. per rule, the per-seed paired difference of the frozen read-out's forgetting from backprop and from
   the frozen arm (same seed: same stream, same initial weights), mean ± CI, and the minimum detectable
   effect at 80 % power with that spread (colsim.analysis.compare.min_detectable_effect).

A scan sweep (``--scan FIELD``) prints instead, per value of the swept field, the validation criterion
(the final average accuracy of the frozen read-outs) per seed and its mean.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from colsim.analysis.compare import mean_ci, paired_from_summaries

COLUMNS = {
    "frozen_forgetting": "frozen read-out forgetting",
    "forgetting": "task-probe forgetting",
    "prediction_forgetting": "prediction-loss forgetting",
    "final_acc": "final pooled z_AGG",
    "gain_acc": "gain in pooled z_AGG over step 0",
}


def load(sweep: Path) -> list[dict]:
    out = []
    for d in sorted((sweep / "runs").iterdir()):
        meta, summ = d / "sweep_run.json", d / "summary.json"
        if not (meta.exists() and summ.exists()):
            continue
        m, s = json.loads(meta.read_text()), json.loads(summ.read_text())
        if s.get("status") != "completed":
            continue
        s["final_acc"] = s["probe_acc_agg"][-1]
        s["gain_acc"] = s.get("gain", {}).get("probe_acc_agg")
        s["avg_frozen_final"] = float(np.mean(s["frozen_matrix"][-1]))
        out.append({**m["identity"], **m["point"], "summary": s})
    return out


def _pm(values, digits=3) -> str:
    m, h, n = mean_ci(values)
    return f"{m:+.{digits}f} ± {h:.{digits}f}" if n > 1 else (f"{m:+.{digits}f}" if n else "–")


def tables(runs: list[dict]) -> str:
    seen = list(dict.fromkeys(r["rule"] for r in runs))
    rules = [r for r in ("frozen", "backprop") if r in seen] + [r for r in seen if r not in ("frozen", "backprop")]
    by = {rule: {r["seed"]: r["summary"] for r in runs if r["rule"] == rule} for rule in rules}
    seeds = sorted({r["seed"] for r in runs})
    lines = [f"seeds {seeds[0]}-{seeds[-1]} (n per rule below); mean ± 95 % CI half-width over seeds", "",
             "| rule | n | " + " | ".join(COLUMNS.values()) + " |", "|---|---|" + "---|" * len(COLUMNS)]
    for rule in rules:
        ss = by[rule].values()
        lines.append(f"| {rule} | {len(by[rule])} | " + " | ".join(_pm([s.get(k) for s in ss]) for k in COLUMNS) + " |")
    lines += ["", "Frozen read-out forgetting, paired per seed (rule − reference; negative = forgets less): "
                  "mean ± 95 % CI [minimum detectable effect at 80 % power]", "",
              "| rule | vs backprop | vs frozen |", "|---|---|---|"]
    summaries = [{**r["summary"], "rule": r["rule"], "seed": r["seed"]} for r in runs]
    paired = {ref: {p["rule"]: p for p in paired_from_summaries(summaries, ref, ("frozen_forgetting",), by=())}
              for ref in ("backprop", "frozen")}
    for rule in rules:
        cells = []
        for ref in ("backprop", "frozen"):
            p = paired[ref].get(rule)
            if p is None:
                cells.append("")
                continue
            m, h, n = p["frozen_forgetting"], p["frozen_forgetting_ci95"], p["n"]
            pm = f"{m:+.3f} ± {h:.3f}" if n > 1 else (f"{m:+.3f}" if n else "–")
            cells.append(f"{pm} [{p['frozen_forgetting_mde']:.3f}] (n={n})")
        lines.append(f"| {rule} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def scan(runs: list[dict], field: str) -> str:
    vals = sorted({r[field] for r in runs})
    seeds = sorted({r["seed"] for r in runs})
    lines = [f"| {field} | " + " | ".join(f"seed {s}" for s in seeds) + " | mean | frozen forgetting (mean) |",
             "|---|" + "---|" * (len(seeds) + 2)]
    for v in vals:
        rs = {r["seed"]: r["summary"] for r in runs if r[field] == v}
        crit = [rs[s]["avg_frozen_final"] if s in rs else float("nan") for s in seeds]
        ff = np.nanmean([rs[s]["frozen_forgetting"] for s in rs])
        lines.append(f"| {v:g} | " + " | ".join(f"{c:.3f}" for c in crit) + f" | {np.nanmean(crit):.3f} | {ff:+.3f} |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("sweep", type=Path, help="a colsim sweep folder")
    ap.add_argument("--scan", default=None, help="print a validation scan over this swept field (e.g. c, lam)")
    a = ap.parse_args()
    runs = load(a.sweep)
    if not runs:
        raise SystemExit(f"error: {a.sweep}: no completed run with a summary.json; run the sweep first")
    print(scan(runs, a.scan) if a.scan else tables(runs))


if __name__ == "__main__":
    main()
