"""``colsim run``: a new run, ``--seeds`` runs, ``--resume`` a checkpoint into a new folder or a stopped run in
place; each in a locked run folder set up by :mod:`colsim.rundir`."""
from __future__ import annotations

import datetime as _dt
import errno
import shutil
import signal
from pathlib import Path
from typing import List, Optional

import typer
from rich.console import Console

from colsim import registry
from colsim.config import ConfigError, parse_seeds
from colsim.cli.app import _fail, _lock, _out_dir, _resolve, app, check_writable, console, err_console
from colsim.cli.summary import print_summary


@app.command()
def run(
    protocol: Optional[str] = typer.Argument(None, help="protocol YAML path or packaged name (stationary, "
                                             "nonstationary); not needed with --resume RUN_DIR"),
    rule: Optional[str] = typer.Option(None, "--rule", help="rule spec: lpl, backprop, lpl+metaplastic, ..."),
    model: Optional[str] = typer.Option(None, "--model", help="model preset (seqjepa_cnn, seqjepa_resnet18, ...)"),
    set_: Optional[List[str]] = typer.Option(None, "--set", help="override KEY=VALUE, e.g. rule.optimizer.lr=1e-3"),
    steps: Optional[int] = typer.Option(None, "--steps", help="shorten the run to N steps (phases keep proportions)"),
    seed: Optional[int] = typer.Option(None, "--seed", help="random seed (default 0)"),
    seeds: Optional[str] = typer.Option(None, "--seeds", help="several seeds, one run each, e.g. 0,1,2 or 0-4 "
                                        "(run folders get a -s<seed> suffix)"),
    device: Optional[str] = typer.Option(None, "--device", help="cpu | cuda"),
    out: Optional[Path] = typer.Option(None, "--out", help="run folder (default runs/<time>-<protocol>-<rule>)"),
    quiet: bool = typer.Option(False, "--quiet", help="no progress bar"),
    ensemble: bool = typer.Option(False, "--ensemble", help="with --seeds: run the seeds as one batched program in "
                                  "this process (stacked parameters, vmapped forward); each seed still gets its own "
                                  "run folder, equal to its separate run's (CPU; backprop on the default column)"),
    resume: Optional[Path] = typer.Option(None, "--resume", help="RUN_DIR: continue that run in place from its latest "
                                          "checkpoint (exactly: same numbers as an uninterrupted run on CPU); or a "
                                          "checkpoint .pt: a new run (--out) continuing from it"),
):
    """Run a protocol under a rule; write config.yaml, store.zarr, summary.json, checkpoints/."""
    if resume is not None and resume.is_dir():
        given = [n for n, v in (("PROTOCOL", protocol), ("--rule", rule), ("--model", model), ("--set", set_),
                                ("--steps", steps), ("--seed", seed), ("--seeds", seeds), ("--device", device),
                                ("--out", out), ("--ensemble", ensemble)) if v]
        if given:
            _fail(f"--resume {resume}: continues the run as its config.yaml says; drop {', '.join(given)}")
        return _resume_in_place(resume, quiet)
    if protocol is None:
        _fail("PROTOCOL: give a protocol (e.g. nonstationary), or --resume RUN_DIR to continue a run")
    if ensemble and seeds is None:
        _fail("--ensemble: give the seeds to run together with --seeds, e.g. --seeds 0-7")
    if seeds is None:
        return _run_one(protocol, rule, model, set_, steps, seed, device, out, quiet, resume)
    try:
        seed_list = parse_seeds(seeds)
        if seed is not None or resume is not None:
            raise ConfigError("--seeds: give either --seeds or --seed/--resume, not both")
        if ensemble and len(seed_list) < 2:
            raise ConfigError(f"--ensemble: --seeds {seeds} is one seed; an ensemble needs two or more (or drop "
                              "--ensemble)")
    except ConfigError as exc:
        _fail(str(exc))
        return
    if ensemble:
        return _run_ensemble(protocol, rule, model, set_, steps, seed_list, device, out, quiet)
    failed = []
    for s in seed_list:
        o = None if out is None else Path(f"{out}-s{s}")
        try:
            _run_one(protocol, rule, model, set_, steps, s, device, o, quiet, None, suffix=f"-s{s}")
        except typer.Exit as exc:
            if exc.exit_code == 2:
                raise
            if exc.exit_code in (130, 143):  # a signal stops the whole command: no further seed starts
                rest = seed_list[seed_list.index(s) + 1:]
                if rest:
                    err_console.print(f"[bold red]stopped[/]: seeds {', '.join(map(str, rest))} were not started; "
                                      f"run them with --seeds {','.join(map(str, rest))}", highlight=False,
                                      soft_wrap=True)
                raise
            failed.append(s)
    if failed:
        err_console.print(f"[bold red]runs failed[/] for seeds {failed}")
        raise typer.Exit(1)


