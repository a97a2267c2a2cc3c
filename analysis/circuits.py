"""Circuits of many columns: per-column and voted read-outs, evidence accumulation, linear CKA.

Reads a run store's ``probe`` group in the circuit layout (docs/reference/store.md; issue 14):

* ``z`` (eval, probe_set, column, sample, view, unit), ``z_agg`` (eval, probe_set, column, sample,
  unit_agg); the coordinate ``column`` holds the column names plus ``"vote"``, the circuit's vote
  output recorded next to them (for ``z``, the mean of the columns' z);
* ``label_class`` (probe_set, sample) and, when the world gives one, ``label_image`` (probe_set,
  sample), the source image that decides the fit/score side of every probe.

A single-column store (no ``column`` dimension) raises :class:`NotACircuitError` (one line).

Every class probe is the pooled one of the in-run evaluation (``probe_acc_agg``): one logistic
regression over all probe sets' episodes, fit/score sides by source image from
:func:`colsim.analysis.probes.group_sides` (the episode when there is no image label), the first
``max_samples`` episodes of each probe set.

* :func:`column_accuracy` — class from z_AGG of each ``column`` entry, the vote included.
* :func:`accuracy_vs_columns` — the vote over the first k = 1..N columns: the mean of their z_AGG
  (recomputed) or the sum of their evidence.
* :func:`evidence` / :func:`recognition` / :func:`steps_to_recognition` — Monty-style evidence
  accumulation (Clay, Leadholm & Hawkins 2024, "The Thousand Brains Project", arXiv:2412.18354;
  Leadholm et al. 2025, tbp.monty): each column's linear read-out of the class from single-view z
  gives per-view class log-probabilities; summed over views (ticks) they are the column's
  accumulated evidence, summed over columns too the vote's. Steps to recognition = the number of
  views after which the accumulated argmax equals the label and stays equal through the last view.
* :func:`linear_cka` / :func:`cka_matrix` — linear CKA (Kornblith, Norouzi, Lee & Hinton, ICML
  2019, "Similarity of Neural Network Representations Revisited", eq. 5 with centred features):
  ``CKA(X, Y) = ||Yᵀ X||²_F / (||Xᵀ X||_F ||Yᵀ Y||_F)``, between every pair of columns.
* :func:`circuit_analysis` — all of it as the ``circuit_*`` variables of the ``analysis`` group.
"""
from __future__ import annotations

import json
from typing import Literal

import numpy as np
import xarray as xr

from colsim.analysis.probes import binomial_se, fit_readout, group_sides, readout_accuracy

__all__ = ["VOTE", "NotACircuitError", "circuit_columns", "circuit_config", "column_accuracy", "accuracy_vs_columns",
           "evidence", "steps_to_recognition", "recognition", "linear_cka", "cka_matrix", "circuit_analysis"]

VOTE = "vote"  # the column coordinate's entry for the circuit's vote


class NotACircuitError(ValueError):
    """A store without a ``column`` dimension given to a circuit analysis."""


def circuit_columns(probe: xr.Dataset) -> list[str]:
    """The column names of a circuit's ``probe`` group, without ``"vote"``, in coordinate order."""
    if "column" not in probe.dims:
        raise NotACircuitError("probe group has no 'column' dimension (a single-column run): circuit analyses "
                               "need a run whose config has a 'circuit:' of more than one column")
    cols = [str(c) for c in probe["column"].values if str(c) != VOTE]
    if not cols:
        raise NotACircuitError("probe group's 'column' coordinate holds no column besides 'vote'")
    return cols


def circuit_config(attrs: dict) -> dict:
    """The store's ``circuit`` root attribute (a JSON string or dict) as a dict ({} when absent)."""
    c = attrs.get("circuit")
    if isinstance(c, str):
        try:
            c = json.loads(c)
        except ValueError:
            return {}
    return dict(c) if isinstance(c, dict) else {}


def _sides(probe: xr.Dataset, n: int, seed: int):
    """(P, n) class labels and (P, n) fit side (True) of the first ``n`` episodes of every probe set."""
    y = probe["label_class"].isel(sample=slice(0, n)).transpose("probe_set", "sample").values
    if "label_image" in probe:
        g = probe["label_image"].isel(sample=slice(0, n)).transpose("probe_set", "sample").values
    else:  # no image label: every episode its own group
        g = np.arange(y.size).reshape(y.shape)
    return y, group_sides(g, seed)


