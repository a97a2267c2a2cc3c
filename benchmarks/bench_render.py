"""Rendering speed of the objects3d world: the numba rasteriser against the vectorised NumPy version
of the same renderer, measured side by side in one process on one core.

Both renderers draw the same views (the same meshes, rotations and lights; ``protocols/_raster.py``
and ``protocols/_raster_numpy.py`` make identical pixels) of the default family (24 objects, 10
instances each) under uniform SO(3) rotations. Repeats alternate numba, NumPy, numba, ... so both
see the same load, and each figure is the median over repeats. Reported per size:

* views/s of each renderer, per wall-clock second and per CPU second of this process
  (``time.process_time``; on a shared host the wall clock also counts time other jobs held the core);
* ``speed-up`` = numba / NumPy views per second (target >= 10) and ``vs target`` = numba views/s /
  2,000 (target >= 1 at 32 px);
* the world's stream: views/s of ``Objects3D.stream`` steps at B = 32 (draws, encoding, rendering).

The process is pinned to one core (``sched_setaffinity``) and torch to one thread; the load average
before and after is printed (the reference host has 2 cores shared with other jobs).

Reference (2026-12-03, the 2-core host shared with other jobs, load average ~10 while measuring):
32 px: numba 30.7k views/s (92k per CPU second), NumPy 320 (1.0k): speed-up 96x wall / 93x CPU, 15x
the 2,000 views/s target (46x per CPU second); with the depth channel 24.7k views/s, 90x. 64 px: numba
12.3k, NumPy 98: 126x. The stream (B = 32: draws, encoding and rendering) 5.8k views/s wall, 17k per
CPU second. The renderers agreed on every pixel. At load 16 the 32 px figures were 8.7k / 110 (79x).

    python benchmarks/bench_render.py [--views 2000] [--repeats 5] [--sizes 32 64] [--depth]
"""
from __future__ import annotations

import argparse
import math
import os
import statistics
import time

import numpy as np
import torch

import colsim.protocols  # noqa: F401  (registers the worlds)
from colsim.protocols._object_family import build_family
from colsim.protocols._raster import render
from colsim.protocols._raster_numpy import render_numpy
from colsim.protocols._rotations import draw_rotation, quat_to_matrix
from colsim.protocols.objects3d import LIGHT0, Objects3DConfig, objects3d

TARGET = 2000.0  # views/s at 32 px on one core
MIN_RATIO = 10.0  # numba / NumPy


def _timed(fn) -> tuple[float, float]:
    """(wall s, CPU s of this process) of one call."""
    w, c = time.perf_counter(), time.process_time()
    fn()
    return time.perf_counter() - w, time.process_time() - c


def side_by_side(n: int, numpy_n: int, size: int, depth: bool, repeats: int, seed: int = 0) -> dict:
    """Median views/s (wall, CPU) of both renderers on the same views, repeats interleaved."""
    p = build_family("all", 10, 0)
    g = torch.Generator().manual_seed(seed)
    rot = quat_to_matrix(draw_rotation(torch.rand(n, 3, generator=g, dtype=torch.float64), math.pi)).numpy()
    mesh = torch.randint(len(p.labels), (n,), generator=g).numpy()
    light = np.tile(np.array(LIGHT0), (n, 1))
    args = (p, mesh, rot, light, 0.2, size, depth)
    sub = (p, mesh[:numpy_n], rot[:numpy_n], light[:numpy_n], 0.2, size, depth)
    a, b = render(*sub), render_numpy(*sub)
    same = float((np.abs(a - b) <= 1e-6).mean())
    render(*args)  # warm: compiled / loaded from numba's cache
    fast, slow = [], []
    for _ in range(repeats):
        fast.append(_timed(lambda: render(*args)))
        slow.append(_timed(lambda: render_numpy(*sub)))
    med = lambda xs, k, m: m / statistics.median(x[k] for x in xs)  # noqa: E731
    return {"numba_wall": med(fast, 0, n), "numba_cpu": med(fast, 1, n), "numpy_wall": med(slow, 0, numpy_n),
            "numpy_cpu": med(slow, 1, numpy_n), "same_pixels": same}


def stream_rate(size: int, depth: bool, steps: int, batch: int = 32) -> tuple[float, float]:
    """views/s (wall, CPU) of the world's stream at B = ``batch``."""
    w = objects3d(Objects3DConfig(image_size=size, depth=depth))
    s = w.stream(batch, 8, None, {})
    state = s.init(torch.Generator().manual_seed(0))
    for _ in range(3):
        state, _ = s.step(state)

    def go():
        nonlocal state
        for _ in range(steps):
            state, _ = s.step(state)

    wall, cpu = _timed(go)
    return steps * batch / wall, steps * batch / max(cpu, 1e-9)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--views", type=int, default=2000, help="views per numba repeat")
    ap.add_argument("--numpy-views", type=int, default=100, help="views per NumPy repeat (same first views)")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--sizes", type=int, nargs="+", default=[32, 64])
    ap.add_argument("--depth", action="store_true", help="also render the depth channel")
    ap.add_argument("--stream-steps", type=int, default=100)
    args = ap.parse_args()
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[0]})
    torch.set_num_threads(1)
    load0 = os.getloadavg()
    print(f"objects3d rendering, one core ({os.cpu_count()} on the host), depth={args.depth}; "
          f"load average before: {load0[0]:.1f} (1 min), {load0[1]:.1f} (5 min)")
    print(f"{'size':>4} | {'numba views/s':>21} | {'NumPy views/s':>17} | {'speed-up':>15} | {'vs target':>15} | "
          f"{'stream views/s':>19} | same px")
    print(f"{'':>4} | {'wall':>10} {'CPU':>10} | {'wall':>8} {'CPU':>8} | {'wall':>7} {'CPU':>7} | "
          f"{'wall':>7} {'CPU':>7} | {'wall':>9} {'CPU':>9} |")
    for size in args.sizes:
        r = side_by_side(args.views, args.numpy_views, size, args.depth, args.repeats)
        sw, sc = stream_rate(size, args.depth, args.stream_steps)
        up_wall, up_cpu = r["numba_wall"] / r["numpy_wall"], r["numba_cpu"] / r["numpy_cpu"]
        print(f"{size:>4} | {r['numba_wall']:>10,.0f} {r['numba_cpu']:>10,.0f} | {r['numpy_wall']:>8,.0f} "
              f"{r['numpy_cpu']:>8,.0f} | {up_wall:>6.1f}x {up_cpu:>6.1f}x | {r['numba_wall'] / TARGET:>6.2f}x "
              f"{r['numba_cpu'] / TARGET:>6.2f}x | {sw:>9,.0f} {sc:>9,.0f} | "
              f"{r['same_pixels']:.4f}")
    load1 = os.getloadavg()
    print(f"load average after: {load1[0]:.1f} (1 min). Targets: speed-up >= {MIN_RATIO:.0f}x, vs target >= 1x "
          f"({TARGET:,.0f} views/s at 32 px); 'same px': share of pixels the two renderers agree on (|d| <= 1e-6)")


if __name__ == "__main__":
    main()
