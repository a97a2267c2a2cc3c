"""Simulator overhead per tick at batch 1 (protocols/online.yaml): time per tick minus the column's
forward and backward, measured in the same run, for AdamW foreach (the default) and fused.

Runs ``colsim.simulate.run`` on the online protocol (B = 1, one stream, rule backprop, the store
written by a ZarrRecorder as ``colsim run`` does) ``--reps`` times per AdamW implementation
(``--optimizers``), alternated with a hand-written loop doing the same work (the baseline, below), and
times, tick by tick:

* the tick: between successive ``on_step`` calls (everything the step schedule does in one tick);
* the column forward (``column.forward``) and the backward (``rule.update``: backprop's
  ``torch.autograd.grad`` on the loss) — the column's own work;
* overhead = tick - forward - backward, split three ways:
  - learning: ``optimizer.step`` (AdamW) and the teacher's EMA (``column.update_target``) — parameter
    updates the rule and the column ask for, whatever simulator runs them;
  - the world: the wait for ``stream.step`` (the affine view of the next image) — all of it when the
    Step is computed in place, the wait for the other thread when the simulator computes it ahead
    (``--step-ahead``, :class:`colsim.stream.StepAhead`; both are measured by default);
  - the simulator's own: the divergence check (``simulate.grad_norm``: one fused norm over the
    gradients, also the recorded ``grad_norm``), the per-tick diagnostics, ``recorder.record`` and the
    rest (bookkeeping, freeing the last tick's graph). The <= 1 ms target (issue 13 item 4) is read on
    this part: the optimizer's and the world's costs scale with the model and the world, not with the
    simulator. The baseline's own tick - forward - backward (its floor, printed with its parts) shows
    that the literal reading cannot be met by any loop doing this work on this column and host.

Medians over the ticks after ``--warmup``; the first tick of a phase and the final evaluation are
outside the measured ticks.

Reference (2 shared cores, 1 thread, 2026-12-03, seqjepa_cnn 0.79 M parameters in 39 tensors,
``--steps 200 --warmup 30``; load ~0.4 then ~4 on the host; ms per tick, medians):

==================================  =================  ===============
                                    AdamW foreach      AdamW fused
==================================  =================  ===============
tick                                20.6 / 48.7        18.7 / 21.9
forward / backward                  8.1, 5.4 / 19, 14  8.5, 5.7 / 9.3, 6.6
overhead                            6.9 / 15.6         4.2 / 4.3
  optimizer.step                    4.05 / 8.7         1.37 / 1.38
  teacher EMA                       0.35 / 0.41        0.35 / 0.37
  world (stream.step)               1.00 / 1.23        1.02 / 1.06
  simulator's own                   1.36 / 1.39        1.32 / 1.20
    divergence check + grad norm    0.46 / 0.51        0.47 / 0.46
    diagnostics                     0.19 / 0.06        0.16 / 0.05
    recorder                        0.01 / 0.01        0.01 / 0.01
    rest                            0.67 / 0.75        0.67 / 0.65
==================================  =================  ===============

(The first figure of a cell was measured before ``collapse_diagnostics`` returned early at B = 1 —
no tensor work for a batch with fewer than 2 rows: diagnostics 0.16-0.19 -> 0.05-0.06 ms.)
The fused AdamW step is 0.16-0.34x the foreach one in the same run; it is not bit-identical to
foreach (max |diff| of the tiny column's parameters 3.6e-4 after 10 steps: Adam's early steps amplify
last-bit differences), so it stays an option (``--set rule.optimizer.fused=true``), not the default.
The simulator's own part is 1.2-1.4 ms, not yet <= 1 ms: 0.35-0.5 ms of it is the one pass over the
0.79 M gradient values that the divergence check needs every tick, ~0.2 ms freeing the last tick's
autograd graph.

Python's cyclic garbage collector: a full collection scans every tracked object (~435,000 once the
column, the world and the libraries are loaded) and took ~300-425 ms here, one such pause every few
hundred ticks in a 300-tick window; ``simulate.run`` now freezes the heap alive at its start
(``gc.freeze``, given back at its end), after which a full collection takes < 0.1 ms. Medians do not
see these pauses; the means printed last do (the simulator's own 1.73 -> 1.27 ms mean per tick in one
pair of 600-tick runs that had such a pause, equal within noise, 1.11-1.14 ms, in a pair that had
none). Latest medians (load ~3, fused, 600 ticks): overhead 3.3-3.6 ms, simulator's own 0.96-1.02 ms.
Idle host (load 0.1-0.6, 2026-12-03, two runs of --steps 600): simulator's own 0.56-0.57 ms (foreach)
and 0.44-0.63 ms (fused), means 0.59-0.78 ms; overhead 3.5 ms (foreach) and 1.7-2.3 ms (fused:
optimizer.step 0.65-0.83, world 0.45-0.60, teacher 0.15-0.21 ms).

Step-ahead (2026-12-04, 1 thread, 549 ticks after 50, load ~0.7; ms, on / off): foreach tick 14.12 / 14.17,
overhead 3.80 / 4.29; fused tick 12.60 / 12.63, overhead 2.12 / 2.65 (world wait 0.02 / 0.69). The overhead
falls by 0.5 ms but the tick does not (ratio 0.996-0.998): the column's forward is 0.44-0.46 ms slower and the
simulator's own part 0.16 ms slower while the world's Python, holding the GIL, runs beside them (the step
itself takes 1.4 ms on the other thread against 0.7 in place). At B = 1 the world's view is mostly Python
dispatch, so a second thread cannot hide it; the look-ahead stays off by default (``COLSIM_STEP_AHEAD=1``).

The baseline (2026-12-04): a hand-written loop doing the same work — the world's step, the forward, ``rule.update``,
AdamW and the EMA, nothing else — alternated with the simulator run (ABBA, ``--reps 3``, 1 thread, 549 ticks after
50, ms, foreach / fused): baseline 13.49 / 12.15, simulator 14.37 / 13.09, so the simulator adds **0.88 / 0.95 ms
per tick (1.065x / 1.078x)**; the timed parts put its own share at 0.75 / 0.76 ms. Single runs drift by ~1 ms on
this shared host (one pair of unalternated runs put the baseline 1.5 ms *above* the simulator), hence the
alternation. tick - forward - backward was 4.46 / 2.72 ms: AdamW 2.68 / 1.01, EMA 0.26 / 0.26, world 0.76 /
0.71 — work that the hand-written loop does too.

The floor (2026-12-04, evening; the EMA now one fused ``_foreach_lerp_``, 0.24 -> 0.13 ms): the baseline is
timed in parts too, and frees its tick's graph inside the tick, as the simulator does (``--reps 3
--step-ahead off``, 1 thread, 549 ticks after 50, load 0.7-1.0, ms, foreach / fused):

==========================================  =================  ===============
                                            AdamW foreach      AdamW fused
==========================================  =================  ===============
simulator: tick                             12.74              11.91
simulator: tick - fwd - bwd                 3.80               2.33
  simulator's own (median; mean)            0.63; 0.80         0.65; 0.82
baseline: tick                              12.26              12.09
baseline: tick - fwd - bwd (the floor)      3.31               2.07
  AdamW + EMA                               2.52               1.17
  world (stream.step)                       0.67               0.68
  freeing the tick's graph                  0.13               0.20
simulator tick - baseline tick              +0.48              -0.18
overhead - baseline overhead                +0.49              +0.27
==========================================  =================  ===============

A loop with no simulator at all spends 2.1-3.3 ms per tick outside the column's forward and backward: AdamW's
step on 0.79 M parameters alone is 0.9-2.4 ms here. So tick - fwd - bwd <= 1 ms, read literally, is out of reach
of any implementation of this work on this host; what the simulator adds is 0.3-0.5 ms per tick (overhead against
the baseline's overhead), and its timed part 0.63-0.65 ms (medians).

On a GPU (``--device cuda``: one NVIDIA H200, torch 2.11.0+cu130, bf16 autocast, 1 CPU thread, 2026-12-04,
``--steps 400 --warmup 50``; each timed part synchronizes, so it holds its GPU time; ms, foreach / fused): tick
25.8 / 24.7, forward 12.6 / 12.8, backward 8.9 / 7.8, overhead 4.8 / 3.9 (optimizer.step 1.58 / 0.58, EMA 0.41 /
0.40, world 1.10 / 1.17, simulator's own 1.73 / 1.76). At B = 1 the GPU's tick is slower than this machine's CPU
tick (launch-bound small kernels, and a host slower per thread: the world's step 1.16 ms against 0.73 here).

    python benchmarks/bench_online.py [--steps 400] [--warmup 50] [--threads 1] [--model seqjepa_cnn]
                                      [--record on|off] [--optimizers foreach,fused] [--step-ahead on,off]
                                      [--device cpu|cuda]
                                      [--set KEY=VALUE]
"""
from __future__ import annotations

