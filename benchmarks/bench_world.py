"""World speed: views/s of affine_digits streams and probe sets, against a bare warp measured in the same run.

Prints, for the default stream (B = 32 streams, S = 32 px, the nonstationary protocol's shape)
and each appearance context, the stream's views/s (B views per ``stream.step``) and, for probe
sets (200 episodes x 4 views, as ``colsim run`` draws one per phase), views/s of
``world.probe_set``. Each is also given as a ratio to the *baseline*: one ``F.grid_sample`` of
the same batch of canonical images with a precomputed sampling grid — the bilinear warp that
every view needs, with no drawing, encoding or bookkeeping. The ratio (world / baseline, <= 1)
is what the world adds on top of the warp, and stays comparable across machines; the baseline
is measured before and after the world and its median taken (a shared host drifts).

The wall-clock test that used to sit in ``tests/protocols`` (median step < 10 ms at B = 32)
lives here as a figure: the world must stay far below the column's step (~100 ms on 2 cores).
Reference machine (2 shared cores, 1 thread, 2026-12-03): baseline ~420k views/s; stream none /
invert / thick ~92k views/s (ratio 0.22, 0.35 ms per step; thick dilates the pool once per
stream), gamma and blur_noise ~41k (0.10, 0.8 ms); probe_set 75k views/s (0.18; ~11 ms per
200 x 4 set), with blur_noise 7k (0.02; ~115 ms per set: single-channel conv2d on CPU).

    python benchmarks/bench_world.py [--steps 300] [--batch 32] [--size 32] [--threads 1]
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F

import colsim.protocols  # noqa: F401  (registers the world)
from colsim.protocols._appearance import APPEARANCES
from colsim.protocols.affine_digits import AffineDigitsConfig, affine_digits


def _rate(fn, n_views: int, repeats: int) -> float:
    """Median views/s of ``fn`` (each call makes ``n_views`` views) over ``repeats`` calls after 5 warm-ups."""
    for _ in range(5):
        fn()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return n_views / statistics.median(times)


def baseline(world, batch: int, repeats: int) -> float:
    """views/s of one bilinear grid_sample of ``batch`` canonical images (random affine grid, precomputed)."""
    S = world.cfg.image_size
    g = torch.Generator().manual_seed(0)
    img = world.train_images[torch.randint(len(world.train_images), (batch,), generator=g)]  # (B, 1, S, S)
    mat = torch.eye(2, 3).expand(batch, 2, 3) + 0.1 * torch.randn(batch, 2, 3, generator=g)
    grid = F.affine_grid(mat, [batch, 1, S, S], align_corners=False)  # (B, S, S, 2)
    return _rate(lambda: F.grid_sample(img, grid, mode="bilinear", padding_mode="zeros", align_corners=False),
                 batch, repeats)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=300, help="timed stream steps per variant")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--size", type=int, default=32)
    ap.add_argument("--threads", type=int, default=1, help="torch threads (the world runs beside the column)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    world = affine_digits(AffineDigitsConfig(image_size=args.size))
    base = [baseline(world, args.batch, args.steps)]
    rows = []
    for appearance in APPEARANCES:
        ov = {"appearance": appearance}
        stream = world.stream(args.batch, 8, None, ov)
        box = [stream.init(torch.Generator().manual_seed(0))]

        def step():
            box[0], _ = stream.step(box[0])

        rows.append((f"stream  {appearance}", _rate(step, args.batch, args.steps)))
    for appearance in ("none", "blur_noise"):
        ov = {"appearance": appearance}
        rows.append((f"probe_set {appearance} (200 x 4)",
                     _rate(lambda: world.probe_set(None, 200, 4, torch.Generator().manual_seed(0), ov), 800, 10)))
    base.append(baseline(world, args.batch, args.steps))
    ref = statistics.median(base)
    print(f"affine_digits world speed: B = {args.batch}, S = {args.size}, {args.threads} thread(s)")
    print(f"baseline (bare grid_sample of the batch): {ref:,.0f} views/s "
          f"(before {base[0]:,.0f}, after {base[1]:,.0f})")
    print(f"{'variant':<34} {'views/s':>12} {'ratio':>7} {'ms / step':>10}")
    for name, rate in rows:
        per = f"{1000 * args.batch / rate:10.2f}" if name.startswith("stream") else f"{'':>10}"
        print(f"{name:<34} {rate:12,.0f} {rate / ref:7.2f} {per}")


if __name__ == "__main__":
    main()
