"""colsim command line (typer + rich).

    colsim run PROTOCOL [--rule SPEC] [--model NAME] [--set K=V]... [--steps N] [--seed N]
               [--device cpu|cuda] [--out DIR]
    colsim run --resume RUN_DIR          # continue a stopped run in place, from its latest checkpoint
    colsim validate PROTOCOL [--rule SPEC] [--model NAME] [--set K=V]...
    colsim list rules|models|protocols|worlds
    colsim sweep SWEEP.yaml [--out DIR] [--steps N] [--scheduler ADDRESS | --cluster local|slurm]

Exit codes: 0 done, 1 run failed (diverged, or a write failed: disk full), 2 bad input (one line, no
traceback), 130 / 143 stopped by SIGINT / SIGTERM (checkpointed; the message names the --resume command).
A run folder is locked (``RUN_DIR/.lock``, ``flock``) for the run's lifetime: a second ``colsim run``
into it refuses; the lock goes with the process, so a crashed run can be resumed at once.
Only this module imports everything (core, models, rules, protocols, analysis).
"""
from __future__ import annotations

import datetime as _dt
import errno
import os
import signal
import sys
import warnings
from pathlib import Path
from typing import List, Optional

import typer
from rich.console import Console
from rich.table import Table

from colsim import registry
from colsim.config import ConfigError, ConfigWarning, RunConfig, parse_seeds, resolve_run_config

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="colsim: cortical-column learning modules under pluggable plasticity rules.")


class _Console:
    """A rich Console made when it is used, so its width follows the terminal (and ``COLUMNS``) of each command,
    not of the moment colsim.cli was imported."""

    def __init__(self, **kw):
        self._kw = kw

    def __getattr__(self, name):
        return getattr(Console(**self._kw), name)


console = _Console()
err_console = _Console(stderr=True)
_python_showwarning = warnings.showwarning


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    """``warnings.showwarning`` for the CLI: a ConfigWarning is one line on stderr, ``warning: ...``;
    any other warning is shown as Python shows it."""
    if issubclass(category, ConfigWarning):
        err_console.print(f"[bold yellow]warning:[/] {message}", highlight=False, soft_wrap=True)
    else:
        _python_showwarning(message, category, filename, lineno, file, line)


def _fail(msg: str, code: int = 2) -> None:
    err_console.print(f"[bold red]error:[/] {msg}", highlight=False, soft_wrap=True)
    raise typer.Exit(code)


def _resolve(protocol, rule, model, sets, seed, device, steps) -> RunConfig:
    registry.load_plugins()
    return resolve_run_config(protocol, rule=rule, model=model, overrides=sets or (), seed=seed, device=device,
                              steps=steps)


def _out_dir(out: Optional[Path], cfg: RunConfig, suffix: str = "") -> Path:
    if out is None:
        stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
        base = Path("runs") / f"{stamp}-{cfg.protocol.name}-{cfg.rule.name.replace('+', '_')}{suffix}"
        out = base
        k = 1
        while out.exists():
            out = Path(f"{base}-{k}")
            k += 1
    out = Path(out)
    if out.exists():
        raise ConfigError(f"--out {out}: already exists; runs are never overwritten — choose a new folder")
    try:
        out.mkdir(parents=True)
        (out / "checkpoints").mkdir()
    except OSError as exc:
        raise ConfigError(f"--out {out}: cannot create the run folder ({exc.strerror or exc})") from None
    if not os.access(out, os.W_OK):
        raise ConfigError(f"--out {out}: folder is not writable")
    return out


