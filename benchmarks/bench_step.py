"""Training-step throughput of the default column, recording overhead, and ResNet-18 efficiency.

Prints figures, and ratios against baselines measured in the same run, after the CPU kernels the host offers
(``torch.backends.cpu.get_cpu_capability()`` and the AVX-512 / AMX / bf16 flags of /proc/cpuinfo):

1. steps/s and sequences/s (B streams x steps/s) of the default column (seqjepa_cnn on the
   nonstationary protocol's stream) under ``backprop`` and ``lpl``, through the real
   simulator loop;
2. recording overhead: the same run with recording on (ZarrRecorder, metrics every step,
   collapse diagnostics) and off, as a ratio (target: <= 1.05);
3. optionally (``--full``) the wall time of the default command
   ``colsim run protocols/nonstationary.yaml --rule lpl`` (target: <= 180 s on 2 cores) and the
   share of it spent in the in-run evaluations (``eval_share`` of summary.json; target: <= 0.25);
4. seqjepa_resnet18 at 32 px, batch 64, M = 3 (paper-style: episodes of M+1 views, windows
   full) under backprop: FLOPs of one training step (torch.utils.flop_counter, forward +
   backward) over its measured time, as a fraction of the FLOP/s of a 2048x2048 fp32 matmul
   measured in the same process (target: >= 0.8). Variants: NCHW, channels-last (the preset's
   default), fused AdamW, transparent huge pages for large allocations
   (``THP_MEM_ALLOC_ENABLE=1``, read by torch at start-up, so each variant runs in its own
   subprocess), and with ``--compile`` torch.compile (inductor) on the encoders.
   The matmul reference is measured before and between the timed steps (its rate drifts by
   10-20 % over minutes on a shared host); ``fraction`` divides the median step rate by the
   median matmul rate, ``best/best`` the fastest step by the fastest matmul measurement.
   Reference machine (2 cores, 2026-12-01; a slower, noisier host than 2026-11-24's: matmul
   116-163 GFLOP/s): channels-last 7.0-8.2 s/step, fraction 0.77-0.89 over seven runs (six
   >= 0.80, median 0.82; best/best 0.74-0.90); the same without ``keep_freed_memory`` (glibc
   returns >32 MiB activations to the kernel and faults them in again every step: ~400k page
   faults per step) 9.4-9.7 s/step, 0.69-0.74; NCHW 0.70-0.74; fused AdamW, THP and compile within the
   noise of channels-last (+fused+compile 0.75-0.83, compilation ~20 s). Kept: channels-last
   (seqjepa_resnet18.yaml) and keep_freed_memory (``colsim run`` on CPU); ``model.compile``
   stays opt-in (needs a C++ compiler). The profile of a channels-last step: conv backward
   ~58 % (backward-weights kernels at ~0.6x the matmul rate), conv forward ~23 % (~1.1x),
   batch norm / ReLU backward and forward ~13 %.
   2026-11-24 host (matmul 171-186 GFLOP/s, before keep_freed_memory): NCHW 0.69,
   channels-last 0.76-0.81, +compile 0.79-0.81.

5. with ``--device cuda``: steps/s through the simulator loop of the default column (backprop, lpl)
   and of seqjepa_resnet18 (stationary, batch 64) on the CPU and on the GPU, measured in the same
   process, and the speed-up GPU / CPU; the GPU runs with the device defaults (bf16 autocast,
   channels-last, pinned transfers; colsim/device.py) and once more in float32 (``model.autocast=none``).
   One NVIDIA H200, torch 2.11.0+cu130, 2026-12-04 (the CPU column on its 16-core host; ``--steps 60
   --resnet-steps 6``): steps/s CPU / cuda bf16 / cuda float32 = seqjepa_cnn backprop 31.6 / 54.6 (1.7x) /
   54.6 (1.7x), lpl 35.3 / 46.7 (1.3x) / 53.4 (1.5x), seqjepa_resnet18 1.64 / 22.8 (13.9x) / 24.5 (14.9x)
   (docs/guide/gpu.md; ``benchmarks/gpu_check.sh`` runs this part with the CUDA tests).
   Without CUDA, ``--device cuda`` exits 2 with one line.

    python benchmarks/bench_step.py [--steps 80] [--full] [--skip-default] [--skip-resnet] [--resnet-steps 3]
                                    [--compile] [--variants channels_last,nchw,...] [--device cpu|cuda]
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def cpu_kernels() -> str:
    """The vector ISA torch's CPU kernels dispatch to (``torch.backends.cpu.get_cpu_capability``: DEFAULT, AVX2,
    AVX512, ...) and the host's bf16 / AMX / VNNI flags from /proc/cpuinfo (Linux) — what bf16 autocast can use."""
    import re

    import torch

    flags: set = set()
    try:
        flags = set(re.findall(r"\b(avx512_bf16|avx512f|amx_bf16|amx_tile|amx_int8|avx_vnni|avx512_vnni)\b",
                               Path("/proc/cpuinfo").read_text()))
    except OSError:
        pass
    return f"{torch.backends.cpu.get_cpu_capability()}; flags {' '.join(sorted(flags)) or 'none of avx512/amx'}"


