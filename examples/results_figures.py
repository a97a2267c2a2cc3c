"""The figures of docs/results/figures.md, drawn by colsim.analysis.figures from sweep folders.

    python examples/results_figures.py runs/forgetting_action_shift runs/forgetting_nonstationary \
        --out docs/results/img

For each sweep: the frozen read-out's forgetting per rule (every seed and the mean ± 95 % CI), and the
per-seed paired difference of each rule from the frozen-weights arm (same seed: same stream, same initial
weights). Reads each run's summary.json and sweep_run.json, as examples/forgetting_tables.py does.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from colsim.analysis.figures import paired_figure, per_rule_figure, save_png

ORDER = ["frozen", "backprop", "backprop+replay", "backprop+si", "backprop+ewc", "backprop+metaplastic",
         "backprop+metaplastic_step", "lpl", "lpl+replay"]


def load(sweep: Path) -> list[dict]:
    out = []
    for d in sorted((sweep / "runs").iterdir()):
        meta, summ = d / "sweep_run.json", d / "summary.json"
        if meta.exists() and summ.exists():
            m, s = json.loads(meta.read_text()), json.loads(summ.read_text())
            if s.get("status") == "completed":
                out.append({**s, **m["identity"], **m["point"]})
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("sweeps", nargs="+", type=Path)
    ap.add_argument("--out", type=Path, default=Path("docs/results/img"))
    a = ap.parse_args()
    for sweep in a.sweeps:
        runs = load(sweep)
        rules = [r for r in ORDER if any(s["rule"] == r for s in runs)]
        proto = runs[0]["protocol"] if runs else sweep.name
        n = len({s["seed"] for s in runs})
        fig = per_rule_figure(runs, "frozen_forgetting", rules, f"{proto}: frozen read-out forgetting ({n} seeds)",
                              "forgetting")
        print(save_png(fig, a.out / f"{sweep.name}_frozen_forgetting.png"))
        fig = paired_figure(runs, "frozen_forgetting", "frozen", [r for r in rules if r != "frozen"],
                            f"{proto}: rule - frozen arm, paired per seed (95 % CI)", "forgetting difference")
        print(save_png(fig, a.out / f"{sweep.name}_vs_frozen.png"))


if __name__ == "__main__":
    main()
