"""One sweep run as a dask task: :func:`execute` runs in a worker process (colsim.sweep).

It does what ``colsim run`` does for one resolved config (build, ZarrRecorder, simulate, summary)
in the run folder, with ``threads`` torch threads, and never raises for a failing run: the error
is recorded in ``sweep_run.json`` (status ``failed``) and ``error.txt`` and returned, so the
other runs go on. ``sweep_run.json`` is written as ``running`` before the run starts, so a worker
that dies leaves a run that the next sweep runs again.
"""
from __future__ import annotations

import datetime as _dt
import importlib
import json
import os
import shutil
import socket
import time
import traceback
from pathlib import Path

__all__ = ["execute", "write_status"]


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


def _run(spec: dict, run_dir: Path):
    import torch
    import yaml

    from colsim import registry
    from colsim.config import ConfigError, build_run_config

    for pkg in registry.PACKAGES.values():  # the plugin packages register their worlds, models and rules
        importlib.import_module(pkg)
    from colsim.record import ZarrRecorder
    from colsim.simulate import build_for_run, run_attrs
    from colsim.simulate import run as simulate

    torch.set_num_threads(int(spec["threads"]))
    cfg = build_run_config(spec["config"])
    resolved = cfg.to_dict()
    config_yaml = yaml.safe_dump(resolved, sort_keys=False)
    (run_dir / "config.yaml").write_text(config_yaml)
    if cfg.device.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"device {cfg.device}: CUDA is not available on this worker ({socket.gethostname()})")
    world, column, rule_obj, local, optimizer = build_for_run(cfg)
    attrs = run_attrs(cfg, resolved, sweep_point=spec["point"], **spec.get("attrs", {}))
    recorder = ZarrRecorder(run_dir / "store.zarr", attrs, flush_every=cfg.protocol.record.flush_every)
    try:
        result = simulate(column, rule_obj, cfg.protocol, recorder, world=world, optimizer=optimizer, seed=cfg.seed,
                          device=cfg.device, local=local, ckpt_dir=run_dir / "checkpoints", config_yaml=config_yaml,
                          autocast=getattr(cfg.model, "autocast", None))
    except Exception:
        try:
            recorder.close("failed")
        except Exception:  # noqa: BLE001 — the original error is the one to report
            pass
        raise
    (run_dir / "summary.json").write_text(json.dumps(result.summary, indent=2))
    return result