def _fit_score(x: np.ndarray, y: np.ndarray, fit: np.ndarray) -> "tuple[float, float]":
    """Logistic read-out fitted on rows ``fit`` of ``x`` (N, D), scored on the others: (acc, se)."""
    if fit.all() or not np.isfinite(x).all():
        return float("nan"), float("nan")
    return readout_accuracy(fit_readout(x[fit], y[fit]), x[~fit], y[~fit])


def _zagg(probe, e: int, n: int, columns) -> np.ndarray:
    """(P, C, n, Da) z_AGG of evaluation ``e``, ``columns`` in the given order."""
    za = probe["z_agg"].isel(eval=e, sample=slice(0, n)).sel(column=list(columns))
    return za.transpose("probe_set", "column", "sample", ...).values.astype(np.float64)


def _entries(probe) -> list[str]:
    """The ``column`` entries in the order the analysis writes them: the columns, then the vote."""
    cols = circuit_columns(probe)
    return cols + ([VOTE] if VOTE in [str(c) for c in probe["column"].values] else [])


def _eval_index(probe) -> dict:
    E = probe.sizes["eval"]
    return {"eval": probe["eval"].values if "eval" in probe.coords else np.arange(E)}


def column_accuracy(probe: xr.Dataset, *, seed: int = 0, max_samples: int = 2000) -> xr.Dataset:
    """Pooled class probe on z_AGG of every ``column`` entry (the vote included).

    Returns ``acc``, ``acc_se`` (eval, column): held-out accuracy and its binomial s.e.
    """
    names = _entries(probe)
    n = min(probe.sizes["sample"], max_samples)
    y, fit = _sides(probe, n, seed)
    E, C = probe.sizes["eval"], len(names)
    acc, se = np.full((E, C), np.nan), np.full((E, C), np.nan)
    for e in range(E):
        za = _zagg(probe, e, n, names)  # (P, C, n, Da)
        for c in range(C):
            acc[e, c], se[e, c] = _fit_score(za[:, c].reshape(-1, za.shape[-1]), y.reshape(-1), fit.reshape(-1))
    return xr.Dataset({"acc": (("eval", "column"), acc), "acc_se": (("eval", "column"), se)},
                      coords={**_eval_index(probe), "column": names})


def evidence(probe: xr.Dataset, *, seed: int = 0, max_samples: int = 2000) -> xr.Dataset:
    """Per-view class log-probabilities of every column on the score side (the evidence increments).

    Per evaluation and column, a logistic read-out of the class from single-view z (every view of
    the fit-side episodes a row, all probe sets pooled) scores every view of the score-side episodes.
    Returns ``log_proba`` (eval, column, scored, tick, class) (columns without the vote; ``scored``
    = score-side episodes, probe-set major; ``tick`` = 1..V, the view) and ``label`` (scored,): the
    index into ``class`` of each episode's class (-1: a class absent from the fit side).
    """
    cols = circuit_columns(probe)
    n = min(probe.sizes["sample"], max_samples)
    y, fit = _sides(probe, n, seed)
    classes = np.unique(y[fit])
    y_te = y[~fit]  # (T,) probe-set major
    lab = np.where(np.isin(y_te, classes), np.searchsorted(classes, y_te), -1)
    E, V, T, K = probe.sizes["eval"], probe.sizes["view"], len(y_te), len(classes)
    lp = np.full((E, len(cols), T, V, K), np.nan)
    for e in range(E):
        z = probe["z"].isel(eval=e, sample=slice(0, n)).sel(column=cols)
        z = z.transpose("probe_set", "column", "sample", "view", ...).values.astype(np.float64)  # (P, C, n, V, D)
        for c in range(len(cols)):
            xf, xt = z[:, c][fit], z[:, c][~fit]  # (Nf, V, D), (T, V, D)
            if K == 0 or T == 0 or not (np.isfinite(xf).all() and np.isfinite(xt).all()):
                continue
            r = fit_readout(xf.reshape(-1, xf.shape[-1]), np.repeat(y[fit], V))
            lp[e, c] = r.log_proba(xt.reshape(-1, xt.shape[-1])).reshape(T, V, K)
    return xr.Dataset({"log_proba": (("eval", "column", "scored", "tick", "class"), lp), "label": ("scored", lab)},
                      coords={**_eval_index(probe), "column": cols, "tick": np.arange(1, V + 1), "class": classes})


