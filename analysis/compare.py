"""Compare runs: key metrics grouped by run attributes, mean ± 95 % CI over seeds.

``compare_runs(paths, by=["rule"])`` returns a :class:`Table` (plain rows, no pandas);
``compare_runs_to_files(paths, by, out_dir)`` also writes ``compare.csv`` and ``compare.html``.
The CI is t-based: ``mean ± t_{0.975, n-1} * sd / sqrt(n)`` over the runs of a group (NaN
half-width for a single run). Runs without an ``analysis`` group are analysed first.
"""
from __future__ import annotations

import csv
import html
import io
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from colsim.analysis.analyze import analyze_run, summary_from_store
from colsim.analysis.store import run_point

__all__ = ["KEY_METRICS", "Table", "t_quantile_975", "mean_ci", "compare_runs", "compare_runs_to_files",
           "min_detectable_effect", "paired_rows", "paired_from_summaries", "PAIRED_METRICS"]

# summary key -> column label (higher is better unless noted in the label)
KEY_METRICS = {
    "acc_agg": "acc z_AGG",
    "acc_z": "acc z_t",
    "class_leak": "class leak (z_t - z_AGG)",
    "pose_leak": "pose R2 from z_AGG",
    "equivariance_r2_pooled": "equiv R2 (linear, sets pooled)",
    "equivariance_r2_linear": "equiv R2 (linear, per set)",
    "equivariance_r2_mlp": "equiv R2 (MLP)",
    "forgetting": "forgetting (lower better)",
    "frozen_forgetting": "frozen read-out forgetting (lower better)",
    "seen_forgetting": "seen-so-far forgetting (lower better)",
    "prediction_forgetting": "prediction-loss forgetting (lower better)",
    "probe_acc_agg_final": "pooled acc z_AGG (final)",
    "probe_acc_z_final": "pooled acc z_t (final)",
    "equivariance_r2_final": "equiv R2 (in-run, pooled, final)",
    "gain_probe_acc_agg": "pooled acc z_AGG gain over step 0",
    "gain_prediction_loss": "prediction loss decrease over step 0",
    "bwt": "BWT",
    "fwt": "FWT",
    "z_eff_rank": "eff rank z",
    "z_rankme": "RankMe z",
    "dz_top2_share_rotation": "rot dz top-2 share",
    "radius_cv": "circle radius CV (lower better)",
    "loss_final": "final loss",
    "n_alarms": "alarms",
    # supervised columns only (models/classifier.py: their own heads; van de Ven & Tolias 2019; dropped for other runs)
    "average_accuracy": "average accuracy, own heads (after the last task)",
    "head_forgetting": "own-head forgetting (lower better)",
    "head_bwt": "own-head BWT",
    # circuits of many columns only (colsim.analysis.circuits; dropped for other runs)
    "circuit_acc_vote": "circuit: acc z_AGG, vote",
    "circuit_acc_single": "circuit: acc z_AGG, single column (mean)",
    "steps_vote": "circuit: views to recognition, evidence vote (lower better)",
    "steps_single": "circuit: views to recognition, single column (lower better)",
    "steps_gain": "circuit: views saved by voting (paired)",
    "recognized_vote": "circuit: recognised, evidence vote",
    "recognized_single": "circuit: recognised, single column",
    "cka_columns_mean": "circuit: linear CKA between columns",
}

# two-sided 95 % Student t quantiles t_{0.975, df}, df = 1..30
_T975 = [12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160, 2.145,
         2.131, 2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048,
         2.045, 2.042]


def t_quantile_975(df: int) -> float:
    """Student t 0.975 quantile (table for df <= 30, then interpolation in 1/df towards 1.960)."""
    if df < 1:
        return float("nan")
    if df <= 30:
        return _T975[df - 1]
    pts = [(30, 2.042), (40, 2.021), (60, 2.000), (120, 1.980), (math.inf, 1.960)]
    for (d0, t0), (d1, t1) in zip(pts, pts[1:]):
        if df <= d1:
            x0, x1, x = 1 / d0, (0 if d1 == math.inf else 1 / d1), 1 / df
            return t0 + (t1 - t0) * (x0 - x) / (x0 - x1)
    return 1.960


def mean_ci(values) -> tuple[float, float, int]:
    """(mean, 95 % CI half-width, n) over the finite values."""
    v = np.asarray([x for x in values if x is not None], dtype=np.float64)
    v = v[np.isfinite(v)]
    n = len(v)
    if n == 0:
        return float("nan"), float("nan"), 0
    if n == 1:
        return float(v[0]), float("nan"), 1
    return float(v.mean()), float(t_quantile_975(n - 1) * v.std(ddof=1) / math.sqrt(n)), n


