"""ms/step and peak step memory of every rule on the default column, as ratios to backprop.

    .venv/bin/python benchmarks/bench_rules.py [--rounds 7] [--steps 4] [--rules backprop,lpl,...]

One training step = what the simulator does per tick with learning on: column forward
(layer-local when the rule asks), rule update, optimizer step, post-step rescaling. Every rule
gets its own column, optimizer and stream (same seed, the default protocol's batch and the
default model seqjepa_cnn) and is warmed up until the context windows are full. Timings
are interleaved (ABAB...: each round times ``--steps`` steps of every rule in turn) and the
medians over rounds are reported, so load from other jobs on a shared machine hits every rule
alike.

Peak memory: the rise of the process's peak resident set during the timed steps over the
resident set just before them (Linux: ``/proc/self/clear_refs`` resets the peak, VmHWM reads
it), measured in a child process run with a fixed glibc mmap threshold so that freed tensors go
back to the OS and the resident set tracks live memory (that setting slows allocation down, so
the timings come from the parent, which runs with the default allocator). It counts activations and autograd graphs,
gradients and temporaries of the step — not parameters, optimizer state or rule state that
persist across steps.

Targets (issue 4): lpl and layerwise <= 0.7x backprop's step time (a layer-local loss needs no
gradient w.r.t. a layer's input, and no graph through the context window); lpl, layerwise and
sparse_coding <= 0.7x backprop's peak memory.
"""
from __future__ import annotations

import argparse
import gc
import json
import os
import statistics
import subprocess
import sys
import time

import torch

import colsim.models  # noqa: F401
import colsim.protocols  # noqa: F401
import colsim.rules  # noqa: F401
from colsim.build import build_run
from colsim.config import resolve_run_config
from colsim.simulate import _seeded, apply_update

# the memory pass runs in a child process with a fixed mmap threshold (see the docstring)
MEM_ENV = {"MALLOC_MMAP_THRESHOLD_": "65536", "MALLOC_TRIM_THRESHOLD_": "0"}

RULES = ["backprop", "lpl", "layerwise", "sparse_coding", "backprop+metaplastic", "backprop+si", "backprop+ewc",
         "backprop+replay", "lpl+replay"]
TIME_TARGET = {"lpl": 0.7, "layerwise": 0.7}
MEM_TARGET = {"lpl": 0.7, "layerwise": 0.7, "sparse_coding": 0.7}


def _status(key: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
    return 0


def _reset_peak() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


class Bench:
    """One rule's column, optimizer, stream and states; ``step()`` = one simulator training step."""

    def __init__(self, spec: str, protocol: str, seed: int, overrides=()):
        cfg = resolve_run_config(protocol, rule=spec, seed=seed, overrides=list(overrides))
        self.world, self.column, self.rule, self.local, self.opt = build_run(cfg)
        self.params = self.column.trainable()
        self.state = self.rule.init(self.params)
        B, L = cfg.protocol.stream.batch, cfg.protocol.stream.episode_length
        ph = cfg.protocol.phases[0]
        self.stream = self.world.stream(B, L, ph.classes, ph.world)
        self.ss = self.stream.init(_seeded(seed, 11, 0))
        self.cs = self.column.init_state(B, "cpu")
        self.first = True
        self.column.train()

    def step(self) -> None:
        self.ss, st = self.stream.step(self.ss)
        start = st.start | self.first
        self.first = False
        self.cs, trace = self.column(self.cs, st.obs, st.action, start, local=self.local)
        trace["labels"] = st.labels
        grads, self.state, _ = self.rule.update(self.params, self.state, trace)
        self.state = apply_update(self.params, grads, self.opt, self.rule, self.state)
        self.column.update_target(0.5)
        del trace, grads


def _measure(specs, args, what: str) -> dict[str, list[float]]:
    """Interleaved rounds over the rules; ``what`` = "time" (ms/step) or "memory" (MB peak rise)."""
    benches = {s: Bench(s, args.protocol, args.seed, args.set) for s in specs}
    for b in benches.values():
        for _ in range(args.warmup):
            b.step()
    out: dict[str, list[float]] = {s: [] for s in specs}
    can_peak = _reset_peak()
    for r in range(args.rounds):
        order = specs if r % 2 == 0 else specs[::-1]  # ABAB... then BA: no rule always runs first
        for s in order:
            gc.collect()
            if what == "memory":
                base = _status("VmRSS")
                _reset_peak()
                for _ in range(args.steps):
                    benches[s].step()
                out[s].append((_status("VmHWM") - base) / 2 ** 20 if can_peak else float("nan"))
            else:
                t0 = time.perf_counter()
                for _ in range(args.steps):
                    benches[s].step()
                out[s].append((time.perf_counter() - t0) / args.steps * 1e3)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rules", default=",".join(RULES))
    ap.add_argument("--protocol", default="nonstationary")
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--steps", type=int, default=4, help="timed steps per rule and round")
    ap.add_argument("--warmup", type=int, default=12)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--set", action="append", default=[], help="override KEY=VALUE for every rule (as colsim run)")
    ap.add_argument("--memory-pass", action="store_true", help=argparse.SUPPRESS)  # child: print JSON peaks
    args = ap.parse_args()
    specs = [s.strip() for s in args.rules.split(",") if s.strip()]
    if "backprop" not in specs:
        specs.insert(0, "backprop")
    if args.memory_pass:
        print(json.dumps(_measure(specs, args, "memory")))
        return
    times = _measure(specs, args, "time")
    child = subprocess.run([sys.executable, __file__, "--memory-pass", "--rules", ",".join(specs), "--protocol",
                            args.protocol, "--rounds", str(max(3, args.rounds // 2)), "--steps", "2",
                            "--warmup", str(args.warmup), "--seed", str(args.seed),
                            *[a for o in args.set for a in ("--set", o)]],
                           env={**os.environ, **MEM_ENV}, capture_output=True, text=True, check=True)
    peaks = json.loads(child.stdout.strip().splitlines()[-1])
    t_ref = statistics.median(times["backprop"])
    m_ref = statistics.median(peaks["backprop"])
    cfg = resolve_run_config(args.protocol, rule="backprop")
    print(f"bench_rules · protocol {args.protocol} (model {cfg.protocol.model}, batch {cfg.protocol.stream.batch}) · "
          f"torch {torch.__version__} · {torch.get_num_threads()} threads · {args.rounds} rounds x {args.steps} steps, "
          f"medians (memory: peak rise during a step)")
    print(f"{'rule':<24}{'ms/step':>9}{'x bp':>7}{'peak MB':>9}{'x bp':>7}  targets")
    ok = True
    for s in specs:
        t, m = statistics.median(times[s]), statistics.median(peaks[s])
        notes = []
        if s in TIME_TARGET:
            good = t / t_ref <= TIME_TARGET[s]
            ok &= good
            notes.append(f"time<={TIME_TARGET[s]} {'ok' if good else 'MISSED'}")
        if s in MEM_TARGET:
            good = m / m_ref <= MEM_TARGET[s]
            ok &= good
            notes.append(f"mem<={MEM_TARGET[s]} {'ok' if good else 'MISSED'}")
        print(f"{s:<24}{t:9.1f}{t / t_ref:7.2f}{m:9.1f}{m / m_ref:7.2f}  {', '.join(notes)}")
    print("all targets met" if ok else "some targets missed")


if __name__ == "__main__":
    main()
