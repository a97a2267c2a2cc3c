"""Dashboards: one standalone HTML page (holoviews -> bokeh, resources inline, no network).

``dashboard(paths, out_file)`` lays the runs out side by side, one column per rule (seeds of
a rule overlaid), one row per view:

1. Loss components over steps, health alarms marked (dashed red lines at the step each began)
2. Rank monitor (in-run ``z_eff_rank`` / ``zagg_eff_rank`` and the analysis' per-evaluation
   effective rank and RankMe)
3. Accuracy matrix heatmap ``A[after_phase, probe_set]`` (mean over seeds)
4. Forgetting curves (probe accuracy of each probe set over evaluations)
5. Equivariance R2 per action dimension (linear and MLP probes, last evaluation)
6. dz eigenspectrum per factor (variance share per component, last evaluation)
7. Rotation circle (orbits on the top-2 rotation PCs, coloured by angle)
8. Per-layer sparsity, 9. rule state (metaplastic availability, SI importance, replay
   histogram ...) and 10. block diagnostics (CRATE coding rate, ToST membership entropy)
   when the run records them (at most 12 curves a panel: summaries and the encoder first);
   a spiking column's per-block firing rate and silent / saturated fractions join panel 8.
11. Spike raster of one probe episode (probe set 0's first episode, every view's T bins, at most
    128 neurons a block, blocks stacked) and 12. firing-rate histogram per block (each unit's
    spikes per bin, mean over every probe view; seeds of a rule pooled), both at the last
    evaluation and only when a run of the page is spiking (``probe/raster_l*``, ``spike_count_l*``).
12b. Read-out vs training samples, one panel per layer (the input first), one curve per arm: each run's last
    per-layer read-out (summary.json ``layer_readout_accuracy``, models/echospike.py) at steps x batch samples
    under its rule, and its step-0 read-out as ``untrained``; mean over seeds ± 1 SE, log axis. Only when two or
    more runs of the page have per-layer read-outs (issue 31's budget curve: ``colsim dashboard
    runs/echospike_budget runs/echospike_budget_rate_matched``).
13.-16. Circuits only (runs of many columns, :mod:`._circuit_panels`): per-column vs voted accuracy,
   accuracy vs number of columns, steps to recognition (vote vs single) and the columns' CKA matrix
   over training. A circuit's per-column metrics enter panels 1-10 as their mean over columns.

``serve=True`` serves the same layout with panel on localhost instead of writing a file.
Reads ``metrics`` and ``analysis`` (runs without ``analysis`` are analysed first) and, of
``probe``, only the last evaluation's spiking variables, so the page of a 10 GB store costs what
its metrics cost.
"""
from __future__ import annotations

import colorsys
import html
import json
import re
from pathlib import Path

import numpy as np

from colsim.analysis._circuit_panels import CIRCUIT_TITLES, circuit_rows, column_mean
from colsim.analysis.analyze import analyze_run, trained_sets
from colsim.analysis.budget import collect as collect_budget, layer_names as budget_layers
from colsim.analysis.store import open_run, run_info

__all__ = ["TITLES", "SPIKING_TITLES", "CIRCUIT_TITLES", "dashboard", "build_layout"]

TITLES = ["Loss components", "Rank monitor", "Accuracy matrix", "Forgetting curves",
          "Equivariance R2 per action dimension", "dz eigenspectrum", "Rotation circle", "Per-layer sparsity",
          "Rule state", "Block diagnostics"]
SPIKING_TITLES = ["Spike raster (one probe episode)", "Firing-rate histogram"]  # spiking runs only
BUDGET_TITLE = "Read-out vs training samples"  # runs with per-layer read-outs (models/echospike.py) only
_STATE_PREFIXES = ("metaplastic.", "si.", "ewc.", "replay.", "consolidation.")
_LAYER_RE = re.compile(r"\.l(\d+)\..*(nonzero|sparsity|active)|sparsity|^spiking\.l\d+\.(rate|silent|saturated)$")
_BLOCK_RE = re.compile(r"coding_rate|membership_entropy|usage")
H = 230  # frame height of every panel
FW = 240  # frame width of every panel (legends sit outside, on the right)
_LEGEND = {"label_text_font_size": "7pt", "glyph_height": 10, "label_height": 10, "spacing": 0}
_MAX_POINTS = 1500
_MAX_CURVES = 12
PER_ROW = 3  # panels per row of the page (each is about 450 px wide with its legend)
_CYCLIC = ["#%02x%02x%02x" % tuple(int(255 * c) for c in colorsys.hsv_to_rgb(h / 64, 0.85, 0.9)) for h in range(64)]


