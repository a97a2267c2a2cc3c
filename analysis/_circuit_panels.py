"""The dashboard's circuit panels (runs whose ``analysis`` group holds ``circuit_*``, issue 14).

One row each, one panel per rule (seeds of a rule averaged; error bars: the s.e. over seeds with
two or more runs, else the run's own s.e.):

1. Per-column vs voted accuracy — class probe on z_AGG of every column and of the vote over training.
2. Accuracy vs number of columns — the mean-z_AGG vote and the evidence vote over the first k
   columns, last evaluation.
3. Steps to recognition — evidence accumulated over views: each column, the columns' mean per
   episode ("single") and the evidence vote, last evaluation (mean ± s.e. over recognised episodes;
   the fraction recognised in brackets).
4. Column CKA over training — linear CKA between every pair of columns (and the vote) at up to four
   evaluations from the first to the last.

Reads only :mod:`colsim.analysis.circuits`' variables (see :func:`~colsim.analysis.circuits.circuit_analysis`).
"""
from __future__ import annotations

import numpy as np

__all__ = ["CIRCUIT_TITLES", "has_circuit", "circuit_rows", "column_mean"]

CIRCUIT_TITLES = ["Per-column vs voted accuracy", "Accuracy vs number of columns", "Steps to recognition",
                  "Column CKA over training"]
_MAX_FRAMES = 4


def column_mean(metrics):
    """A circuit's ``metrics`` with every per-column series replaced by its mean over the columns
    (NaN only where every column's is); unchanged without a ``column`` dimension."""
    if "column" not in metrics.dims:
        return metrics
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # a step where every column's value is missing
        return metrics.mean("column", skipna=True, keep_attrs=True)


def has_circuit(run) -> bool:
    """True when the run's analysis holds the circuit variables."""
    return run.analysis is not None and "circuit_acc_agg" in run.analysis


def _stack(runs, var):
    """(runs, ...) values of ``var`` over the circuit runs (None when no run has it)."""
    import xarray as xr

    arrs = [r.analysis[var] for r in runs if has_circuit(r) and var in r.analysis]
    if not arrs:
        return None
    return xr.concat(arrs, "run", join="outer")


def _mean_err(runs, var, se_var):
    """Mean over runs of ``var`` and its error: the s.e. over runs (2+ runs) or the run's ``se_var``."""
    x = _stack(runs, var)
    if x is None:
        return None, None
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        m = x.mean("run", skipna=True)
        if x.sizes["run"] > 1:
            err = x.std("run", ddof=1, skipna=True) / np.sqrt(x.count("run"))
        else:
            se = _stack(runs, se_var)
            err = se.isel(run=0) if se is not None else m * np.nan
    return m, err


def _acc_panel(hv, runs, title, o):
    m, _ = _mean_err(runs, "circuit_acc_agg", "circuit_acc_agg_se")
    if m is None or not m.sizes.get("eval", 0):
        return None
    st = next(r for r in runs if has_circuit(r)).analysis["step"].values[: m.sizes["eval"]]
    els = []
    for c in m["column"].values:
        y = m.sel(column=c).values
        vote = str(c) == "vote"
        els.append(hv.Curve((st, y), "step", "class accuracy (z_AGG)", label=str(c)).opts(
            line_width=3 if vote else 1.5, line_dash="solid" if vote else "dashed")
            * hv.Scatter((st, y), "step", "class accuracy (z_AGG)", label=str(c)).opts(size=6 if vote else 4))
    return hv.Overlay(els).opts(title=title, ylim=(0, 1.05), **o)


