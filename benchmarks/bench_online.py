"""Simulator overhead per tick at batch 1 (protocols/online.yaml): time per tick minus the column's
forward and backward, measured in the same run.

Runs ``colsim.simulate.run`` on the online protocol (B = 1, one stream, rule backprop, the store
written by a ZarrRecorder as ``colsim run`` does) and times, tick by tick:

* the tick: between successive ``on_step`` calls (everything the step schedule does in one tick);
* the column forward (``column.forward``) and the backward (``rule.update``: backprop's
  ``torch.autograd.grad`` on the loss) — the column's own work;
* for the breakdown, the parts of the overhead: ``stream.step`` (the world renders the view),
  ``optimizer.step``, the teacher's EMA (``column.update_target``), the recorder, the per-tick
  diagnostics (``collapse_diagnostics`` of z and z_AGG, ``column.diagnostics``), and — re-timed
  on the last tick's gradients — the divergence check and the gradient norm.

overhead = tick - forward - backward: the simulator's own cost per tick (world, optimizer,
teacher, divergence check, diagnostics, recording, bookkeeping). Medians over the ticks after
``--warmup``; the first tick of a phase and the final evaluation are outside the measured ticks.

Reference (2 shared cores under load ~9, 1 thread, 2026-12-03, seqjepa_cnn 0.79 M parameters):
tick ~75-95 ms = forward ~25-35 + backward ~15-20 + overhead ~28-38 ms, NOT the <= 1 ms target.
The overhead is the optimizer (AdamW, foreach: ~12-16 ms; ``--set rule.optimizer.fused=true``:
~1.3 ms) and the divergence check (one ``torch.isfinite`` per gradient tensor: ~10 ms in the run);
the world (~0.9 ms), teacher EMA (~0.35 ms), diagnostics (~0.15 ms), recorder (~0.01 ms) and the
rest (~2 ms) are small. A check on the gradient norm the simulator already computes would remove
the second pass over the gradients.

    python benchmarks/bench_online.py [--steps 400] [--warmup 50] [--threads 1] [--model seqjepa_cnn]
                                      [--record on|off] [--set rule.optimizer.fused=true]
"""
from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch

import colsim.models  # noqa: F401  (registers)
import colsim.protocols  # noqa: F401
import colsim.rules  # noqa: F401
import colsim.simulate as sim
from colsim.build import build_run
from colsim.config import resolve_run_config
from colsim.record import ZarrRecorder
from colsim.simulate import keep_freed_memory
from colsim.simulate import run as simulate


