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

import sys
import warnings

from colsim.cli import commands, run  # noqa: F401 (each registers its commands on the app)
from colsim.cli.app import _lock, _show_warning, app, err_console  # noqa: F401 (re-exported)
from colsim.cli.summary import print_summary  # noqa: F401 (re-exported)
from colsim.config import ConfigError

__all__ = ["app", "main", "print_summary"]


def main() -> None:
    warnings.showwarning = _show_warning
    try:
        app()
    except ConfigError as exc:  # anything that escaped a command
        err_console.print(f"[bold red]error:[/] {exc}", highlight=False, soft_wrap=True)
        sys.exit(2)


if __name__ == "__main__":
    main()
