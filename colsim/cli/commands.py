"""``colsim validate | list | sweep``, and ``analyze | compare | dashboard`` from the torch-free colsim.analysis."""
from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer
from rich.console import Console
from rich.table import Table

from colsim import registry
from colsim.config import ConfigError
from colsim.cli.app import _fail, _resolve, app, console


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
    P = len(cfg.protocol.phases)
    console.print(f"[green]ok[/] {cfg.protocol.name}: {P} phase{'s' if P != 1 else ''}, {cfg.protocol.total_steps} "
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
    return first_sentence(" ".join(lines))


def first_sentence(text: str, limit: int = 160) -> str:
    """The first sentence of a preset's header comment; longer than ``limit``, shortened at a word boundary (never
    mid-word: `colsim list models` printed "the action embe")."""
    import re
    import textwrap

    m = re.search(r"(?<!\bal)(?<!e\.g)(?<!i\.e)[.!?](?=\s+[A-Z])", text)  # not "et al. 2023", "e.g. X"
    first = text[:m.start() + 1] if m else text
    return textwrap.shorten(first, limit, placeholder=" …")


@app.command()
def sweep(
    sweep_file: str = typer.Argument(..., help="sweep YAML (base, grid/zip, cluster) or a packaged sweep name "
                                     "(rules_seeds); format: docs/guide/sweeps.md"),
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
    ensemble: bool = typer.Option(False, "--ensemble", help="run the runs that differ only in their seed as one seed "
                                  "ensemble per task (as colsim run --seeds ... --ensemble; the YAML's ensemble: true)"),
):
    """Run a sweep on dask: one task per run, all under one folder that colsim.analysis opens as one dataset."""
    from colsim.sweep.runner import sweep_main
    from colsim.rundir import git_revision

    try:
        code = sweep_main(sweep_file, out, steps, scheduler, cluster, workers, threads, quiet, Console(),
                          git_revision=git_revision(), ensemble=ensemble or None)
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
