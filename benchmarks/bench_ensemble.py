"""Seed ensembles on the CPU: S seeds as one vmapped program against S separate runs, in the same process.

Prints, for the default column (seqjepa_cnn on the nonstationary protocol's stream, B = 32) under ``backprop``:

1. the steady-state training throughput (seed-steps per second over the ticks after the first two, evaluations
   and checkpoints excluded: first-call costs are paid once per process by an ensemble, once per run otherwise,
   and would flatter it in short runs) of S sequential runs (``colsim run --seeds``) and of one ensemble of the same S
   seeds (``colsim run --seeds --ensemble``), and their ratio (issue 32's target: >= 1.3x on 2 cores);
   the wall times, evaluations included, and their ratio;
2. where the time goes (``--profile``): torch's profiler over a few ensemble ticks and a few separate ticks,
   the top operators by self CPU time.

Runs are interleaved (sequential, ensemble, sequential, ensemble, ...) and the medians reported, so a drift of
the host's speed falls on both. Each run has one phase of ``--steps`` steps (no evaluation at start).

Measured on the 2-core reference machine, 2026-12-07 (commit of issue 32), UNDER LOAD (a sweep and other jobs
held both cores: load average 4-14), 8 seeds, ``--steps 12`` (steady state, the ticks after the first two):
sequential 0.67, ensemble 0.73 seed-steps/s: 1.09x (wall, evaluations included, 1.16x); a second run, the sweep
still on both cores, 0.53 / 0.63: 1.17x (wall 1.12x); before the per-seed
encoder unbound its parameters once (``colsim.sim.ensemble._per_seed``) 0.79x (wall 0.94x). Short runs flatter the
ensemble, which pays the first ticks' costs once: the same script timing every tick gave 1.45x-1.73x
(``--steps 8``). So the target (>= 1.3x) is not met in steady state on this host, under load. On the idle host (2026-12-08, load average below 1, commit d0dbef9): 2 threads, ``--steps 12``: steady
1.00x (13.2 / 13.2 seed-steps/s), wall 1.43x; ``--steps 30 --reps 2``: steady 1.01x (12.6 / 12.7), wall 1.06x;
1 thread, ``--steps 30``: steady 0.82x (8.4 / 6.9), wall 0.89x. So on this CPU an ensemble shares no measurable
step cost: the target is not met, and the wall-time gain of short runs is the first ticks' costs paid once.
A profile (``--profile``): convolutions forward and backward, max-pooling and ``fill_`` lead in both.

    python benchmarks/bench_ensemble.py [--seeds 8] [--steps 30] [--reps 1] [--threads 2] [--profile]
"""
from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path


def _cfgs(seeds: list[int], steps: int):
    import colsim.models  # noqa: F401
    import colsim.protocols  # noqa: F401
    import colsim.rules  # noqa: F401
    from colsim.config import resolve_run_config

    sets = [f"protocol.phases=[{{name: p, steps: {steps}, classes: [0,1,2,3,4,5,6,7,8,9]}}]",
            "protocol.evaluation.at_start=false", "protocol.evaluation.probe_samples=100",
            "protocol.checkpoint.every_seconds=null"]
    return [resolve_run_config("nonstationary", rule="backprop", overrides=sets, seed=s) for s in seeds]


WARM = 2  # ticks left out of the steady-state time (first-call allocations, kernel selection)


class _Clock:
    """``on_step``: the time at the end of every tick; ``steady()`` the seconds of the ticks after the first WARM."""

    def __init__(self):
        self.t: list[float] = []

    def __call__(self, info: dict) -> None:
        self.t.append(time.perf_counter())

    def steady(self) -> float:
        return self.t[-1] - self.t[WARM - 1]


def sequential(seeds: list[int], steps: int, root: Path) -> tuple[float, float]:
    """(steady-state seconds of the ticks after the first WARM, wall seconds) of the seeds run one after another,
    each as ``colsim run`` runs it."""
    from colsim.rundir import build_for_run, execute, new_run

    tick = wall = 0.0
    for cfg in _cfgs(seeds, steps):
        d = root / f"seq-{cfg.seed}-{time.monotonic_ns()}"
        (d / "checkpoints").mkdir(parents=True)
        t = time.perf_counter()
        built = build_for_run(cfg)
        yaml, rec = new_run(d, cfg)
        clock = _Clock()
        execute(d, cfg, built, rec, yaml, on_step=clock)
        wall += time.perf_counter() - t
        tick += clock.steady()
    return tick, wall


def ensemble(seeds: list[int], steps: int, root: Path) -> tuple[float, float]:
    """(seconds in ticks, wall seconds) of the same seeds as one ensemble, as ``colsim run --ensemble`` runs it."""
    from colsim.checkpoint import rng_states
    from colsim.rundir import build_for_run, execute_ensemble, new_run
    from colsim.simulate_ensemble import SeedRun

    t = time.perf_counter()
    runs = []
    cfgs = _cfgs(seeds, steps)
    for cfg in cfgs:
        d = root / f"ens-{cfg.seed}-{time.monotonic_ns()}"
        (d / "checkpoints").mkdir(parents=True)
        built = build_for_run(cfg)
        rng = rng_states()
        yaml, rec = new_run(d, cfg)
        runs.append(SeedRun(cfg.seed, built, rec, d, yaml, rng))
    clock = _Clock()
    execute_ensemble(runs, cfgs[0], on_step=clock)
    return clock.steady(), time.perf_counter() - t


def profile(seeds: list[int], steps: int, root: Path, rows: int = 12) -> None:
    from torch.profiler import profile as prof

    for name, fn in (("ensemble", ensemble), ("sequential", sequential)):
        with prof() as p:
            fn(seeds, steps, root)
        print(f"\n{name}: top operators by self CPU time ({len(seeds)} seeds x {steps} steps)")
        print(p.key_averages().table(sort_by="self_cpu_time_total", row_limit=rows))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, default=8)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--reps", type=int, default=1)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--profile", action="store_true")
    a = ap.parse_args()
    import torch

    torch.set_num_threads(a.threads)
    seeds = list(range(a.seeds))
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {a.seeds} seeds x {a.steps} steps, "
          f"default column (seqjepa_cnn, B = 32) under backprop")
    with tempfile.TemporaryDirectory() as d:
        root = Path(d)
        seq_t, seq_w, ens_t, ens_w = [], [], [], []
        for _ in range(a.reps):
            t, w = sequential(seeds, a.steps, root)
            seq_t.append(t), seq_w.append(w)
            t, w = ensemble(seeds, a.steps, root)
            ens_t.append(t), ens_w.append(w)
        st, et = statistics.median(seq_t), statistics.median(ens_t)
        sw, ew = statistics.median(seq_w), statistics.median(ens_w)
        n = a.seeds * (a.steps - WARM)
        print(f"sequential: {n / st:.2f} seed-steps/s steady ({st:.1f} s), wall {sw:.1f} s")
        print(f"ensemble:   {n / et:.2f} seed-steps/s steady ({et:.1f} s), wall {ew:.1f} s")
        print(f"ensemble / sequential throughput: steady {st / et:.2f}x, wall {sw / ew:.2f}x (target >= 1.3x)")
        if a.profile:
            profile(seeds, max(3, a.steps // 5), root)


if __name__ == "__main__":
    main()
