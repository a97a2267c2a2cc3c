"""Overhead of ``colsim sweep``: N small runs on a 2-core LocalCluster against the same runs back to back.

    python benchmarks/bench_sweep.py                   # N = 6 runs of 40 steps, 2 repeats, interleaved
    python benchmarks/bench_sweep.py --runs 8 --steps 60 --repeats 3

Both sides do the same work with the same total threads (``--cores``, default 2), each as a fresh
process timed from start to exit (imports, planning and start-up included on both sides):

* sweep: ``colsim sweep FILE --workers cores --threads 1 --quiet``: plan, lock, start a LocalCluster of
  ``cores`` worker processes x 1 torch thread (each imports torch and colsim), one task per run,
  close the cluster.
* back to back: one process that plans the same sweep and runs each run through the same task
  function (colsim.sweep.task.execute) with ``cores`` torch threads, one after the other.
* ``--one-thread`` adds back to back with 1 torch thread: (its time / cores) is what a perfectly
  parallel sweep without start-up would take, so sweep / that is the sweep's own overhead.

Runs are the tests' tiny column on ``stationary`` with seeds 0..N-1 (one evaluation, at the end).
Printed: each repeat's times, the median ratio sweep / back-to-back (target <= 1.1) and the 1-minute
load average around each measurement: the host may be shared, and a loaded host inflates both sides
unevenly (the sweep's processes compete with other jobs for the same cores; several torch threads of
one process wait on each other when the cores are oversubscribed).

Measured (2-core VM shared with other jobs; docs/guide/sweeps.md), 6 runs x 40 steps, --one-thread:

    load 16-13: back to back 214.6 s · sweep 57.3 s · ratio 0.267 · 1 thread 33.1 s (sweep / (that / 2) = 3.46)
    load 13-12: back to back 174.4 s · sweep 30.7 s · ratio 0.176 · 1 thread 18.6 s (sweep / (that / 2) = 3.29)

Before the sweep's workers forked from a preloaded forkserver (dask's spawn: each worker imported torch
itself), at load 18-25: sweep 87.0 s, back to back 355.9 s (0.244), 1 thread 48.5 s (3.58).
"""
from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from _tiny import TINY  # noqa: E402


def _sweep_doc(n: int, steps: int) -> dict:
    return {"name": "bench", "base": {"protocol": "stationary", "steps": steps,
                                      "set": TINY + ["protocol.evaluation.at_start=false"]},
            "grid": {"seed": list(range(n))}, "cluster": {"dashboard_address": ":0"}}


def _back_to_back_here(sweep_file: str, out: str, threads: int) -> None:
    from colsim.registry import load_plugins
    from colsim.sweep.task import execute
    from colsim.sweep import load_sweep, plan_runs

    load_plugins()
    for r in plan_runs(load_sweep(sweep_file)[0]):
        meta = execute({"name": r.name, "point": r.point, "identity": r.identity, "config": r.config,
                        "dir": str(Path(out) / r.name), "threads": threads})
        assert meta["status"] == "completed", meta


def _timed(cmd: list[str]) -> float:
    t0 = time.perf_counter()
    res = subprocess.run(cmd, capture_output=True, text=True)
    dt = time.perf_counter() - t0
    if res.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed ({res.returncode}):\n{res.stdout[-2000:]}\n{res.stderr[-2000:]}")
    return dt


def back_to_back(sweep_file: Path, out: Path, threads: int) -> float:
    return _timed([sys.executable, __file__, "--back-to-back", str(sweep_file), str(out), str(threads)])


def sweep(sweep_file: Path, out: Path, cores: int) -> float:
    return _timed([sys.executable, "-m", "colsim.cli", "sweep", str(sweep_file), "--out", str(out), "--workers",
                   str(cores), "--threads", "1", "--quiet"])


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--back-to-back"]:  # the timed child process of back_to_back()
        _back_to_back_here(argv[1], argv[2], int(argv[3]))
        return 0
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=6)
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--cores", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--one-thread", action="store_true", help="also time the runs back to back with 1 torch thread: "
                    "(that time / cores) is a perfectly parallel sweep, so sweep / it is the sweep's own overhead")
    a = ap.parse_args(argv)
    tmp = Path(tempfile.mkdtemp(prefix="bench_sweep-"))
    sweep_file = tmp / "bench.yaml"
    sweep_file.write_text(yaml.safe_dump(_sweep_doc(a.runs, a.steps)))
    print(f"{a.runs} runs x {a.steps} steps (tiny column, stationary), {a.cores} cores; "
          f"{os.cpu_count()} CPUs visible", flush=True)
    ratios = []
    try:
        for rep in range(a.repeats):
            l0 = os.getloadavg()[0]
            seq = back_to_back(sweep_file, tmp / f"seq{rep}", a.cores)
            l1 = os.getloadavg()[0]
            sw = sweep(sweep_file, tmp / f"sweep{rep}", a.cores)
            l2 = os.getloadavg()[0]
            ratios.append(sw / seq)
            print(f"repeat {rep}: back to back {seq:6.1f} s (load {l0:.1f} -> {l1:.1f}) · sweep {sw:6.1f} s "
                  f"(load {l1:.1f} -> {l2:.1f}) · ratio {sw / seq:.3f}", flush=True)
            if a.one_thread:
                one = back_to_back(sweep_file, tmp / f"one{rep}", 1)
                l3 = os.getloadavg()[0]
                print(f"          back to back, 1 thread {one:6.1f} s (load {l2:.1f} -> {l3:.1f}) · sweep / "
                      f"(that / {a.cores}) = {sw / (one / a.cores):.3f} (the sweep's own overhead)", flush=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print(f"sweep / back to back: median {statistics.median(ratios):.3f} (target <= 1.1), "
          f"range {min(ratios):.3f}-{max(ratios):.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
