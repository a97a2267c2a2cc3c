"""Speed and memory of the spiking column (models/spiking.py) and of ESPP (rules/espp.py).

Prints, for one training step (column forward, rule update, optimizer step) on the nonstationary
protocol's stream (batch 32, 32 px affine digits, window M = 3):

1. the spiking column at T bins (default 10) against the non-spiking CNN column of equal widths
   (seqjepa_cnn with the spiking preset's channels), both under backprop: steps/s and their ratio;
2. ESPP against surrogate-gradient BPTT (backprop) on the same spiking column: time per step and
   peak memory, as ratios (issue 12's targets: ESPP <= 0.5x the time and <= 0.3x the peak memory);
3. the ESPP/BPTT time ratio again with both rules' steps interleaved in one process (medians), which
   a loaded host distorts less than runs in separate processes one after the other.

Peak memory: on CUDA ``torch.cuda.max_memory_allocated`` over the timed steps; on CPU each variant
runs in its own subprocess and reports its peak resident set size above the resident size before
its first step (``ru_maxrss`` minus ``/proc/self/statm`` at the start; glibc may keep freed pages,
so this is an upper bound of the step's working set).

Measured before the ESPP hot-path change (2-core shared CPU host, 2026-12-03, batch 32, T = 10,
channels [16, 32, 64], 10 timed steps, separate processes):

* spiking_cnn preset (EMA teacher): CNN 69-78 ms/step, spiking BPTT 277-332 ms/step (4.0-4.3x the
  CNN), ESPP 149-205 ms/step: ESPP/BPTT time 0.54-0.62x, peak memory 0.20-0.30x;
* ``--set model.teacher.kind=stopgrad``: ESPP/BPTT time 0.42x, memory 0.25x.

After it (rules/espp.py: the gate from an einsum overlap, psi in four in-place passes, samples whose
gate is shut skipped), same host, now under a load average of 15-25 from other jobs on its 2 cores:

* the rule's update alone, on one trace, minimum of 25 calls: spiking_cnn 45-58 -> 17-22 ms,
  spiking_mlp 7-9 -> 1.7-1.8 ms (ΔW equal to float32 rounding);
* whole steps, separate processes (3 runs, EMA teacher): CNN 169-271 ms/step, spiking BPTT 798-1041
  ms/step (3.2-5.0x the CNN), ESPP 273-357 ms/step: ESPP/BPTT time 0.26-0.42x (target 0.5 met in
  each run), peak memory 0.08-0.19x (12-28 MiB against 149-164 MiB); stopgrad teacher: 0.52x, 0.19x;
* interleaved in one process (the last line printed; both rules see the same load), medians of
  10-20 steps: ESPP/BPTT 0.35-0.43x, and 0.39-0.43x with the old rule code in the same conditions:
  the update's ~30 ms saved is within the whole step's noise on this host.

Where an ESPP step goes (profile, spiking_cnn): two T-bin encoder passes (the current view and the
EMA teacher's), the first under autograd because the column cannot tell a local rule that reads no
block graph (ESPP) from one that does (LPL, layerwise): about 30 % of that pass; snnTorch's Leaky is
~10 ops per bin. At batch 32 on CPU the LIF bins are small tensors, so per-bin op overhead
dominates and a step costs ~ (encoder passes) x T x blocks small updates.

Since ``Rule.encoder_graph`` (ESPP declares False: the simulator runs the current view's encoder pass
under no_grad, the updates bit-identical), the benchmark also runs ESPP with that pass under autograd
as before (``espp:graph``) and counts the tensors saved for backward in one step (saved-tensor hooks;
the graph's memory, independent of the load). Same host, load 7-9, 2026-12-03: saved per step ESPP
3.3 MiB, ESPP with the encoder graph 28.8 MiB, BPTT 60.5 MiB; interleaved medians of 10 steps, two
runs: ESPP / ESPP-with-graph 0.74x (1716 / 2326 ms) and 0.92x (4851 / 5257 ms), ESPP / BPTT 0.21x and
0.38x. (Before the change, same load range: ESPP/BPTT interleaved 0.38x.) The resident-set peaks of
the separate processes (13 MiB without, 5 MiB with the graph in one run) are below this host's noise
for these sizes: glibc keeps and reuses freed pages, and a process's peak may predate the timed steps.

    python benchmarks/bench_spiking.py [--steps 10] [--T 10] [--model spiking_cnn] [--device cpu] [--set KEY=VALUE ...]

``--echospike`` (issue 31) times instead ESPP training of EchoSpike's MLP (models/echospike.py: 784 -> 200 -> 200
-> 200 LIF layers, T = 10, batch 128, protocols/echospike_fashion.yaml, or echospike_digits' 64 inputs when
Fashion-MNIST is not installed) as the simulator steps it (stream, column forward, rule update, optimizer step),
against a plain PyTorch loop doing the same work in the same process on the same images: rate coding, the LIF
recurrence, the input traces, the echo, the per-sample gate and the ESPP outer products of the samples whose gate
is open, and the SGD step. The two alternate step by step (a loaded host slows both alike); the line printed gives
each one's samples/s over all timed steps and the speed ratio colsim / plain as the median over steps of the
paired ratio (the plain step's time over the colsim step's just before it, on the same tick kind: contrastive
ticks learn in every sample, predictive ones in few). Issue 31's targets: >= 5,000 samples/s on 2 cores, ratio
>= 0.8. ``--threads`` sets torch's intra-op threads (default 2).

Measured 2026-12-08 on the 2-core reference host (AMD EPYC, torch 2.13.0+cpu) while nothing else ran (load
average below 0.5), ``--steps 80``, echospike_fashion: 2 threads 8,759 and 6,844 samples/s (two runs; the plain
loop 9,873 and 8,026; ratio 0.85 both), 1 thread 5,997 (plain 6,527; ratio 0.89). So 1e6 samples take 1.9-2.4
minutes of ESPP training on 2 quiet cores (evaluations not included); both targets are met.

    python benchmarks/bench_spiking.py --echospike [--steps 40] [--threads 2]
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _stepper(model: str, rule: str, T: int, device: str, channels: str, sets: "list[str]"):
    """One training step (stream, column forward, rule update, optimizer step, teacher) as a function of t.
    The column is called as the simulator calls it (``encoder_graph=False`` for ESPP); ``espp:graph`` is ESPP
    with the encoder's pass under autograd all the same (as before ``Rule.encoder_graph``), for comparison."""
    rule, _, force = rule.partition(":")
    import colsim.models  # noqa: F401
    import colsim.protocols  # noqa: F401
    import colsim.rules  # noqa: F401
    from colsim.build import build_run, lr_at
    from colsim.config import resolve_run_config
    from colsim.simulate import _seeded, apply_update

    extra = [f"model.encoder.channels={channels}"]
    if model.startswith("spiking"):
        extra += [f"model.T={T}", *sets]
    cfg = resolve_run_config("nonstationary", rule=rule, model=model, overrides=extra, device=device)
    world, column, rl, local, opt = build_run(cfg)
    B = cfg.protocol.stream.batch
    stream = world.stream(B, cfg.protocol.stream.episode_length, [0, 1], {})
    ss = stream.init(_seeded(0, 1))
    cs = column.init_state(B, device)
    params = column.trainable()
    rs = rl.init(params)
    kw = {"encoder_graph": False} if local and not rl.encoder_graph and force != "graph" else {}

    def step(t):
        nonlocal ss, cs, rs
        ss, st = stream.step(ss)
        cs, tr = column(cs, st.obs.to(device), st.action.to(device), st.start.to(device) | (t == 0), local=local, **kw)
        grads, rs, _ = rl.update(params, rs, tr)
        for g in opt.param_groups:
            g["lr"] = lr_at(g, t, cfg.protocol.total_steps)  # as the simulator's step 5
        rs = apply_update(params, grads, opt, rl, rs)
        column.update_target(t + 1)

    return step