def _setup(rule: str, model: str = "seqjepa_cnn", overrides=(), protocol="nonstationary", device: str = "cpu",
           seed: "int | None" = None):
    import colsim.models  # noqa: F401
    import colsim.protocols  # noqa: F401
    import colsim.rules  # noqa: F401
    from colsim.build import build_run
    from colsim.config import resolve_run_config
    from colsim.simulate import keep_freed_memory

    keep_freed_memory()  # as `colsim run` does on CPU (COLSIM_KEEP_FREED_MEMORY=0 turns it off)
    cfg = resolve_run_config(protocol, rule=rule, model=model, overrides=list(overrides), seed=seed, device=device)
    return (cfg, *build_run(cfg))


def sim_rate(rule: str, steps: int, record: bool, device: str = "cpu", model: str = "seqjepa_cnn", extra=(),
             protocol: str = "nonstationary", warm: int = 5) -> float:
    """Steps/s of the simulator loop (no evaluations) with recording on or off, on ``device``."""
    from colsim.record import NullRecorder, ZarrRecorder
    from colsim.simulate import run

    cfg, world, col, r, local, opt = _setup(rule, model, overrides=[
        f"protocol.phases=[{{name: p, steps: {steps}, classes: [0,1,2,3,4,5,6,7,8,9]}}]",
        "protocol.evaluation.at_start=false", "protocol.record.probe=false",
        f"protocol.record.enabled={'true' if record else 'false'}", *extra], protocol=protocol, device=device)
    proto = cfg.protocol
    with tempfile.TemporaryDirectory() as d:
        rec = ZarrRecorder(Path(d) / "s.zarr", {"bench": True}, flush_every=proto.record.flush_every) if record \
            else NullRecorder()
        times = []

        def on_step(info):
            times.append(time.perf_counter())

        # the end-of-phase evaluation is excluded: time from the first to the last step
        run(col, r, proto, rec, world=world, optimizer=opt, local=local, on_step=on_step, device=cfg.device,
            autocast=getattr(cfg.model, "autocast", None))
    return (len(times) - 1 - warm) / (times[-1] - times[warm])


def part_device(steps: int, resnet_steps: int) -> list[dict]:
    """CPU and CUDA steps/s of the same runs in this process (CUDA with its defaults, then in float32)."""
    cases = [("seqjepa_cnn", "backprop", "nonstationary", (), steps, 5),
             ("seqjepa_cnn", "lpl", "nonstationary", (), steps, 5),
             ("seqjepa_resnet18", "backprop", "stationary",
              ("protocol.stream.batch=64", "protocol.stream.episode_length=4"), resnet_steps, 2)]
    rows = []
    for model, rule, proto, extra, n, warm in cases:
        n = max(n, warm + 3)
        cpu = sim_rate(rule, n, False, "cpu", model, extra, proto, warm)
        gpu = sim_rate(rule, max(n, 40), False, "cuda", model, extra, proto, warm)
        gpu32 = sim_rate(rule, max(n, 40), False, "cuda", model, (*extra, "model.autocast=none"), proto, warm)
        rows.append({"model": model, "rule": rule, "cpu": cpu, "cuda": gpu, "cuda_fp32": gpu32, "speedup": gpu / cpu,
                     "speedup_fp32": gpu32 / cpu})
    return rows


