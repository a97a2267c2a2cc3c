"""Rule-comparison figures for results pages: per-seed values and their mean ± 95 % CI per rule, and per-seed
paired differences against a control, drawn with holoviews from the same numbers ``colsim compare`` tabulates.

Each function returns a holoviews object; :func:`save_png` renders it with the matplotlib backend (no browser),
so ``examples/results_figures.py`` can write the PNGs the docs show.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from colsim.analysis.compare import mean_ci, paired_from_summaries

__all__ = ["per_rule_figure", "paired_figure", "budget_figure", "save_png"]


def _hv():
    import holoviews as hv

    hv.extension("matplotlib")  # static figures: the bokeh dashboards load their own backend
    return hv


def per_rule_figure(summaries: list[dict], metric: str, rules: list[str], title: str, ylabel: str):
    """One column per rule: every seed's ``metric`` (grey points) and the mean with its 95 % CI (black)."""
    hv = _hv()
    pts, means = [], []
    for i, rule in enumerate(rules):
        vals = [s[metric] for s in summaries if s.get("rule") == rule and isinstance(s.get(metric), (int, float))]
        if not vals:
            continue
        jitter = np.linspace(-0.15, 0.15, len(vals)) if len(vals) > 1 else [0.0]
        pts += [(i + j, v) for j, v in zip(jitter, vals)]
        m, h, _ = mean_ci(vals)
        means.append((i, m, h if np.isfinite(h) else 0.0))
    ticks = [(i, r) for i, r in enumerate(rules)]
    seeds = hv.Scatter(pts, "rule", ylabel).opts(color="grey", alpha=0.6, s=20)
    mean = hv.Scatter([(i, m) for i, m, _ in means], "rule", ylabel).opts(color="black", s=60, marker="D")
    ci = hv.ErrorBars(means, "rule", [ylabel, "ci"]).opts(color="black", capsize=4)
    return (seeds * ci * mean).opts(title=title, xticks=ticks, xrotation=30, aspect=2.2, fig_size=180, xlabel="", ylabel=ylabel,
                                    xlim=(-0.6, len(rules) - 0.4))


def paired_figure(summaries: list[dict], metric: str, vs: str, rules: list[str], title: str, ylabel: str):
    """Per rule, the mean of the per-seed paired differences ``rule - vs`` with its 95 % CI, and a zero line:
    a bar that does not cross zero is an effect these seeds resolve."""
    hv = _hv()
    rows = {r["rule"]: r for r in paired_from_summaries(summaries, vs, metrics=(metric,), by=())}
    shown = [r for r in rules if r in rows]
    data = [(i, rows[r][metric], rows[r][f"{metric}_ci95"]) for i, r in enumerate(shown)]
    ticks = [(i, r) for i, r in enumerate(shown)]
    zero = hv.HLine(0).opts(color="grey", linestyle="--")
    ci = hv.ErrorBars(data, "rule", [ylabel, "ci"]).opts(color="black", capsize=4)
    mean = hv.Scatter([(i, m) for i, m, _ in data], "rule", ylabel).opts(color="black", s=60, marker="D")
    return (zero * ci * mean).opts(title=title, xticks=ticks, xrotation=30, aspect=2.2, fig_size=180, xlabel="", ylabel=ylabel,
                                   xlim=(-0.6, max(len(shown), 1) - 0.4))


def budget_figure(arms: dict, layers: list[str], title: str = "Read-out vs training samples"):
    """Issue 31's budget curve (:func:`colsim.analysis.budget.collect`'s ``arms``): one panel per layer, one curve
    per arm, the mean over seeds with its 95 % CI against the training samples (log axis)."""
    hv = _hv()
    panels = []
    xs_all = sorted({x for by in arms.values() for x in by})
    xlim = (xs_all[0] / 1.6, xs_all[-1] * 1.6) if xs_all else None
    for li, name in enumerate(layers):
        els = []
        for arm in sorted(arms):
            xs = sorted(arms[arm])
            stats = [mean_ci([v[li] for v in arms[arm][x].values()]) for x in xs]
            pts = [(x, m) for x, (m, _, _) in zip(xs, stats)]
            bars = [(x, m, h if np.isfinite(h) else 0.0) for x, (m, h, _) in zip(xs, stats)]
            els += [hv.Curve(pts, "samples", "read-out accuracy", label=arm),
                    hv.ErrorBars(bars, "samples", ["read-out accuracy", "ci"]).opts(capsize=3),
                    hv.Scatter(pts, "samples", "read-out accuracy", label=arm).opts(s=30)]
        panels.append(hv.Overlay(els).opts(title=f"{name}", logx=True, aspect=1.2, fig_size=120, xlim=xlim,
                                           show_legend=li == len(layers) - 1, legend_position="right"))
    return hv.Layout(panels).opts(title=title).cols(len(panels))


def save_png(obj, path) -> Path:
    """Render ``obj`` to a PNG with holoviews' matplotlib backend."""
    hv = _hv()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    hv.save(obj, str(path.with_suffix("")), fmt="png", backend="matplotlib")
    return path
