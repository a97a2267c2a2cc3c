"""Tiny configuration of the default column and world, fast on 2 CPU cores (imported by tests)."""
from __future__ import annotations

import colsim.models  # noqa: F401  (registers)
import colsim.protocols  # noqa: F401
import colsim.rules  # noqa: F401

TINY = [
    "model.encoder.channels=[4,8]",
    "model.action_embed=8",
    "model.aggregator.layers=1",
    "model.aggregator.heads=2",
    "model.predictor.hidden=16",
    "protocol.world.image_size=16",
    "protocol.stream.batch=8",
    "protocol.stream.episode_length=4",
    "protocol.evaluation.probe_samples=20",
    "protocol.evaluation.views=3",
]


def build_tiny(rule: str = "backprop", protocol: str = "nonstationary", extra=(), steps=None, seed=0):
    from colsim.build import build_run
    from colsim.config import resolve_run_config

    cfg = resolve_run_config(protocol, rule=rule, overrides=TINY + list(extra), seed=seed, steps=steps)
    return (cfg, *build_run(cfg))


def rule_updates(spec: str, extra=(), steps: int = 2, batch: int = 8):
    """Build the tiny column under ``spec`` and feed ``steps`` ticks of a two-digit stream through the
    column and ``rule.update`` (no optimizer step) -> (grads, metrics, local, rule state) of the last tick."""
    from colsim.simulate import _seeded

    cfg, world, column, rule, local, opt = build_tiny(spec, extra=list(extra))
    params = column.trainable()
    state = rule.init(params)
    stream = world.stream(batch, 4, [0, 1], {})
    ss = stream.init(_seeded(0, 1))
    cs = column.init_state(batch, "cpu")
    for t in range(steps):
        ss, st = stream.step(ss)
        cs, trace = column(cs, st.obs, st.action, st.start | (t == 0), local=local)
        grads, state, metrics = rule.update(params, state, trace)
    return grads, metrics, local, state


def stream_steps(world, n: int, batch: int, length: int = 2, classes=None, overrides=None, seed: int = 0) -> list:
    """The first ``n`` Steps of ``world``'s stream (``batch``, episode ``length``, a phase's ``classes`` /
    world ``overrides``), its generator seeded with ``seed``."""
    import torch

    s = world.stream(batch, length, classes, overrides or {})
    state = s.init(torch.Generator().manual_seed(seed))
    out = []
    for _ in range(n):
        state, st = s.step(state)
        out.append(st)
    return out