import argparse
import statistics
import tempfile
import time
import warnings
from pathlib import Path

import torch

import colsim.models  # noqa: F401  (registers)
import colsim.protocols  # noqa: F401
import colsim.rules  # noqa: F401
from colsim.rundir import build_for_run
from colsim.config import resolve_run_config
from colsim.device import autocast_context
from colsim.record import ZarrRecorder
from colsim.stream import StepAhead
from colsim.simulate import run as simulate


def _timed(fn, into: list, sync=None):
    """``fn`` timed into ``into``; with ``sync`` (torch.cuda.synchronize on a CUDA run) the GPU work queued
    before is waited for outside the timed span, and ``fn``'s own GPU work inside it."""
    def wrapper(*a, **kw):
        if sync:
            sync()
        t = time.perf_counter()
        out = fn(*a, **kw)
        if sync:
            sync()
        into.append(time.perf_counter() - t)
        return out
    return wrapper


def _measure(args, sets: list[str], ahead: bool) -> dict:
    """One run of the online protocol with ``sets``; per-tick medians (seconds) of every part."""
    cfg = resolve_run_config("online", model=args.model, overrides=sets, steps=args.steps, device=args.device)
    assert cfg.protocol.stream.batch == 1
    world, column, rule, local, optimizer = build_for_run(cfg)  # as `colsim run` builds a run
    sync = torch.cuda.synchronize if args.device != "cpu" else None
    # the column's own work and the learning are timed by wrapping the objects the loop is given; the loop's own
    # parts (the wait for the Step, the finite check, the diagnostics and the recorder) come from its profile
    t = {k: [] for k in ("fwd", "bwd", "world", "opt", "teacher")}
    ticks: list[float] = []
    column.forward = _timed(column.forward, t["fwd"], sync)
    column.update_target = _timed(column.update_target, t["teacher"], sync)
    last: dict = {}
    update = _timed(rule.update, t["bwd"], sync)

    def keep(params, rstate, trace):
        out = update(params, rstate, trace)
        last["grads"] = out[0]
        return out

    rule = rule._replace(update=keep)
    optimizer.step = _timed(optimizer.step, t["opt"], sync)
    make_stream = world.stream

    def stream(*a, **kw):
        s = make_stream(*a, **kw)
        return s._replace(step=_timed(s.step, t["world"]))

    world.stream = stream
    with tempfile.TemporaryDirectory() as tmp:
        rec = ZarrRecorder(Path(tmp) / "store.zarr", {"bench": "online"},
                           flush_every=cfg.protocol.record.flush_every)
        with warnings.catch_warnings():  # the 10-sample probe's R^2 warnings
            warnings.simplefilter("ignore")
            res = simulate(column, rule, cfg.protocol, rec, world=world, optimizer=optimizer, seed=0,
                           device=cfg.device, local=local, step_ahead=ahead, profile=True,
                           autocast=getattr(cfg.model, "autocast", None),
                           on_step=lambda info: ticks.append(time.perf_counter()))
    assert res.status == "completed", res.status
    prof = res.timings["per_tick"]
    t["wait"], t["check"], t["rec"] = prof["stream"], prof["check"], prof["record"]
    w = args.warmup
    tick = [b - a for a, b in zip(ticks[w:-1], ticks[w + 1:])]  # tick t+1 = on_step(t+1) - on_step(t)
    k = slice(w + 1, w + 1 + len(tick))
    per = {n: v[k] for n, v in t.items()}
    per["tick"] = tick
    per["over"] = [a - f - b for a, f, b in zip(tick, per["fwd"], per["bwd"])]
    per["learn"] = [o + e for o, e in zip(per["opt"], per["teacher"])]
    per["own"] = [o - ln - wd for o, ln, wd in zip(per["over"], per["learn"], per["wait"])]
    per["rest"] = [o - c - r for o, c, r in zip(per["own"], per["check"], per["rec"])]
    out = {n: statistics.median(v) for n, v in per.items()}
    out["over_mean"], out["own_mean"] = statistics.fmean(per["over"]), statistics.fmean(per["own"])
    out["n"] = len(tick)
    g = list(last["grads"].values())
    out["grads"] = (len(g), sum(x.numel() for x in g))
    return out