def _timed(fn, into: list):
    def wrapper(*a, **kw):
        t = time.perf_counter()
        out = fn(*a, **kw)
        into.append(time.perf_counter() - t)
        return out
    return wrapper


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=400)
    ap.add_argument("--warmup", type=int, default=50, help="ticks left out of the medians")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--model", default="seqjepa_cnn")
    ap.add_argument("--record", choices=["on", "off"], default="on", help="off: record.enabled=false")
    ap.add_argument("--set", action="append", default=[], help="config override, e.g. rule.optimizer.fused=true")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.use_deterministic_algorithms(True, warn_only=True)
    keep_freed_memory()
    sets = ["protocol.evaluation.at_start=false", "protocol.evaluation.probe_samples=10",
            "protocol.evaluation.views=2", "protocol.record.probe=false"]
    if args.record == "off":
        sets.append("protocol.record.enabled=false")
    sets += args.set
    cfg = resolve_run_config("online", model=args.model, overrides=sets, steps=args.steps)
    assert cfg.protocol.stream.batch == 1
    world, column, rule, local, optimizer = build_run(cfg)

    t_fwd: list[float] = []
    t_bwd: list[float] = []
    t_world: list[float] = []
    t_opt: list[float] = []
    t_teacher: list[float] = []
    t_rec: list[float] = []
    t_diag: list[float] = []
    sim.collapse_diagnostics = _timed(sim.collapse_diagnostics, t_diag)  # called twice per recorded tick
    column.diagnostics = _timed(column.diagnostics, t_diag)
    ticks: list[float] = []
    column.forward = _timed(column.forward, t_fwd)
    column.update_target = _timed(column.update_target, t_teacher)
    last: dict = {}
    update = _timed(rule.update, t_bwd)

    def keep(params, rstate, trace):
        out = update(params, rstate, trace)
        last["grads"] = out[0]
        return out

    rule = rule._replace(update=keep)
    optimizer.step = _timed(optimizer.step, t_opt)
    make_stream = world.stream

    def stream(*a, **kw):
        s = make_stream(*a, **kw)
        return s._replace(step=_timed(s.step, t_world))

    world.stream = stream

    def on_step(info):
        ticks.append(time.perf_counter())

    t_fin: list[float] = []  # torch.isfinite: in a backprop tick only the simulator's divergence check calls it
    isfinite = torch.isfinite
    torch.isfinite = _timed(isfinite, t_fin)
    try:
        with tempfile.TemporaryDirectory() as tmp:
            rec = ZarrRecorder(Path(tmp) / "store.zarr", {"bench": "online"},
                               flush_every=cfg.protocol.record.flush_every)
            rec.record = _timed(rec.record, t_rec)
            res = simulate(column, rule, cfg.protocol, rec, world=world, optimizer=optimizer, seed=0, device="cpu",
                           local=local, on_step=on_step)
    finally:
        torch.isfinite = isfinite
    assert res.status == "completed", res.status
    w = args.warmup
    tick = [b - a for a, b in zip(ticks[w:-1], ticks[w + 1:])]  # tick t+1 = on_step(t+1) - on_step(t)
    k = slice(w + 1, w + 1 + len(tick))
    over = [t - f - b for t, f, b in zip(tick, t_fwd[k], t_bwd[k])]
    med = statistics.median
    ms = 1e3
    print(f"online protocol, model {args.model}, B = 1, {len(tick)} ticks measured (after {w} warm-up), "
          f"{args.threads} thread(s), recording {args.record}")
    print(f"  tick                      {med(tick) * ms:8.3f} ms  (median; mean {statistics.fmean(tick) * ms:.3f})")
    print(f"  column forward            {med(t_fwd[k]) * ms:8.3f} ms")
    print(f"  column backward (rule)    {med(t_bwd[k]) * ms:8.3f} ms")
    print(f"  overhead = tick - fwd - bwd {med(over) * ms:6.3f} ms  (median per tick; mean "
          f"{statistics.fmean(over) * ms:.3f}; target <= 1 ms)")
    if t_rec:
        print(f"    of which recorder.record {med(t_rec[k]) * ms:7.3f} ms")
    diag = [sum(t_diag[3 * i:3 * i + 3]) for i in range(len(t_diag) // 3)]
    if diag:
        print(f"    of which diagnostics     {med(diag[k]) * ms:7.3f} ms  (collapse diagnostics of z, z_AGG; column's)")
    print(f"    of which stream.step     {med(t_world[k]) * ms:7.3f} ms")
    print(f"    of which optimizer.step  {med(t_opt[k]) * ms:7.3f} ms")
    print(f"    of which teacher EMA     {med(t_teacher[k]) * ms:7.3f} ms")
    g = list(last["grads"].values())
    n = len(g)  # the divergence check calls torch.isfinite once per gradient tensor
    fin = [sum(t_fin[n * i:n * i + n]) for i in range(len(t_fin) // n)]
    print(f"    of which finite check    {med(fin[k]) * ms:7.3f} ms  (simulate.py step 4: torch.isfinite on each of "
          f"{n} grads, {sum(x.numel() for x in g) / 1e6:.2f} M values; in the run)")
    gn = []  # the gradient norm (step 5), re-timed on the last tick's grads
    for _ in range(50):
        t = time.perf_counter()
        sum(float(x.pow(2).sum()) for x in g)
        gn.append(time.perf_counter() - t)
    print(f"    of which grad norm       {med(gn) * ms:7.3f} ms  (re-timed on the last grads)")
    parts = [t_world, t_opt, t_teacher] + ([t_rec] if t_rec else [])
    known = [sum(p[i] for p in parts) for i in range(w + 1, w + 1 + len(tick))]
    rest = [o - kk - (diag[i] if diag else 0.0) - fin[i] for o, kk, i in zip(over, known, range(w + 1, w + 1 + len(tick)))]
    print(f"    rest (not timed apart)   {med(rest) * ms:7.3f} ms  (bookkeeping, grad norm, freeing last tick's graph)")


if __name__ == "__main__":
    main()