def _ncol_panel(hv, runs, title, o):
    els, k = [], []
    for v, lab in (("mean", "mean of z_AGG"), ("evidence", "evidence")):
        m, err = _mean_err(runs, f"circuit_acc_vs_columns_{v}", f"circuit_acc_vs_columns_{v}_se")
        if m is None or not m.sizes.get("eval", 0):
            continue
        k, y, e = m["n_columns"].values, m.isel(eval=-1).values, err.isel(eval=-1).values
        els += [hv.Curve((k, y), "columns voting", "class accuracy", label=lab),
                hv.Scatter((k, y), "columns voting", "class accuracy", label=lab).opts(size=6),
                hv.ErrorBars((k, y, np.nan_to_num(e)), "columns voting", ["class accuracy", "err"])]
    if not els:
        return None
    return hv.Overlay(els).opts(title=f"{title} (last evaluation)", ylim=(0, 1.05), xticks=[int(x) for x in k], **o)


def _steps_panel(hv, runs, title, o):
    m, err = _mean_err(runs, "circuit_steps_mean", "circuit_steps_se")
    single = _stack(runs, "circuit_steps_single")
    if m is None or not m.sizes.get("eval", 0):
        return None
    rec = _stack(runs, "circuit_recognized").mean("run", skipna=True).isel(eval=-1).values
    names = [f"{c} ({100 * r:.0f} %)" for c, r in zip(m["column"].values, rec)]  # + the fraction recognised
    y, e = list(m.isel(eval=-1).values), list(err.isel(eval=-1).values)
    if single is not None:  # per episode, the columns' mean; pooled over the runs' episodes
        s = single.isel(eval=-1).values.ravel()
        s = s[np.isfinite(s)]
        names.insert(-1, "single (mean)")
        y.insert(-1, float(s.mean()) if len(s) else np.nan)
        e.insert(-1, float(s.std(ddof=1) / np.sqrt(len(s))) if len(s) > 1 else np.nan)
    rows = [(n, float(v)) for n, v in zip(names, y)]
    bars = hv.Bars(rows, "column", "views to recognition").opts(tools=["hover"], color="#4c72b0")
    errs = hv.ErrorBars([(n, float(v), float(np.nan_to_num(x))) for n, v, x in zip(names, y, e)], "column",
                        ["views to recognition", "err"])
    return (bars * errs).opts(title=f"{title} (last evaluation)", xrotation=30, **o)


def _cka_panel(hv, runs, title, o):
    cka = _stack(runs, "circuit_cka")
    if cka is None or not cka.sizes.get("eval", 0):
        return None
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        cka = cka.mean("run", skipna=True)
    st = next(r for r in runs if has_circuit(r)).analysis["step"].values
    E = cka.sizes["eval"]
    frames = sorted(set(np.linspace(0, E - 1, min(E, _MAX_FRAMES)).round().astype(int).tolist()))
    maps = {}
    for e in frames:
        c = cka.isel(eval=e)
        rows = [(str(a), str(b), float(c.values[i, j])) for i, a in enumerate(c["column"].values)
                for j, b in enumerate(c["column_other"].values)]
        maps[int(st[e])] = hv.HeatMap(rows, ["column", "column_other"], "CKA").opts(
            cmap="viridis", clim=(0, 1), tools=["hover"], colorbar=e == frames[-1], frame_width=o["frame_height"] // 2,
            frame_height=o["frame_height"] // 2, xrotation=45, toolbar=None)
    return hv.NdLayout(maps, kdims="step").opts(title=f"{title} - linear CKA on z_AGG").cols(len(maps))


def circuit_rows(hv, by_rule: dict, empty, frame: dict) -> list:
    """Rows of circuit panels (one per :data:`CIRCUIT_TITLES`, one panel per rule) when any run has a
    circuit, else []. ``empty(hv, title)`` draws a placeholder; ``frame``: the panels' opts (frame
    size, legend placement)."""
    rules = sorted(by_rule)
    if not any(has_circuit(r) for rule in rules for r in by_rule[rule]):
        return []
    rows = []
    for fn, title in zip((_acc_panel, _ncol_panel, _steps_panel, _cka_panel), CIRCUIT_TITLES):
        panels = [fn(hv, by_rule[rule], f"{title} - {rule}", frame) for rule in rules]
        rows.append([p if p is not None else empty(hv, f"{title} - {rule}") for p, rule in zip(panels, rules)])
    return rows
