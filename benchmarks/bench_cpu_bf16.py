"""bf16 autocast on the CPU against float32 (issue 32, item 4): speed, matmul fraction and losses.

``model.autocast=bf16`` on ``--device cpu`` runs the column forward, the rule update and the evaluations'
``embed`` under ``torch.autocast("cpu", torch.bfloat16)`` (colsim/device.py); parameters, optimizer state and the
applied gradients stay float32. Every figure is a ratio of rates measured in this process, fp32 and bf16
interleaved (fp32, bf16, bf16, fp32, ...: drifts of a shared host cancel), after the CPU kernels the host offers:

0. what autocast leaves in float32: the output dtype of each kind of module in one forward of the default
   column under autocast (Linear / Conv2d and the activations after them run in bf16, LayerNorm keeps its input's
   dtype, by torch's CPU autocast op lists; the coding rate's Gram matrix and Cholesky stay float32:
   models/regularizers.py);
1. steps/s of the simulator loop (``colsim.simulate.run``, recording off, no evaluations timed) of the default
   column (seqjepa_cnn, nonstationary stream, batch 32, backprop) with ``model.autocast=bf16`` and ``none``;
2. the matmul fraction: the FLOPs of one full-window training step (torch.utils.flop_counter) over its median
   time, as a fraction of a 2048x2048 matmul's rate in float32 and in bf16, measured between the timed steps;
   for the default column and for seqjepa_resnet18 (32 px, batch 64, M = 3, channels-last);
3. the losses: the default column (backprop, the nonstationary protocol's first phases, shortened) over seeds,
   in float32 and bf16 on the same streams; the per-seed paired difference of the mean loss (and of the coding
   rate of z) over the last steps of each phase, with its 95 % CI (colsim.analysis.compare.mean_ci), against the
   seed-to-seed CI of float32.

    python benchmarks/bench_cpu_bf16.py [--steps 60] [--reps 3] [--cnn-steps 15] [--resnet-steps 3]
        [--seeds 0,1,2] [--loss-phases 1] [--loss-steps 150] [--loss-last 50] [--loss-json FILE]
        [--skip-loop] [--skip-fraction] [--skip-resnet] [--skip-loss]

On a shared 2-core host, run the parts in separate calls of a few minutes each; ``--loss-json`` collects part 3's
seeds across calls (``--seeds 0``, then ``--seeds 1``, ...; ``--seeds ''`` only summarises the file).

Measured 2026-12-07 on host "vm": 2 cores of an AMD EPYC, torch 2.13.0+cpu; the host is shared with sweeps, so
each call's load average is given (the ratios are what counts; at load 5-8 they scatter and rates fall ~25-fold).

    CPU kernels: AVX512; flags avx512_bf16 avx512_vnni avx512f
    0. under model.autocast=bf16 (torch.autocast('cpu', bfloat16)), output dtype by module kind (parameters: float32):
       Conv2d bfloat16, Dropout bfloat16, GELU bfloat16, LayerNorm bfloat16/float32, Linear bfloat16, MaxPool2d
       bfloat16, ReLU bfloat16
    quiet host, 2 threads, --skip-loss --steps 30 --reps 4 --cnn-steps 20 --resnet-steps 3 (23:55 UTC, load 1.1-2.1):
    1. simulator loop, seqjepa_cnn, batch 32, backprop (4 interleaved rates of 30 steps; load 1.1-1.3)
       steps/s fp32 14.29, bf16 18.27: bf16 / fp32 = 1.28x (per rep 1.23, 1.28, 1.28, 1.25; fastest / fastest 1.24x)
    2. model            GFLOP   s fp32   s bf16  bf16 x  best x  mm32 GF/s  mm16 GF/s  frac32  frac16  16/mm32  load
       seqjepa_cnn       8.51    0.090    0.076   1.20x   1.25x        169        402    0.56    0.28     0.67  1.3-1.5
       seqjepa_resnet18 803.32   4.550    2.873   1.58x   1.75x        134        273    1.32    1.02     2.09  1.9-2.1
       (the ResNet's fractions > 1: the matmul reference fell while its steps ran, 134 against 169 GFLOP/s)
    quiet host, OMP_NUM_THREADS=1, --skip-resnet --skip-loss --steps 30 --reps 4 --cnn-steps 20 (load 1.2-1.6):
    1. steps/s fp32 8.56, bf16 11.18: bf16 / fp32 = 1.31x (per rep 1.31, 1.30, 1.30, 1.31; fastest / fastest 1.30x)
    2. seqjepa_cnn       8.51    0.136    0.103   1.32x   1.32x         95        209    0.66    0.39     0.86  1.2-1.4
    loaded host, 2 threads (load 5.8-6.3 / 6.0-6.3): 1. 1.27x (per rep 0.99, 1.11, 1.02, 2.03);
       2. seqjepa_resnet18 27.4 s fp32, 28.9 s bf16: 0.95x (fastest / fastest 1.21x), frac32 0.55, frac16 0.21
    a second call, --skip-loop --skip-loss --cnn-steps 10 --resnet-steps 4 (00:00 UTC; the load rose as the ResNet began):
    2. seqjepa_cnn       8.51    0.093    0.069   1.35x   1.32x        181        406    0.51    0.30     0.68  1.1-1.2
       seqjepa_resnet18 803.32  19.736   20.298   0.97x   1.41x         83        196    0.49    0.20     0.48  5.3-5.7
    --seeds K --loss-phases 2 --loss-steps 150 --loss-last 50 --loss-json F (one call per seed, OMP_NUM_THREADS=1,
    load 5.2-6.5; then --seeds '' summarises F):
    3. losses, seqjepa_cnn backprop, seeds 0,1,2, 2 phase(s) of 150 steps: mean loss over each phase's last 50 steps
       loss, phase 0: fp32 -0.5719 ± 0.0018, bf16 -0.5717 ± 0.0018 (95 % CI over seeds); paired bf16 - fp32
         +0.0003 ± 0.0000 (n=3): within the fp32 seed-to-seed CI
       loss, phase 1: fp32 -0.5151 ± 0.0200, bf16 -0.5141 ± 0.0206 (95 % CI over seeds); paired bf16 - fp32
         +0.0010 ± 0.0009 (n=3): within the fp32 seed-to-seed CI
       reg.coding_rate.z, phase 0: fp32 204.4961 ± 0.3721, bf16 204.4658 ± 0.3133; paired -0.0303 ± 0.0753: within
       reg.coding_rate.z, phase 1: fp32 207.3567 ± 0.5209, bf16 207.3599 ± 0.5032; paired +0.0033 ± 0.0342: within

On the quiet host bf16 is faster (1.2-1.3x the default column, 1.6x the ResNet-18) and its losses stay within the
seeds' error bar. The CPU default still stays float32 (``model.autocast`` unset = ``none``): ``--ensemble`` refuses
autocast, and the demo table, the determinism tests and the CPU results are float32. See docs/guide/gpu.md,
"bf16 autocast on the CPU".
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_step import _setup, cpu_kernels, full_window_step, matmul_flops, sim_rate  # noqa: E402

AMPS = ("none", "bf16")


def load() -> str:
    try:
        return Path("/proc/loadavg").read_text().split()[0]
    except OSError:
        return "?"


def _order(rep: int) -> tuple:
    return AMPS if rep % 2 == 0 else AMPS[::-1]


def part_dtypes() -> dict:
    """Module kind -> the dtypes of its outputs in one forward of the default column under bf16 autocast."""
    import torch

    step, col = full_window_step("seqjepa_cnn", "nonstationary", [], 32)
    seen: dict = {}

    def hook(mod, _inp, out):
        outs = out if isinstance(out, (tuple, list)) else (out,)
        for o in outs:
            if torch.is_tensor(o) and o.is_floating_point():
                seen.setdefault(type(mod).__name__, set()).add(str(o.dtype).replace("torch.", ""))

    hs = [m.register_forward_hook(hook) for m in col.modules() if not list(m.children())]
    try:
        step(amp="bf16")
    finally:
        for h in hs:
            h.remove()
    params = {str(p.dtype).replace("torch.", "") for p in col.parameters()}
    return {"modules": {k: "/".join(sorted(v)) for k, v in sorted(seen.items())}, "params": "/".join(sorted(params))}


def part_loop(steps: int, reps: int) -> dict:
    rates: dict = {a: [] for a in AMPS}
    loads = []
    for rep in range(reps):
        for amp in _order(rep):
            rates[amp].append(sim_rate("backprop", steps, False, extra=(f"model.autocast={amp}",)))
            loads.append(float(load()))
    med = {a: statistics.median(v) for a, v in rates.items()}
    return {"fp32": med["none"], "bf16": med["bf16"], "speedup": med["bf16"] / med["none"],
            "best": max(rates["bf16"]) / max(rates["none"]),
            "per_rep": [b / f for f, b in zip(rates["none"], rates["bf16"])], "load": (min(loads), max(loads))}


def part_fraction(model: str, protocol: str, over: list, B: int, steps: int) -> dict:
    """Interleaved full-window steps in fp32 and bf16, matmul fp32 / bf16 rates measured between them."""
    step, _ = full_window_step(model, protocol, over, B)
    flops = step(count_flops=True)
    for amp in AMPS:  # warm-up: the allocator's heap, oneDNN's kernel caches for both dtypes
        for _ in range(2):
            step(amp=amp)
    ts: dict = {a: [] for a in AMPS}
    mm: dict = {"float32": [], "bfloat16": []}
    loads = []
    for rep in range(steps):
        for amp in _order(rep):
            t = time.perf_counter()
            step(amp=amp)
            ts[amp].append(time.perf_counter() - t)
        for dt in mm:
            mm[dt].append(matmul_flops(reps=5, warm=1, dtype=dt))
        loads.append(float(load()))
    s32, s16 = statistics.median(ts["none"]), statistics.median(ts["bf16"])
    m32, m16 = statistics.median(mm["float32"]), statistics.median(mm["bfloat16"])
    return {"model": model, "flops": flops, "step_fp32": s32, "step_bf16": s16, "speedup": s32 / s16,
            "best": min(ts["none"]) / min(ts["bf16"]), "n": steps,
            "mm_fp32": m32, "mm_bf16": m16, "mm_ratio": m16 / m32,
            "frac_fp32": flops / s32 / m32, "frac_bf16_of_bf16": flops / s16 / m16, "frac_bf16_of_fp32": flops / s16 / m32,
            "load": (min(loads), max(loads))}


LOSS_METRICS = ("loss", "reg.coding_rate.z")  # the training loss; the coding rate of z (its anti-collapse term)


def run_losses(seed: int, amp: str, steps: int, last: int, phases: int) -> dict:
    """Per metric of LOSS_METRICS, per phase, its mean over the phase's last ``last`` steps (seqjepa_cnn, backprop;
    phase k sees digits 2k, 2k+1, as the nonstationary protocol's phases do)."""
    import math

    from colsim.record import MemoryRecorder
    from colsim.simulate import run

    ph = ", ".join(f"{{name: p{k}, steps: {steps}, classes: [{2 * k},{2 * k + 1}]}}" for k in range(phases))
    cfg, world, col, r, local, opt = _setup("backprop", "seqjepa_cnn", [
        f"protocol.phases=[{ph}]", "protocol.evaluation.at_start=false", "protocol.evaluation.probe_samples=10",
        "protocol.record.probe=false", f"model.autocast={amp}"], seed=seed)
    rec = MemoryRecorder()
    run(col, r, cfg.protocol, rec, world=world, optimizer=opt, local=local, seed=cfg.seed, device=cfg.device,
        autocast=cfg.model.autocast)
    assert len(rec.metrics) == phases * steps, len(rec.metrics)
    out: dict = {}
    for name in LOSS_METRICS:
        v = [m[name] for _, m in rec.metrics]
        per = [v[k * steps:(k + 1) * steps] for k in range(phases)]
        # a phase's first tick has no context: its loss is missing (NaN)
        assert all(math.isfinite(x) for p_ in per for x in p_[1:]), f"non-finite {name} under autocast={amp}, seed {seed}"
        out[name] = [statistics.fmean(p_[-last:]) for p_ in per]
    return out


