"""Scaling of TSSA vs MSSA vs softmax attention: forward+backward time and peak memory.

What is measured. Width 384, 6 heads, batch 1, n = 64, 128, ..., 4096 tokens; one
"step" = forward of the attention operator on already-normalised tokens x (1, n, 384)
plus backward of a fixed cotangent into x and all parameters. The three operators share
the same projections, so only the token mixing differs:
  * tssa — colsim.models.tost.TSSA (ToST; qkv d x d, statistics, output Linear), O(n d);
  * mssa — colsim.models.crate.MSSA (CRATE; q = k = v = x U, explicit softmax(W Wᵀ/√p) W,
    materialising the (6, n, n) attention matrix, as the CRATE reference code does);
  * sdpa — the same single projection used as q = k = v, mixed by
    ``torch.nn.functional.scaled_dot_product_attention`` (PyTorch's fused CPU kernel).

Time: best wall time of repeated steps after a warm-up (the median is kept too). The
three operators are interleaved size by size, and so are the THP settings (one live
worker process each, taking turns per size), so load from other processes on a shared
machine hits all of them alike; the load average is printed at start and end.

Memory: peak bytes of tensors *allocated during the step* (activations saved for backward,
temporaries inside ops, gradients), from PyTorch's own allocator events:
``torch.profiler.profile(profile_memory=True, record_shapes=True, with_stack=True)`` and
its memory timeline (``prof._memory_profile().timeline``: CREATE / DESTROY events per
tensor); we replay the events in order and take the maximum of live bytes, ignoring the
tensors that existed before the step (parameters, x, cotangent). ``tracemalloc`` cannot
see torch's C++ allocations, and resident-set size mixes in the allocator's and the
kernel's page policies (and needs a fresh process per point, since ru_maxrss never goes
down); the allocator timeline measures exactly the activation memory, deterministically.

Transparent huge pages. The system knob /sys/kernel/mm/transparent_hugepage/enabled is
global (shared with every other process) so this script never writes it; it reports its
mode. Instead each setting runs in its own worker process: "on" sets PyTorch's
``THP_MEM_ALLOC_ENABLE=1`` (c10's CPU allocator then 2 MiB-aligns allocations >= 2 MiB and
``madvise(MADV_HUGEPAGE)``s them; effective when the system mode is "madvise" or
"always"); "off" calls ``prctl(PR_SET_THP_DISABLE)`` so even "always" cannot give the
process huge pages. The AnonHugePages line (from /proc/self/smaps_rollup, sampled after
the forward at the largest n) shows whether huge pages were really used; the comparison
also counts minor page faults per step and CPU time. There is no ``torch.backends``
switch for THP; the environment variable is the knob. Found on the reference machine
(shared 2-core VM, system mode "madvise", torch 2.13): THP matters only where big buffers
are mapped and unmapped every step — MSSA at n = 4096 went from ~590k to ~4k page faults
per step and ~1.35x less CPU time; TSSA and SDPA were unchanged within noise (glibc reuses
their buffers). Hence "on" is the default of --quick.

OpenMP. Workers run with ``OMP_WAIT_POLICY=PASSIVE`` unless the caller set it. With the
default (active spin-waiting) and another busy process on the same 2 cores, every
parallel op waits for a descheduled thread at its barrier: a TSSA step at n = 256 took
~380 ms instead of ~8 ms on the reference machine. Passive waiting costs a little on an
idle machine and removes that cliff on a shared one.

Targets (PASS/FAIL): TSSA time slope <= 1.1 and memory slope <= 1.1 (log-log fit over
n >= 256, where fixed costs no longer dominate; the full-range fit is printed too), and at
n = 4096 TSSA at least 8x faster than SDPA measured in the same run.

Presets (benchmarks/_bench_presets.py): each seq-JEPA preset's parameter count and training
steps/s (backprop, stationary stream) relative to seqjepa_cnn measured in the same run, and
the check that the CRATE aggregator is not slower than the transformer aggregator of the same
width (forward+backward, interleaved, medians; ratio <= 1.1).

    python benchmarks/bench_attention.py            # full sweep, THP off and on, then presets (~4 min)
    python benchmarks/bench_attention.py --quick    # n = 256, 1024, 4096, one THP setting; presets
    python benchmarks/bench_attention.py --part presets [--skip-resnet]
"""
from __future__ import annotations

import argparse
import ctypes
import json
import math
import os
import resource
import subprocess
import sys
import tempfile
import time

