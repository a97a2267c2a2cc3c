"""The voting-vs-single-column comparison of docs/guide/circuits.md (issue 14): the ``columns`` protocols over seeds.

    python examples/compare_columns.py                      # columns + columns_percolumn, seeds 0,1,2
    python examples/compare_columns.py --protocols columns --seeds 0,1 --steps 100

Every run is an ordinary ``colsim run PROTOCOL --seed S --quiet --out OUT/PROTOCOL_sS`` (``--jobs`` at a
time, ``--threads`` torch threads each); a finished run folder is kept, so an interrupted comparison
resumes. Read from each run's ``summary.json`` (``columns``: the in-run pooled 10-way probe of z_AGG per
column and for the vote, colsim/circuit/evaluate.py): the vote's accuracy, the mean of the single columns'
accuracies, and their difference paired per seed — each as mean ± t-based 95 % CI half-width over seeds
(colsim.analysis.compare.mean_ci), at step 0 (untrained) and at the end of training. For reference
(``--whole-view``, on by default) one column that sees the whole 32-px view: ``stationary`` with the
``columns`` protocol's model, stream batch, length and learning-rate schedule (the same world, probe sets
and evaluation),
``OUT/fullview_sS``.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from colsim.analysis.compare import mean_ci

PROTOCOLS = ["columns", "columns_percolumn"]


def _finished(d: Path) -> bool:
    p = d / "summary.json"
    return p.exists() and json.loads(p.read_text()).get("status") == "completed"


def run_one(protocol: str, seed: int, steps: int, out: Path, threads: int, extra: list[str]) -> Path:
    name = protocol
    if protocol == "fullview":  # one column on the whole view, the columns protocol's stream and length
        from colsim.config import ProtocolConfig, load_protocol

        p = ProtocolConfig.model_validate(load_protocol("columns"))
        steps = steps or p.total_steps
        protocol, extra = "stationary", [*extra, "--model", p.model, "--set", f"protocol.stream.batch={p.stream.batch}",
                                         "--set", f"protocol.schedule={p.schedule}"]
    d = out / f"{name}_s{seed}"
    if _finished(d):
        return d
    if d.exists():  # an interrupted run: start it again
        import shutil

        shutil.rmtree(d)
    out.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "colsim.cli", "run", protocol, "--seed", str(seed), "--quiet", "--out", str(d),
           *(["--steps", str(steps)] if steps else []), *extra]
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    res = subprocess.run(cmd, env=env, capture_output=True, text=True)
    (out / f"{d.name}.log").write_text(res.stdout + res.stderr)
    return d


def _cell(values) -> str:
    mu, ci, n = mean_ci(values)
    return "—" if n == 0 else f"{mu:.3f} ± {ci:.3f}" if ci == ci else f"{mu:.3f}"


def table(out: Path, protocols: list[str], seeds: list[int]) -> str:
    lines = [f"pooled 10-way linear probe of z_AGG (held-out images), mean ± 95 % CI half-width over seeds "
             f"{','.join(map(str, seeds))}; vote − single paired per seed\n",
             "| protocol | after | n | vote | single column (mean of columns) | vote − single |",
             "|---|---|---|---|---|---|"]
    for protocol in protocols:
        sums = [json.loads((out / f"{protocol}_s{s}" / "summary.json").read_text()) for s in seeds
                if _finished(out / f"{protocol}_s{s}")]
        for label, i in (("step 0", 0), ("training", -1)):
            vote, single = [], []
            for s in sums:
                acc = np.asarray(s["columns"]["probe_acc_agg"][i], dtype=float)  # (columns + vote,)
                vote.append(acc[-1])
                single.append(acc[:-1].mean())
            diff = [v - c for v, c in zip(vote, single)]
            lines.append(f"| {protocol} | {label} | {len(sums)} | {_cell(vote)} | {_cell(single)} | {_cell(diff)} |")
    full = [json.loads((out / f"fullview_s{s}" / "summary.json").read_text()) for s in seeds
            if _finished(out / f"fullview_s{s}")]
    for label, i in (("step 0", 0), ("training", -1)) if full else ():
        lines.append(f"| one column, whole view | {label} | {len(full)} | — | "
                     f"{_cell(s['probe_acc_agg'][i] for s in full)} | — |")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--protocols", default=",".join(PROTOCOLS))
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--steps", type=int, default=0, help="shorten every run to N steps (0: the protocol's length)")
    ap.add_argument("--out", type=Path, default=Path("runs/compare_columns"))
    ap.add_argument("--jobs", type=int, default=2, help="runs at a time")
    ap.add_argument("--threads", type=int, default=1, help="torch threads per run")
    ap.add_argument("--set", action="append", default=[], help="extra --set KEY=VALUE for every run")
    ap.add_argument("--whole-view", action=argparse.BooleanOptionalAction, default=True,
                    help="also run one column on the whole view (stationary, same stream and length)")
    a = ap.parse_args(argv)
    protocols, seeds = a.protocols.split(","), [int(s) for s in a.seeds.split(",")]
    runs = protocols + (["fullview"] if a.whole_view else [])
    extra = [x for kv in a.set for x in ("--set", kv)]
    with ThreadPoolExecutor(a.jobs) as ex:
        for d in ex.map(lambda j: run_one(*j, a.steps, a.out, a.threads, extra), [(p, s) for p in runs for s in seeds]):
            print(f"{'done  ' if _finished(d) else 'FAILED'} {d}", flush=True)
    md = table(a.out, protocols, seeds)
    (a.out / "table.md").write_text(md + "\n")
    print(md)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
