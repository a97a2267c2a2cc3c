"""Continual-learning metrics from an accuracy matrix (docs/reference/metrics.md; Avalanche's definitions).

``A[r, j]`` = probe accuracy on phase j's probe set after phase r. When an evaluation
before any training exists, pass it as ``init`` (row vector over j) — FWT needs it.

* forgetting of phase k = ``A[k, k] - A[last, k]``, averaged over k < last
* BWT = mean over k < last of ``A[last, k] - A[k, k]``
* average accuracy = mean over j of ``A[last, j]``, once every phase is done (van de Ven & Tolias 2019,
  "Three scenarios for continual learning": the accuracy over all tasks after the last one)
* FWT_k = ``A[k-1, k] - init[k]`` for k >= 1, averaged over every k whose row k-1 exists: a
  run that stopped after T < P phases passes its T completed rows (a (T, P) matrix) and still
  scores FWT_1 .. FWT_T — row T-1 already holds the next phase's accuracy ``A[T-1, T]``.
"""
from __future__ import annotations

import numpy as np

__all__ = ["forgetting", "bwt", "fwt", "average_accuracy", "continual_summary", "phase_end_rows", "continual_of_rows"]


def _check(acc) -> np.ndarray:
    a = np.asarray(acc, dtype=np.float64)
    if a.ndim != 2 or a.shape[0] != a.shape[1]:
        raise ValueError(f"accuracy matrix must be square (phases x phases), got shape {a.shape}")
    return a


def forgetting(acc) -> float:
    a = _check(acc)
    T = a.shape[0]
    if T < 2:
        return float("nan")
    return float(np.mean([a[k, k] - a[T - 1, k] for k in range(T - 1)]))


def bwt(acc) -> float:
    a = _check(acc)
    T = a.shape[0]
    if T < 2:
        return float("nan")
    return float(np.mean([a[T - 1, k] - a[k, k] for k in range(T - 1)]))


def average_accuracy(acc) -> float:
    """Mean of the last row of a square A: every task's accuracy after the last task (NaN if any is missing)."""
    a = _check(acc)
    return float(a[-1].mean()) if a.shape[0] else float("nan")


def fwt(acc, init) -> float:
    """Mean of ``A[k-1, k] - init[k]`` over k = 1 .. min(T, P - 1); acc (T, P) with T <= P rows
    (the phases completed), init (P,). NaN when no such k exists (P = 1 or T = 0)."""
    a = np.asarray(acc, dtype=np.float64)
    if a.ndim != 2 or a.shape[0] > a.shape[1]:
        raise ValueError(f"accuracy matrix must be (phases completed, phases) with no more rows than columns, "
                         f"got shape {a.shape}")
    b = np.asarray(init, dtype=np.float64)
    T, P = a.shape
    if b.shape != (P,):
        raise ValueError(f"init must hold one accuracy per phase ({P},), got shape {b.shape}")
    ks = range(1, min(T, P - 1) + 1)
    if not len(ks):
        return float("nan")
    return float(np.mean([a[k - 1, k] - b[k] for k in ks]))


def continual_summary(acc, init=None) -> dict:
    out = {"forgetting": forgetting(acc), "bwt": bwt(acc)}
    if init is not None:
        out["fwt"] = fwt(acc, init)
    return out


def phase_end_rows(phases, values, names) -> tuple[np.ndarray, np.ndarray]:
    """The phase-end rows of per-evaluation values: ``values`` (E, P) with ``phases`` (E,) naming the phase
    each evaluation closed ("init" before training), ``names`` the P phases in order. Row r is the *last*
    evaluation after phase r, for the leading phases that have one (a run that stopped early has T < P).
    Returns ``(rows (T, P), index (T,))``: ``index`` picks those evaluations, so other per-evaluation arrays
    (standard errors) select the same rows."""
    ph = [str(p) for p in phases]
    v = np.asarray(values, dtype=np.float64)
    idx: list[int] = []
    for name in names:
        hits = [i for i, p in enumerate(ph) if p == name]
        if not hits:
            break
        idx.append(hits[-1])
    index = np.asarray(idx, dtype=np.int64)
    return (v[index] if len(idx) else np.empty((0, v.shape[1] if v.ndim == 2 else len(names)))), index


def continual_of_rows(rows, init=None, se=None, higher_better: bool = True) -> dict:
    """The continual summary of one read-out: forgetting, BWT, FWT on ``rows`` (T, P), the phase-end rows
    of the T phases completed (:func:`phase_end_rows`; T <= P). Forgetting and BWT use the block
    ``rows[:, :T]`` (NaN unless T >= 2); FWT uses every completed row, so a run that stopped early still scores
    the next-phase accuracy ``rows[T-1, T]`` it measured (NaN without ``init`` or when a needed cell is NaN: a
    read-out that exists only from its phase's end on has no FWT). For a loss (``higher_better=False``) rows
    and init are negated first: forgetting > 0 means the loss went up. ``se`` (T, P), the cells' standard
    errors, gives ``forgetting_se`` (cells treated as independent). Also ``per_phase_forgetting``
    (``rows[k, k] - rows[T-1, k]``, k < T-1), ``phases_completed`` T, and ``average_accuracy`` (the mean of
    the last row once all P phases are done, else NaN; with its ``average_accuracy_se`` from ``se``).

    The one implementation behind the run's summary.json (:mod:`colsim.analysis.summary`) and
    ``colsim analyze`` (:mod:`colsim.analysis.analyze`, :func:`colsim.analysis.metrics.continual_metrics`)."""
    sign = 1.0 if higher_better else -1.0
    a = sign * np.asarray(rows, dtype=np.float64)
    if a.ndim != 2 or a.shape[0] > a.shape[1]:
        raise ValueError(f"phase-end rows must be (phases completed, phases) with no more rows than columns, "
                         f"got shape {a.shape}")
    T = a.shape[0]
    out = {"phases_completed": T, "forgetting": float("nan"), "bwt": float("nan"), "fwt": float("nan"),
           "forgetting_se": float("nan"), "average_accuracy": float("nan"), "average_accuracy_se": float("nan"),
           "per_phase_forgetting": [float(a[k, k] - a[T - 1, k]) for k in range(T - 1)]}
    if T >= 2:
        out["forgetting"], out["bwt"] = forgetting(a[:, :T]), bwt(a[:, :T])
        if se is not None:
            s = np.asarray(se, dtype=np.float64)
            out["forgetting_se"] = float(np.sqrt(sum(s[k, k] ** 2 + s[T - 1, k] ** 2 for k in range(T - 1))) / (T - 1))
    if T >= 1 and T == a.shape[1]:
        out["average_accuracy"] = sign * average_accuracy(a)
        if se is not None:
            out["average_accuracy_se"] = float(np.sqrt(np.sum(np.asarray(se, dtype=np.float64)[T - 1] ** 2)) / T)
    if init is not None and T >= 1:
        out["fwt"] = fwt(a, sign * np.asarray(init, dtype=np.float64))
    return out
