"""Out-of-core analysis: peak memory and time of ``analyze_run`` on a multi-GB synthetic store.

Writes a synthetic run store with the layout ``colsim run`` writes (DESIGN.md section 3) of
about ``--size-gb`` GB of probe activity (``z`` and ``z_agg``, float32, written chunk by chunk
so writing needs little memory either), then runs ``analyze_run`` in a fresh subprocess and
reports its wall time and peak resident memory (``ru_maxrss`` of that process, from
``os.wait4``). Target: peak memory under 2 GB for a 10 GB store — analysis streams the
activity in blocks (exact Gram / covariance accumulation) and runs probes on a capped prefix
of samples, so the peak does not grow with the store. Prints PASS / FAIL.

    python benchmarks/bench_analysis.py [--size-gb 3] [--units 256] [--dir DIR] [--keep] [--reuse]
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

TARGET_MB = 2048


def _du(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def _write(path: Path, size_gb: float, units: int, views: int, phases: int, chunk: int) -> tuple[int, float]:
    from colsim.analysis._synthetic import write_synthetic_run

    evals = phases + 1
    per_sample = evals * phases * (views + 1) * units * 4  # z (V views) + z_agg, float32
    n_samples = max(chunk, int(size_gb * 1e9 / per_sample) // chunk * chunk)
    t0 = time.perf_counter()
    write_synthetic_run(path, rule="lpl", n_phases=phases, steps_per_phase=20_000, n_samples=n_samples,
                        n_views=views, n_units=units, sample_chunk=chunk, rising_component=True)
    return n_samples, time.perf_counter() - t0


def _analyze(path: Path, extra: dict) -> tuple[dict, float, float]:
    code = ("import json, sys\n"
            "from colsim.analysis.analyze import analyze_run\n"
            "s = analyze_run(sys.argv[1], **json.loads(sys.argv[2]))\n"
            "print(json.dumps({k: s.get(k) for k in ('n_evals', 'acc_agg', 'forgetting', 'z_eff_rank',"
            " 'dz_top2_share_rotation', 'radius_cv', 'equivariance_r2_linear', 'equivariance_r2_mlp', 'n_alarms')}))\n")
    t0 = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-c", code, str(path), json.dumps(extra)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t0
    out, err = proc.stdout.read(), proc.stderr.read()
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"analyze_run failed:\n{err[-3000:]}")
    peak_mb = usage.ru_maxrss / 1024  # Linux: KiB
    return json.loads(out.strip().splitlines()[-1]), wall, peak_mb


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size-gb", type=float, default=3.0, help="probe activity to write, GB (default 3)")
    ap.add_argument("--units", type=int, default=256)
    ap.add_argument("--views", type=int, default=4)
    ap.add_argument("--phases", type=int, default=3)
    ap.add_argument("--chunk", type=int, default=2048, help="samples per zarr chunk")
    ap.add_argument("--mlp", default="last", help="analyze_run(mlp=...): last | all | none")
    ap.add_argument("--dir", default=None, help="where to write the store (default: a temporary folder)")
    ap.add_argument("--keep", action="store_true", help="keep the store afterwards")
    ap.add_argument("--reuse", action="store_true", help="with --dir: analyse the store already there")
    args = ap.parse_args(argv)

    base = Path(args.dir) if args.dir else Path(tempfile.mkdtemp(prefix="colsim_bench_analysis_"))
    run = base / "run"
    reuse = args.reuse and (run / "store.zarr").is_dir()
    if run.exists() and not reuse:
        shutil.rmtree(run)
    try:
        if reuse:
            size = _du(run / "store.zarr")
            print(f"store: {run}  {size / 1e9:.2f} GB on disk (reused)")
        else:
            n_samples, t_write = _write(run, args.size_gb, args.units, args.views, args.phases, args.chunk)
            size = _du(run / "store.zarr")
            print(f"store: {run}  {size / 1e9:.2f} GB on disk; {n_samples} samples x {args.views} views x "
                  f"{args.units} units x {args.phases} probe sets x {args.phases + 1} evaluations; "
                  f"written in {t_write:.1f} s ({size / 1e6 / t_write:.0f} MB/s)")
        summary, wall, peak = _analyze(run, {"mlp": args.mlp})
        print(f"analyze_run: {wall:.1f} s wall ({size / 1e6 / wall:.0f} MB/s), peak RSS {peak:.0f} MB")
        print(f"summary: {json.dumps(summary)}")
        ok = peak < TARGET_MB
        print(f"{'PASS' if ok else 'FAIL'}: peak memory {peak:.0f} MB {'<' if ok else '>='} {TARGET_MB} MB "
              f"for a {size / 1e9:.1f} GB store (target: < 2 GB at 10 GB; the peak does not grow with the store)")
        return 0 if ok else 1
    finally:
        if not args.keep:
            shutil.rmtree(run, ignore_errors=True)
            if not args.dir:
                shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