def _run_one(protocol, rule, model, set_, steps, seed, device, out, quiet, resume, suffix: str = ""):
    from colsim.checkpoint import load_checkpoint
    from colsim.config import build_run_config, load_yaml_text
    from colsim.device import check_device
    from colsim.rundir import build_for_run, git_revision, new_run

    ckpt = None
    try:
        if resume is not None:
            if not resume.is_file():
                raise ConfigError(f"--resume {resume}: no such run folder or checkpoint file")
            try:
                ckpt = load_checkpoint(resume)
            except Exception as exc:  # noqa: BLE001 — any unreadable file is bad input
                raise ConfigError(f"--resume {resume}: not a colsim checkpoint ({type(exc).__name__})") from None
            ckpt.pop("evals", None)  # a new run folder: its store and summary start at the checkpoint
            registry.load_plugins()
            cfg = build_run_config(load_yaml_text(ckpt["config"], str(resume)))
            if Path(protocol).stem != cfg.protocol.name and protocol != cfg.protocol.name:
                raise ConfigError(f"--resume {resume}: checkpoint is of protocol {cfg.protocol.name!r}, not {protocol!r}")
        else:
            cfg = _resolve(protocol, rule, model, set_, seed, device, steps)
        check_device(cfg.device, f"--device {cfg.device}")
        # the rule is built first: it may attach parameters (layerwise's predictors) the checkpoint holds
        built = build_for_run(cfg)
        if ckpt is not None:
            built[1].load_state_dict(ckpt["model"])  # the column, in place: the optimizer keeps the same tensors
        out_dir = _out_dir(out, cfg, suffix)
        lock = _lock(out_dir, "--out")
    except ConfigError as exc:
        _fail(str(exc))
        return
    try:
        try:
            config_yaml, recorder = new_run(out_dir, cfg, git_revision=git_revision())
        except OSError as exc:
            _fail(f"--out {out_dir}: cannot write the run folder ({exc.strerror or exc})")
        console.print(f"[bold]colsim run[/] {cfg.protocol.name} · rule [cyan]{cfg.rule.name}[/] · model "
                      f"[cyan]{cfg.protocol.model}[/] · {cfg.protocol.total_steps} steps · seed {cfg.seed} -> "
                      f"{out_dir}")
        _finish(cfg, built, recorder, out_dir, config_yaml, quiet, ckpt)
    finally:
        lock.close()


def _run_ensemble(protocol, rule, model, set_, steps, seed_list, device, out, quiet):
    """``--seeds ... --ensemble``: every seed's run built and checked, its folder set up, then one ensemble
    (:func:`colsim.rundir.execute_ensemble`); exit 1 when a seed's run did not complete, 128 + signal when stopped."""
    from colsim.device import check_device
    from colsim.rundir import build_seeds, git_revision, new_run
    from colsim.simulate_ensemble import SeedRun

    locks: list = []
    try:
        try:
            cfgs = [_resolve(protocol, rule, model, set_, s, device, steps) for s in seed_list]
            check_device(cfgs[0].device, f"--device {cfgs[0].device}")
            if cfgs[0].device != "cpu":
                raise ConfigError(f"--ensemble: runs on the CPU only so far, not --device {cfgs[0].device}; run the "
                                  "seeds separately with --seeds")
            if getattr(cfgs[0].model, "autocast", None) not in (None, "none"):
                raise ConfigError(f"--ensemble: model.autocast={cfgs[0].model.autocast} is not batched over seeds yet; "
                                  "drop it or run the seeds separately with --seeds")
            built = build_seeds(cfgs)
            dirs = []
            for s, cfg in zip(seed_list, cfgs):
                dirs.append(_out_dir(None if out is None else Path(f"{out}-s{s}"), cfg, f"-s{s}"))
                locks.append(_lock(dirs[-1], "--out"))
        except ConfigError as exc:
            _fail(str(exc))
            return
        runs = []
        for s, cfg, d, (b, rng) in zip(seed_list, cfgs, dirs, built):
            try:
                config_yaml, recorder = new_run(d, cfg, git_revision=git_revision(), ensemble=list(seed_list))
            except OSError as exc:
                _fail(f"--out {d}: cannot write the run folder ({exc.strerror or exc})")
            runs.append(SeedRun(s, b, recorder, d, config_yaml, rng))
        cfg = cfgs[0]
        console.print(f"[bold]colsim run --ensemble[/] {cfg.protocol.name} · rule [cyan]{cfg.rule.name}[/] · model "
                      f"[cyan]{cfg.protocol.model}[/] · {cfg.protocol.total_steps} steps · seeds "
                      f"{', '.join(map(str, seed_list))} -> {', '.join(map(str, dirs))}", soft_wrap=True)
        try:
            results = _ensemble_with_progress(cfg, runs, quiet)
        except ConfigError as exc:  # found at a tick (the seeds' episode starts differ): the stores say failed
            _fail(str(exc))
    finally:
        for lock in locks:
            lock.close()
    for r, res in zip(runs, results):
        console.print(f"[bold]seed {r.seed}[/] ({r.dir})")
        print_summary(res.summary)
    stopped = [res for res in results if res.signal is not None]
    if stopped:
        err_console.print(f"[bold red]ensemble interrupted[/] by {signal.Signals(stopped[0].signal).name}; continue "
                          f"each seed with: colsim run --resume RUN_DIR ({', '.join(str(r.dir) for r in runs)})",
                          highlight=False, soft_wrap=True)
        raise typer.Exit(128 + int(stopped[0].signal))
    bad = [(r.seed, res.status) for r, res in zip(runs, results) if res.status != "completed"]
    if bad:
        err_console.print(f"[bold red]runs not completed[/]: {', '.join(f'seed {s} {st}' for s, st in bad)}")
        raise typer.Exit(1)


