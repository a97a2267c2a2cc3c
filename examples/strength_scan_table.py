"""A validation scan's table: one row per protocol, one column per swept strength, plus the baseline.

    python examples/strength_scan_table.py runs/pc_si_scan --baseline runs/pc_baseline
    python examples/strength_scan_table.py runs/pc_ewc_scan --baseline runs/pc_baseline --metric average_accuracy

Reads each run's ``sweep_run.json`` (the swept point) and ``summary.json``. A cell is the metric's mean over the
seeds with the per-seed values in brackets; the chosen strength (highest mean; ``--lower`` for a loss) is marked
with ``*``. The scan is meant for the VALIDATION pool (``protocol.evaluation.pool=validation`` in the sweep's
``set``): the strength chosen here is then used, unchanged, on the probe pool that results report.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path


def _runs(sweep: Path) -> list[tuple[dict, dict]]:
    out = []
    for d in sorted((sweep / "runs").iterdir()):
        meta, summ = d / "sweep_run.json", d / "summary.json"
        if meta.exists() and summ.exists():
            s = json.loads(summ.read_text())
            if s.get("status") == "completed":
                m = json.loads(meta.read_text())  # a scan of one protocol does not sweep it: its identity names it
                out.append(({"protocol": m.get("identity", {}).get("protocol"), **m["point"]}, s))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("sweep", type=Path)
    ap.add_argument("--baseline", type=Path, help="a sweep folder of the baseline rule (one column, 'baseline')")
    ap.add_argument("--metric", default="average_accuracy")
    ap.add_argument("--lower", action="store_true", help="lower is better (a loss)")
    a = ap.parse_args()
    cells: dict[str, dict[str, list[float]]] = {}
    strengths: list = []
    for point, s in _runs(a.sweep):
        swept = [(k, v) for k, v in point.items() if k not in ("protocol", "seed")]
        if len(swept) != 1:
            raise SystemExit(f"{a.sweep}: a scan sweeps one field besides protocol and seed, got {sorted(point)}")
        (key, value), = swept
        value = float(value)  # YAML 1.1 reads 1.0e4 (no exponent sign) as a string; the rule config casts it
        strengths.append(value)
        cells.setdefault(point["protocol"], {}).setdefault(value, []).append(s[a.metric])
    strengths = sorted(set(strengths))
    base: dict[str, list[float]] = {}
    if a.baseline:
        for point, s in _runs(a.baseline):
            base.setdefault(point["protocol"], []).append(s[a.metric])
    cols = (["baseline"] if a.baseline else []) + [f"{key} = {v:g}" for v in strengths]
    print(f"{a.metric}, mean over seeds (per seed); * = chosen\n")
    print("| protocol | " + " | ".join(cols) + " |")
    print("|---|" + "---|" * len(cols))
    for proto, by in cells.items():
        means = {v: sum(xs) / len(xs) for v, xs in by.items()}
        best = (min if a.lower else max)(means, key=means.get)
        row = []
        if a.baseline:
            xs = base.get(proto, [])
            row.append(f"{sum(xs) / len(xs):.3f} ({', '.join(f'{x:.3f}' for x in xs)})" if xs else "—")
        for v in strengths:
            xs = by.get(v, [])
            row.append(f"{means[v]:.3f}{'*' if v == best else ''} ({', '.join(f'{x:.3f}' for x in xs)})" if xs else "—")
        print(f"| `{proto}` | " + " | ".join(row) + " |")


if __name__ == "__main__":
    main()