def part_default(steps: int, reps: int = 3) -> dict:
    out = {}
    for rule in ("backprop", "lpl"):
        on, off = [], []
        for rep in range(reps):  # interleaved, alternating order (on, off, off, on, on, off): drifts cancel
            for rec in ((True, False) if rep % 2 == 0 else (False, True)):
                (on if rec else off).append(sim_rate(rule, steps, rec))
        r_on, r_off = statistics.median(on), statistics.median(off)
        out[rule] = {"steps_per_s": r_off, "sequences_per_s": r_off * 32, "steps_per_s_recording": r_on,
                     "recording_overhead": r_off / r_on}
    return out


def part_full() -> dict:
    """The default command end to end: wall time, and the in-run evaluations' share of it (summary.json)."""
    exe = Path(sys.executable).parent / "colsim"
    with tempfile.TemporaryDirectory() as d:
        t = time.perf_counter()
        subprocess.run([str(exe), "run", "protocols/nonstationary.yaml", "--rule", "lpl", "--quiet", "--out",
                        str(Path(d) / "run")], check=True, cwd=HERE.parent, stdout=subprocess.DEVNULL)
        wall = time.perf_counter() - t
        s = json.loads((Path(d) / "run" / "summary.json").read_text())
    return {"wall_s": wall, "run_s": s["wall_s"], "eval_s": s["eval_s"], "eval_share": s["eval_share"],
            "n_evals": len(s["evaluations"])}


# ------------------------------------------------------------------------- ResNet-18
def matmul_flops(n: int = 2048, reps: int = 10, warm: int = 3, dtype: str = "float32") -> float:
    """FLOP/s of an n x n matmul in ``dtype`` (``float32`` or ``bfloat16``; the median of ``reps``)."""
    import torch

    a, b = torch.randn(n, n, dtype=getattr(torch, dtype)), torch.randn(n, n, dtype=getattr(torch, dtype))
    for _ in range(warm):
        a @ b
    ts = []
    for _ in range(reps):
        t = time.perf_counter()
        a @ b
        ts.append(time.perf_counter() - t)
    return 2 * n ** 3 / statistics.median(ts)