def _lock(run_dir: Path, what: str):
    """Hold ``run_dir/.lock`` (flock, exclusive) for this process's run; ConfigError when another holds it.
    Returns the open file (closing it releases the lock; so does the process's death)."""
    import fcntl

    try:
        f = open(run_dir / ".lock", "a+")
    except OSError as exc:
        raise ConfigError(f"{what} {run_dir}: cannot open its lock file ({exc.strerror or exc})") from None
    try:
        fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        f.seek(0)
        holder = f.read().strip()
        f.close()
        raise ConfigError(f"{what} {run_dir}: another colsim run is writing this folder ({holder or 'pid unknown'}); "
                          "wait for it or choose another folder") from None
    f.seek(0)
    f.truncate()
    f.write(f"pid {os.getpid()}\n")
    f.flush()
    return f


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
    resume: Optional[Path] = typer.Option(None, "--resume", help="RUN_DIR: continue that run in place from its latest "
                                          "checkpoint (exactly: same numbers as an uninterrupted run on CPU); or a "
                                          "checkpoint .pt: a new run (--out) continuing from it"),
):
    """Run a protocol under a rule; write config.yaml, store.zarr, summary.json, checkpoints/."""
    if resume is not None and resume.is_dir():
        given = [n for n, v in (("PROTOCOL", protocol), ("--rule", rule), ("--model", model), ("--set", set_),
                                ("--steps", steps), ("--seed", seed), ("--seeds", seeds), ("--device", device),
                                ("--out", out)) if v]
        if given:
            _fail(f"--resume {resume}: continues the run as its config.yaml says; drop {', '.join(given)}")
        return _resume_in_place(resume, quiet)
    if protocol is None:
        _fail("PROTOCOL: give a protocol (e.g. nonstationary), or --resume RUN_DIR to continue a run")
    if seeds is None:
        return _run_one(protocol, rule, model, set_, steps, seed, device, out, quiet, resume)
    try:
        seed_list = parse_seeds(seeds)
        if seed is not None or resume is not None:
            raise ConfigError("--seeds: give either --seeds or --seed/--resume, not both")
    except ConfigError as exc:
        _fail(str(exc))
        return
    failed = []
    for s in seed_list:
        o = None if out is None else Path(f"{out}-s{s}")
        try:
            _run_one(protocol, rule, model, set_, steps, s, device, o, quiet, None, suffix=f"-s{s}")
        except typer.Exit as exc:
            if exc.exit_code == 2:
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