def interleaved(model: str, T: int, steps: int, device: str, channels: str, sets: "list[str]") -> dict:
    """ESPP and BPTT steps alternating in one process: median ms per step of each (a shared, loaded host
    slows both alike, which sequential runs in separate processes do not)."""
    import statistics

    import torch

    fns = {r: _stepper(model, r, T, device, channels, sets) for r in ("espp", "backprop", "espp:graph")}
    times: dict = {r: [] for r in fns}
    for t in range(2 + steps):
        for r, fn in fns.items():
            t0 = time.perf_counter()
            fn(t)
            if device.startswith("cuda"):
                torch.cuda.synchronize()
            if t >= 2:  # warm-up: windows fill, allocator settles
                times[r].append(time.perf_counter() - t0)
    out = {r: statistics.median(v) for r, v in times.items()}
    for r, fn in fns.items():  # what one step's autograd graphs hold: the tensors saved for backward
        saved = [0]

        def pack(x):
            saved[0] += x.numel() * x.element_size()
            return x

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda x: x):
            fn(2 + steps)
        out[f"saved:{r}"] = saved[0]
    return out


def one(model: str, rule: str, T: int, steps: int, device: str, channels: str, sets: "list[str]") -> dict:
    import torch

    step = _stepper(model, rule, T, device, channels, sets)
    for t in range(2):  # warm-up: windows fill, allocator settles
        step(t)
    if device.startswith("cuda"):
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    base = _rss_bytes()
    t0 = time.perf_counter()
    for t in range(2, 2 + steps):
        step(t)
    if device.startswith("cuda"):
        torch.cuda.synchronize()
        peak = torch.cuda.max_memory_allocated()
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - base
    dt = (time.perf_counter() - t0) / steps
    return {"model": model, "rule": rule, "s_per_step": dt, "steps_per_s": 1 / dt, "peak_bytes": max(peak, 0)}


