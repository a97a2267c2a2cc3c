"""A run folder: set up, run and closed the same way by ``colsim run``, ``colsim run --resume`` and a sweep task.

A run folder holds ``config.yaml`` (the resolved config), ``store.zarr`` (its root attributes from
:func:`run_attrs`), ``checkpoints/`` and, once the run ends, ``summary.json``. Every path through
:func:`execute` gives the store the same status for the same event: ``completed`` / ``diverged`` /
``interrupted`` from the simulator; ``interrupted`` also for a KeyboardInterrupt that escaped it and for an
I/O error (a full disk: the run resumes from its last checkpoint once there is room); ``failed`` for any other
exception. The exception then propagates to the caller, who reports it.
"""
from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import Callable, Optional

import torch
import yaml

from colsim.sim.host import keep_freed_memory
from colsim import simulate
from colsim.simulate import RunResult

__all__ = ["build_for_run", "run_attrs", "git_revision", "new_run", "execute", "execute_ensemble"]


def build_for_run(cfg):
    """What every run does before its first step (``colsim run``, ``--resume``, a sweep task):
    deterministic algorithms (warn only), :func:`keep_freed_memory` on CPU, then
    ``colsim.build.build_run(cfg)`` -> (world, column, rule, local, optimizer).

    On CUDA it also sets ``CUBLAS_WORKSPACE_CONFIG=:4096:8`` when the environment leaves it unset: cuBLAS
    (CUDA >= 10.2) is deterministic only with a fixed workspace, read when its first handle is made, so
    it must be set before the run's first matrix product (NVIDIA's cuBLAS docs, "Results reproducibility";
    PyTorch's "Reproducibility" notes). With it a CUDA run repeats bit for bit and resumes exactly
    (tests/test_device.py, run on an H200)."""
    from colsim.build import build_run

    if cfg.device != "cpu":
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(True, warn_only=True)
    if cfg.device == "cpu":
        keep_freed_memory()  # reuse activation memory between steps (see its docstring)
    return build_run(cfg)


def run_attrs(cfg, resolved: dict, **extra) -> dict:
    """The run store's root attributes (docs/reference/store.md): the resolved config, the run's
    identity (rule, model, protocol, seed, device), versions and start time, then ``extra``."""
    import datetime as _dt

    from colsim import __version__

    return {"config": resolved, "rule": cfg.rule.name, "model": cfg.protocol.model, "protocol": cfg.protocol.name,
            "seed": cfg.seed, "device": cfg.device, "colsim_version": __version__, "torch_version": torch.__version__,
            "started": _dt.datetime.now().isoformat(timespec="seconds"), **extra}


def git_revision() -> str:
    """The short commit of the colsim checkout that runs (``unknown`` outside a git checkout)."""
    try:
        here = Path(__file__).resolve().parent.parent
        out = subprocess.run(["git", "-C", str(here), "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                             timeout=5)
        return out.stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def new_run(run_dir: Path, cfg, **attrs):
    """Write ``config.yaml`` and open a fresh store in ``run_dir`` -> (config YAML text, recorder)."""
    from colsim.record import ZarrRecorder

    resolved = cfg.to_dict()
    config_yaml = yaml.safe_dump(resolved, sort_keys=False)
    (Path(run_dir) / "config.yaml").write_text(config_yaml)
    recorder = ZarrRecorder(Path(run_dir) / "store.zarr", run_attrs(cfg, resolved, **attrs),
                            flush_every=cfg.protocol.record.flush_every,
                            flush_seconds=cfg.protocol.record.flush_seconds)
    return config_yaml, recorder


def execute(run_dir: Path, cfg, built, recorder, config_yaml: str, *, resume: Optional[dict] = None,
            on_step: Optional[Callable[[dict], None]] = None) -> RunResult:
    """Run the simulator in ``run_dir`` (checkpoints in ``checkpoints/``), then write ``summary.json``.

    ``built`` = :func:`build_for_run`'s (world, column, rule, local, optimizer). An exception from the run closes
    the store as ``failed`` (``interrupted`` for KeyboardInterrupt or an I/O error) before it propagates."""
    world, column, rule, local, optimizer = built
    try:
        result = simulate.run(column, rule, cfg.protocol, recorder, world=world, optimizer=optimizer, seed=cfg.seed,
                          device=cfg.device, local=local, ckpt_dir=Path(run_dir) / "checkpoints",
                          config_yaml=config_yaml, resume=resume, on_step=on_step,
                          autocast=getattr(cfg.model, "autocast", None))
    except BaseException as exc:
        try:
            recorder.close("interrupted" if isinstance(exc, (KeyboardInterrupt, OSError)) else "failed")
        except Exception:  # noqa: BLE001 — the original error is the one to report
            pass
        raise
    (Path(run_dir) / "summary.json").write_text(json.dumps(result.summary, indent=2))
    return result


def build_seeds(cfgs: list) -> list:
    """Each seed's world, column, rule and optimizer (:func:`build_for_run`), with its global RNG as its run starts,
    for a seed ensemble -> [(built, rng states)]; ConfigError (one line) when a seed's rule or column cannot run
    as one (:func:`colsim.sim.ensemble.ensemble_refusal`)."""
    from colsim.checkpoint import rng_states
    from colsim.config import ConfigError
    from colsim.sim.ensemble import ensemble_refusal

    built = []
    for cfg in cfgs:
        b = build_for_run(cfg)
        built.append((b, rng_states()))
        why = ensemble_refusal(cfg.rule.name, b.rule, b.column)
        if why is not None:
            raise ConfigError(why)
    return built


def execute_ensemble(runs: list, cfg, *, on_step: Optional[Callable[[dict], None]] = None) -> list[RunResult]:
    """:func:`execute` for a seed ensemble (:func:`colsim.simulate_ensemble.run_ensemble`): ``runs`` are the seeds'
    :class:`~colsim.simulate_ensemble.SeedRun` (their folders set up by :func:`new_run`); each folder gets its
    ``summary.json``. An exception closes every store as :func:`execute` does, then propagates."""
    from colsim.simulate_ensemble import run_ensemble

    try:
        results = run_ensemble(runs, cfg.rule, cfg.protocol, device=cfg.device, on_step=on_step)
    except BaseException as exc:
        for r in runs:
            try:
                r.recorder.close("interrupted" if isinstance(exc, (KeyboardInterrupt, OSError)) else "failed")
            except Exception:  # noqa: BLE001 — the original error is the one to report
                pass
        raise
    for r, result in zip(runs, results):
        (r.dir / "summary.json").write_text(json.dumps(result.summary, indent=2))
    return results
