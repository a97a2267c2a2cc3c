"""Time per column-step of a shared-weights circuit for N = 1, 2, 4, 8 columns (issue 14, item 6).

A circuit with shared weights runs its N columns as ONE batched forward (the N sensor patches stacked
on the batch dimension: (N*B, C, h, w)), so a tick's cost should grow much slower than N. Setting:
the ``columns`` protocol's stream (affine_digits 32 px, B = 32 streams, episodes of 8 views), the
default ``seqjepa_cnn`` column on 20x20 patches (the N patches placed on a grid over the view),
rule ``backprop``. One training step = the simulator's steps 1-6 (stream step, circuit forward, rule
update, optimizer step, teacher update), no recording. The N take turns step by step (order
alternating per round) so load from other processes hits all alike; the column-step time is the
median step time / N, printed as a ratio to N = 1 measured in the same run.

Target: at N = 8 a column-step costs <= 0.5x its N = 1 cost. For contrast the same N = 8 circuit with
per-column weights (a loop of N forwards, ``circuit.shared: false``) is timed in the same rounds.

    python benchmarks/bench_circuit.py [--steps 12] [--batch 32,8] [--ns 1,2,4,8] [--set model.channels_last=true]
"""
from __future__ import annotations

import argparse
import statistics
import time

TARGET = 0.5


def _circuit(n: int, batch: int, shared: bool = True) -> str:
    cols = []
    for i in range(n):  # patches on a grid of offsets 0, 4, 8, 12 (rows) x 0, 12 (columns): all inside 32 px
        top, left = 4 * (i % 4), 12 * (i // 4 % 2)
        cols.append(f"{{name: c{i}, sensor: {{patch: {{top: {top}, left: {left}, size: 20}}}}}}")
    return f"protocol.circuit={{shared: {str(shared).lower()}, columns: [{', '.join(cols)}]}}"


def _setup(n: int, batch: int, extra=(), shared: bool = True):
    import colsim.models  # noqa: F401
    import colsim.protocols  # noqa: F401
    import colsim.rules  # noqa: F401
    from colsim.build import build_run
    from colsim.config import resolve_run_config
    from colsim.simulate import _seeded, keep_freed_memory

    keep_freed_memory()
    cfg = resolve_run_config("columns", rule="backprop", overrides=[_circuit(n, batch, shared), f"protocol.stream.batch={batch}",
                                                                     *extra])
    world, column, rule, local, opt = build_run(cfg)
    stream = world.stream(batch, cfg.protocol.stream.episode_length, None, {})
    return {"column": column, "rule": rule, "opt": opt, "local": local, "params": column.trainable(),
            "rstate": rule.init(column.trainable()), "stream": stream, "ss": stream.init(_seeded(0, 11, 0)),
            "cs": column.init_state(batch, "cpu"), "t": 0}


def _step(s: dict) -> float:
    from colsim.simulate import apply_update

    t0 = time.perf_counter()
    s["ss"], st = s["stream"].step(s["ss"])
    s["cs"], trace = s["column"](s["cs"], st.obs, st.action, st.start | (s["t"] == 0), local=s["local"])
    grads, s["rstate"], _ = s["rule"].update(s["params"], s["rstate"], trace)
    s["rstate"] = apply_update(s["params"], grads, s["opt"], s["rule"], s["rstate"])
    s["column"].update_target(s["t"] + 1)
    s["t"] += 1
    return time.perf_counter() - t0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=12, help="timed steps per N (after 3 warm-up steps)")
    ap.add_argument("--batch", type=int, default=32, help="streams B (each column sees B patches)")
    ap.add_argument("--ns", default="1,2,4,8")
    ap.add_argument("--set", action="append", default=[], help="config override for every N (e.g. model.channels_last=true)")
    args = ap.parse_args(argv)
    ns = [int(x) for x in args.ns.split(",")]
    runs = {n: _setup(n, args.batch, args.set) for n in ns}
    loop_n = max(ns)
    runs["loop"] = _setup(loop_n, args.batch, args.set, shared=False)
    keys = [*ns, "loop"]
    for s in runs.values():
        for _ in range(3):
            _step(s)
    times: dict = {k: [] for k in keys}
    for r in range(args.steps):
        for k in (keys if r % 2 == 0 else keys[::-1]):
            times[k].append(_step(runs[k]))
    base = statistics.median(times[ns[0]]) / ns[0]
    print(f"shared-weights circuit, seqjepa_cnn on 20x20 patches, B = {args.batch}, backprop, "
          f"{args.steps} steps per N (median){' ' + ' '.join(args.set) if args.set else ''}")
    print(f"{'N':>3} {'step s':>8} {'column-step s':>14} {'ratio vs N=' + str(ns[0]):>14}")
    ratio = {}
    for n in ns:
        m = statistics.median(times[n])
        ratio[n] = m / n / base
        print(f"{n:>3} {m:8.3f} {m / n:14.4f} {ratio[n]:14.3f}")
    m = statistics.median(times["loop"])
    print(f"per-column weights, a loop of {loop_n} forwards: step {m:.3f} s, column-step {m / loop_n:.4f} s, "
          f"ratio {m / loop_n / base:.3f}")
    if 8 in ratio:
        ok = ratio[8] <= TARGET
        print(f"target: column-step at N = 8 <= {TARGET}x N = 1: {'met' if ok else 'NOT met'} ({ratio[8]:.3f})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