def _bare_loop(args, sets: list[str]) -> dict:
    """The baseline: the loop a researcher would write by hand for the same work, in this process: the
    world's next view, the column's forward, the rule's gradients (``rule.update``), AdamW's step and the
    teacher's EMA, nothing else (no divergence check, no metrics, no recorder). Per-tick medians (seconds):
    the tick, and its tick - forward - backward (``over``) with the world's, the learning's (optimizer +
    EMA) and the freeing of the tick's graph: the overhead that the same work costs without any simulator."""
    cfg = resolve_run_config("online", model=args.model, overrides=sets, steps=args.steps, device=args.device)
    world, column, rule, local, optimizer = build_for_run(cfg)
    dev = cfg.device
    sync = torch.cuda.synchronize if dev != "cpu" else (lambda: None)
    amp = autocast_context(dev, getattr(cfg.model, "autocast", None))
    params = column.trainable()
    rstate = rule.init(params)
    ph = cfg.protocol.phases[0]
    stream = world.stream(1, cfg.protocol.stream.episode_length, ph.classes, ph.world)
    ss = stream.init(torch.Generator().manual_seed(0))
    cs = column.init_state(1, dev)
    column.train(True)
    clock = time.perf_counter
    parts = {k: [] for k in ("tick", "fwd", "bwd", "world", "learn", "free")}
    last = clock()
    for t in range(args.steps):
        ss, st = stream.step(ss)
        t1 = clock()
        with amp():
            cs, trace = column(cs, st.obs.to(dev), st.action.to(dev), st.start.to(dev) | (t == 0), local=local)
            sync()
            t2 = clock()
            grads, rstate, _ = rule.update(params, rstate, trace)
            sync()
            t3 = clock()
        rstate = sim.apply_update(params, grads, optimizer, rule, rstate)  # AdamW's step, as the simulator's
        column.update_target(t + 1)
        sync()
        t4 = clock()
        del trace, grads  # the tick's graph and gradients freed inside the tick, outside the forward and backward
        now = clock()  # (the simulator frees them when the next tick rebinds them, outside its timed forward too)
        for k, v in zip(parts, (now - last, t2 - t1, t3 - t2, t1 - last, t4 - t3, now - t4)):
            parts[k].append(v)
        last = now
    w = slice(args.warmup + 1, None)
    parts["over"] = [a - f - b for a, f, b in zip(parts["tick"], parts["fwd"], parts["bwd"])]
    return {k: statistics.median(v[w]) for k, v in parts.items()}