def _sub(*args, sets=()) -> dict:
    cmd = [sys.executable, __file__, "--one", *map(str, args)] + [a for s in sets for a in ("--set", s)]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def _plain_espp(W0: "list", T: int, beta: float, rate_scale: float, c_pos: float, c_neg: float, lr: float):
    """A plain PyTorch loop of offline ESPP on bias-free LIF layers (no colsim code): one step per batch of images
    (B, C, H, W) with the batch's broadcast b (one number: +1 predictive, -1 contrastive, 0 the first sample)."""
    import math

    import torch

    Ws = [w.detach().clone() for w in W0]
    prev = [None] * len(Ws)
    g = torch.Generator().manual_seed(0)

    def step(obs, b: float):
        x = obs.flatten(1)  # (B, J)
        B = x.shape[0]
        h = (torch.rand(T, B, x.shape[1], generator=g) < x * rate_scale).float()  # (T, B, J) input spikes
        for l, W in enumerate(Ws):
            cur = (h.reshape(T * B, -1) @ W.T).view(T, B, -1)  # (T, B, N)
            U, S = torch.empty_like(cur), torch.empty_like(cur)
            u, s = torch.zeros_like(cur[0]), torch.zeros_like(cur[0])
            for t in range(T):
                u = beta * u + cur[t] - s
                s = (u > 1.0).float()
                U[t], S[t] = u, s
            if b != 0 and prev[l] is not None:
                N = W.shape[0]
                n = prev[l].sum(1, keepdim=True)
                e = prev[l] / torch.where(n > 0, n, torch.ones_like(n))  # (B, N) echo
                c = c_pos if b > 0 else c_neg
                L = -b * torch.einsum("tbn,bn->b", S, e) + c * T * N  # (B,)
                keep = (L > 0).nonzero().squeeze(1)
                if len(keep):
                    xt = torch.empty(T, len(keep), h.shape[2])
                    acc = torch.zeros(len(keep), h.shape[2])
                    hk = h[:, keep]
                    for t in range(T):
                        acc = beta * acc + hk[t]
                        xt[t] = acc
                    post = b * e[keep] / (math.pi * (1 + (math.pi * (U[:, keep] - 1.0)) ** 2))  # (T, K, N)
                    W.add_(post.reshape(-1, N).T @ xt.reshape(-1, xt.shape[2]), alpha=lr)  # SGD on -dW
            prev[l] = S.sum(0)
            h = S

    return step


