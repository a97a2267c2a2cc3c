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
