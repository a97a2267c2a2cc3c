"""The per-layer read-out against the training budget (issue 31's budget curve), from run folders.

A run whose ``summary.json`` has ``layer_readout_accuracy`` (models/echospike.py: a linear classifier per layer on
its full spike-count vector, the input first) gives:

* its last evaluation, under its rule, at its samples (steps x the stream's batch);
* its step-0 evaluation, where it has one, under ``untrained``: the same seed's initial layers, the same read-out;
* a run matched to another (``rule.from_run``: the rate-matched arm, rules/rate_matched.py) stands at that run's
  samples, and its step 0 is not counted again.

:func:`collect` returns ``{arm: {samples: {seed: accuracies (L,)}}}``; :func:`paired` the paired difference of two
arms over their common seeds (mean, 95 % CI half-width, n; colsim.analysis.compare.mean_ci). Read by the dashboard's
"Read-out vs training samples" row and by ``examples/espp_budget_table.py``.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Iterable, Optional

import numpy as np
import yaml

from colsim.analysis.compare import mean_ci

__all__ = ["collect", "paired", "layer_names", "run_samples"]


def _read(run_dir: Path) -> "tuple[dict, dict] | None":
    try:
        s = json.loads((run_dir / "summary.json").read_text())
        c = yaml.safe_load((run_dir / "config.yaml").read_text())
    except (OSError, ValueError, yaml.YAMLError):
        return None
    return s, c


def run_samples(run_dir) -> Optional[int]:
    """steps done x the stream's batch of a finished run folder, or None."""
    got = _read(Path(run_dir))
    if got is None:
        return None
    s, c = got
    try:
        return int(s["steps"]) * int(c["protocol"]["stream"]["batch"])
    except (KeyError, TypeError, ValueError):
        return None


def _run_dirs(paths: Iterable) -> list[Path]:
    """Run folders, a sweep folder standing for its runs (``DIR/runs/*``)."""
    out = []
    for p in map(Path, paths):
        out += sorted(d for d in (p / "runs").iterdir() if d.is_dir()) if (p / "runs").is_dir() else [p]
    return out


def collect(paths: Iterable) -> dict:
    """``{arm: {samples: {seed: np.ndarray (L,)}}}`` over the run (or sweep) folders ``paths`` that have per-layer
    read-outs; completed runs only."""
    arms: dict = {}
    for d in _run_dirs(paths):
        got = _read(d)
        if got is None:
            continue
        s, c = got
        if not s.get("layer_readout_accuracy") or s.get("status") != "completed":
            continue
        acc = np.asarray(s["layer_readout_accuracy"], dtype=float)
        seed, rule = int(c.get("seed", 0)), str((c.get("rule") or {}).get("name", "?"))
        matches = (c.get("rule") or {}).get("from_run")
        x = run_samples(matches) if matches else run_samples(d)
        if x is None:
            continue
        arms.setdefault(rule, {}).setdefault(x, {})[seed] = acc[-1]
        ev = s.get("evaluations") or []
        if not matches and ev and int(ev[0].get("step", -1)) == 0 and len(acc) > 1:
            arms.setdefault("untrained", {}).setdefault(x, {})[seed] = acc[0]
    return arms


def layer_names(paths: Iterable) -> list[str]:
    for d in _run_dirs(paths):
        got = _read(d)
        if got is not None and got[0].get("layer_readout_names"):
            return list(got[0]["layer_readout_names"])
    return []


def paired(arms: dict, a: str, b: str, samples: int, layer: int) -> "tuple[float, float, int]":
    """Arm ``a`` minus arm ``b`` at ``samples`` on layer index ``layer``, paired over their common seeds."""
    A, B = arms.get(a, {}).get(samples, {}), arms.get(b, {}).get(samples, {})
    seeds = sorted(set(A) & set(B))
    return mean_ci([A[s][layer] - B[s][layer] for s in seeds])