def part_losses(seeds: list, steps: int, last: int, phases: int, store: "Path | None") -> dict:
    """Runs ``seeds`` in fp32 and bf16 (alternating order) and summarises them with the seeds already in ``store``
    (a JSON file the runs are added to: one invocation per seed keeps each under a few minutes)."""
    import json

    from colsim.analysis.compare import mean_ci

    key = f"{phases}x{steps}/last{last}"
    data = json.loads(store.read_text()) if store is not None and store.exists() else {}
    runs = data.setdefault(key, {})
    for s in seeds:
        for amp in _order(s):
            runs.setdefault(str(s), {})[amp] = run_losses(s, amp, steps, last, phases)
            runs[str(s)].setdefault("load", []).append(float(load()))
        if store is not None:
            store.write_text(json.dumps(data, indent=1))
    done = sorted((s for s, v in runs.items() if all(a in v for a in AMPS)), key=int)
    out = {"seeds": done, "rows": [], "load": [x for s in done for x in runs[s]["load"]]}
    for name in LOSS_METRICS:
        for k in range(phases):
            f32 = [runs[s]["none"][name][k] for s in done]
            b16 = [runs[s]["bf16"][name][k] for s in done]
            out["rows"].append({"metric": name, "phase": k, "fp32": mean_ci(f32), "bf16": mean_ci(b16),
                                "diff": mean_ci([b - f for f, b in zip(f32, b16)]),
                                "fp32_seeds": f32, "bf16_seeds": b16})
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=60, help="simulator-loop steps per rate (part 1)")
    ap.add_argument("--reps", type=int, default=3, help="interleaved rates per setting (part 1)")
    ap.add_argument("--cnn-steps", type=int, default=15, help="timed steps per setting, default column (part 2)")
    ap.add_argument("--resnet-steps", type=int, default=3, help="timed steps per setting, ResNet-18 (part 2)")
    ap.add_argument("--seeds", default="0,1,2", help="part 3's seeds (comma-separated)")
    ap.add_argument("--loss-phases", type=int, default=1, help="part 3: phases of two digits each")
    ap.add_argument("--loss-steps", type=int, default=150, help="part 3: steps per phase")
    ap.add_argument("--loss-json", type=Path, default=None,
                    help="part 3: add the seeds' losses to this file and summarise every seed in it")
    ap.add_argument("--loss-last", type=int, default=50, help="the loss is averaged over each phase's last N steps")
    ap.add_argument("--skip-loop", action="store_true")
    ap.add_argument("--skip-fraction", action="store_true")
    ap.add_argument("--skip-resnet", action="store_true")
    ap.add_argument("--skip-loss", action="store_true")
    a = ap.parse_args()
    import platform

    import torch

    print(f"colsim bench_cpu_bf16 — {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, {platform.node()}, "
          f"torch {torch.__version__}, {torch.get_num_threads()} threads, {os.cpu_count()} CPUs, load {load()}")
    print(f"CPU kernels: {cpu_kernels()}")
    d = part_dtypes()
    print("\n0. under model.autocast=bf16 (torch.autocast('cpu', bfloat16)), output dtype by module kind "
          f"(parameters: {d['params']}):")
    print("   " + ", ".join(f"{k} {v}" for k, v in d["modules"].items()))
    if not a.skip_loop:
        r = part_loop(a.steps, a.reps)
        print(f"\n1. simulator loop, seqjepa_cnn, batch 32, backprop ({a.reps} interleaved rates of {a.steps} steps; "
              f"load {r['load'][0]:.1f}-{r['load'][1]:.1f})")
        print(f"   steps/s fp32 {r['fp32']:.2f}, bf16 {r['bf16']:.2f}: bf16 / fp32 = {r['speedup']:.2f}x "
              f"(per rep {', '.join(f'{x:.2f}' for x in r['per_rep'])}; fastest / fastest {r['best']:.2f}x)")
    if not a.skip_fraction:
        cases = [("seqjepa_cnn", "nonstationary", [], 32, a.cnn_steps)]
        if not a.skip_resnet:
            cases.append(("seqjepa_resnet18", "stationary", ["protocol.stream.batch=64", "protocol.stream.episode_length=4",
                                                             "model.window=3", "model.channels_last=true"], 64,
                          a.resnet_steps))
        print("\n2. one full-window training step (backprop), fp32 and bf16 interleaved; matmul 2048^2 between steps")
        print(f"{'model':<18}{'GFLOP':>7}{'s fp32':>9}{'s bf16':>9}{'bf16 x':>8}{'best x':>8}{'mm32 GF/s':>11}{'mm16 GF/s':>11}"
              f"{'frac32':>8}{'frac16':>8}{'16/mm32':>9}  load")
        for c in cases:
            f = part_fraction(*c)
            print(f"{f['model']:<18}{f['flops'] / 1e9:>7.2f}{f['step_fp32']:>9.3f}{f['step_bf16']:>9.3f}"
                  f"{f['speedup']:>7.2f}x{f['best']:>7.2f}x{f['mm_fp32'] / 1e9:>11.0f}{f['mm_bf16'] / 1e9:>11.0f}"
                  f"{f['frac_fp32']:>8.2f}{f['frac_bf16_of_bf16']:>8.2f}{f['frac_bf16_of_fp32']:>9.2f}  "
                  f"{f['load'][0]:.1f}-{f['load'][1]:.1f}")
        print("   medians of the timed steps; best x = fastest fp32 step / fastest bf16 step; frac32 = step FLOP/s in "
              "fp32 / fp32 matmul rate; frac16 = bf16 step / bf16 matmul; 16/mm32 = bf16 step / fp32 matmul")
    if not a.skip_loss:
        L = part_losses([int(x) for x in a.seeds.split(",") if x], a.loss_steps, a.loss_last, a.loss_phases,
                        a.loss_json)
        print(f"\n3. losses, seqjepa_cnn backprop, seeds {','.join(L['seeds'])}, {a.loss_phases} phase(s) of "
              f"{a.loss_steps} steps: mean loss over each phase's last {a.loss_last} steps "
              f"(load {min(L['load']):.1f}-{max(L['load']):.1f})")
        for ph in L["rows"]:
            (mf, cf, _), (mb, cb, _), (md, cd, n) = ph["fp32"], ph["bf16"], ph["diff"]
            within = "within" if abs(md) <= cf else "OUTSIDE"
            print(f"   {ph['metric']}, phase {ph['phase']}: fp32 {mf:.4f} ± {cf:.4f}, bf16 {mb:.4f} ± {cb:.4f} (95 % CI "
                  f"over seeds); paired bf16 - fp32 {md:+.4f} ± {cd:.4f} (n={n}): {within} the fp32 seed-to-seed CI")
            print(f"      per seed fp32 {', '.join(f'{x:.4f}' for x in ph['fp32_seeds'])}; "
                  f"bf16 {', '.join(f'{x:.4f}' for x in ph['bf16_seeds'])}")

if __name__ == "__main__":
    main()
