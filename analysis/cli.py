"""Commands ``colsim analyze | compare | dashboard`` as plain functions for the main CLI.

The main CLI registers them with ``app.command()(fn)`` (typer); they print with rich and exit
with status 2 and a one-line message (no traceback) on bad input. When typer is importable
the parameters carry typer metadata (``--by``, ``-o/--output``, ``--serve``); without it they
are ordinary functions.
"""
from __future__ import annotations

import errno
import os
from typing import Annotated, Optional

from colsim.analysis.store import RunStoreError, expand_runs, is_sweep, run_point, store_path

__all__ = ["analyze", "compare", "dashboard"]

try:  # typer metadata only; the functions work without typer
    import typer

    _Runs = Annotated[list[str], typer.Argument(help="run folders (or their store.zarr), or a colsim sweep folder",
                                                show_default=False)]
    _By = Annotated[Optional[list[str]], typer.Option("--by", help="group by run attribute: rule, model, protocol, "
                                                                    "seed, status (repeatable; default rule)")]
    _Out = Annotated[Optional[str], typer.Option("--out", help="folder for compare.csv / compare.html "
                                                               "(default: SWEEP/compare for one sweep folder, "
                                                               "else a new compare-<time> folder)")]
    _Output = Annotated[Optional[str], typer.Option("-o", "--output", help="HTML file to write (default: "
                                                                           "dashboard.html in the first run folder)")]
    _Metric = Annotated[Optional[list[str]], typer.Option("--metric", help="a summary metric to tabulate "
                                                                           "(repeatable; default: the key metrics)")]
    _Vs = Annotated[Optional[list[str]], typer.Option("--vs", help="also print each rule's per-seed paired "
                                                                   "difference from this rule (repeatable; e.g. "
                                                                   "--vs backprop --vs frozen)")]
    _Serve = Annotated[bool, typer.Option("--serve", help="serve with panel on localhost instead of writing a file")]
    _Port = Annotated[int, typer.Option("--port", help="port for --serve")]
except ImportError:  # pragma: no cover - typer is a core dependency
    _Runs, _By, _Out, _Output, _Serve, _Port = list[str], Optional[list[str]], Optional[str], Optional[str], bool, int
    _Metric = Optional[list[str]]
    _Vs = Optional[list[str]]


def _console():
    from rich.console import Console

    return Console()


def _fail(msg: str):
    _console().print(f"[bold red]error:[/] {msg}", highlight=False, soft_wrap=True)
    raise SystemExit(2)


def _check(runs) -> list[str]:
    """Run folders (or stores) as strings; a ``colsim sweep`` folder stands for its runs that hold a store."""
    if not runs:
        _fail("no runs given")
    try:
        expanded = expand_runs(runs)
    except RunStoreError as exc:
        _fail(str(exc))
    if not expanded:
        _fail(f"{', '.join(str(r) for r in runs if is_sweep(r))}: the sweep has no run with a store yet")
    runs = expanded
    for r in runs:
        try:
            store_path(r)
        except RunStoreError as exc:
            _fail(str(exc))
    return [str(r) for r in runs]


def _fmt(v) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    if v is None:
        return "–"
    return str(v)


def _acc_table(acc, names=None):
    from rich.table import Table

    names = names or [str(j) for j in range(len(acc))]
    t = Table(title="accuracy matrix A[after phase, probe set] (linear probe on z_AGG)")
    t.add_column("after \\ probe set")
    for n in names:
        t.add_column(str(n), justify="right")
    for n, row in zip(names, acc):
        t.add_row(str(n), *[_fmt(x) if x is not None else "–" for x in row])
    return t


def _circuit_table(s: dict):
    """A circuit's numbers at the last evaluation (colsim.analysis.circuits)."""
    from rich.table import Table

    def pm(k):
        return f"{_fmt(s.get(k))} ± {_fmt(s.get(k + '_se'))}"

    t = Table(title=f"circuit of {len(s['circuit_columns'])} columns (in-run vote: {s.get('circuit_vote') or '?'})",
              show_header=False)
    t.add_row("class accuracy from z_AGG", ", ".join(f"{c} {_fmt(v)}" for c, v in s["circuit_acc_agg"].items()))
    for v in ("mean", "evidence"):
        t.add_row(f"accuracy vs number of columns ({v} vote)", ", ".join(_fmt(x) for x in
                                                                          s.get(f"circuit_acc_vs_columns_{v}") or []))
    t.add_row("steps to recognition: evidence vote", f"{pm('steps_vote')} (recognised {_fmt(s.get('recognized_vote'))})")
    t.add_row("steps to recognition: single column", f"{pm('steps_single')} "
                                                     f"(recognised {_fmt(s.get('recognized_single'))})")
    t.add_row("steps saved by voting (paired)", pm("steps_gain"))
    t.add_row("linear CKA between columns (mean)", _fmt(s.get("cka_columns_mean")))
    return t