def full_window_step(model: str, protocol: str, over: list, B: int, amp: "str | None" = None):
    """One training step of ``model`` (backprop) on ``protocol``'s stream with every window full, as a closure
    ``step(count_flops=False, amp=amp)``: the column forward and the rule update run under
    ``colsim.device.autocast_context("cpu", amp)`` with the rule's grads cast to float32 before the optimizer, as
    the simulator's tick does; ``count_flops=True`` returns the step's FLOPs (forward + backward,
    torch.utils.flop_counter) instead of applying the update. -> (step, column)."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from colsim.device import autocast_context
    from colsim.simulate import apply_update

    cfg, world, col, r, local, opt = _setup("backprop", model, over, protocol=protocol)
    M = cfg.model.window
    stream = world.stream(B, cfg.protocol.stream.episode_length, None, {})
    ss = stream.init(torch.Generator().manual_seed(0))
    cs = col.init_state(B, "cpu")
    params = col.trainable()
    rs = r.init(params)
    # fill the windows (M context views per stream), then time full-window steps
    for t in range(M):
        ss, st = stream.step(ss)
        with torch.no_grad():
            cs, _ = col(cs, st.obs, st.action, torch.zeros(B, dtype=torch.bool) | (t == 0))
    cs["count"][:] = M

    def step(count_flops=False, amp=amp):
        nonlocal rs, ss
        ss, st = stream.step(ss)
        start = torch.zeros(B, dtype=torch.bool)
        if count_flops:
            with FlopCounterMode(display=False) as fc:
                _, tr = col(cs, st.obs, st.action, start)
                r.update(params, rs, tr)
            return fc.get_total_flops()
        with autocast_context("cpu", amp)():
            _, tr = col(cs, st.obs, st.action, start)  # cs is kept: every step sees full windows
            g, rs, _ = r.update(params, rs, tr)
        g = {n: v if v is None or v.dtype == params[n].dtype else v.to(params[n].dtype) for n, v in g.items()}
        rs = apply_update(params, g, opt, r, rs)
        col.update_target(0.5)
        return float(tr["loss"].detach())

    return step, col


def resnet_child(variant: str, steps: int) -> dict:
    over = ["protocol.stream.batch=64", "protocol.stream.episode_length=4", "model.window=3"]
    over.append(f"model.channels_last={'true' if 'channels_last' in variant else 'false'}")
    if "fused" in variant:
        over.append("rule.optimizer.fused=true")
    step, col = full_window_step("seqjepa_resnet18", "stationary", over, 64)
    flops = step(count_flops=True)  # eager: the FLOPs of the model, whatever runs them
    if "compile" in variant:  # model.compile=true, after the FLOP count (inductor on both encoders)
        col.encoder.compile(dynamic=False)
        col.target_encoder.compile(dynamic=False)
    t = time.perf_counter()
    # warm-up (and compilation): the allocator's heap reaches its steady state (no page faults)
    # after about three steps with keep_freed_memory (tests/test_keep_freed_memory.py)
    for _ in range(3):
        step()
    warm_s = time.perf_counter() - t
    # the matmul reference is measured between the timed steps (the host's speed drifts by 10-20 %
    # between processes and over minutes): the fraction compares rates taken in the same conditions
    ts, mms = [], [matmul_flops(reps=5)]
    for _ in range(steps):
        t = time.perf_counter()
        step()
        ts.append(time.perf_counter() - t)
        mms.append(matmul_flops(reps=5, warm=1))
    mm, dt = statistics.median(mms), statistics.median(ts)
    return {"variant": variant, "step_s": dt, "flops_per_step": flops, "achieved_flops": flops / dt,
            "matmul_flops": mm, "matmul_spread": (min(mms) / mm, max(mms) / mm), "fraction": flops / dt / mm,
            # fastest step over fastest matmul: both rates as the host gives them when least contended
            "fraction_best": flops / min(ts) / max(mms), "warmup_s": warm_s}


RESNET_VARIANTS = {"nchw": {}, "channels_last-heap_returned": {"COLSIM_KEEP_FREED_MEMORY": "0"}, "channels_last": {},
                   "channels_last+fused": {}, "channels_last+thp": {"THP_MEM_ALLOC_ENABLE": "1"}}
COMPILE_VARIANTS = {"channels_last+compile": {}, "channels_last+fused+compile": {}}
ALL_VARIANTS = {**RESNET_VARIANTS, **COMPILE_VARIANTS}  # variant -> environment of its subprocess


def part_resnet(steps: int, compile_: bool = False, only: "list[str] | None" = None) -> list[dict]:
    variants = [(v, ALL_VARIANTS[v]) for v in only] if only else \
        list(RESNET_VARIANTS.items()) + (list(COMPILE_VARIANTS.items()) if compile_ else [])
    rows = []
    for name, env in variants:
        e = {**os.environ, **env}
        res = subprocess.run([sys.executable, __file__, "--resnet-child", name, "--resnet-steps", str(steps)],
                             capture_output=True, text=True, env=e, cwd=HERE.parent)
        if res.returncode != 0:
            print(f"  variant {name} failed:\n{res.stderr[-1500:]}")
            continue
        rows.append(json.loads(res.stdout.strip().splitlines()[-1]))
    return rows


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=80)
    ap.add_argument("--full", action="store_true", help="also time the default command end to end")
    ap.add_argument("--skip-resnet", action="store_true")
    ap.add_argument("--skip-default", action="store_true", help="skip parts 1-2 (the default column)")
    ap.add_argument("--resnet-steps", type=int, default=3)
    ap.add_argument("--compile", action="store_true", help="add the torch.compile (inductor) ResNet variants")
    ap.add_argument("--variants", default=None,
                    help="comma-separated ResNet variants to run (default: all; --compile adds the compiled ones)")
    ap.add_argument("--resnet-child", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"],
                    help="cuda: also compare CPU and GPU steps/s in this run (part 5)")
    a = ap.parse_args()
    if a.device == "cuda":
        import torch

        if not torch.cuda.is_available():
            ap.exit(2, "error: --device cuda: CUDA is not available on this machine; use --device cpu\n")
    only = a.variants.split(",") if a.variants else None
    unknown = [v for v in only or [] if v not in ALL_VARIANTS]
    if unknown:
        ap.error(f"--variants: unknown {unknown}; choose from {', '.join(ALL_VARIANTS)}")  # exit 2
    if a.resnet_child:
        print(json.dumps(resnet_child(a.resnet_child, a.resnet_steps)))
        return
    import torch

    print(f"colsim bench_step — torch {torch.__version__}, {torch.get_num_threads()} threads")
    print(f"CPU kernels: {cpu_kernels()}")
    if not a.skip_default:
        d = part_default(a.steps)
        print("\n1-2. default column (seqjepa_cnn, batch 32, M=3), simulator loop")
        print(f"{'rule':<10}{'steps/s':>10}{'seq/s':>10}{'steps/s rec':>14}{'rec overhead':>14}")
        for rule, v in d.items():
            ok = "PASS" if v["recording_overhead"] <= 1.05 else "FAIL"
            print(f"{rule:<10}{v['steps_per_s']:>10.2f}{v['sequences_per_s']:>10.1f}{v['steps_per_s_recording']:>14.2f}"
                  f"{v['recording_overhead']:>13.3f}x  {ok} (target <= 1.05x)")
        print(f"lpl / backprop step-time ratio: {d['backprop']['steps_per_s'] / d['lpl']['steps_per_s']:.2f}")
    if a.full:
        f = part_full()
        w = f["wall_s"]
        print(f"\n3. colsim run protocols/nonstationary.yaml --rule lpl: {w:.1f} s  "
              f"{'PASS' if w <= 180 else 'FAIL'} (target <= 180 s)")
        print(f"   in-run evaluation: {f['eval_s']:.1f} s over {f['n_evals']} evaluations = {f['eval_share']:.2f} of the "
              f"simulator's {f['run_s']:.1f} s  {'PASS' if f['eval_share'] <= 0.25 else 'FAIL'} (target <= 0.25)")
    if not a.skip_resnet:
        print("\n4. seqjepa_resnet18, 32 px, batch 64, M=3, backprop (one subprocess per variant)")
        rows = part_resnet(a.resnet_steps, a.compile, only)
        print(f"{'variant':<30}{'s/step':>8}{'GFLOP/step':>12}{'GFLOP/s':>10}{'matmul GFLOP/s':>16}"
              f"{'(min-max)':>12}{'fraction':>10}{'best/best':>11}{'warm-up s':>11}")
        for r in rows:
            lo, hi = r["matmul_spread"]
            print(f"{r['variant']:<30}{r['step_s']:>8.2f}{r['flops_per_step'] / 1e9:>12.1f}"
                  f"{r['achieved_flops'] / 1e9:>10.1f}{r['matmul_flops'] / 1e9:>16.1f}{f'{lo:.2f}-{hi:.2f}':>12}"
                  f"{r['fraction']:>10.2f}{r['fraction_best']:>11.2f}{r['warmup_s']:>11.1f}")
        if rows:
            best = max(rows, key=lambda r: r["fraction"])
            print(f"best: {best['variant']} at {best['fraction']:.2f} of the matmul rate  "
                  f"{'PASS' if best['fraction'] >= 0.8 else 'FAIL'} (target >= 0.80)")
    if a.device == "cuda":
        print(f"\n5. CPU vs {torch.cuda.get_device_name()} (simulator loop, same process; cuda = bf16 autocast + "
              "channels-last + pinned transfers, cuda fp32 = model.autocast=none)")
        print(f"{'model':<18}{'rule':<10}{'CPU steps/s':>12}{'cuda':>10}{'speed-up':>10}{'cuda fp32':>11}"
              f"{'speed-up':>10}")
        for r in part_device(a.steps, max(a.resnet_steps, 6)):
            print(f"{r['model']:<18}{r['rule']:<10}{r['cpu']:>12.2f}{r['cuda']:>10.2f}{r['speedup']:>9.1f}x"
                  f"{r['cuda_fp32']:>11.2f}{r['speedup_fp32']:>9.1f}x")


if __name__ == "__main__":
    main()
