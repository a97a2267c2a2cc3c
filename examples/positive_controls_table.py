"""The 10-seed reproduction tables of docs/results/positive_controls.md, from the pc_<data>_* sweeps.

    python examples/positive_controls_table.py runs                  # runs/pc_digits_{finetune,si,ewc,...}
    python examples/positive_controls_table.py runs --data fashion   # runs/pc_fashion_{finetune,si,ewc,...}
    python examples/positive_controls_table.py runs --hot            # runs/pc_digits_task_hot_{finetune,si,ewc}:
                                                                     # Task-IL digits at lr 5e-3

An arm whose sweep folder is missing is left out.

A cell: ``average_accuracy`` (summary.json), mean ± 95 % CI over seeds; for every arm but fine-tuning, in brackets,
the paired difference from fine-tuning (same protocol and seed), its CI and the minimum detectable effect at 80 %
power (colsim.analysis.compare.mean_ci, min_detectable_effect).
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from colsim.analysis.compare import mean_ci, min_detectable_effect

ARMS = [("fine-tuning (`backprop`)", "finetune"), ("`+si`", "si"), ("`+ewc`", "ewc"), ("`+replay`", "replay"),
        ("`+metaplastic` (n-GateON)", "metaplastic"),
        ("`+metaplastic`, each task in its own context", "metaplastic_own"),
        ("joint training (upper bound)", "joint")]
SCENARIOS = ["split_{}_task", "split_{}_domain", "split_{}_class", "permuted_{}"]


def _accuracies(folder: Path, protocol: str) -> dict[int, float]:
    """seed -> average_accuracy of the completed runs of ``protocol`` in a sweep folder."""
    out = {}
    for meta in (folder / "runs").glob("*/sweep_run.json"):
        m = json.loads(meta.read_text())
        if m["identity"]["protocol"] == protocol and m["status"] == "completed":
            out[m["point"]["seed"]] = json.loads((meta.parent / "summary.json").read_text())["average_accuracy"]
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("root", type=Path, help="the folder holding the pc_<data>_* sweep folders")
    ap.add_argument("--data", choices=["digits", "fashion"], default="digits")
    ap.add_argument("--hot", action="store_true",
                    help="the Task-IL digits control at lr 5e-3 (sweeps pc_digits_task_hot_*), split_digits_task only")
    ap.add_argument("--brief", action="store_true", help="only the paired difference from fine-tuning ± its CI")
    a = ap.parse_args()
    PROTOCOLS = ["split_digits_task"] if a.hot else [p.format(a.data) for p in SCENARIOS]
    prefix = "pc_digits_task_hot" if a.hot else f"pc_{a.data}"
    base = {p: _accuracies(a.root / f"{prefix}_finetune", p) for p in PROTOCOLS}
    print("| arm | " + " | ".join(f"`{p}`" for p in PROTOCOLS) + " |")
    print("|---|" + "---|" * len(PROTOCOLS))
    for name, arm in ARMS:
        if not (a.root / f"{prefix}_{arm}").is_dir():
            continue
        cells = []
        for p in PROTOCOLS:
            acc = _accuracies(a.root / f"{prefix}_{arm}", p)
            if not acc:
                cells.append("—")
                continue
            m, h, n = mean_ci([acc[k] for k in sorted(acc)])
            cell = f"{m:.3f} ± {h:.3f}"
            if a.brief and arm != "finetune":
                diff = [acc[k] - base[p][k] for k in sorted(set(acc) & set(base[p]))]
                dm, dh, dn = mean_ci(diff)
                cell = f"{dm:+.3f} ± {dh:.3f}"
            elif arm != "finetune":
                diff = [acc[k] - base[p][k] for k in sorted(set(acc) & set(base[p]))]
                dm, dh, dn = mean_ci(diff)
                cell += f" ({dm:+.3f} ± {dh:.3f}, MDE {min_detectable_effect(float(np.std(diff, ddof=1)), dn):.3f})"
            cells.append(cell + ("" if n == 10 else f" n={n}"))
        print(f"| {name} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
