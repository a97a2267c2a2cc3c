"""Preset part of bench_attention.py: model-zoo sizes and training speed, CRATE vs transformer aggregator.

1. Every seq-JEPA preset (models/seqjepa_*.yaml) is built on the stationary protocol's default
   stream (affine_digits 32 px, B = 32 streams, episodes of 8 views) under ``backprop``. One
   training step = the simulator's steps 1-6 (stream step, column forward, rule update,
   optimizer step, teacher update), no recording. Presets take turns step by step (order
   alternating per round) so load from other processes hits all alike; steps/s is 1 / median
   step time, printed with the trainable parameter count and the ratio to ``seqjepa_cnn``
   measured in the same run.
2. Aggregator check: the ``seqjepa_crate`` column's aggregator (CRATE layers, with the
   per-forward diagnostics it records in training) against the ``seqjepa_cnn`` column's
   transformer aggregator of the same width, layers and heads: forward + backward of a fixed
   cotangent on z_AGG for tokens (B, M, W) with a few padded slots, in train mode, interleaved,
   medians. Target: time(CRATE) / time(transformer) <= 1.1. The CRATE-alpha and ToST
   aggregators (same width) are printed for reference.
"""
from __future__ import annotations

import statistics
import time

PRESETS = ["seqjepa_cnn", "seqjepa_crate", "seqjepa_crate_alpha", "seqjepa_tost", "seqjepa_resnet18"]
AGG_RATIO_MAX = 1.1


def _build(model: str):
    import colsim.models  # noqa: F401
    import colsim.protocols  # noqa: F401
    import colsim.rules  # noqa: F401
    from colsim.build import build_run
    from colsim.config import resolve_run_config
    from colsim.simulate import _seeded

    cfg = resolve_run_config("stationary", rule="backprop", model=model)
    world, col, rule, local, opt = build_run(cfg)
    ph = cfg.protocol.phases[0]
    stream = world.stream(cfg.protocol.stream.batch, cfg.protocol.stream.episode_length, ph.classes, ph.world)
    params = col.trainable()
    return {"cfg": cfg, "col": col, "rule": rule, "local": local, "opt": opt, "stream": stream, "params": params,
            "sstate": stream.init(_seeded(0, 11, 0)), "cstate": col.init_state(cfg.protocol.stream.batch, "cpu"),
            "rstate": rule.init(params), "first": True}


def _train_step(s: dict) -> None:
    """Steps 1-6 of the simulator's schedule (colsim/simulate.py), no recording."""
    s["sstate"], st = s["stream"].step(s["sstate"])
    start = st.start | s["first"]
    s["first"] = False
    s["cstate"], trace = s["col"](s["cstate"], st.obs, st.action, start, local=s["local"])
    grads, s["rstate"], _ = s["rule"].update(s["params"], s["rstate"], trace)
    for n, p in s["params"].items():
        p.grad = grads.get(n)
    s["opt"].step()
    for p in s["params"].values():
        p.grad = None
    s["col"].update_target(0.5)


def _interleave(fns: dict, rounds: int, warmup: int) -> dict[str, float]:
    """Median seconds per call of each fn, calls taking turns (order reversed every other round)."""
    names = list(fns)
    times: dict[str, list[float]] = {n: [] for n in names}
    for r in range(warmup + rounds):
        for n in (names if r % 2 == 0 else names[::-1]):
            t0 = time.perf_counter()
            fns[n]()
            if r >= warmup:
                times[n].append(time.perf_counter() - t0)
    return {n: statistics.median(t) for n, t in times.items()}


def _agg_step(agg, tokens, pad, cot):
    def step():
        agg.zero_grad(set_to_none=True)
        x = tokens.clone().requires_grad_(True)
        (agg(x, pad) * cot).sum().backward()
    return step


def run_presets(rounds: int = 8, warmup: int = 2, agg_reps: int = 60, skip_resnet: bool = False) -> bool:
    """Print the preset table and the aggregator check; returns whether the check passes."""
    import torch

    presets = [p for p in PRESETS if not (skip_resnet and p == "seqjepa_resnet18")]
    print(f"\n== presets: backprop on the stationary stream, {rounds} interleaved steps each (median) ==")
    built = {p: _build(p) for p in presets}
    med = _interleave({p: (lambda s=built[p]: _train_step(s)) for p in presets}, rounds, warmup)
    base = 1.0 / med["seqjepa_cnn"]
    print(f"{'preset':<22}{'aggregator':<13}{'predictor':<10}{'params':>11}{'steps/s':>9}{'vs cnn':>8}")
    for p in presets:
        c = built[p]["cfg"].model
        n = sum(x.numel() for x in built[p]["params"].values())
        rate = 1.0 / med[p]
        print(f"{p:<22}{c.aggregator.kind:<13}{c.predictor.kind:<10}{n:>11,}{rate:>9.2f}{rate / base:>8.2f}")

    cnn, crate = built["seqjepa_cnn"], built["seqjepa_crate"]
    W, M, B = crate["col"].aggregator.dim, crate["col"].window, crate["cfg"].protocol.stream.batch
    tr_cfg, cr_cfg = cnn["cfg"].model.aggregator, crate["cfg"].model.aggregator
    if (cnn["col"].dim + cnn["col"].action_dim, tr_cfg.layers, tr_cfg.heads) != (W, cr_cfg.layers, cr_cfg.heads):
        raise SystemExit("seqjepa_cnn and seqjepa_crate aggregators differ in width / layers / heads: fix the presets")
    gen = torch.Generator().manual_seed(0)
    tokens, cot = torch.randn(B, M, W, generator=gen), torch.randn(B, W, generator=gen)
    pad = torch.zeros(B, M, dtype=torch.bool)
    pad[: B // 4, M - 1] = True  # some streams early in their episode
    aggs = {"transformer": cnn["col"].aggregator, "crate": crate["col"].aggregator}
    for p, k in (("seqjepa_crate_alpha", "crate_alpha"), ("seqjepa_tost", "tost")):
        if built[p]["col"].aggregator.dim == W:
            aggs[k] = built[p]["col"].aggregator
    for a in aggs.values():
        a.train()
    med = _interleave({k: _agg_step(a, tokens, pad, cot) for k, a in aggs.items()}, agg_reps, 5)
    print(f"\naggregator forward+backward, width {W}, {cr_cfg.layers} layers, {cr_cfg.heads} heads, tokens ({B}, {M}), "
          f"{agg_reps} interleaved reps (median)")
    for k, t in med.items():
        n = sum(x.numel() for x in aggs[k].parameters())
        print(f"  {k:<12} {t * 1e3:8.2f} ms  {n:>9,} params  {t / med['transformer']:5.2f}x transformer")
    ratio = med["crate"] / med["transformer"]
    ok = ratio <= AGG_RATIO_MAX
    print(f"  [{'PASS' if ok else 'FAIL'}] CRATE aggregator time / transformer aggregator time <= {AGG_RATIO_MAX}: "
          f"{ratio:.2f}")
    return ok
