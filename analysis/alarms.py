"""Health alarms over a run's ``metrics`` (docs/reference/metrics.md, from the seeds' production runs).

Each alarm is a dict ``{"kind", "variable", "step", "detail"}`` where ``step`` is the training
step where the problem *began* (not where it was detected):

* ``rising_component`` — a loss component grows (by ``rel_rise`` of its scale) from its
  running minimum while the total loss is lower than it was at that minimum; step = the
  minimum's step (a term that scales with embedding spread exploding 0.35 -> 1.10 while the
  main loss fell, in the seeds' JEPA run).
* ``grad_spike`` — ``grad_norm`` more than ``spike_factor`` times its trailing median; step =
  the first spike; detail counts them.
* ``nonfinite`` — divergence of the total loss or gradient norm: the first ±inf, or the step from
  which the series stays non-finite (the simulator stops a diverged run there). A NaN followed by
  finite values is a missing value — the loss of a phase's first tick, where nothing was
  predicted — and every series here skips it.
* ``rank_collapse`` — an effective-rank series (``z_eff_rank``, ``zagg_eff_rank`` or the
  analysis' per-evaluation ranks) falls below ``collapse_frac`` of the best value reached.
* ``usage_collapse`` — a usage series (metrics with "usage" in the name, ToST's
  ``membership_entropy``, or the analysis' per-evaluation fraction of active units) falls
  below ``collapse_frac`` of its best.

Series are smoothed with a centred running median (window ``smooth`` points) first.
"""
from __future__ import annotations

import re

import numpy as np
import xarray as xr

__all__ = ["loss_components", "rising_component", "grad_spikes", "nonfinite", "series_collapse", "health_alarms"]


