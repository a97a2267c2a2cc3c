"""The end-of-run table printed by ``colsim run`` (and, rendered to text, the README's demo table).

The table wraps instead of truncating: headers wrap at their spaces, and when the accuracy matrix and the pooled
columns still do not fit the console (80 columns in a log, many probe sets), they print as two tables; the lines
below it wrap at the width.
"""
from __future__ import annotations

import io
from typing import Optional

from rich.console import Console
from rich import box
from rich.table import Table

from colsim.cli.app import console

__all__ = ["print_summary", "render_summary"]


def _f(x) -> str:
    return "—" if x is None else f"{x:.2f}"


def _table(s: dict, matrix: bool, pooled: bool, title: Optional[str], compact: bool = False) -> Table:
    names = s["probe_sets"]
    caption = ("p<j>: linear-probe accuracy from z_AGG on phase j's probe set ("
               + ", ".join(f"p{j}={n}" for j, n in enumerate(names)) + ")") if matrix else ""
    if pooled:
        caption += ("; " if caption else "") + "pooled: all probe sets; R²: relative action from encoder pairs " \
                                                "(linear probe)"
    t = Table(title=title, caption=caption, caption_justify="left",
              **(dict(box=box.SIMPLE_HEAD, padding=(0, 1), collapse_padding=True, show_edge=False) if compact else {}))
    rows = []
    for i, e in enumerate(s["evaluations"]):
        row = [e["phase"], str(e["step"])]
        if matrix:
            row += [_f(v) for v in s["accuracy_matrix"][i]]
        if pooled:
            row += [_f(s["probe_acc_agg"][i]), _f(s["probe_acc_z"][i]), _f(s["equivariance_r2"][i])]
        rows.append(row)
    heads = ["after", "step"] + ([f"p{j}" for j in range(len(names))] if matrix else []) \
        + (["pooled z_AGG", "pooled z", "R²"] if pooled else [])
    for k, h in enumerate(heads):  # headers may wrap at their space
        t.add_column(h, justify="left" if k == 0 else "right", no_wrap=k == 0)
    for row in rows:
        t.add_row(*row)
    return t


def _lines(s: dict) -> list[str]:
    def pm(key):
        v, se = s.get(key), s.get(f"{key}_se")
        return _f(v) if se is None or v is None else f"{v:.3f} ± {se:.3f}"

    out = [f"forgetting (± s.e.) — task probe {pm('forgetting')} · seen-so-far {pm('seen_forgetting')} · "
           f"frozen read-out {pm('frozen_forgetting')} · prediction loss {pm('prediction_forgetting')}",
           f"BWT {_f(s.get('bwt'))} · FWT {_f(s.get('fwt'))} · prediction BWT {_f(s.get('prediction_bwt'))}"]
    if s.get("head_matrix"):  # a supervised column: its own heads (van de Ven & Tolias 2019's metrics)
        last = next((r for r in reversed(s["head_matrix"]) if r), [])
        out.append(f"own heads — average accuracy {pm('average_accuracy')} · forgetting {pm('head_forgetting')} · "
                   f"BWT {_f(s.get('head_bwt'))} · last row " + " ".join(_f(v) for v in last))
    if s.get("layer_readout_accuracy"):  # per-layer read-outs on full spike-count vectors (models/echospike.py)
        first, last = s["layer_readout_accuracy"][0], s["layer_readout_accuracy"][-1]
        ses = s.get("layer_readout_accuracy_se", [[None] * len(last)])[-1]
        out.append("layer read-outs at the last evaluation (± s.e.; first evaluation in brackets) — " + " · ".join(
            f"{n} {_f(v)}" + (f" ± {e:.2f}" if e is not None else "") + f" [{_f(v0)}]"
            for n, v, e, v0 in zip(s["layer_readout_names"], last, ses, first)))
    g = s.get("gain") or {}
    if g:
        out.append("gain over step 0 (± s.e.) — " + " · ".join(
            f"{lab} {g[k]:+.3f} ± {g.get(k + '_se') or float('nan'):.3f}" for k, lab in (
                ("probe_acc_agg", "pooled z_AGG"), ("probe_acc_z", "pooled z"), ("equivariance_r2", "R²"),
                ("prediction_loss", "prediction loss (decrease)")) if g.get(k) is not None))
    c = s.get("columns")
    if c and c.get("probe_acc_agg"):  # a circuit: the table above is the vote's
        last, se = c["probe_acc_agg"][-1], c.get("probe_acc_agg_se", [[None] * len(c["names"])])[-1]
        out.append("circuit (table: the vote) — pooled z_AGG at the last evaluation: " + " · ".join(
            f"{n} {_f(v)}" + (f" ± {e:.2f}" if e is not None else "") for n, v, e in zip(c["names"], last, se)))
    return out


def _cuts(table: Table, width: int) -> bool:
    """Whether rendering ``table`` at ``width`` columns would cut a cell (rich marks it with an ellipsis)."""
    buf = io.StringIO()
    Console(file=buf, width=width, color_system=None, force_terminal=False, legacy_windows=False).print(table)
    return "…" in buf.getvalue()


def print_summary(s: dict, out: Optional[Console] = None, title: bool = True) -> None:
    """The end-of-run table: one row per evaluation; accuracy matrix columns p0.. = probe sets; then forgetting,
    BWT / FWT and the gains over step 0. Split into two tables rather than truncated when it does not fit."""
    out = out or console
    head = f"colsim summary — {s['status']}, {s['steps']} steps, {s['wall_s']:.0f} s" if title else None
    layouts = ([_table(s, True, True, head)],  # one table; then the matrix and the pooled columns apart;
               [_table(s, True, False, head), _table(s, False, True, None)],  # then without vertical rules
               [_table(s, True, False, head, True), _table(s, False, True, None, True)])
    tables = next((ts for ts in layouts if not any(_cuts(t, out.width) for t in ts)), layouts[-1])
    for t in tables:
        out.print(t)
    for line in _lines(s):
        out.print(line, highlight=False)


def render_summary(s: dict, width: int = 80) -> str:
    """:func:`print_summary` as plain text at ``width`` columns, without the title (it holds the wall time, which
    differs between runs): the README's demo table (examples/readme_demo_table.py)."""
    buf = io.StringIO()
    print_summary(s, Console(file=buf, width=width, color_system=None, force_terminal=False, legacy_windows=False),
                  title=False)
    return "\n".join(line.rstrip() for line in buf.getvalue().splitlines())