def _hv():
    import holoviews as hv
    from bokeh.core.validation import silence
    from bokeh.core.validation.warnings import FIXED_SIZING_MODE

    hv.extension("bokeh", logo=False)
    silence(FIXED_SIZING_MODE, True)  # frame_width panels (legend outside) are fixed-size on purpose
    for el in ("Curve", "Scatter", "Overlay", "HeatMap", "Bars", "Points", "Text"):
        hv.opts.defaults(getattr(hv.opts, el)(toolbar="above"))
    # holoviews drops an overlay's legend past 25 glyphs (an LPL loss panel with its alarm marks): keep it
    hv.opts.defaults(hv.opts.Overlay(legend_limit=500))
    return hv


def _downsample(step: np.ndarray, y: np.ndarray, n: int = _MAX_POINTS):
    if len(step) <= n:
        return step, y
    b = -(-len(step) // n)
    m = (len(step) // b) * b
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return step[:m:b], np.nanmean(np.where(np.isfinite(y[:m]), y[:m], np.nan).reshape(-1, b), 1)


class _Run:
    """What the dashboard needs from one run, loaded once (metrics + analysis; small)."""

    def __init__(self, path):
        tree = open_run(path)
        if "analysis" not in tree.children:
            tree.close()
            analyze_run(path)
            tree = open_run(path)
        self.path = str(path)
        self.info = run_info(tree)
        self.metrics = column_mean(tree["metrics"].to_dataset().load()) if "metrics" in tree.children else None
        self.analysis = tree["analysis"].to_dataset().load() if "analysis" in tree.children else None
        s = self.analysis.attrs.get("summary") if self.analysis is not None else None
        self.summary = json.loads(s) if isinstance(s, str) else (s or {})
        self.spiking = _spiking(tree["probe"].to_dataset()) if "probe" in tree.children else None
        tree.close()

    def series(self, name):
        """(step, value) of a metric with its missing (NaN) points dropped, so curves skip them (the
        loss of a phase's first tick, where nothing was predicted, is NaN, not 0)."""
        if self.metrics is None or name not in self.metrics:
            return None
        st, y = _downsample(self.metrics["step"].values, self.metrics[name].values.astype(np.float64))
        ok = np.isfinite(y)
        return st[ok], y[ok]

    @property
    def label(self):
        return f"seed {self.info['seed']}"


def _spiking(probe) -> "dict | None":
    """The last evaluation's raster and per-unit firing rates of a spiking run's ``probe`` group:
    ``{"step", "T", "raster": [(V, T, K_l) uint8], "rate": [(C_l,) spikes per bin, mean over every
    probe view]}``; None for a non-spiking run."""
    n_blocks = sum(1 for v in probe.data_vars if re.fullmatch(r"raster_l\d+", str(v)))
    if not n_blocks or not probe.sizes.get("eval", 0):
        return None
    last = probe.isel(eval=-1)
    T = int(probe.sizes["bin"])
    raster = [last[f"raster_l{l}"].transpose("view", "bin", ...).values for l in range(n_blocks)]
    rate = [last[f"spike_count_l{l}"].mean(["probe_set", "sample", "view"]).values / T for l in range(n_blocks)]
    step = int(probe["step"].values[-1]) if "step" in probe.coords or "step" in probe else -1
    return {"step": step, "T": T, "raster": raster, "rate": rate}


def _raster_panel(hv, runs, title):
    r = next((r for r in runs if r.spiking is not None), None)
    if r is None:
        return _empty(hv, title)
    sp, els, y0 = r.spiking, [], 0
    V, T = sp["raster"][0].shape[:2]
    for l, ras in enumerate(sp["raster"]):  # (V, T, K)
        v, t, k = np.nonzero(ras)
        lab = f"block {l}"
        els.append(hv.Scatter((v * T + t, y0 + k), "time bin (views of T bins)", "neuron (blocks stacked)",
                              label=lab).opts(marker="square", size=3))
        y0 += ras.shape[2]
    els += [hv.VLine(v * T - 0.5).opts(color="gray", line_width=1, line_dash="dotted") for v in range(1, V)]
    return hv.Overlay(els).opts(title=f"{title} (step {sp['step']})", frame_width=FW, frame_height=H,
                                legend_position="right", legend_opts=_LEGEND, xlim=(-0.5, V * T - 0.5),
                                ylim=(-0.5, y0 - 0.5))


def _rate_hist_panel(hv, runs, title):
    sp = [r.spiking for r in runs if r.spiking is not None]
    if not sp:
        return _empty(hv, title)
    edges = np.linspace(0, 1, 21)
    els = []
    for l in range(len(sp[0]["rate"])):
        rates = np.concatenate([s["rate"][l] for s in sp if l < len(s["rate"])])
        counts, _ = np.histogram(np.clip(rates, 0, 1), edges)
        els.append(hv.Histogram((edges, counts), kdims=["firing rate (spikes per bin)"], vdims=["units"],
                                label=f"block {l}").opts(alpha=0.5))
    return hv.Overlay(els).opts(title=f"{title} (step {sp[0]['step']})", frame_width=FW, frame_height=H,
                                legend_position="right", legend_opts=_LEGEND)


def _empty(hv, title):
    return hv.Text(0.5, 0.5, "no data").opts(title=title, frame_width=FW, frame_height=H, xaxis=None,
                                             yaxis=None, toolbar=None)


def _loss_panel(hv, runs, title):
    from colsim.analysis.alarms import loss_components

    els, alarms = [], []
    for k, r in enumerate(runs):
        if r.metrics is None:
            continue
        names = ["loss"] + loss_components(r.metrics, r.info["rule"])
        for name in names[:_MAX_CURVES]:
            s = r.series(name)
            if s is None:
                continue
            lab = name if len(runs) == 1 else f"{name} ({r.label})"
            els.append(hv.Curve((s[0], s[1]), "step", "value", label=lab).opts(
                line_width=2 if name == "loss" else 1, line_dash="solid" if k == 0 else "dashed"))
        if r.analysis is not None and "alarm_step" in r.analysis:
            marks = sorted({(int(st), str(kind), str(var)) for st, kind, var in zip(
                r.analysis["alarm_step"].values, r.analysis["alarm_kind"].values, r.analysis["alarm_variable"].values)})
            alarms.extend(marks)
    if alarms:  # one dashed line per step; labels stacked from the top of the panel, so they never overprint
        ys = [y for e in els for y in np.asarray(e.dimension_values(1), float) if np.isfinite(y)]
        lo, hi = (min(ys), max(ys)) if ys else (0.0, 1.0)
        for st in sorted({m[0] for m in alarms}):
            els.append(hv.VLine(st).opts(color="red", line_dash="dashed", line_width=1.5))
        for k, (st, kind, var) in enumerate(alarms[:8]):
            els.append(hv.Text(st, hi - (k + 0.5) * (hi - lo) / 9, f" {kind}: {var}", halign="left",
                               valign="center", fontsize=8).opts(color="red"))
    if not els:
        return _empty(hv, title)
    return hv.Overlay(els).opts(title=title, frame_width=FW, frame_height=H, legend_position="right",
                                show_legend=True, legend_opts=_LEGEND)


def _rank_panel(hv, runs, title):
    els = []
    for r in runs:
        suf = "" if len(runs) == 1 else f" ({r.label})"
        for name in ("z_eff_rank", "zagg_eff_rank"):
            s = r.series(name)
            if s is not None:
                els.append(hv.Curve((s[0], s[1]), "step", "rank", label=f"{name} (in-run){suf}"))
        a = r.analysis
        if a is not None and "z_eff_rank" in a and a.sizes.get("eval", 0):
            st = a["step"].values
            for name in ("z_eff_rank", "z_rankme", "zagg_eff_rank"):
                if name in a:
                    y = _nanmean0(a[name].values, 1) if np.isfinite(a[name].values).any() else None
                    if y is not None:
                        els.append(hv.Scatter((st, y), "step", "rank", label=f"{name} (probe){suf}")
                                   .opts(size=7, marker="diamond"))
    if not els:
        return _empty(hv, title)
    # log scale: RankMe (up to the dimension) and the participation ratios (a few units) both stay readable
    return hv.Overlay(els).opts(title=title, frame_width=FW, frame_height=H, legend_position="right",
                                legend_opts=_LEGEND, logy=True)


def _mean_over_runs(runs, var):
    arrs = [r.analysis[var] for r in runs if r.analysis is not None and var in r.analysis]
    if not arrs:
        return None
    import xarray as xr

    return xr.concat(arrs, "run", join="outer").mean("run", skipna=True)


def _accmat_panel(hv, runs, title):
    """The linear probes' accuracy matrix; for supervised columns the own heads' (``head_matrix``), which is the
    accuracy of van de Ven & Tolias (2019) and the only one a heads-only evaluation records."""
    A = _mean_over_runs(runs, "head_matrix")
    if A is not None:
        title = title.replace(TITLES[2], f"{TITLES[2]} (own heads)")
    else:
        A = _mean_over_runs(runs, "acc_matrix")
    if A is None:
        return _empty(hv, title)
    rows = [(str(j), str(i), float(A.values[ii, jj])) for ii, i in enumerate(A["after_phase"].values)
            for jj, j in enumerate(A["probe_set"].values)]
    hm = hv.HeatMap(rows, ["probe set", "after phase"], "accuracy").opts(
        cmap="viridis", clim=(0, 1), colorbar=True, tools=["hover"], invert_yaxis=True)
    labels = hv.Labels([(a, b, f"{v:.2f}" if np.isfinite(v) else "–") for a, b, v in rows],
                       ["probe set", "after phase"], "text").opts(text_color="white", text_font_size="9pt")
    return (hm * labels).opts(title=title, frame_width=FW, frame_height=H)


def _forget_panel(hv, runs, title):
    """Each probe set's accuracy over steps, averaged over the runs that evaluated it at that step. Runs are
    aligned by step, not by evaluation index: runs of different protocols have different evaluations and probe
    sets (the union is shown; a set one run lacks is averaged over the runs that have it)."""
    import xarray as xr

    arrs = []
    for r in runs:
        a = r.analysis
        if a is None or "acc_agg" not in a or a.sizes.get("eval", 0) == 0:
            continue
        x = a["acc_agg"]
        steps = np.asarray(a["step"].values[: x.sizes["eval"]])
        keep = np.sort(len(steps) - 1 - np.unique(steps[::-1], return_index=True)[1])  # one per step: the last
        x = x.isel(eval=keep)
        arrs.append(x.assign_coords(eval=steps[keep]).rename(eval="at_step"))
    if not arrs:
        return _empty(hv, title)
    acc = xr.concat(arrs, "run", join="outer").mean("run", skipna=True).sortby("at_step")
    st = acc["at_step"].values
    els = []
    for p in acc["probe_set"].values:
        y = acc.sel(probe_set=p).values
        ok = np.isfinite(y)
        els.append(hv.Curve((st[ok], y[ok]), "step", "probe accuracy (z_AGG)", label=str(p))
                   * hv.Scatter((st[ok], y[ok]), "step", "probe accuracy (z_AGG)", label=str(p)).opts(size=6))
    return hv.Overlay(els).opts(title=title, frame_width=FW, frame_height=H, ylim=(0, 1.05), legend_position="right",
                                legend_opts=_LEGEND)


def _nanmean0(x: np.ndarray, axis: int = 0) -> np.ndarray:
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN entries stay NaN
        return np.nanmean(x, axis)


def _last_trained(r, var):
    a = r.analysis
    if a is None or var not in a or a.sizes.get("eval", 0) == 0:
        return None
    sets = trained_sets(str(a["phase"].values[-1]), a["probe_set"].values)
    return a[var].isel(eval=-1, probe_set=sets).mean("probe_set", skipna=True)


def _aligned(vals, dims: tuple[str, str]):
    """The runs' arrays over ``dims`` stacked along a new first axis, aligned by coordinate (outer join, NaN where a
    run lacks an entry): runs of different worlds, or a circuit beside single columns, have other action
    dimensions or factors. Runs whose array is missing or empty drop out; None when none is left."""
    import xarray as xr

    out = []
    for v in vals:
        if v is None or any(v.sizes.get(d, 0) == 0 for d in dims):
            continue
        v = v.transpose(*dims)
        for d in dims:
            if d not in v.coords:
                v = v.assign_coords({d: np.arange(v.sizes[d])})
        out.append(v.drop_vars([c for c in v.coords if c not in dims]))
    if not out:
        return None
    return xr.concat(out, "run", join="outer")


def _r2_panel(hv, runs, title):
    al = _aligned([_last_trained(r, "equivariance_r2_dim") for r in runs], ("regressor", "action_dim"))
    if al is None:
        return _empty(hv, title)
    m = _nanmean0(al.values)
    regs, dims = al["regressor"].values, al["action_dim"].values
    rows = [(str(d), str(g), float(np.clip(m[i, j], -1, 1))) for i, g in enumerate(regs) for j, d in enumerate(dims)
            if np.isfinite(m[i, j])]
    if not rows:
        return _empty(hv, title)
    return hv.Bars(rows, ["action_dim", "probe"], "R2").opts(title=title, frame_width=FW, frame_height=H,
                                                            ylim=(-0.2, 1.05), tools=["hover"], xrotation=30,
                                                            multi_level=True)


def _spectrum_panel(hv, runs, title):
    al = _aligned([_last_trained(r, "dz_eigenspectrum") for r in runs], ("factor", "component"))
    if al is None:
        return _empty(hv, title)
    m = _nanmean0(al.values)
    els = []
    for i, f in enumerate(al["factor"].values):
        y = m[i, :20]
        if np.isfinite(y).any():
            k = np.arange(1, len(y) + 1)
            els.append(hv.Curve((k, y), "component", "variance share", label=str(f))
                       * hv.Scatter((k, y), "component", "variance share", label=str(f)).opts(size=5))
    if not els:
        return _empty(hv, title)
    return hv.Overlay(els).opts(title=title, frame_width=FW, frame_height=H, legend_position="right",
                                legend_opts=_LEGEND)


def _circle_panel(hv, runs, title):
    r = next((r for r in runs if r.analysis is not None and "circle_xy" in r.analysis), None)
    if r is None:
        return _empty(hv, title)
    xy, ang = r.analysis["circle_xy"].values, r.analysis["circle_angle"].values
    paths = hv.Path([np.column_stack([o[:, 0], o[:, 1]]) for o in xy if np.isfinite(o).all()]).opts(
        color="lightgray", line_width=1)
    pts = hv.Points((xy[..., 0].ravel(), xy[..., 1].ravel(), ang.ravel()), ["PC1", "PC2"], "angle").opts(
        color="angle", cmap=_CYCLIC, clim=(-np.pi, np.pi), size=6, colorbar=True, tools=["hover"])
    s = r.summary
    cv, res = s.get("radius_cv"), s.get("phase_residual")
    xlabel = f"PC1   (radius CV {cv:.2f}, phase residual {res:.2f} rad)" if isinstance(cv, float) and \
        isinstance(res, float) else "PC1"
    lim = float(np.nanmax(np.abs(xy))) * 1.1 if np.isfinite(xy).any() else 1.0
    return (paths * pts).opts(title=title, frame_width=H, frame_height=H, xlim=(-lim, lim), ylim=(-lim, lim),
                              xlabel=xlabel, ylabel="PC2")


def _curve_priority(name: str):
    """Which curves to show first when a group has more than the cap: summaries, the encoder."""
    summary = name.endswith((".mean", "norm", ".total", ".penalty", "nonzero", "entropy"))
    return (not summary, "encoder" not in name, name)


def _metric_group_panel(hv, runs, title, pick, ylabel):
    els = []
    for r in runs:
        if r.metrics is None:
            continue
        names = sorted((str(v) for v in r.metrics.data_vars if r.metrics[v].dims == ("step",) and pick(str(v))),
                       key=_curve_priority)
        for name in names[:_MAX_CURVES]:
            s = r.series(name)
            els.append(hv.Curve((s[0], s[1]), "step", ylabel, label=name if len(runs) == 1 else f"{name} ({r.label})"))
    if not els:
        return None
    return hv.Overlay(els).opts(title=title, frame_width=FW, frame_height=H, legend_position="right",
                                legend_opts=_LEGEND)


def _layer_panel(hv, runs, panel, title):
    els = []
    for r in runs:
        a = r.analysis
        if a is None or "layer_sparsity" not in a:
            continue
        for lay in a["layer"].values:
            y = a["layer_sparsity"].sel(layer=lay).values
            lab = f"{lay} (probe)" if len(runs) == 1 else f"{lay} (probe, {r.label})"
            els.append(hv.Curve((a["step"].values, y), "step", "fraction", label=lab)
                       * hv.Scatter((a["step"].values, y), "step", "fraction", label=lab).opts(size=6))
    if not els:
        return panel
    ov = hv.Overlay(els)
    if panel is not None:
        ov = panel * ov
    return ov.opts(title=title, frame_width=FW, frame_height=H, legend_position="right", legend_opts=_LEGEND)


def readout_budget(runs) -> "dict | None":
    """The budget curve of the page's runs (:func:`colsim.analysis.budget.collect`): ``{"layers": names, "arms":
    {arm: {samples: [accuracies (L,) per seed]}}}``; None when fewer than two runs have per-layer read-outs."""
    paths = [r.path for r in runs]
    arms = collect_budget(paths)
    if sum(len(by_seed) for arm, by in arms.items() if arm != "untrained" for by_seed in by.values()) < 2:
        return None
    return {"layers": budget_layers(paths),
            "arms": {arm: {x: [by[x][s] for s in sorted(by[x])] for x in by} for arm, by in arms.items()}}


def _budget_row(hv, runs):
    """One panel per layer: the read-out accuracy (mean over seeds, error bars ± 1 SE) against training samples
    (log axis), one curve per arm; [] when the runs hold no budget curve."""
    data = readout_budget(runs)
    if data is None:
        return []
    panels = []
    for li, lname in enumerate(data["layers"]):
        els = []
        for arm, by in sorted(data["arms"].items()):
            xs = sorted(by)
            m = [float(np.mean([a[li] for a in by[x]])) for x in xs]
            se = [float(np.std([a[li] for a in by[x]], ddof=1) / np.sqrt(len(by[x]))) if len(by[x]) > 1 else 0.0
                  for x in xs]
            els.append(hv.Curve((xs, m), "samples", "read-out accuracy", label=arm)
                       * hv.ErrorBars((xs, m, se), "samples", ["read-out accuracy", "se"], label=arm)
                       * hv.Scatter((xs, m), "samples", "read-out accuracy", label=arm).opts(size=6))
        panels.append(hv.Overlay(els).opts(title=f"{BUDGET_TITLE} - {lname}", logx=True, frame_width=FW,
                                           frame_height=H, legend_position="right", legend_opts=_LEGEND))
    return panels


def build_layout(paths):
    """(rows of holoviews panels, one column per rule; header HTML; runs by rule) for ``paths``."""
    hv = _hv()
    runs = [_Run(p) for p in paths]
    by_rule: dict[str, list[_Run]] = {}
    for r in runs:
        by_rule.setdefault(r.info["rule"], []).append(r)
    rules = sorted(by_rule)
    rows = []
    makers = [(_loss_panel, 0), (_rank_panel, 1), (_accmat_panel, 2), (_forget_panel, 3), (_r2_panel, 4),
              (_spectrum_panel, 5), (_circle_panel, 6)]
    for fn, ti in makers:
        rows.append([fn(hv, by_rule[rule], f"{TITLES[ti]} - {rule}") for rule in rules])
    optional = [(TITLES[7], lambda n: bool(_LAYER_RE.search(n)), "fraction"),
                (TITLES[8], lambda n: n.startswith(_STATE_PREFIXES), "value"),
                (TITLES[9], lambda n: bool(_BLOCK_RE.search(n)), "value")]
    for title, pick, ylabel in optional:
        panels = [_metric_group_panel(hv, by_rule[rule], f"{title} - {rule}", pick, ylabel) for rule in rules]
        if title == TITLES[7]:  # per-layer sparsity of the recorded layer activity, per evaluation
            panels = [_layer_panel(hv, by_rule[rule], p, f"{title} - {rule}") for p, rule in zip(panels, rules)]
        if any(p is not None for p in panels):
            rows.append([p if p is not None else _empty(hv, f"{title} - {rule}") for p, rule in zip(panels, rules)])
    if any(r.spiking is not None for r in runs):  # spiking runs only
        for fn, title in zip((_raster_panel, _rate_hist_panel), SPIKING_TITLES):
            rows.append([fn(hv, by_rule[rule], f"{title} - {rule}") for rule in rules])
    budget = _budget_row(hv, runs)  # one row across rules: the arms are the curves
    if budget:
        rows.append(budget)
    rows += circuit_rows(hv, by_rule, _empty, {"frame_width": FW, "frame_height": H, "legend_position": "right",
                                               "legend_opts": _LEGEND})
    return rows, _header(runs), by_rule


def _header(runs) -> str:
    lines = []
    for r in runs:
        i, s = r.info, r.summary

        def f(k):
            v = s.get(k)
            return f"{v:.3f}" if isinstance(v, (int, float)) and v is not None else "–"

        lines.append(f"<tr><td>{html.escape(i['rule'])}</td><td>{i['seed']}</td><td>{html.escape(i['model'])}</td>"
                     f"<td>{html.escape(i['protocol'])}</td><td>{html.escape(i['status'])}</td>"
                     f"<td>{i['steps_done']}</td><td>{f('acc_agg')}</td><td>{f('forgetting')}</td>"
                     f"<td>{f('equivariance_r2_pooled')}</td><td>{f('z_eff_rank')}</td>"
                     f"<td>{len(s.get('alarms') or [])}</td></tr>")
    alarms = "".join(f"<li><b>{html.escape(r.info['rule'])} seed {r.info['seed']}</b> step {a['step']}: "
                     f"{html.escape(a['kind'])} ({html.escape(a['variable'])}) — {html.escape(a['detail'])}</li>"
                     for r in runs for a in (r.summary.get("alarms") or []))
    return ("<h2>colsim dashboard</h2><table border='1' cellpadding='3' style='border-collapse:collapse'>"
            "<tr><th>rule</th><th>seed</th><th>model</th><th>protocol</th><th>status</th><th>steps</th>"
            "<th>acc z_AGG</th><th>forgetting</th><th>equiv R2 (lin, pooled)</th><th>eff rank</th><th>alarms</th></tr>"
            + "".join(lines) + "</table>"
            + (f"<h3>Health alarms</h3><ul>{alarms}</ul>" if alarms else "<p>No health alarms.</p>"))


def dashboard(paths, out_file=None, serve: bool = False, port: int = 0, title: str = "colsim dashboard"):
    """Write a standalone HTML dashboard of ``paths`` to ``out_file`` (default ``dashboard.html``
    in the first run's folder) and return its path; with ``serve`` start a panel server on
    localhost instead (blocking; returns when it stops)."""
    paths = [str(p) for p in paths]
    if not paths:
        raise ValueError("dashboard: no runs given")
    rows, header, _ = build_layout(paths)
    if serve:
        import panel as pn

        app = pn.Column(pn.pane.HTML(header),
                        *[pn.Row(*[pn.pane.HoloViews(p, backend="bokeh") for p in row]) for row in rows])
        pn.serve(app, address="localhost", port=port, show=False, title=title)
        return None
    import holoviews as hv
    from bokeh.embed import file_html
    from bokeh.layouts import column, row
    from bokeh.models import Div
    from bokeh.resources import INLINE

    out = Path(out_file) if out_file else _default_out(paths[0])
    out.parent.mkdir(parents=True, exist_ok=True)
    # at most PER_ROW panels side by side (a 1400-px window): more rules wrap onto further rows, never widen the page
    model = column(Div(text=header), *[row(*[hv.render(p, backend="bokeh") for p in r[k:k + PER_ROW]])
                                       for r in rows for k in range(0, len(r), PER_ROW)])
    out.write_text(file_html(model, INLINE, title), encoding="utf-8")
    return out


def _default_out(path) -> Path:
    p = Path(path)
    folder = p.parent if p.name == "store.zarr" else p
    return folder / "dashboard.html"