ROWS = [("tick", "tick"), ("fwd", "column forward"), ("bwd", "column backward (rule.update)"),
        ("over", "overhead = tick - fwd - bwd"), ("learn", "  learning: optimizer + teacher"),
        ("opt", "    optimizer.step"), ("teacher", "    teacher EMA"),
        ("wait", "  world: waiting for the Step"), ("own", "  simulator's own"),
        ("check", "    divergence check + grad norm"), ("rec", "    diagnostics + recorder.record"),
        ("rest", "    rest (bookkeeping, freeing the graph)"),
        ("world", "(stream.step itself, either thread)")]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=400)
    ap.add_argument("--reps", type=int, default=3,
                    help="simulator runs and hand-written-loop runs per column, alternated; medians over them")
    ap.add_argument("--warmup", type=int, default=50, help="ticks left out of the medians")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--model", default="seqjepa_cnn")
    ap.add_argument("--record", choices=["on", "off"], default="on", help="off: record.enabled=false")
    ap.add_argument("--optimizers", default="foreach,fused",
                    help="AdamW implementations measured one after the other in this process")
    ap.add_argument("--step-ahead", default="on,off",
                    help="the stream's next Step computed on a second thread (on) or in place (off), each measured")
    ap.add_argument("--set", action="append", default=[], help="config override for every run")
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"],
                    help="cuda: the column on the GPU with the device defaults (bf16 autocast, channels-last); the "
                         "timed parts synchronize, so the forward, backward, optimizer and EMA include their GPU time")
    args = ap.parse_args()
    if args.device == "cuda" and not torch.cuda.is_available():
        ap.exit(2, "error: --device cuda: CUDA is not available on this machine; use --device cpu\n")
    torch.set_num_threads(args.threads)
    sets = ["protocol.evaluation.at_start=false", "protocol.evaluation.probe_samples=10",
            "protocol.evaluation.views=2", "protocol.record.probe=false"]
    if args.record == "off":
        sets.append("protocol.record.enabled=false")
    kinds = [k.strip() for k in args.optimizers.split(",") if k.strip()]
    aheads = [a.strip() == "on" for a in args.step_ahead.split(",") if a.strip()]
    cols = [(k, a) for k in kinds for a in aheads]
    res, bare, spread = {}, {}, {}
    for k, a in cols:  # the hand-written loop and the simulator alternated (ABBA): the host's drift cancels
        run_sets = sets + [f"rule.optimizer.fused={'true' if k == 'fused' else 'false'}"] + args.set
        bares, sims = [], []
        for r in range(args.reps):
            for is_bare in ((True, False) if r % 2 == 0 else (False, True)):
                if is_bare:
                    bares.append(_bare_loop(args, run_sets))
                else:
                    sims.append(_measure(args, run_sets, a))
        res[k, a] = {key: (statistics.median(m[key] for m in sims) if isinstance(v, float) else v)
                     for key, v in sims[0].items()}
        bare[k, a] = {key: statistics.median(m[key] for m in bares) for key in bares[0]}
        spread[k, a] = (min(m["tick"] for m in bares), max(m["tick"] for m in bares),
                        min(m["tick"] for m in sims), max(m["tick"] for m in sims))
    first = next(iter(res.values()))
    n, numel = first["grads"]
    where = torch.cuda.get_device_name() if args.device == "cuda" else "cpu"
    print(f"online protocol on {where}, model {args.model} ({numel / 1e6:.2f} M trained values in {n} tensors), B = 1, "
          f"{args.threads} thread(s), recording {args.record}; per-tick medians over {first['n']} ticks after "
          f"{args.warmup} warm-up; the median of {args.reps} runs each")
    names = [f"{k}, ahead {'on' if a else 'off'}" for k, a in cols]
    print(f"  {'ms per tick (AdamW, step-ahead)':40s}" + "".join(f"{c:>20s}" for c in names))
    for key, label in ROWS:
        print(f"  {label:40s}" + "".join(f"{res[c][key] * 1e3:20.3f}" for c in cols))
    for key, label in (("over_mean", "overhead, mean (with GC pauses)"), ("own_mean", "  simulator's own, mean")):
        print(f"  {label:40s}" + "".join(f"{res[c][key] * 1e3:20.3f}" for c in cols))
    print("  hand-written loop, same work (baseline)")
    for key, label in (("tick", "  tick"), ("over", "  tick - fwd - bwd (the same work's floor)"),
                       ("learn", "    learning: optimizer + teacher"), ("world", "    world (stream.step)"),
                       ("free", "    freeing the tick's graph")):
        print(f"  {label:40s}" + "".join(f"{bare[c][key] * 1e3:20.3f}" for c in cols))
    print(f"  {'  (min-max over reps: baseline; tick)':40s}" + "".join(
        f"  {'%.1f-%.1f; %.1f-%.1f' % tuple(x * 1e3 for x in spread[c]):>18s}" for c in cols))
    print(f"  {'simulator tick - baseline tick':40s}" + "".join(
        f"{(res[c]['tick'] - bare[c]['tick']) * 1e3:20.3f}" for c in cols))
    print(f"  {'ratio simulator / baseline tick':40s}" + "".join(
        f"{res[c]['tick'] / bare[c]['tick']:19.3f}x" for c in cols))
    print(f"  {'overhead - baseline overhead':40s}" + "".join(
        f"{(res[c]['over'] - bare[c]['over']) * 1e3:20.3f}" for c in cols))
    if len(kinds) == 2:
        a, b = kinds
        for h in aheads:
            print(f"  ratio {b}/{a} (ahead {'on' if h else 'off'}): optimizer.step "
                  f"{res[b, h]['opt'] / res[a, h]['opt']:.3f}, overhead {res[b, h]['over'] / res[a, h]['over']:.3f}")
    if len(aheads) == 2:
        for k in kinds:
            on, off = res[k, True], res[k, False]
            print(f"  ratio ahead on/off ({k}): overhead {on['over'] / off['over']:.3f}, tick "
                  f"{on['tick'] / off['tick']:.3f}, world wait {on['wait'] / max(off['wait'], 1e-9):.3f}")
    print("  target (issue 13 item 4): the simulator's own per-tick overhead <= 1 ms, read three ways: its timed part "
          "(simulator's own), its tick - the baseline's tick, its overhead - the baseline's overhead. The overhead "
          "itself (tick - fwd - bwd) cannot be <= 1 ms for this column on a host where the baseline's floor is above it")


if __name__ == "__main__":
    main()
