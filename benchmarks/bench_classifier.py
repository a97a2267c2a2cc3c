"""Training throughput of the supervised column (models/classifier.py) run through colsim against a plain PyTorch
loop doing the same work in the same process (issue 30, item 7: the ratio should be >= 0.8).

* colsim: ``colsim.simulate.run`` on a packaged scenario protocol (default ``split_digits_task``: the digits world,
  ``classifier_mlp``, rule ``backprop``), built as ``colsim run`` builds it and writing its store with a
  ``ZarrRecorder`` — every part of the step schedule (collapse diagnostics on the recorded steps, the finite check,
  the evaluations at phase ends, checkpoints);
* plain: the same network (the column's own ``encoder`` and ``head`` modules, a fresh copy with the same seed),
  the same stream (``world.stream(...).step``, every phase in turn), the same optimizer settings; per tick: the
  stream's step, ``head(encoder(x))``, the task's head, cross-entropy, ``backward``, ``AdamW.step`` — nothing else.

Samples/s = batch / mean seconds per training tick over the ticks after ``--warmup`` (the mean, so the colsim arm's
every-10th-step diagnostics and its store flushes count; the median is printed beside it). A phase's evaluation falls
between two ticks and is left out of both arms, as the plain loop has none. Arms alternate (ABAB, ``--reps``) on
``--threads`` threads.

Measured on the quiet 2-core host (2026-12-07, 1 thread, ``--reps 3``, samples/s colsim / plain, ratio of the
medians): ``classifier_mlp`` 25,447 / 33,842 (0.75) with the collapse diagnostics computed by two SVDs of the (128,
400) features on every 10th (recorded) tick; 25,465 / 25,887 (0.98) with ``--set protocol.record.metrics_every=1000``
(no diagnostics), so the SVDs were the cost. They now come from the eigenvalues of the 128 x 128 Gram matrix
(colsim/sim/diagnostics.py, the same values to 1e-15): 25,896 / 29,144 (0.89); ``classifier_cnn`` 12,817 / 14,158
(0.91). The per-rep spread is about ±0.05.
Earlier, under another user's load (load average 5-6): ``classifier_cnn`` 16,755 / 21,015 (0.80).

    python benchmarks/bench_classifier.py [--protocol split_digits_task] [--model classifier_mlp] [--reps 2]
                                          [--warmup 20] [--threads 1] [--set KEY=VALUE]
"""
from __future__ import annotations

import argparse
import statistics
import tempfile
import time
import warnings
from pathlib import Path

import torch
import torch.nn.functional as F

import colsim.models  # noqa: F401  (registers)
import colsim.protocols  # noqa: F401
import colsim.rules  # noqa: F401
from colsim.config import resolve_run_config
from colsim.record import ZarrRecorder
from colsim.rundir import build_for_run
from colsim.simulate import _seeded, run as simulate


def colsim_ticks(cfg) -> list[float]:
    """Seconds per training tick of one colsim run of ``cfg``."""
    world, column, rule, local, optimizer = build_for_run(cfg)
    stamps: list[float] = []
    with tempfile.TemporaryDirectory() as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        rec = ZarrRecorder(Path(tmp) / "store.zarr", {"bench": "classifier"}, flush_every=cfg.protocol.record.flush_every)
        res = simulate(column, rule, cfg.protocol, rec, world=world, optimizer=optimizer, seed=cfg.seed,
                       device=cfg.device, local=local, on_step=lambda info: stamps.append(time.perf_counter()))
    assert res.status == "completed", res.status
    ends = set(cfg.protocol.phase_end_steps)  # the gap after a phase's last tick holds its evaluation
    return [b - a for i, (a, b) in enumerate(zip(stamps, stamps[1:]), start=1) if i not in ends]


def plain_ticks(cfg) -> list[float]:
    """Seconds per training tick of a hand-written loop doing the same work (module docstring)."""
    world, column, *_ = build_for_run(cfg)  # the same seed: the same initial weights
    o = cfg.rule.optimizer
    params = [p for p in column.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=o.lr, weight_decay=o.weight_decay, betas=o.betas, foreach=True)
    H, K, B = column.num_heads, column.num_outputs, cfg.protocol.stream.batch
    ticks: list[float] = []
    for p, ph in enumerate(cfg.protocol.phases):
        stream = world.stream(B, cfg.protocol.stream.episode_length, ph.classes, ph.world)
        state = stream.init(_seeded(cfg.seed, 1, p))
        t0 = time.perf_counter()
        for _ in range(ph.steps):
            state, st = stream.step(state)
            z, _ = column.encoder(st.obs)
            logits = column.head(z).view(B, H, K)  # (B, H, K)
            head = st.labels["task"] if H > 1 else torch.zeros(B, dtype=torch.long)
            loss = F.cross_entropy(logits[torch.arange(B), head], st.labels.get("target", st.labels["class"]))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            t1 = time.perf_counter()
            ticks.append(t1 - t0)
            t0 = t1
    return ticks


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--protocol", default="split_digits_task")
    ap.add_argument("--model", default=None)
    ap.add_argument("--reps", type=int, default=2)
    ap.add_argument("--warmup", type=int, default=20)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--set", action="append", default=[], dest="sets")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    cfg = resolve_run_config(args.protocol, model=args.model, rule="backprop", overrides=args.sets)
    B = cfg.protocol.stream.batch
    rates: dict[str, list[float]] = {"colsim": [], "plain": []}
    for rep in range(args.reps):
        for arm, fn in (("colsim", colsim_ticks), ("plain", plain_ticks)):
            ticks = fn(cfg)[args.warmup:]
            sec, med = statistics.fmean(ticks), statistics.median(ticks)
            rates[arm].append(B / sec)
            print(f"rep {rep} {arm:6s}: {B / sec:9.0f} samples/s (ms per tick of {B}: mean {1e3 * sec:.2f}, "
                  f"median {1e3 * med:.2f})")
    c, p = statistics.median(rates["colsim"]), statistics.median(rates["plain"])
    print(f"{cfg.protocol.name}, {cfg.model.name} ({cfg.model.encoder.kind}), batch {B}, {args.threads} thread(s): "
          f"colsim {c:.0f} samples/s, plain PyTorch {p:.0f} samples/s, ratio {c / p:.2f} (target >= 0.8)")


if __name__ == "__main__":
    main()