def analyze(runs: _Runs) -> None:
    """Compute a run's metrics and write them into its store (group `analysis`); print a summary."""
    from rich.table import Table

    from colsim.analysis.analyze import analyze_run

    console = _console()
    for r in _check(runs):
        if os.path.exists(r) and not os.access(r, os.W_OK):
            _fail(f"{r}: the run folder is not writable (permission denied); analyze writes its results into "
                  f"store.zarr: make it writable (chmod -R u+w {r}) or analyze a copy")
        try:
            s = analyze_run(r)
        except RunStoreError as exc:
            _fail(str(exc))
        except OSError as exc:  # a read-only store (permissions, a read-only mount)
            if exc.errno not in (errno.EACCES, errno.EPERM, errno.EROFS):
                raise
            _fail(f"{r}: cannot write the analysis into its store ({exc.strerror}: {exc.filename or r}); make the "
                  f"run folder writable (chmod -R u+w {r}) or analyze a copy")
        t = Table(title=f"{s['run']}  [{s['rule']} | {s['model']} | {s['protocol']} | seed {s['seed']}] "
                        f"status {s['status']}", show_header=False)
        keys = ["steps_done", "n_evals", "acc_agg", "acc_z", "class_leak", "pose_from_z", "pose_from_zagg",
                "equivariance_r2_pooled", "equivariance_r2_linear", "equivariance_r2_mlp", "forgetting", "bwt", "fwt",
                "z_eff_rank", "z_rankme", "zagg_eff_rank", "dz_top2_share_rotation", "radius_cv", "phase_residual", "unit_usage", "loss_final",
                "seen_forgetting", "frozen_forgetting", "prediction_forgetting", "probe_acc_agg_final",
                "gain_probe_acc_agg", "gain_prediction_loss"]
        for k in keys:
            if k in s:
                t.add_row(k, _fmt(s[k]))
        console.print(t)
        if s.get("acc_matrix"):
            console.print(_acc_table(s["acc_matrix"], s.get("probe_sets")))
        if s.get("circuit_columns"):
            console.print(_circuit_table(s))
        for a in s.get("alarms") or []:
            console.print(f"[yellow]alarm[/] step {a['step']}: {a['kind']} ({a['variable']}) — {a['detail']}",
                          highlight=False)
        if not s.get("alarms"):
            console.print("[green]no health alarms[/]")


def compare(runs: _Runs, by: _By = None, out: _Out = None, metric: _Metric = None, vs: _Vs = None) -> None:
    """Table of key metrics (mean ± 95 % CI over seeds) grouped by run attributes; saved as CSV and HTML.
    With ``--vs RULE``: each rule's per-seed paired difference from RULE (same protocol and seed), with its CI
    and the minimum detectable effect at 80 % power, also saved as ``paired-vs-RULE.csv``; of the ``--metric``
    metrics when given, else of the forgetting read-outs and the final pooled probe."""
    from colsim.analysis.compare import KEY_METRICS, compare_runs_to_files

    paths = _check(runs)
    by = list(by) if by else ["rule"]
    swept = sorted({k for p in paths for k in run_point(p)} - {"rule", "model", "protocol", "seed", "status"})
    bad = [b for b in by if b not in ("rule", "model", "protocol", "seed", "status", *swept)]
    if bad:
        _fail(f"--by {bad[0]!r}: choose from rule, model, protocol, seed, status"
              + (f" or a swept field ({', '.join(swept)})" if swept else ""))
    unknown = [m for m in metric or [] if m not in KEY_METRICS]
    if unknown:
        _fail(f"--metric {unknown[0]!r}: unknown metric; choose from {', '.join(KEY_METRICS)}")
    if out is None:  # a named folder, never the last comparison's files replaced silently
        import datetime as _dt
        from pathlib import Path

        out = str(Path(runs[0]) / "compare" if len(runs) == 1 and is_sweep(runs[0])
                  else Path(f"compare-{_dt.datetime.now().strftime('%Y%m%d-%H%M%S')}"))
    table, csv_path, html_path = compare_runs_to_files(paths, by, out, metrics=list(metric) if metric else None)
    console = _console()
    for t in table.to_rich(title=f"colsim compare by {', '.join(by)}", width=console.width):
        console.print(t)
    console.print(f"wrote {csv_path.resolve()} and {html_path.resolve()}", highlight=False, soft_wrap=True)
    for base in vs or []:
        _paired(paths, base, out, console, list(metric) if metric else None)


def _paired(paths, base: str, out: str, console, metrics=None) -> None:
    import csv
    from pathlib import Path

    from rich.table import Table as RichTable

    from colsim.analysis.compare import PAIRED_METRICS, paired_rows

    metrics = metrics or list(PAIRED_METRICS)
    rows = paired_rows(paths, base, metrics)
    if not rows:
        _fail(f"--vs {base!r}: no completed run of rule {base!r} shares a protocol and seed with another rule")
    t = RichTable(title=f"paired difference rule - {base} (same protocol and seed): mean ± 95 % CI [MDE at 80 % power]")
    for c in ("protocol", "rule", "n", *metrics):
        t.add_column(c, justify="left" if c in ("protocol", "rule") else "right", overflow="fold")
    for r in rows:
        t.add_row(r["protocol"], r["rule"], str(r["n"]),
                  *[f"{r[m]:+.3f} ± {r[m + '_ci95']:.3f} [{r[m + '_mde']:.3f}]" for m in metrics])
    console.print(t)
    path = Path(out) / f"paired-vs-{base.replace('+', '_')}.csv"
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    console.print(f"wrote {path.resolve()}", highlight=False, soft_wrap=True)


def dashboard(runs: _Runs, output: _Output = None, serve: _Serve = False, port: _Port = 5006) -> None:
    """Standalone HTML dashboard of one or more runs (side by side by rule); --serve for a live panel server."""
    from pathlib import Path

    from colsim.analysis.dashboard import dashboard as make

    paths = _check(runs)
    if output is None and len(runs) == 1 and is_sweep(runs[0]):  # a sweep's page lives in the sweep folder
        output = str(Path(runs[0]) / "dashboard.html")
    console = _console()
    if serve:
        console.print(f"serving the dashboard at http://localhost:{port}/ (Ctrl-C to stop)", highlight=False)
        make(paths, output, serve=True, port=port)
        return
    out = make(paths, output)
    console.print(f"wrote {out}", highlight=False)
