"""Continual-learning metrics from an accuracy matrix (docs/reference/metrics.md; Avalanche's definitions).

``A[r, j]`` = probe accuracy on phase j's probe set after phase r. When an evaluation
before any training exists, pass it as ``init`` (row vector over j) — FWT needs it.

* forgetting of phase k = ``A[k, k] - A[last, k]``, averaged over k < last
* BWT = mean over k < last of ``A[last, k] - A[k, k]``
* FWT_k = ``A[k-1, k] - init[k]`` for k >= 1, averaged over every k whose row k-1 exists: a
  run that stopped after T < P phases passes its T completed rows (a (T, P) matrix) and still
  scores FWT_1 .. FWT_T — row T-1 already holds the next phase's accuracy ``A[T-1, T]``.
"""
from __future__ import annotations

import numpy as np

__all__ = ["forgetting", "bwt", "fwt", "continual_summary"]


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