WIDTH, HEADS = 384, 6
SIZES = [64, 128, 256, 512, 1024, 2048, 4096]
QUICK_SIZES = [256, 1024, 4096]
OPS = ["tssa", "mssa", "sdpa"]
THP_SYSFS = "/sys/kernel/mm/transparent_hugepage/enabled"
DEFAULT_THP = "on"  # the better setting on the reference machine (see the report this prints)


# --------------------------------------------------------------------------- worker side


def _make_ops():
    import torch
    import torch.nn.functional as F
    from torch import nn

    from colsim.models.crate import MSSA
    from colsim.models.tost import TSSA

    class SoftmaxAttention(nn.Module):
        """q = k = v = x U (same single projection as MSSA/TSSA), fused SDPA, output Linear."""

        def __init__(self, dim: int, heads: int):
            super().__init__()
            self.heads = heads
            self.u = nn.Linear(dim, dim, bias=False)
            self.out = nn.Linear(dim, dim)

        def forward(self, x):
            B, N, d = x.shape
            w = self.u(x).view(B, N, self.heads, d // self.heads).transpose(1, 2)  # (B, K, N, p)
            o = F.scaled_dot_product_attention(w, w, w)  # (B, K, N, p)
            return self.out(o.transpose(1, 2).reshape(B, N, d)), None

    torch.manual_seed(0)
    return {"tssa": TSSA(WIDTH, HEADS), "mssa": MSSA(WIDTH, HEADS), "sdpa": SoftmaxAttention(WIDTH, HEADS)}


def _peak_step_bytes(step) -> float:
    """Peak live bytes of tensors created during ``step()`` (allocator timeline replay)."""
    from torch.profiler import ProfilerActivity, profile
    from torch.profiler._memory_profiler import Action

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True, record_shapes=True, with_stack=True) as prof:
        step()
    live, created, cur, peak = {}, set(), 0, 0
    for _, action, (key, _version), size in prof._memory_profile().timeline:
        if action == Action.CREATE:
            created.add(key)
            live[key] = size
            cur += size
        elif action == Action.DESTROY and key in created:
            cur -= live.pop(key, 0)
        peak = max(peak, cur)
    return float(peak)


def _anon_huge_kb() -> float:
    try:
        with open("/proc/self/smaps_rollup") as f:
            for line in f:
                if line.startswith("AnonHugePages:"):
                    return float(line.split()[1])
    except OSError:
        pass
    return float("nan")