def echospike_bench(steps: int, threads: int) -> dict:
    """Interleaved colsim / plain-loop ESPP steps on EchoSpike's MLP (module docstring): median samples/s."""
    import statistics
    from pathlib import Path

    import torch

    import colsim.models  # noqa: F401
    import colsim.protocols  # noqa: F401
    import colsim.rules  # noqa: F401
    from colsim.build import build_run
    from colsim.config import resolve_run_config
    from colsim.simulate import _seeded, apply_update

    torch.set_num_threads(threads)
    proto = "echospike_fashion" if Path("/usr/share/datasets/fashion-mnist").is_dir() else "echospike_digits"
    cfg = resolve_run_config(proto, rule="espp")
    world, column, rl, local, opt = build_run(cfg)
    B = cfg.protocol.stream.batch
    stream = world.stream(B, cfg.protocol.stream.episode_length, None, {})
    ss = stream.init(_seeded(0, 1))
    cs = column.init_state(B, "cpu")
    params = column.trainable()
    rs = rl.init(params)
    m, r = cfg.model, cfg.rule
    plain = _plain_espp([b.synapse.weight for b in column.encoder.blocks], m.T, m.beta, m.rate_scale, r.config.c_pos,
                        r.config.c_neg, r.optimizer.lr)
    times: dict = {"colsim": [], "plain": []}
    opened = []
    for t in range(3 + steps):
        t0 = time.perf_counter()
        ss, st = stream.step(ss)
        cs, tr = column(cs, st.obs, st.action, st.start | (t == 0), local=local, encoder_graph=rl.encoder_graph)
        grads, rs, metrics = rl.update(params, rs, tr)
        rs = apply_update(params, grads, opt, rl, rs)
        t1 = time.perf_counter()
        plain(st.obs, float(tr["broadcast"][0]))
        t2 = time.perf_counter()
        if t >= 3:  # warm-up
            times["colsim"].append(t1 - t0)
            times["plain"].append(t2 - t1)
            opened.append(metrics.get("espp.l0.gate", float("nan")))
    # throughput over all timed steps (predictive ticks learn little, contrastive ones a lot: a median of the mixed
    # step times is unstable); the ratio pairs each colsim step with the plain step right after it (same tick
    # kind, nearly the same load) and takes the median of the per-step ratios
    n = len(times["colsim"])
    paired = [p / c for c, p in zip(times["colsim"], times["plain"])]
    return {"protocol": proto, "batch": B, "threads": threads, "steps": steps,
            "colsim_samples_per_s": B * n / sum(times["colsim"]), "plain_samples_per_s": B * n / sum(times["plain"]),
            "ratio": statistics.median(paired), "gate_l0": statistics.fmean(opened)}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--T", type=int, default=10)
    ap.add_argument("--model", default="spiking_cnn")
    ap.add_argument("--channels", default="[16,32,64]")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--set", action="append", default=[],
                    help="override for the spiking column, e.g. model.coding=latency")
    ap.add_argument("--one", nargs=6, metavar=("MODEL", "RULE", "T", "STEPS", "DEVICE", "CHANNELS"))
    ap.add_argument("--interleave", nargs=5, metavar=("MODEL", "T", "STEPS", "DEVICE", "CHANNELS"))
    ap.add_argument("--echospike", action="store_true", help="ESPP on EchoSpike's MLP against a plain PyTorch loop")
    ap.add_argument("--threads", type=int, default=2, help="--echospike: torch intra-op threads")
    a = ap.parse_args()
    if a.echospike:
        r = echospike_bench(a.steps, a.threads)
        print(f"EchoSpike MLP, ESPP, {r['protocol']}, batch {r['batch']}, {r['threads']} thread(s), "
              f"{r['steps']} interleaved steps: colsim {r['colsim_samples_per_s']:.0f} samples/s, plain PyTorch loop "
              f"{r['plain_samples_per_s']:.0f} samples/s, speed ratio colsim / plain {r['ratio']:.2f} (median of the "
              f"paired steps; target >= 0.8; "
              f"target >= 5,000 samples/s on 2 cores); layer-1 gate open in {r['gate_l0']:.2f} of samples")
        return
    if a.interleave:
        m, T, n, d, ch = a.interleave
        print(json.dumps(interleaved(m, int(T), int(n), d, ch, a.set)))
        return
    if a.one:
        m, r, T, n, d, ch = a.one
        print(json.dumps(one(m, r, int(T), int(n), d, ch, a.set)))
        return
    runs = {
        "cnn/backprop": _sub("seqjepa_cnn", "backprop", a.T, a.steps, a.device, a.channels),
        "spiking/backprop": _sub(a.model, "backprop", a.T, a.steps, a.device, a.channels, sets=a.set),
        "spiking/espp": _sub(a.model, "espp", a.T, a.steps, a.device, a.channels, sets=a.set),
        "espp, enc. graph": _sub(a.model, "espp:graph", a.T, a.steps, a.device, a.channels, sets=a.set),
    }
    for k, v in runs.items():
        print(f"{k:18s} {v['s_per_step'] * 1e3:9.1f} ms/step  {v['steps_per_s']:7.2f} steps/s  "
              f"peak {v['peak_bytes'] / 2 ** 20:8.1f} MiB")
    sp, cnn, es = runs["spiking/backprop"], runs["cnn/backprop"], runs["spiking/espp"]
    print(f"spiking (T={a.T}) / CNN step time under backprop: {sp['s_per_step'] / cnn['s_per_step']:.2f}x")
    print(f"ESPP / BPTT step time:   {es['s_per_step'] / sp['s_per_step']:.2f}x   (target <= 0.5)")
    print(f"ESPP / BPTT peak memory: {es['peak_bytes'] / max(sp['peak_bytes'], 1):.2f}x   (target <= 0.3)")
    eg = runs["espp, enc. graph"]
    print(f"ESPP without / with the encoder's autograd graph: time {es['s_per_step'] / eg['s_per_step']:.2f}x, "
          f"peak memory {es['peak_bytes'] / max(eg['peak_bytes'], 1):.2f}x")
    cmd = [sys.executable, __file__, "--interleave", a.model, str(a.T), str(a.steps), a.device, a.channels]
    cmd += [x for s in a.set for x in ("--set", s)]
    med = json.loads(subprocess.run(cmd, capture_output=True, text=True, check=True).stdout.strip().splitlines()[-1])
    print(f"interleaved in one process (medians): ESPP {med['espp'] * 1e3:.1f} ms, BPTT {med['backprop'] * 1e3:.1f} ms "
          f"per step: {med['espp'] / med['backprop']:.2f}x; ESPP with the encoder graph {med['espp:graph'] * 1e3:.1f} ms "
          f"(without / with: {med['espp'] / med['espp:graph']:.2f}x)")
    mib = {r: med[f"saved:{r}"] / 2 ** 20 for r in ("espp", "espp:graph", "backprop")}
    print(f"tensors saved for backward in one step: ESPP {mib['espp']:.1f} MiB, ESPP with the encoder graph "
          f"{mib['espp:graph']:.1f} MiB, BPTT {mib['backprop']:.1f} MiB")


if __name__ == "__main__":
    main()