def steps_to_recognition(log_proba: np.ndarray, label: np.ndarray) -> np.ndarray:
    """Views until the accumulated evidence's argmax is the label and stays it through the last view.

    log_proba (..., V, K): per-view evidence increments (class log-probabilities); label (...,):
    class index (-1 never matches). Returns (...,) float: a count in 1..V (1 = right from the first
    view on), NaN when the argmax is wrong at the last view (never recognised) or the evidence is NaN.
    """
    lp = np.asarray(log_proba, np.float64)
    acc = np.cumsum(lp, axis=-2)  # (..., V, K) accumulated evidence
    ok = np.argmax(acc, axis=-1) == np.asarray(label)[..., None]  # (..., V)
    stays = np.flip(np.logical_and.accumulate(np.flip(ok, -1), axis=-1), -1)  # right from v through the last
    first = np.argmax(stays, axis=-1)  # (...,) first v that stays right (0 when none: masked below)
    steps = np.where(stays[..., -1], first + 1.0, np.nan)
    return np.where(np.isfinite(lp).all(axis=(-2, -1)), steps, np.nan)


def _mean_se(x: np.ndarray, axis: int = -1) -> "tuple[np.ndarray, np.ndarray]":
    """Mean and standard error over ``axis`` of the finite entries (NaN where fewer than 2)."""
    x = np.asarray(x, np.float64)
    k = np.isfinite(x).sum(axis)
    with np.errstate(invalid="ignore", divide="ignore"):
        m = np.where(k > 0, np.nansum(x, axis) / np.maximum(k, 1), np.nan)
        d = np.where(np.isfinite(x), x - np.expand_dims(m, axis), 0.0)
        sd = np.sqrt((d ** 2).sum(axis) / np.maximum(k - 1, 1))
    return m, np.where(k > 1, sd / np.sqrt(np.maximum(k, 1)), np.nan)


def recognition(ev: xr.Dataset) -> xr.Dataset:
    """Steps to recognition of every column and of the evidence vote (columns' evidence summed).

    ``ev``: :func:`evidence`'s dataset. Returns, over ``column`` = the columns + ``"vote"``:
    ``steps`` (eval, column, scored) per episode (1..V, NaN = never recognised), ``steps_mean``,
    ``steps_se`` (eval, column) over the recognised episodes, ``recognized`` (eval, column) their
    fraction, ``acc_tick`` (eval, column, tick) the accuracy of the accumulated argmax after each
    view; ``steps_single`` (eval, scored): an episode's steps averaged over the columns that recognise
    it (NaN: none does); ``steps_gain``, ``steps_gain_se`` (eval,): paired over episodes,
    ``steps_single`` minus the vote's steps (> 0: voting recognises sooner), where both are finite.
    """
    lp = ev["log_proba"].values  # (E, C, T, V, K)
    lp = np.concatenate([lp, lp.sum(1, keepdims=True)], 1)  # + the vote: evidence summed over columns
    lab = ev["label"].values
    steps = steps_to_recognition(lp, lab[None, None, :])  # (E, C+1, T)
    E, C1, T, V, _ = lp.shape
    m, se = _mean_se(steps)
    finite = np.isfinite(lp).all(axis=(-2, -1))  # (E, C+1, T)
    rec = np.where(finite.any(-1), np.isfinite(steps).sum(-1) / np.maximum(finite.sum(-1), 1), np.nan)
    acc_tick = np.full((E, C1, V), np.nan)
    if T:
        right = np.argmax(np.cumsum(lp, -2), -1) == lab[None, None, :, None]  # (E, C+1, T, V)
        acc_tick = np.where(finite.all(-1)[..., None], right.mean(2), np.nan)
    cs = steps[:, :-1]  # (E, C, T) the columns'
    k = np.isfinite(cs).sum(1)
    single = np.where(k > 0, np.nansum(cs, 1) / np.maximum(k, 1), np.nan)  # (E, T) mean over the columns
    gain, gain_se = _mean_se(single - steps[:, -1])
    names = [str(c) for c in ev["column"].values] + [VOTE]
    return xr.Dataset({"steps": (("eval", "column", "scored"), steps), "steps_mean": (("eval", "column"), m),
                       "steps_se": (("eval", "column"), se), "recognized": (("eval", "column"), rec),
                       "steps_single": (("eval", "scored"), single),
                       "acc_tick": (("eval", "column", "tick"), acc_tick), "steps_gain": ("eval", gain),
                       "steps_gain_se": ("eval", gain_se)},
                      coords={"eval": ev["eval"].values, "column": names, "tick": ev["tick"].values})