def _ensemble_with_progress(cfg, runs, quiet):
    from colsim.rundir import execute_ensemble

    return _with_progress(cfg, quiet, lambda on_step: execute_ensemble(runs, cfg, on_step=on_step), "mean loss")


def _finish(cfg, built, recorder, out_dir, config_yaml, quiet, ckpt):
    """Run the simulator in its run folder (summary.json included), print the table; exit 1 (failed), 128 + signal
    (stopped)."""
    try:
        result = _run_with_progress(cfg, built, recorder, out_dir, config_yaml, quiet, ckpt)
    except OSError as exc:  # a full disk, a vanished folder: the store stays readable up to its last flush
        where = exc.filename or out_dir
        if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):  # not a full disk: a permission changed
            _fail(f"run stopped: permission denied writing {where} ({exc.strerror}); everything up to the last flush "
                  f"is readable in {out_dir}; make the folder writable again, then `colsim run --resume {out_dir}` "
                  "continues from the last checkpoint", code=1)
            return
        what = "the disk is full" if exc.errno == errno.ENOSPC else (exc.strerror or str(exc))
        _fail(f"run stopped: {what} while writing {where}; everything up to the last flush is "
              f"readable in {out_dir}, and `colsim run --resume {out_dir}` continues from the last checkpoint once "
              "there is room", code=1)
        return
    print_summary(result.summary)
    if result.signal is not None:
        name = signal.Signals(result.signal).name
        where = f"checkpoint {result.checkpoint}" if result.checkpoint else "no checkpoint"
        err_console.print(f"[bold red]run interrupted[/] by {name} after {result.steps} steps ({where}); "
                          "continue with: "
                          f"colsim run --resume {out_dir}", highlight=False, soft_wrap=True)
        raise typer.Exit(128 + int(result.signal))
    if result.status != "completed":
        err_console.print(f"[bold red]run {result.status}[/] after {result.steps} steps; everything recorded so far is "
                          f"in {out_dir}")
        raise typer.Exit(1)


