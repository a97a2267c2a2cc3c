"""The typer app every command registers on, the consoles, and the helpers the commands share (one-line
errors with exit 2, the run folder's name and lock)."""
from __future__ import annotations

import datetime as _dt
import os
import warnings
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console

from colsim import registry
from colsim.config import ConfigError, ConfigWarning, RunConfig, resolve_run_config

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


def check_writable(folder: Path, what: str, inside=()) -> None:
    """ConfigError naming the first of ``folder`` and the existing paths ``inside`` that this process may not
    write (a read-only copy of a run, a store shared read-only)."""
    for p in (folder, *inside):
        if p.exists() and not os.access(p, os.W_OK):
            raise ConfigError(f"{what} {folder}: {p} is not writable (permission denied); make it writable "
                              f"(chmod -R u+w {folder}) or work on a copy")


def _lock(run_dir: Path, what: str):
    """Hold ``run_dir/.lock`` for this process's run (:class:`colsim.lock.FolderLock`); ConfigError when another
    process holds it. Closing it releases the lock; so does the process's death."""
    from colsim.lock import FolderLock

    return FolderLock(run_dir / ".lock", where=f"{what} {run_dir}",
                      busy=lambda pid: f"{what} {run_dir}: another colsim run is writing this folder (pid {pid}); "
                                       "wait for it or choose another folder").acquire()