def accuracy_vs_columns(probe: xr.Dataset, vote: Literal["mean", "evidence"] = "mean", *, seed: int = 0,
                        max_samples: int = 2000, ev: xr.Dataset | None = None) -> xr.Dataset:
    """Class accuracy of the vote over the first k = 1..N columns (coordinate order).

    ``vote="mean"``: the pooled probe on the mean of the first k columns' z_AGG (recomputed, so at
    k = N it is a mean vote's own z_AGG); ``"evidence"``: the argmax of the first k columns' summed
    evidence after the last view (``ev`` = :func:`evidence`'s dataset, computed when None).
    Returns ``acc``, ``acc_se`` (eval, n_columns) with ``n_columns`` = 1..N.
    """
    cols = circuit_columns(probe)
    N, E = len(cols), probe.sizes["eval"]
    acc, se = np.full((E, N), np.nan), np.full((E, N), np.nan)
    if vote == "mean":
        n = min(probe.sizes["sample"], max_samples)
        y, fit = _sides(probe, n, seed)
        for e in range(E):
            za = _zagg(probe, e, n, cols)  # (P, N, n, Da)
            for k in range(1, N + 1):
                x = za[:, :k].mean(1)
                acc[e, k - 1], se[e, k - 1] = _fit_score(x.reshape(-1, x.shape[-1]), y.reshape(-1), fit.reshape(-1))
    elif vote == "evidence":
        ev = evidence(probe, seed=seed, max_samples=max_samples) if ev is None else ev
        total = ev["log_proba"].sum("tick").values  # (E, N, T, K) evidence after the last view
        lab, T = ev["label"].values, ev.sizes["scored"]
        for k in range(1, N + 1):
            s = total[:, :k].sum(1)  # (E, T, K)
            ok = np.isfinite(s).all((-2, -1)) & (T > 0)
            acc[:, k - 1] = np.where(ok, (np.argmax(s, -1) == lab).mean(-1) if T else np.nan, np.nan)
            se[:, k - 1] = [binomial_se(a, T) for a in acc[:, k - 1]]
    else:
        raise ValueError(f"vote must be 'mean' or 'evidence' (a consensus vote is not recomputed from the "
                         f"columns), got {vote!r}")
    return xr.Dataset({"acc": (("eval", "n_columns"), acc), "acc_se": (("eval", "n_columns"), se)},
                      coords={**_eval_index(probe), "n_columns": np.arange(1, N + 1)})


def linear_cka(x: np.ndarray, y: np.ndarray) -> float:
    """Linear CKA of two representations of the same n items, x (n, d1) and y (n, d2).

    ``||Yᵀ X||²_F / (||Xᵀ X||_F ||Yᵀ Y||_F)`` on column-centred X, Y (Kornblith et al., ICML 2019,
    eq. 5): 1 for identical representations, invariant to orthogonal transforms and isotropic scaling
    of either, not to arbitrary invertible linear maps. NaN when either is constant or non-finite.
    """
    x = np.asarray(x, np.float64).reshape(len(x), -1)
    y = np.asarray(y, np.float64).reshape(len(y), -1)
    if len(x) != len(y):
        raise ValueError(f"linear_cka: x has {len(x)} rows and y {len(y)}; both must hold the same items")
    if not (np.isfinite(x).all() and np.isfinite(y).all()):
        return float("nan")
    x, y = x - x.mean(0), y - y.mean(0)
    den = np.linalg.norm(x.T @ x) * np.linalg.norm(y.T @ y)
    return float(np.linalg.norm(y.T @ x) ** 2 / den) if den > 0 else float("nan")