def _smooth(y: np.ndarray, w: int) -> np.ndarray:
    """Centred running median over finite values, window ``w`` (odd); NaN where no finite value."""
    y = np.asarray(y, np.float64)
    if w <= 1 or len(y) < 3:
        return y.copy()
    w = min(w | 1, (len(y) // 2) * 2 + 1)
    pad = np.pad(y, w // 2, mode="edge")
    win = np.lib.stride_tricks.sliding_window_view(pad, w)
    with np.errstate(all="ignore"):
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            return np.nanmedian(np.where(np.isfinite(win), win, np.nan), axis=1)


def _window(n: int, smooth: int | None) -> int:
    return smooth if smooth is not None else max(5, n // 50)


def loss_components(metrics: xr.Dataset, rule: str = "") -> list[str]:
    """Loss components of a run: ``loss.*``, ``*.penalty`` and the per-layer terms of the rule's
    parts, ``<part>.l<k>.<term>`` (``lpl.l0.pred``, ``layerwise.l1.loss``).

    ``rule`` is the root attribute (``"lpl+metaplastic"``); the parts that are rule-state
    modifiers (metaplastic, si, ewc, replay, consolidation) contribute only their ``penalty``.
    """
    state = {"metaplastic", "si", "ewc", "replay", "consolidation"}
    parts = [p for p in str(rule).split("+") if p and p not in state]
    layer_term = re.compile(r"^(%s)\.l\d+\.[A-Za-z_]+$" % "|".join(map(re.escape, parts))) if parts else None
    out = []
    for v in metrics.data_vars:
        name = str(v)
        if metrics[v].dims != ("step",) or name == "loss":
            continue
        if name.startswith("loss.") or name.endswith(".penalty") or (layer_term and layer_term.match(name)):
            out.append(name)
    return sorted(out)


def _binned(step, *ys, max_points: int = 4000):
    """Long series -> at most ``max_points`` bins (nan-mean of each bin, the bin's first step)."""
    step = np.asarray(step)
    n = len(step)
    if n <= max_points:
        return (step,) + tuple(np.asarray(y, np.float64) for y in ys)
    b = -(-n // max_points)
    m = (n // b) * b
    import warnings

    out = [step[:m:b]]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        for y in ys:
            y = np.asarray(y, np.float64)[:m].reshape(-1, b)
            out.append(np.nanmean(np.where(np.isfinite(y), y, np.nan), axis=1))
    return tuple(out)


def rising_component(step, component, total, name: str = "", rel_rise: float = 0.5, smooth: int | None = None,
                     min_share: float = 0.05):
    """Alarm dict if ``component`` rises from its running minimum while ``total`` is lower, else None.

    The rise must exceed ``rel_rise`` of the component's own scale *and* ``min_share`` of the
    total loss at the onset (a term moving from 1e-6 to 1e-5 is not a health problem).

    Series longer than 4000 points are bin-averaged first (the onset step is then the start
    of its bin).
    """
    component = np.asarray(component, dtype=np.float64).copy()
    # a term that reads exactly 0 from the first tick on has no baseline yet (LPL's and layerwise's predictive
    # terms need a previous view; a warm-up holds a term at 0): its rise from there is no health signal
    lead = int(np.argmax(component != 0)) if (component != 0).any() else len(component)
    component[:lead] = np.nan
    step, component, total = _binned(step, component, total)
    c = _smooth(component, _window(len(step), smooth))
    t = _smooth(total, _window(len(step), smooth))
    ok = np.isfinite(c) & np.isfinite(t)
    if ok.sum() < 5:
        return None
    idx = np.nonzero(ok)[0]
    c, t, st = c[idx], t[idx], step[idx]
    run_min = np.minimum.accumulate(c)
    arg = np.maximum.accumulate(np.where(c <= run_min, np.arange(len(c)), 0))  # index of the running minimum
    spread = np.nanpercentile(c, 95) - np.nanpercentile(c, 5)
    scale = np.maximum(np.abs(run_min), max(spread, 1e-12) * 0.1)
    rise = (c - run_min) / scale
    total_fell = t < t[arg] - 1e-12
    big = (c - run_min) > min_share * np.abs(t[arg])  # the rise matters at the scale of the total loss
    hit = np.nonzero((rise > rel_rise) & total_fell & big)[0]
    if not len(hit):
        return None
    i = hit[0]
    j = arg[i]
    return {"kind": "rising_component", "variable": name, "step": int(st[j]),
            "detail": f"{name} rose {c[j]:.3g} -> {np.max(c[j:]):.3g} while the total fell {t[j]:.3g} -> "
                      f"{t[-1]:.3g}"}


def grad_spikes(step, grad_norm, spike_factor: float = 10.0, window: int = 50, name: str = "grad_norm",
                min_history: int = 10):
    """Alarm dict for gradient-norm spikes (> ``spike_factor`` x trailing median of ``window`` points).

    The first ``min_history`` points only build the median (no spike can be called there), and
    a trailing median of 0 (no gradient yet) is no reference.
    """
    step = np.asarray(step)
    g = np.asarray(grad_norm, np.float64)
    ok = np.isfinite(g)
    if ok.sum() <= min_history:
        return None
    g, st = g[ok], step[ok]
    pad = np.concatenate([np.full(window, g[0]), g[:-1]])
    med = np.empty(len(g))
    for a in range(0, len(g), 65536):  # trailing median, chunked to bound memory
        b = min(a + 65536, len(g))
        med[a:b] = np.median(np.lib.stride_tricks.sliding_window_view(pad[a:b + window - 1], window), axis=1)
    spikes = np.nonzero((g > spike_factor * med) & (med > 0) & (np.arange(len(g)) >= min_history))[0]
    if not len(spikes):
        return None
    return {"kind": "grad_spike", "variable": name, "step": int(st[spikes[0]]),
            "detail": f"{len(spikes)} step(s) above {spike_factor:g}x the trailing median; max "
                      f"{g[spikes].max():.3g} vs median {med[spikes[0]]:.3g}"}


def nonfinite(step, values, name: str):
    """Alarm dict where a series that had finite values diverged: at its first ±inf, or at the first
    of the non-finite values it ends with (a diverged run stops there), whichever comes first.

    NaN before a metric first appears is "not recorded", and a NaN followed by finite values is a
    missing value (the loss of a tick where nothing was predicted), not divergence.
    """
    v = np.asarray(values, np.float64)
    fin = np.isfinite(v)
    if not fin.any():
        return None
    first_ok = int(np.argmax(fin))
    last_ok = len(v) - 1 - int(np.argmax(fin[::-1]))
    cand = [i for i in np.nonzero(np.isinf(v))[0] if i > first_ok][:1]
    if last_ok < len(v) - 1:
        cand.append(last_ok + 1)
    if not cand:
        return None
    i = min(cand)
    return {"kind": "nonfinite", "variable": name, "step": int(np.asarray(step)[i]),
            "detail": f"{name} became {v[i]} (divergence)"}


def series_collapse(step, values, name: str, kind: str = "rank_collapse", collapse_frac: float = 0.5,
                    smooth: int | None = None, warmup: float = 0.1, min_points: int = 2):
    """Alarm dict when a series falls below ``collapse_frac`` x its best value so far.

    The best value is taken after the first ``warmup`` fraction of the points (the rank of a
    freshly initialised network is not a baseline to hold training to); series with fewer
    than ``min_points`` finite points are not judged.
    """
    step, values = _binned(step, values)
    y = _smooth(values, _window(len(step), smooth) if len(step) > 20 else 1)
    ok = np.isfinite(y)
    if ok.sum() < max(min_points, 2):
        return None
    y, st = y[ok], step[ok]
    w = int(len(y) * warmup)
    y, st = y[w:], st[w:]
    best = np.maximum.accumulate(y)
    hit = np.nonzero((y < collapse_frac * best) & (best > 0))[0]
    if not len(hit):
        return None
    i = hit[0]
    return {"kind": kind, "variable": name, "step": int(st[i]),
            "detail": f"{name} fell to {y[i]:.3g} (< {collapse_frac:g} x best {best[i]:.3g}); "
                      f"final {y[-1]:.3g}"}


def health_alarms(metrics: xr.Dataset | None, rule: str = "", eval_series: dict | None = None,
                  rel_rise: float = 0.5, spike_factor: float = 10.0, collapse_frac: float = 0.5,
                  smooth: int | None = None, components: list[str] | None = None) -> list[dict]:
    """All alarms of a run, sorted by step.

    metrics: the store's ``metrics`` group (dims ``step``); ``rule``: the root attribute, to find
    loss components (:func:`loss_components`); ``eval_series``: ``{name: (kind, steps, values)}``
    extra per-evaluation series (the analysis' ranks and unit usage); ``components`` overrides
    the loss components watched for ``rising_component``. In-run rank / usage series need at
    least 20 points (a smoke run's first steps are not judged). A circuit's metrics with a
    ``column`` dimension are watched column by column (with its circuit-wide series), an alarm on a
    per-column series naming it ``name[column]``.
    """
    if metrics is not None and "column" in metrics.dims:
        kw = dict(rule=rule, rel_rise=rel_rise, spike_factor=spike_factor, collapse_frac=collapse_frac, smooth=smooth,
                  components=components)
        per = {str(v) for v in metrics.data_vars if "column" in metrics[v].dims}
        found: dict = {}
        names = metrics["column"].values if "column" in metrics.coords else range(metrics.sizes["column"])
        for i, c in enumerate(names):
            for a in health_alarms(metrics.isel(column=i, drop=True), **kw):
                if a["variable"] in per:
                    a = {**a, "variable": f"{a['variable']}[{c}]"}
                found.setdefault((a["kind"], a["variable"], a["step"]), a)  # circuit-wide alarms once
        out = list(found.values()) + health_alarms(None, eval_series=eval_series, collapse_frac=collapse_frac)
        return sorted(out, key=lambda a: (a["step"], a["kind"]))
    out: list[dict] = []
    if metrics is not None and "step" in metrics.dims and metrics.sizes["step"] > 0:
        step = metrics["step"].values
        get = lambda v: metrics[v].values.astype(np.float64)  # noqa: E731
        if "loss" in metrics:
            total = get("loss")
            for comp in (components if components is not None else loss_components(metrics, rule)):
                a = rising_component(step, get(comp), total, comp, rel_rise, smooth)
                if a:
                    out.append(a)
        for v in ("loss", "grad_norm"):
            if v in metrics:
                a = nonfinite(step, get(v), v)
                if a:
                    out.append(a)
        if "grad_norm" in metrics:
            a = grad_spikes(step, get("grad_norm"), spike_factor)
            if a:
                out.append(a)
        for v in metrics.data_vars:
            name = str(v)
            if metrics[v].dims != ("step",):
                continue
            if name.endswith("eff_rank"):
                a = series_collapse(step, get(v), name, "rank_collapse", collapse_frac, smooth, min_points=20)
            elif "usage" in name or name.endswith("membership_entropy"):
                a = series_collapse(step, get(v), name, "usage_collapse", collapse_frac, smooth, min_points=20)
            else:
                continue
            if a:
                out.append(a)
    for name, (kind, steps, values) in (eval_series or {}).items():
        a = series_collapse(np.asarray(steps), np.asarray(values, np.float64), name, kind, collapse_frac, smooth=1,
                            warmup=0.0)
        if a:
            out.append(a)
    return sorted(out, key=lambda a: (a["step"], a["kind"]))