def _finish(cfg, built, recorder, out_dir, config_yaml, quiet, ckpt):
    """Run the simulator in its run folder (summary.json included), print the table; exit 1 (failed), 128 + signal
    (stopped)."""
    try:
        result = _run_with_progress(cfg, built, recorder, out_dir, config_yaml, quiet, ckpt)
    except OSError as exc:  # a full disk, a vanished folder: the store stays readable up to its last flush
        what = "the disk is full" if exc.errno == errno.ENOSPC else (exc.strerror or str(exc))
        _fail(f"run stopped: {what} while writing {exc.filename or out_dir}; everything up to the last flush is "
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
    """``colsim run --resume RUN_DIR``: the run's config.yaml, its latest checkpoint, its store cut back
    to that checkpoint (no duplicate, no missing row), then the same step schedule from there."""
    import zarr

    from colsim.checkpoint import CheckpointError, latest_checkpoint, load_checkpoint
    from colsim.config import build_run_config, load_yaml_text
    from colsim.device import check_device
    from colsim.record import ZarrRecorder
    from colsim.rundir import build_for_run

    what = "--resume"
    try:
        lock = _lock(run_dir, what)
    except ConfigError as exc:
        _fail(str(exc))
        return
    try:
        try:
            try:
                config_yaml = (run_dir / "config.yaml").read_text()
            except OSError:
                raise ConfigError(f"{what} {run_dir}: no config.yaml; not a colsim run folder") from None
            registry.load_plugins()
            cfg = build_run_config(load_yaml_text(config_yaml, str(run_dir / "config.yaml")))
            path = latest_checkpoint(run_dir / "checkpoints", cfg.protocol.phase_end_steps)
            if path is None:
                raise ConfigError(f"{what} {run_dir}: no checkpoint in checkpoints/ (runs are checkpointed at phase "
                                  "ends and every protocol.checkpoint.every steps); start it again instead")
            try:
                ckpt = load_checkpoint(path)
            except CheckpointError as exc:
                raise ConfigError(f"{what} {run_dir}: {exc}") from None
            if "recorder" not in ckpt:
                raise ConfigError(f"{what} {run_dir}: {path.name} predates in-place resume (no recorder position); "
                                  f"use --resume {path} --out NEW_DIR")
            try:
                status = zarr.open_group(str(run_dir / "store.zarr"), mode="r").attrs.get("status")
            except Exception as exc:  # noqa: BLE001 — a missing or corrupt store is bad input
                raise ConfigError(f"{what} {run_dir}: store.zarr cannot be opened ({type(exc).__name__})") from None
            if status == "completed" or int(ckpt["phase"]) >= len(cfg.protocol.phases):
                raise ConfigError(f"{what} {run_dir}: the run is {status or 'complete'}; nothing to resume")
            check_device(cfg.device, f"{what} {run_dir}: the run is on {cfg.device}",
                         fix="resume it on a machine with CUDA")
            built = build_for_run(cfg)
            try:
                built[1].load_state_dict(ckpt["model"])  # the column
            except RuntimeError as exc:
                raise ConfigError(f"{what} {run_dir}: {path.name} does not fit the run's model "
                                  f"({str(exc).splitlines()[0]})") from None
            try:
                recorder = ZarrRecorder.reopen(run_dir / "store.zarr", ckpt["recorder"],
                                               flush_every=cfg.protocol.record.flush_every, resumed_from=path.name,
                                               resumed=_dt.datetime.now().isoformat(timespec="seconds"))
            except (ValueError, KeyError) as exc:
                raise ConfigError(f"{what} {run_dir}: store.zarr does not match {path.name} ({exc})") from None
        except ConfigError as exc:
            _fail(str(exc))
            return
        console.print(f"[bold]colsim run --resume[/] {run_dir}: {cfg.protocol.name} · rule "
                      f"[cyan]{cfg.rule.name}[/] · "
                      f"from step {int(ckpt['step'])} of {cfg.protocol.total_steps} ({path.name})")
        (run_dir / "summary.json").unlink(missing_ok=True)
        _finish(cfg, built, recorder, run_dir, config_yaml, quiet, ckpt)
    finally:
        lock.close()


def _run_with_progress(cfg, built, recorder, out_dir, config_yaml, quiet, ckpt=None):
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from colsim.rundir import execute

    if quiet:
        return execute(out_dir, cfg, built, recorder, config_yaml, resume=ckpt)
    cols = [TextColumn("[bold blue]{task.fields[phase]}"), BarColumn(), MofNCompleteColumn(),
            TextColumn("loss {task.fields[loss]:.4f}"), TextColumn("{task.fields[rate]:.1f} steps/s"),
            TimeElapsedColumn()]
    with Progress(*cols, console=Console(), transient=False) as prog:
        task = prog.add_task("run", total=cfg.protocol.total_steps, phase="init", loss=float("nan"), rate=0.0)

        def on_step(info):
            prog.update(task, completed=info["step"], phase=info["phase"], loss=info["loss"], rate=info["steps_per_s"])

        return execute(out_dir, cfg, built, recorder, config_yaml, resume=ckpt, on_step=on_step)


def print_summary(s: dict) -> None:
    """The end-of-run table: one row per evaluation; accuracy matrix columns p0.. = probe sets."""
    names = s["probe_sets"]
    t = Table(title=f"colsim summary — {s['status']}, {s['steps']} steps, {s['wall_s']:.0f} s",
              caption="p<j>: linear-probe accuracy from z_AGG on phase j's probe set ("
                      + ", ".join(f"p{j}={n}" for j, n in enumerate(names))
                      + "); pooled: all probe sets; R²: relative action from encoder pairs (linear probe)",
              caption_justify="left")
    t.add_column("after", no_wrap=True)
    t.add_column("step", justify="right")
    for j in range(len(names)):
        t.add_column(f"p{j}", justify="right")
    t.add_column("pooled z_AGG", justify="right")
    t.add_column("pooled z", justify="right")
    t.add_column("R²", justify="right")

    def f(x):
        return "—" if x is None else f"{x:.2f}"

    for i, e in enumerate(s["evaluations"]):
        t.add_row(e["phase"], str(e["step"]), *[f(v) for v in s["accuracy_matrix"][i]], f(s["probe_acc_agg"][i]),
                  f(s["probe_acc_z"][i]), f(s["equivariance_r2"][i]))
    console.print(t)

    def pm(key):
        v, se = s.get(key), s.get(f"{key}_se")
        return f(v) if se is None or v is None else f"{v:.3f} ± {se:.3f}"

    console.print(f"forgetting (± s.e.) — task probe {pm('forgetting')} · seen-so-far {pm('seen_forgetting')} · "
                  f"frozen read-out {pm('frozen_forgetting')} · prediction loss {pm('prediction_forgetting')}")
    console.print(f"BWT {f(s.get('bwt'))} · FWT {f(s.get('fwt'))} · prediction BWT {f(s.get('prediction_bwt'))}")
    g = s.get("gain") or {}
    if g:
        console.print("gain over step 0 (± s.e.) — " + " · ".join(
            f"{lab} {g[k]:+.3f} ± {g.get(k + '_se') or float('nan'):.3f}" for k, lab in (
                ("probe_acc_agg", "pooled z_AGG"), ("probe_acc_z", "pooled z"), ("equivariance_r2", "R²"),
                ("prediction_loss", "prediction loss (decrease)")) if g.get(k) is not None))
    c = s.get("columns")
    if c and c.get("probe_acc_agg"):  # a circuit: the table above is the vote's
        last, se = c["probe_acc_agg"][-1], c.get("probe_acc_agg_se", [[None] * len(c["names"])])[-1]
        console.print("circuit (table: the vote) — pooled z_AGG at the last evaluation: " + " · ".join(
            f"{n} {f(v)}" + (f" ± {e:.2f}" if e is not None else "") for n, v, e in zip(c["names"], last, se)))


@app.command()
def validate(
    protocol: str = typer.Argument(...),
    rule: Optional[str] = typer.Option(None, "--rule"),
    model: Optional[str] = typer.Option(None, "--model"),
    set_: Optional[List[str]] = typer.Option(None, "--set"),
    steps: Optional[int] = typer.Option(None, "--steps"),
):
    """Check a protocol + rule + model without running (builds everything, runs no step)."""
    from colsim.build import build_run

    try:
        cfg = _resolve(protocol, rule, model, set_, None, None, steps)
        _, column, _, local, _ = build_run(cfg)
    except ConfigError as exc:
        _fail(str(exc))
        return
    n = sum(p.numel() for p in column.trainable().values())
    console.print(f"[green]ok[/] {cfg.protocol.name}: {len(cfg.protocol.phases)} phases, {cfg.protocol.total_steps} "
                  f"steps · rule {cfg.rule.name}{' (layer-local)' if local else ''} · model {cfg.protocol.model} "
                  f"({n / 1e6:.2f} M trainable parameters)"
                  + (f" · circuit of {len(c.columns)} columns ({'shared' if c.shared else 'per-column'} weights, "
                     f"{sum(map(len, c.wiring.values()))} lateral links, vote {c.vote})"
                     if (c := cfg.protocol.circuit) is not None else ""))


@app.command("list")
def list_(what: str = typer.Argument(..., help="rules | models | protocols | worlds")):
    """List registered rules, model presets, packaged protocols or worlds."""
    registry.load_plugins()
    t = Table()
    if what == "rules":
        t.add_column("rule"), t.add_column("kind"), t.add_column("description")
        for n, e in sorted(registry.RULES.items()):
            t.add_row(n, e.kind, e.summary)
    elif what == "models":
        t.add_column("preset"), t.add_column("family"), t.add_column("description")
        for n in registry.preset_names("models"):
            d = registry.preset("models", n)
            t.add_row(n, str(d.get("name")), _preset_comment("models", n))
    elif what == "protocols":
        t.add_column("protocol"), t.add_column("phases", justify="right"), t.add_column("steps", justify="right"),
        t.add_column("description")
        for n in registry.preset_names("protocols"):
            d = registry.preset("protocols", n)
            ph = d.get("phases") or []
            t.add_row(n, str(len(ph)), str(sum(int(p.get("steps", 0)) for p in ph)), str(d.get("description", "")))
    elif what == "worlds":
        t.add_column("world"), t.add_column("labels"), t.add_column("action"), t.add_column("description")
        for n, e in sorted(registry.WORLDS.items()):  # LABELS / ACTION_ENCODING: class attributes of the config
            t.add_row(n, ", ".join(getattr(e.config, "LABELS", ())), getattr(e.config, "ACTION_ENCODING", ""), e.summary)
    else:
        _fail(f"list: unknown kind {what!r}; valid: rules, models, protocols, worlds")
    console.print(t)


def _preset_comment(kind: str, name: str) -> str:
    from importlib import resources

    text = (resources.files(registry.PACKAGES[kind]) / f"{name}.yaml").read_text()
    lines = [ln[1:].strip() for ln in text.splitlines() if ln.startswith("#")]
    return " ".join(lines)[:100]


@app.command()
def sweep(
    sweep_file: str = typer.Argument(..., help="sweep YAML (base, grid/zip, cluster) or a packaged sweep name "
                                     "(rules_seeds); format in colsim/sweep.py"),
    out: Optional[Path] = typer.Option(None, "--out", help="sweep folder (default runs/<sweep name>); running the "
                                       "same sweep again skips finished runs"),
    steps: Optional[int] = typer.Option(None, "--steps", help="shorten every run to N steps (replaces base.steps)"),
    scheduler: Optional[str] = typer.Option(None, "--scheduler", help="address of a running dask scheduler, "
                                            "e.g. tcp://host:8786"),
    cluster: Optional[str] = typer.Option(None, "--cluster", help="local | slurm (dask-jobqueue, cluster.slurm in "
                                          "the sweep YAML); default: the YAML's cluster.kind (local)"),
    workers: Optional[int] = typer.Option(None, "--workers", help="LocalCluster worker processes (default cores // "
                                          "threads)"),
    threads: Optional[int] = typer.Option(None, "--threads", help="torch threads per run (default 1)"),
    quiet: bool = typer.Option(False, "--quiet", help="no progress bar"),
):
    """Run a sweep on dask: one task per run, all under one folder that colsim.analysis opens as one dataset."""
    from colsim._sweep_dask import sweep_main
    from colsim.rundir import git_revision

    try:
        code = sweep_main(sweep_file, out, steps, scheduler, cluster, workers, threads, quiet, Console(),
                          git_revision=git_revision())
    except ConfigError as exc:
        _fail(str(exc))
        return
    if code:
        raise typer.Exit(code)


def _register_analysis() -> None:
    """``colsim analyze | compare | dashboard`` live in colsim.analysis (torch-free)."""
    from colsim.analysis import cli as acli

    app.command("analyze")(acli.analyze)
    app.command("compare")(acli.compare)
    app.command("dashboard")(acli.dashboard)


_register_analysis()


def main() -> None:
    warnings.showwarning = _show_warning
    try:
        app()
    except ConfigError as exc:  # anything that escaped a command
        err_console.print(f"[bold red]error:[/] {exc}", highlight=False, soft_wrap=True)
        sys.exit(2)


if __name__ == "__main__":
    main()
