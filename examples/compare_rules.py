"""The rule comparison the docs quote: rules x protocols x seeds, then mean ± 95 % CI per rule.

    python examples/compare_rules.py                                  # the docs' table (defaults below)
    python examples/compare_rules.py --rules backprop,lpl --protocols nonstationary --seeds 0,1 --steps 200

Every run is an ordinary ``colsim run PROTOCOL --rule R --seed S --steps N --quiet --out DIR`` (so any
of them can be reproduced alone), ``--jobs`` at a time with ``--threads`` torch threads each; a run
folder whose ``summary.json`` says completed (or diverged) is kept, so an interrupted comparison resumes. The
table is read from each run's ``summary.json`` (the in-run read-outs, colsim.evaluate) and printed
as markdown: mean ± t-based 95 % CI half-width over seeds (colsim.analysis.compare.mean_ci), the
numbers ``colsim compare OUT/PROTOCOL/* --by rule`` also shows after analysing the runs.

The same runs as one dask sweep (one dataset, resumable): ``colsim sweep protocols/sweeps/rules_seeds.yaml``
then ``colsim compare runs/rules_seeds --by rule --by protocol``.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from colsim.analysis.compare import mean_ci

RULES = ["frozen", "backprop", "lpl", "layerwise", "sparse_coding", "backprop+replay", "backprop+si", "backprop+ewc",
         "backprop+metaplastic", "lpl+replay"]
PROTOCOLS = ["action_shift", "nonstationary"]
# summary key -> column label; forgetting: positive = worse after later phases
COLUMNS = {
    "forgetting": "task-probe forgetting",
    "frozen_forgetting": "frozen read-out forgetting",
    "prediction_forgetting": "prediction-loss forgetting",
    "probe_acc_agg_final": "final pooled acc z_AGG",
    "equivariance_r2_final": "final equivariance R²",
}


def _final(s: dict, key: str):
    if key.endswith("_final"):
        v = s.get(key[: -len("_final")])
        return v[-1] if isinstance(v, list) and v else None
    return s.get(key)


def _finished(d: Path) -> bool:
    """A run folder whose summary says it ended (completed, or diverged: a result too); an
    interrupted run (killed, Ctrl-C) is started again."""
    p = d / "summary.json"
    return p.exists() and json.loads(p.read_text()).get("status") in ("completed", "diverged")


def run_one(protocol: str, rule: str, seed: int, steps: int, out: Path, threads: int, extra: list[str]) -> Path:
    d = out / protocol / f"{rule.replace('+', '_')}-s{seed}"
    if _finished(d):
        return d
    if d.exists():  # an interrupted run: start it again
        import shutil

        shutil.rmtree(d)
    d.parent.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "colsim.cli", "run", protocol, "--rule", rule, "--seed", str(seed), "--quiet",
           "--out", str(d), *(["--steps", str(steps)] if steps else []), *extra]
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    res = subprocess.run(cmd, env=env, capture_output=True, text=True)
    (d.parent / f"{d.name}.log").write_text(res.stdout + res.stderr)
    return d


def table(out: Path, protocols: list[str], rules: list[str], seeds: list[int]) -> str:
    lines = []
    for protocol in protocols:
        lines.append(f"\n**{protocol}** (mean ± 95 % CI half-width over seeds {','.join(map(str, seeds))})\n")
        lines.append("| rule | n | " + " | ".join(COLUMNS.values()) + " |")
        lines.append("|---|---|" + "---|" * len(COLUMNS))
        for rule in rules:
            sums = []
            for s in seeds:
                p = out / protocol / f"{rule.replace('+', '_')}-s{s}" / "summary.json"
                if _finished(p.parent):
                    sums.append(json.loads(p.read_text()))
            cells = []
            for key in COLUMNS:
                mu, ci, n = mean_ci(_final(s, key) for s in sums)
                cells.append("—" if n == 0 else f"{mu:+.3f} ± {ci:.3f}" if ci == ci else f"{mu:+.3f}")
            lines.append(f"| {rule} | {len(sums)} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rules", default=",".join(RULES))
    ap.add_argument("--protocols", default=",".join(PROTOCOLS))
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--steps", type=int, default=0, help="shorten every run to N steps (0: the protocol's length)")
    ap.add_argument("--out", type=Path, default=Path("runs/compare_rules"))
    ap.add_argument("--jobs", type=int, default=2, help="runs at a time")
    ap.add_argument("--threads", type=int, default=1, help="torch threads per run")
    ap.add_argument("--set", action="append", default=[], help="extra --set KEY=VALUE for every run")
    a = ap.parse_args(argv)
    rules, protocols = a.rules.split(","), a.protocols.split(",")
    seeds = [int(s) for s in a.seeds.split(",")]
    extra = [x for kv in a.set for x in ("--set", kv)]
    jobs = [(p, r, s) for p in protocols for s in seeds for r in rules]
    with ThreadPoolExecutor(a.jobs) as ex:
        for d in ex.map(lambda j: run_one(*j, a.steps, a.out, a.threads, extra), jobs):
            ok = _finished(d)
            print(f"{'done  ' if ok else 'FAILED'} {d}", flush=True)
    md = table(a.out, protocols, rules, seeds)
    (a.out / "table.md").write_text(md + "\n")
    print(md)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