def cka_matrix(probe: xr.Dataset, var: Literal["z_agg", "z"] = "z_agg", *, max_samples: int = 2000) -> xr.DataArray:
    """Linear CKA between every pair of ``column`` entries (the vote included), per evaluation.

    Items: the first ``max_samples`` episodes of every probe set (for ``z``, every view of them).
    Returns (eval, column, column_other), symmetric with a unit diagonal.
    """
    names = _entries(probe)
    n = min(probe.sizes["sample"], max_samples)
    E, C = probe.sizes["eval"], len(names)
    out = np.full((E, C, C), np.nan)
    for e in range(E):
        a = probe[var].isel(eval=e, sample=slice(0, n)).sel(column=names)
        a = a.transpose("column", "probe_set", "sample", ...).values.astype(np.float64)
        a = a.reshape(C, -1, a.shape[-1])  # (C, items, D)
        for i in range(C):
            for j in range(i, C):
                out[e, i, j] = out[e, j, i] = linear_cka(a[i], a[j])
    return xr.DataArray(out, dims=("eval", "column", "column_other"),
                        coords={**_eval_index(probe), "column": names, "column_other": names}, name="cka")


def circuit_analysis(probe: xr.Dataset, *, seed: int = 0, max_samples: int = 2000,
                     vote_kind: str | None = None) -> "tuple[xr.Dataset, dict]":
    """Everything above for a circuit's ``probe`` group: (dataset of ``circuit_*`` variables, summary).

    Variables: ``circuit_acc_agg`` / ``_se`` (eval, column); ``circuit_acc_vs_columns_mean`` /
    ``_evidence`` (+ ``_se``) (eval, n_columns); ``circuit_steps`` (eval, column, scored),
    ``circuit_steps_mean`` / ``_se``, ``circuit_recognized`` (eval, column), ``circuit_acc_tick``
    (eval, column, tick), ``circuit_steps_single`` (eval, scored), ``circuit_steps_gain`` / ``_se``
    (eval,) — in these the ``"vote"`` entry is the evidence vote; ``circuit_cka`` (eval, column,
    column_other) on z_AGG. ``column`` = the columns, then ``"vote"``. The summary holds the last
    evaluation's numbers (``vote_kind``: the store's in-run vote, for the record).
    """
    cols = circuit_columns(probe)
    acc = column_accuracy(probe, seed=seed, max_samples=max_samples)
    ev = evidence(probe, seed=seed, max_samples=max_samples)
    rec = recognition(ev)
    curves = {v: accuracy_vs_columns(probe, v, seed=seed, max_samples=max_samples, ev=ev) for v in ("mean", "evidence")}
    cka = cka_matrix(probe, "z_agg", max_samples=max_samples)
    data = {"circuit_acc_agg": acc["acc"], "circuit_acc_agg_se": acc["acc_se"], "circuit_cka": cka}
    for v, c in curves.items():
        data[f"circuit_acc_vs_columns_{v}"], data[f"circuit_acc_vs_columns_{v}_se"] = c["acc"], c["acc_se"]
    for k in ("steps", "steps_mean", "steps_se", "recognized", "acc_tick", "steps_single", "steps_gain",
              "steps_gain_se"):
        data[f"circuit_{k}"] = rec[k]
    ds = xr.Dataset({k: v.drop_vars("eval", errors="ignore") for k, v in data.items()})
    last = lambda da: da.isel(eval=-1).values if da.sizes.get("eval", 0) else np.full(da.shape[1:], np.nan)  # noqa: E731
    a, m, s, r = (last(x) for x in (acc["acc"], rec["steps_mean"], rec["steps_se"], rec["recognized"]))
    sm, sse = _mean_se(last(rec["steps_single"]))
    names = [str(c) for c in acc["column"].values]
    off = ~np.eye(len(cols), dtype=bool)
    summary = {"circuit_columns": cols, "circuit_vote": vote_kind,
               "circuit_acc_agg": {c: float(x) for c, x in zip(names, a)},
               "circuit_acc_vote": float(a[names.index(VOTE)]) if VOTE in names else float("nan"),
               "circuit_acc_single": float(np.mean([a[names.index(c)] for c in cols])),
               "circuit_acc_vs_columns_mean": last(curves["mean"]["acc"]).tolist(),
               "circuit_acc_vs_columns_evidence": last(curves["evidence"]["acc"]).tolist(),
               "steps_vote": float(m[-1]), "steps_vote_se": float(s[-1]), "steps_single": float(sm),
               "steps_single_se": float(sse), "steps_gain": float(last(rec["steps_gain"])),
               "steps_gain_se": float(last(rec["steps_gain_se"])), "recognized_vote": float(r[-1]),
               "recognized_single": float(np.nanmean(r[:-1])),
               "cka_columns_mean": float(np.mean(last(cka.sel(column=cols, column_other=cols))[off]))
               if len(cols) > 1 else float("nan")}
    return ds, summary
