"""One sweep run as a dask task: :func:`execute` runs in a worker process (colsim.sweep).

It sets up and runs the run folder exactly as ``colsim run`` does (:mod:`colsim.rundir`), with ``threads`` torch threads, and never raises for a failing run: the error
is recorded in ``sweep_run.json`` (status ``failed``) and ``error.txt`` and returned, so the
other runs go on. ``sweep_run.json`` is written as ``running`` before the run starts, so a worker
that dies leaves a run that the next sweep runs again.
"""
from __future__ import annotations

import datetime as _dt
import json
import os
import shutil
import socket
import time
import traceback
from pathlib import Path

__all__ = ["execute", "execute_ensemble", "write_status"]


def _now() -> str:
    return _dt.datetime.now().isoformat(timespec="seconds")


def write_status(run_dir: Path, meta: dict) -> None:
    tmp = run_dir / "sweep_run.json.tmp"
    tmp.write_text(json.dumps(meta, indent=2, default=str))
    os.replace(tmp, run_dir / "sweep_run.json")


def execute(spec: dict) -> dict:
    """Run ``spec`` = {name, point, identity, config, dir, threads, attempts, attrs} in this process -> its status dict
    (``sweep_run.json``: name, point, identity (rule, model, protocol, seed), status, error, attempts, steps,
    wall_s, host, pid, threads, started, finished).

    ``dir`` is replaced by a fresh run folder (a previous failed / interrupted attempt is removed).
    """
    run_dir = Path(spec["dir"])
    if run_dir.exists():
        shutil.rmtree(run_dir)
    (run_dir / "checkpoints").mkdir(parents=True)
    meta = {"name": spec["name"], "point": spec["point"], "identity": spec.get("identity", {}), "status": "running",
            "error": None,
            "attempts": int(spec.get("attempts", 0)) + 1, "started": _now(), "host": socket.gethostname(),
            "pid": os.getpid(), "threads": spec["threads"]}
    write_status(run_dir, meta)
    t0 = time.perf_counter()
    try:
        result = _run(spec, run_dir)
        meta.update(status=result.status, steps=result.steps)
    except Exception as exc:  # noqa: BLE001 — any failure of one run is recorded, never propagated
        meta.update(status="failed", error=f"{type(exc).__name__}: {exc}".splitlines()[0][:500])
        (run_dir / "error.txt").write_text(traceback.format_exc())
    meta.update(wall_s=round(time.perf_counter() - t0, 3), finished=_now())
    write_status(run_dir, meta)
    return meta


def execute_ensemble(specs: list[dict]) -> list[dict]:
    """The sweep runs ``specs`` (each as :func:`execute` takes it), which differ only in their seed, as one seed
    ensemble in this process (``colsim run --seeds ... --ensemble``; :func:`colsim.rundir.execute_ensemble`) -> each
    run's status dict, in order. Every run folder is set up and marked ``running`` first; a failure before or
    during the ensemble is recorded in every run's ``sweep_run.json`` and ``error.txt`` and never raised."""
    metas, dirs = [], []
    for spec in specs:
        run_dir = Path(spec["dir"])
        if run_dir.exists():
            shutil.rmtree(run_dir)
        (run_dir / "checkpoints").mkdir(parents=True)
        meta = {"name": spec["name"], "point": spec["point"], "identity": spec.get("identity", {}),
                "status": "running", "error": None, "attempts": int(spec.get("attempts", 0)) + 1, "started": _now(),
                "host": socket.gethostname(), "pid": os.getpid(), "threads": spec["threads"],
                "ensemble": [int(sp["config"]["seed"]) for sp in specs]}
        write_status(run_dir, meta)
        metas.append(meta)
        dirs.append(run_dir)
    t0 = time.perf_counter()
    try:
        results = _run_ensemble(specs, dirs)
        for meta, res in zip(metas, results):
            meta.update(status=res.status, steps=res.steps)
    except Exception as exc:  # noqa: BLE001 — recorded in every run of the ensemble, never propagated
        for meta, run_dir in zip(metas, dirs):
            meta.update(status="failed", error=f"{type(exc).__name__}: {exc}".splitlines()[0][:500])
            (run_dir / "error.txt").write_text(traceback.format_exc())
    wall = round(time.perf_counter() - t0, 3)
    for meta, run_dir in zip(metas, dirs):
        meta.update(wall_s=wall, finished=_now())
        write_status(run_dir, meta)
    return metas


def _run_ensemble(specs: list[dict], dirs: list[Path]):
    import torch

    from colsim import registry
    from colsim.config import build_run_config
    from colsim.rundir import build_seeds, execute_ensemble as run_seeds, new_run
    from colsim.simulate_ensemble import SeedRun

    registry.load_plugins()
    torch.set_num_threads(int(specs[0]["threads"]))
    cfgs = [build_run_config(spec["config"]) for spec in specs]
    built = build_seeds(cfgs)
    seeds = [cfg.seed for cfg in cfgs]
    runs = []
    for spec, cfg, d, (b, rng) in zip(specs, cfgs, dirs, built):
        config_yaml, recorder = new_run(d, cfg, sweep_point=spec["point"], ensemble=seeds, **spec.get("attrs", {}))
        runs.append(SeedRun(cfg.seed, b, recorder, d, config_yaml, rng))
    return run_seeds(runs, cfgs[0])


def _run(spec: dict, run_dir: Path):
    import torch

    from colsim import registry
    from colsim.config import build_run_config
    from colsim.device import check_device
    from colsim.rundir import build_for_run, execute, new_run

    registry.load_plugins()  # the plugin packages register their worlds, models and rules
    torch.set_num_threads(int(spec["threads"]))
    cfg = build_run_config(spec["config"])
    check_device(cfg.device, f"device {cfg.device}", where=f"on this worker ({socket.gethostname()})",
                 fix="run the sweep where the workers have CUDA")
    built = build_for_run(cfg)
    config_yaml, recorder = new_run(run_dir, cfg, sweep_point=spec["point"], **spec.get("attrs", {}))
    return execute(run_dir, cfg, built, recorder, config_yaml)