def _resume_in_place(run_dir: Path, quiet: bool) -> None:
    """``colsim run --resume RUN_DIR``: the run's config.yaml, its newest readable checkpoint (a corrupt newer one
    is skipped, and the message says which and why), its store cut back to that checkpoint (no duplicate, no
    missing row), then the same step schedule from there. With no readable checkpoint (a run killed before its
    first one) the run starts again in place from step 0 with its resolved config."""
    import zarr

    from colsim.checkpoint import CheckpointError, checkpoints_newest_first, load_checkpoint
    from colsim.config import build_run_config, load_yaml_text
    from colsim.device import check_device
    from colsim.record import ZarrRecorder
    from colsim.rundir import build_for_run, git_revision, new_run

    what = "--resume"
    try:
        lock = _lock(run_dir, what)
    except ConfigError as exc:
        _fail(str(exc))
        return
    try:
        skipped: list[str] = []
        try:
            try:
                config_yaml = (run_dir / "config.yaml").read_text()
            except OSError:
                raise ConfigError(f"{what} {run_dir}: no config.yaml; not a colsim run folder") from None
            registry.load_plugins()
            cfg = build_run_config(load_yaml_text(config_yaml, str(run_dir / "config.yaml")))
            check_writable(run_dir, what, (run_dir / "store.zarr", run_dir / "checkpoints"))
            ckpt = path = None
            for cand in checkpoints_newest_first(run_dir / "checkpoints", cfg.protocol.phase_end_steps):
                try:
                    ckpt, path = load_checkpoint(cand), cand
                    break
                except CheckpointError as exc:
                    skipped.append(f"{cand.name} ({str(exc).split(': ', 1)[-1]})")
            store = run_dir / "store.zarr"
            status = None
            if ckpt is not None or store.exists():
                try:
                    status = zarr.open_group(str(store), mode="r").attrs.get("status")
                except Exception as exc:  # noqa: BLE001 — a missing or corrupt store is bad input
                    raise ConfigError(f"{what} {run_dir}: store.zarr cannot be opened ({type(exc).__name__})") from None
            if ckpt is not None and "recorder" not in ckpt:
                raise ConfigError(f"{what} {run_dir}: {path.name} predates in-place resume (no recorder position); "
                                  f"use --resume {path} --out NEW_DIR")
            if status == "completed" or (ckpt is not None and int(ckpt["phase"]) >= len(cfg.protocol.phases)):
                raise ConfigError(f"{what} {run_dir}: the run is {status or 'complete'}; nothing to resume")
            check_device(cfg.device, f"{what} {run_dir}: the run is on {cfg.device}",
                         fix="resume it on a machine with CUDA")
            built = build_for_run(cfg)
            if ckpt is not None:
                try:
                    built[1].load_state_dict(ckpt["model"])  # the column
                except RuntimeError as exc:
                    raise ConfigError(f"{what} {run_dir}: {path.name} does not fit the run's model "
                                      f"({str(exc).splitlines()[0]})") from None
                try:
                    recorder = ZarrRecorder.reopen(store, ckpt["recorder"], flush_every=cfg.protocol.record.flush_every,
                                                   flush_seconds=cfg.protocol.record.flush_seconds,
                                                   resumed_from=path.name,
                                                   resumed=_dt.datetime.now().isoformat(timespec="seconds"))
                except (ValueError, KeyError) as exc:
                    raise ConfigError(f"{what} {run_dir}: store.zarr does not match {path.name} ({exc})") from None
        except ConfigError as exc:
            _fail(str(exc))
            return
        for s in skipped:
            err_console.print(f"[yellow]skipped[/] checkpoints/{s}", highlight=False, soft_wrap=True)
        if ckpt is None:  # killed before its first checkpoint: the same run again, in place, from step 0
            shutil.rmtree(store, ignore_errors=True)
            (run_dir / "checkpoints").mkdir(exist_ok=True)
            config_yaml, recorder = new_run(run_dir, cfg, git_revision=git_revision(),
                                            restarted=_dt.datetime.now().isoformat(timespec="seconds"))
            console.print(f"[bold]colsim run --resume[/] {run_dir}: {cfg.protocol.name} · rule [cyan]{cfg.rule.name}[/]"
                          f" · no {'readable ' if skipped else ''}checkpoint: starting again from step 0 of "
                          f"{cfg.protocol.total_steps}")
        else:
            console.print(f"[bold]colsim run --resume[/] {run_dir}: {cfg.protocol.name} · rule "
                          f"[cyan]{cfg.rule.name}[/] · "
                          f"from step {int(ckpt['step'])} of {cfg.protocol.total_steps} ({path.name})")
        (run_dir / "summary.json").unlink(missing_ok=True)
        _finish(cfg, built, recorder, run_dir, config_yaml, quiet, ckpt)
    finally:
        lock.close()


def _run_with_progress(cfg, built, recorder, out_dir, config_yaml, quiet, ckpt=None):
    from colsim.rundir import execute

    return _with_progress(cfg, quiet, lambda on_step: execute(out_dir, cfg, built, recorder, config_yaml, resume=ckpt,
                                                              on_step=on_step))


def _with_progress(cfg, quiet, execute, loss_label: str = "loss"):
    """``execute(on_step)`` under a progress bar (none with ``quiet``)."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    if quiet:
        return execute(None)
    cols = [TextColumn("[bold blue]{task.fields[phase]}"), BarColumn(), MofNCompleteColumn(),
            TextColumn(loss_label + " {task.fields[loss]:.4f}"), TextColumn("{task.fields[rate]:.1f} steps/s"),
            TimeElapsedColumn()]
    with Progress(*cols, console=Console(), transient=False) as prog:
        task = prog.add_task("run", total=cfg.protocol.total_steps, phase="init", loss=float("nan"), rate=0.0)

        def on_step(info):
            prog.update(task, completed=info["step"], phase=info["phase"], loss=info["loss"], rate=info["steps_per_s"])

        return execute(on_step)