def _worker(min_time: float, max_reps: int, largest: int) -> None:
    """Serve requests from stdin: a line "n" -> one JSON line per operator, then "END"."""
    import torch

    ops = _make_ops()
    for line in sys.stdin:
        n = int(line)
        x = torch.randn(1, n, WIDTH, requires_grad=True)
        cot = torch.randn(1, n, WIDTH)
        for name in OPS:
            mod = ops[name]

            def step():
                x.grad = None
                mod.zero_grad(set_to_none=True)
                mod(x)[0].backward(cot)

            step()  # warm-up
            if n <= 512:
                step()
            times: list[float] = []
            cpu: list[float] = []
            flt0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
            t_start = time.perf_counter()
            while len(times) < max_reps and (len(times) < 2 or time.perf_counter() - t_start < min_time):
                t0, c0 = time.perf_counter(), time.process_time()
                step()
                times.append(time.perf_counter() - t0)
                cpu.append(time.process_time() - c0)
            faults = (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - flt0) / len(times)
            peak = _peak_step_bytes(step)
            huge = float("nan")
            if n == largest:
                with torch.no_grad():
                    out = mod(x)[0]
                    huge = _anon_huge_kb()
                    del out
            times.sort()
            rec = {"op": name, "n": n, "t_min": times[0], "t_med": times[len(times) // 2], "cpu_min": min(cpu),
                   "faults": faults, "reps": len(times), "peak_bytes": peak, "anon_huge_kb": huge}
            print(json.dumps(rec), flush=True)
        print("END", flush=True)


# --------------------------------------------------------------------------- driver side


def _thp_mode() -> tuple[str, bool]:
    try:
        with open(THP_SYSFS) as f:
            mode = f.read().strip()
    except OSError:
        return "unavailable", False
    return mode, os.access(THP_SYSFS, os.W_OK)


def _start_worker(thp: str, min_time: float, max_reps: int, threads: int, largest: int) -> subprocess.Popen:
    env = dict(os.environ)
    env["THP_MEM_ALLOC_ENABLE"] = "1" if thp == "on" else "0"
    env.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # see "OpenMP" in the module docstring
    cmd = [sys.executable, os.path.abspath(__file__), "--worker", "--thp", thp, "--threads", str(threads),
           "--min-time", str(min_time), "--max-reps", str(max_reps), "--sizes", str(largest)]
    log = tempfile.TemporaryFile(mode="w+")  # profiler chatter; shown if the worker dies
    proc = subprocess.Popen(cmd, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log, text=True)
    proc.log = log
    return proc


def _run_interleaved(settings: list[str], sizes: list[int], min_time: float, max_reps: int,
                     threads: int) -> dict[str, list[dict]]:
    """One live worker per THP setting; sizes are measured setting after setting (order
    alternating per size), so both settings see the same load from other processes."""
    workers = {thp: _start_worker(thp, min_time, max_reps, threads, max(sizes)) for thp in settings}
    recs: dict[str, list[dict]] = {thp: [] for thp in settings}
    try:
        for i, n in enumerate(sizes):
            for thp in (settings if i % 2 == 0 else settings[::-1]):
                w = workers[thp]
                w.stdin.write(f"{n}\n")
                w.stdin.flush()
                for line in w.stdout:
                    if line.startswith("END"):
                        break
                    recs[thp].append(json.loads(line))
                else:
                    w.log.seek(0)
                    raise RuntimeError(f"worker (THP {thp}) died at n={n}:\n{w.log.read()[-3000:]}")
    finally:
        for w in workers.values():
            w.stdin.close()
            w.wait()
    return recs


def _slope(ns: list[int], ys: list[float]) -> float:
    import numpy as np

    if len(ns) < 2:
        return float("nan")
    return float(np.polyfit(np.log(ns), np.log(ys), 1)[0])


def _report(thp: str, recs: list[dict], sizes: list[int]) -> dict:
    by = {(r["op"], r["n"]): r for r in recs}
    print(f"\n== THP {thp} ==")
    print(f"{'n':>6} " + " ".join(f"{op + ' ms':>11} {op + ' MiB':>10}" for op in OPS) + f" {'sdpa/tssa':>9}")
    for n in sizes:
        row = " ".join(f"{by[op, n]['t_min'] * 1e3:11.2f} {by[op, n]['peak_bytes'] / 2**20:10.2f}" for op in OPS)
        print(f"{n:>6} {row} {by['sdpa', n]['t_min'] / by['tssa', n]['t_min']:9.1f}")
    big = max(sizes)
    print("AnonHugePages after forward at n=%d: %s" % (
        big, ", ".join(f"{op} {by[op, big]['anon_huge_kb'] / 1024:.0f} MiB" for op in OPS)))
    out: dict = {"thp": thp}
    print(f"{'slopes':>6} {'time all':>9} {'time>=256':>10} {'mem all':>8} {'mem>=256':>9}")
    for op in OPS:
        ns_all = sizes
        ns_256 = [n for n in sizes if n >= 256]
        ns_256 = ns_256 if len(ns_256) >= 2 else sorted(sizes)[-2:]  # tiny sweeps: fit the top two
        s = {
            "time_all": _slope(ns_all, [by[op, n]["t_min"] for n in ns_all]),
            "time_256": _slope(ns_256, [by[op, n]["t_min"] for n in ns_256]),
            "mem_all": _slope(ns_all, [by[op, n]["peak_bytes"] for n in ns_all]),
            "mem_256": _slope(ns_256, [by[op, n]["peak_bytes"] for n in ns_256]),
        }
        out[op] = s
        print(f"{op:>6} {s['time_all']:9.2f} {s['time_256']:10.2f} {s['mem_all']:8.2f} {s['mem_256']:9.2f}")
    checks = [("TSSA time slope (n>=256) <= 1.1", out["tssa"]["time_256"] <= 1.1, f"{out['tssa']['time_256']:.2f}"),
              ("TSSA memory slope (n>=256) <= 1.1", out["tssa"]["mem_256"] <= 1.1, f"{out['tssa']['mem_256']:.2f}")]
    if 4096 in sizes:
        ratio = by["sdpa", 4096]["t_min"] / by["tssa", 4096]["t_min"]
        checks.append(("TSSA >= 8x faster than SDPA at n=4096", ratio >= 8, f"{ratio:.1f}x"))
    for label, ok, val in checks:
        print(f"  [{'PASS' if ok else 'FAIL'}] {label}: {val}")
    out["all_pass"] = all(ok for _, ok, _ in checks)
    return out


def _compare_thp(off: list[dict], on: list[dict], sizes: list[int]) -> None:
    """THP on vs off where it can act at all (the allocator hints huge pages only for
    allocations >= 2 MiB: n >= ~1024 at width 384). Speed-ups are time(off) / time(on),
    geometric means over those n, for wall time, CPU time (user + sys of the process: less
    sensitive to other processes' load) and minor page faults per step."""
    by_off = {(r["op"], r["n"]): r for r in off}
    by_on = {(r["op"], r["n"]): r for r in on}
    ns = [n for n in sizes if n >= 1024] or [max(sizes)]

    def gm(op: str, key: str) -> float:
        eps = 1.0 if key == "faults" else 0.0  # a step may fault no page at all
        return math.exp(sum(math.log((by_off[op, n][key] + eps) / (by_on[op, n][key] + eps)) for n in ns) / len(ns))

    print(f"\nTHP on vs off (ratio off/on, geometric mean over n in {ns}):")
    print(f"{'':>6} {'wall':>7} {'cpu':>7} {'faults':>8}   faults/step off -> on at n={max(sizes)}")
    cpus = []
    for op in OPS:
        cpus.append(gm(op, "cpu_min"))
        big_off, big_on = by_off[op, max(sizes)]["faults"], by_on[op, max(sizes)]["faults"]
        print(f"{op:>6} {gm(op, 't_min'):7.2f} {cpus[-1]:7.2f} {gm(op, 'faults'):8.1f}   {big_off:.0f} -> {big_on:.0f}")
    overall = math.exp(sum(map(math.log, cpus)) / len(cpus))
    print(f"  CPU-time speed-up overall {overall:.2f}x -> better: {'on' if overall > 1 else 'off'} "
          f"(default for --quick: {DEFAULT_THP})")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="n = 256, 1024, 4096 and one THP setting")
    ap.add_argument("--thp", choices=["off", "on", "both"], default=None,
                    help=f"transparent huge pages for torch's allocator (default: both; --quick: {DEFAULT_THP})")
    ap.add_argument("--sizes", default=None, help="comma-separated token counts")
    ap.add_argument("--min-time", type=float, default=None, help="seconds of repeats per point")
    ap.add_argument("--max-reps", type=int, default=None)
    ap.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    ap.add_argument("--part", choices=["all", "attention", "presets"], default="all",
                    help="the attention scaling sweep, the preset table + aggregator check, or both")
    ap.add_argument("--skip-resnet", action="store_true", help="presets: leave out seqjepa_resnet18 (slow on CPU)")
    ap.add_argument("--preset-rounds", type=int, default=None, help="presets: interleaved training steps each")
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    sizes = [int(s) for s in args.sizes.split(",")] if args.sizes else (QUICK_SIZES if args.quick else SIZES)
    min_time = args.min_time if args.min_time is not None else (0.2 if args.quick else 0.4)
    max_reps = args.max_reps if args.max_reps is not None else (5 if args.quick else 10)

    if args.worker:
        import torch

        torch.set_num_threads(args.threads)
        if args.thp == "off" and sys.platform.startswith("linux"):
            ctypes.CDLL(None, use_errno=True).prctl(41, 1, 0, 0, 0)  # PR_SET_THP_DISABLE
        _worker(min_time, max_reps, largest=max(sizes))
        return 0

    import torch

    if args.part == "presets":
        return _presets(args)
    mode, writable = _thp_mode()
    print(f"load average at the start: {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")
    threads = args.threads or torch.get_num_threads()
    print(f"torch {torch.__version__}, {threads} threads, width {WIDTH}, {HEADS} heads, batch 1")
    print(f"OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY', 'PASSIVE')} in the workers")
    print(f"system THP mode: {mode} ({THP_SYSFS} {'writable' if writable else 'not writable'}; "
          "left unchanged: it is global; per-process THP via THP_MEM_ALLOC_ENABLE / PR_SET_THP_DISABLE)")
    settings = {"both": ["off", "on"], None: [DEFAULT_THP] if args.quick else ["off", "on"]}.get(args.thp, [args.thp])
    t0 = time.time()
    runs = _run_interleaved(settings, sizes, min_time, max_reps, threads)
    results = [_report(thp, runs[thp], sizes) for thp in settings]
    if len(results) == 2:
        _compare_thp(runs["off"], runs["on"], sizes)
    ok = all(r["all_pass"] for r in results)
    if args.part == "all":
        ok = _presets(args) == 0 and ok
    print(f"load average at the end: {os.getloadavg()[0]:.1f} (timings are noisy when it exceeds the core count)")
    print(f"wall time {time.time() - t0:.0f}s")
    return 0 if ok else 1


def _presets(args) -> int:
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # only effective if set before torch starts its pool
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from _bench_presets import run_presets

    rounds = args.preset_rounds or (4 if args.quick else 8)
    if args.part == "presets":
        print(f"load average at the start: {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")
    ok = run_presets(rounds=rounds, skip_resnet=args.skip_resnet)
    if args.part == "presets":
        print(f"load average at the end: {os.getloadavg()[0]:.1f}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