@dataclass
class Table:
    """A comparison table: ``group_keys`` columns, then per metric a mean and a CI half-width."""

    group_keys: list[str]
    metrics: list[str]
    rows: list[dict] = field(default_factory=list)  # {key: value, "n_runs", f"{m}", f"{m}_ci", "statuses"}
    labels: dict = field(default_factory=dict)

    @property
    def columns(self) -> list[str]:
        cols = list(self.group_keys) + ["n_runs"]
        for m in self.metrics:
            cols += [m, f"{m}_ci95"]
        return cols + ["statuses"]

    def cell(self, row: dict, m: str, digits: int = 3) -> str:
        mu, ci = row.get(m, float("nan")), row.get(f"{m}_ci95", float("nan"))
        if mu is None or not math.isfinite(mu):
            return "–"
        return f"{mu:.{digits}g} ± {ci:.2g}" if ci is not None and math.isfinite(ci) else f"{mu:.{digits}g}"

    def to_csv(self, path=None) -> str:
        buf = io.StringIO()
        w = csv.DictWriter(buf, fieldnames=self.columns, extrasaction="ignore", lineterminator="\n")
        w.writeheader()
        for r in self.rows:
            w.writerow({k: ("" if isinstance(v, float) and not math.isfinite(v) else v) for k, v in r.items()})
        if path is not None:
            Path(path).write_text(buf.getvalue())
        return buf.getvalue()

    def to_html(self, path=None, title: str = "colsim compare") -> str:
        head = "".join(f"<th>{html.escape(k)}</th>" for k in self.group_keys)
        head += "<th>runs</th>" + "".join(f"<th>{html.escape(self.labels.get(m, m))}</th>" for m in self.metrics)
        body = []
        for r in self.rows:
            cells = "".join(f"<td>{html.escape(str(r[k]))}</td>" for k in self.group_keys)
            cells += f"<td>{r['n_runs']} ({html.escape(r['statuses'])})</td>"
            cells += "".join(f"<td>{html.escape(self.cell(r, m))}</td>" for m in self.metrics)
            body.append(f"<tr>{cells}</tr>")
        doc = (f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
               "<style>body{font-family:sans-serif}table{border-collapse:collapse}"
               "td,th{border:1px solid #bbb;padding:4px 8px;text-align:right}th{background:#eee}</style></head>"
               f"<body><h2>{html.escape(title)}</h2><p>mean ± 95 % CI (t) over seeds</p>"
               f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table></body></html>")
        if path is not None:
            Path(path).write_text(doc, encoding="utf-8")
        return doc

    def to_rich(self, title: str = "colsim compare", width: int | None = None) -> list:
        """Rich tables with one row per metric and one column per group. With ``width`` (the console's), the
        groups are spread over as many tables as it takes for each to fit, so no cell is cut at 80 columns."""
        from rich.table import Table as RichTable

        labels = [self.labels.get(m, m) for m in self.metrics] + ["status"]
        cells = {i: [self.cell(r, m) for m in self.metrics] + [r["statuses"]] for i, r in enumerate(self.rows)}
        heads = {i: " | ".join(str(r[k]) for k in self.group_keys) for i, r in enumerate(self.rows)}
        per = len(self.rows) or 1
        if width is not None:
            label_w = max(len(x) for x in labels) + 4
            col_w = max([len(c) for v in cells.values() for c in v] + [len(f"({r['n_runs']} runs)") for r in self.rows]
                        + [1]) + 3
            per = max(1, (width - label_w) // col_w)
        out = []
        for k in range(0, max(len(self.rows), 1), per):
            idx = list(range(k, min(k + per, len(self.rows))))
            part = f" ({k // per + 1}/{-(-len(self.rows) // per)})" if len(self.rows) > per else ""
            t = RichTable(title=title + " (mean ± 95 % CI over seeds)" + part)
            t.add_column("metric", no_wrap=True)
            for i in idx:
                t.add_column(heads[i] + f"\n({self.rows[i]['n_runs']} runs)", justify="right")
            for j, lab in enumerate(labels):
                t.add_row(lab, *[cells[i][j] for i in idx])
            out.append(t)
        return out


def _summary(path, analyze_missing: bool) -> dict:
    s = summary_from_store(path)
    if s is None:
        s = analyze_run(path, write=analyze_missing)
    for k, v in run_point(path).items():  # a sweep run's swept fields (lr, batch, ...) can group too
        s.setdefault(k, v)
    return s


def compare_runs(paths, by=("rule",), metrics=None, analyze_missing: bool = True) -> Table:
    """Group runs by the root attributes named in ``by`` (rule, model, protocol, seed, status, or a
    sweep run's swept field such as lr) and tabulate ``metrics`` (default :data:`KEY_METRICS`) as
    mean ± 95 % CI over each group.

    Every row also has ``n_runs`` and ``statuses`` (e.g. "completed:4,diverged:1"). Metrics no
    run of the comparison has are dropped from the table.
    """
    by = list(by) if by else ["rule"]
    summaries = [_summary(p, analyze_missing) for p in paths]
    wanted = list(metrics) if metrics else list(KEY_METRICS)
    present = [m for m in wanted if any(isinstance(s.get(m), (int, float)) for s in summaries)]
    groups: dict[tuple, list[dict]] = {}
    for s in summaries:
        groups.setdefault(tuple(str(s.get(k, "unknown")) for k in by), []).append(s)
    rows = []
    for key in sorted(groups):
        runs = groups[key]
        row = dict(zip(by, key))
        row["n_runs"] = len(runs)
        st: dict[str, int] = {}
        for s in runs:
            st[str(s.get("status"))] = st.get(str(s.get("status")), 0) + 1
        row["statuses"] = ",".join(f"{k}:{v}" for k, v in sorted(st.items()))
        for m in present:
            mu, ci, _ = mean_ci(s.get(m) if isinstance(s.get(m), (int, float)) else None for s in runs)
            row[m], row[f"{m}_ci95"] = mu, ci
        rows.append(row)
    return Table(group_keys=by, metrics=present, rows=rows, labels={m: KEY_METRICS.get(m, m) for m in present})


# the read-outs a paired comparison reports by default (colsim compare --vs RULE)
PAIRED_METRICS = ("frozen_forgetting", "forgetting", "prediction_forgetting", "probe_acc_agg_final")


def min_detectable_effect(sd: float, n: int, power: float = 0.8) -> float:
    """The smallest true mean difference a two-sided paired t-test at alpha = 0.05 detects with
    probability ``power`` from ``n`` pairs whose differences have standard deviation ``sd``:
    ``(t_{0.975, n-1} + t_{power, n-1}) sd / sqrt(n)`` (the usual normal-shift approximation)."""
    if n < 2 or not math.isfinite(sd):
        return float("nan")
    from scipy.stats import t as student_t

    return float((student_t.ppf(0.975, n - 1) + student_t.ppf(power, n - 1)) * sd / math.sqrt(n))


def paired_rows(paths, vs: str, metrics=PAIRED_METRICS, by=("protocol",), analyze_missing: bool = True) -> list[dict]:
    """Per-seed paired differences ``rule - vs`` of each metric, for every rule other than ``vs``.

    Runs are matched on ``seed`` within each group of ``by`` (default: the protocol), so each difference
    compares two runs that saw the same stream and started from the same weights. A row per (group, rule):
    ``{**group, "rule", "vs", "n", f"{m}": mean, f"{m}_ci95", f"{m}_mde"}``, where ``_ci95`` is the t-based
    half-width of the mean difference and ``_mde`` the minimum detectable effect at 80 % power
    (:func:`min_detectable_effect`) with these pairs' spread. For a forgetting, a negative difference means
    the rule forgets less than ``vs``."""
    return paired_from_summaries([_summary(p, analyze_missing) for p in paths], vs, metrics, by)


def paired_from_summaries(summaries, vs: str, metrics=PAIRED_METRICS, by=("protocol",)) -> list[dict]:
    """:func:`paired_rows` on summary dicts that carry ``status``, ``rule``, ``seed`` and the ``by`` keys."""
    cells: dict[tuple, dict[str, dict]] = {}
    for s in summaries:
        if s.get("status") != "completed":
            continue
        g = tuple(str(s.get(k, "unknown")) for k in by)
        cells.setdefault(g, {}).setdefault(str(s.get("rule")), {})[str(s.get("seed"))] = s
    rows = []
    for g in sorted(cells):
        base = cells[g].get(vs)
        if not base:
            continue
        for rule in sorted(r for r in cells[g] if r != vs):
            seeds = sorted(set(cells[g][rule]) & set(base), key=lambda x: (len(x), x))
            row: dict = {**dict(zip(by, g)), "rule": rule, "vs": vs, "n": len(seeds)}
            for m in metrics:
                d = [cells[g][rule][k].get(m) - base[k].get(m) for k in seeds
                     if isinstance(cells[g][rule][k].get(m), (int, float)) and isinstance(base[k].get(m), (int, float))]
                mu, ci, n = mean_ci(d)
                sd = float(np.std(d, ddof=1)) if n >= 2 else float("nan")
                row[m], row[f"{m}_ci95"], row[f"{m}_mde"] = mu, ci, min_detectable_effect(sd, n)
            rows.append(row)
    return rows


def compare_runs_to_files(paths, by=("rule",), out_dir=".", metrics=None) -> tuple[Table, Path, Path]:
    """:func:`compare_runs`, then write ``out_dir/compare.csv`` and ``out_dir/compare.html``."""
    table = compare_runs(paths, by, metrics)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    csv_path, html_path = out / "compare.csv", out / "compare.html"
    table.to_csv(csv_path)
    table.to_html(html_path, title=f"colsim compare by {', '.join(table.group_keys)}")
    return table, csv_path, html_path
