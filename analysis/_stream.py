"""Streaming (out-of-core) reductions over a probe group, one block of samples at a time.

For one (eval, probe_set) slice, a single pass over ``z`` (sample, view, unit) and ``z_agg``
(sample, unit) accumulates, in float64:

* the Gram matrices ``sum x x^T`` of z (all views) and z_AGG -> singular values -> effective
  rank and RankMe (exact, no subsampling);
* per-unit sums, sums of squares and near-zero counts -> unit std (usage) and sparsity;
* per factor, the moments of ``dz = z[v+1] - z[v]`` over the view pairs where only that factor
  changes; and over all pairs, with the pair actions ``b = [1, a]``: ``S_zz = sum dz dz^T``,
  ``S_bz = sum b dz^T``, ``S_bb = sum b b^T`` -> the covariance of the factor-induced dz with
  the other factors' linear contribution removed, in closed form. Same result as
  :func:`colsim.analysis.metrics.factor_delta_z` (mode "auto") + covariance.

Block products are float32 about a fixed shift, accumulated in float64 (:class:`_Moments`).
Memory: O(unit^2 + block), independent of the number of samples.
"""
from __future__ import annotations

import numpy as np

from colsim.analysis.metrics import FACTORS, isolated_pairs, spectrum_from_gram

__all__ = ["SliceStats", "accumulate_slice", "factor_covariance", "needs_residualisation", "MIN_PAIRS"]

ZERO_TOL = 1e-6  # |z| at or below counts as an inactive (zero) entry for sparsity
MIN_PAIRS = 20  # isolated pairs needed before a factor's dz uses them instead of residualising


class _Moments:
    """Running ``sum x x^T``, ``sum x`` and n of rows x, products in float32 about a fixed shift.

    Each block's product is taken in float32 (2-3x faster than float64) on rows shifted by the
    first block's mean, and accumulated in float64; the shift removes the cancellation that
    makes raw float32 moments inaccurate for data with a large mean.
    """

    def __init__(self):
        self.c = None
        self.s2 = self.s1 = None
        self.n = 0

    def add(self, x: np.ndarray) -> None:
        if not len(x):
            return
        x = np.asarray(x, np.float32)
        if self.c is None:
            self.c = x.mean(0)
            self.s2 = np.zeros((x.shape[1], x.shape[1]))
            self.s1 = np.zeros(x.shape[1])
        xc = x - self.c
        self.s2 += xc.T @ xc
        self.s1 += xc.sum(0, dtype=np.float64)
        self.n += len(x)

    def gram(self) -> np.ndarray:
        """Uncentred ``sum x x^T``."""
        c = self.c.astype(np.float64)
        return self.s2 + np.outer(c, self.s1) + np.outer(self.s1, c) + self.n * np.outer(c, c)

    def cov(self) -> np.ndarray:
        m = self.s1 / self.n
        return self.s2 / self.n - np.outer(m, m)

    def mean(self) -> np.ndarray:
        return self.c.astype(np.float64) + self.s1 / self.n


class SliceStats:
    """Accumulators for one (eval, probe_set) slice; ``update`` with blocks, then read the properties.

    ``need_all``: also accumulate the all-pairs moments needed to residualise a factor (skipped
    when every varying factor has enough isolated pairs, saving a third of the work).
    """

    def __init__(self, n_units: int, n_actions: int, action_dims=(), need_all: bool = True):
        B = n_actions + 1
        self.action_dims = [str(a) for a in action_dims]
        self.iso = {f: _Moments() for f in FACTORS}  # dz over the pairs where only that factor changes
        self.z = _Moments()
        self.agg = _Moments()  # sized by z_agg's own width (``unit_agg`` may differ from ``unit``)
        self.zeros = np.zeros(n_units)
        self.need_all = need_all
        self.s_zz = np.zeros((n_units, n_units))
        self.s_bz = np.zeros((B, n_units))
        self.s_bb = np.zeros((B, B))
        self.s_dz = np.zeros(n_units)
        self.n_dz = 0
        self.finite = True

    @property
    def n_z(self) -> int:
        return self.z.n

    def update(self, z: np.ndarray, z_agg: np.ndarray | None, actions: np.ndarray | None) -> None:
        """z (s, V, D); z_agg (s, D_agg); actions (s, V, A) (the pair v -> v+1 at index v)."""
        z = np.asarray(z, np.float32)
        ok = np.isfinite(z).all(axis=(1, 2))
        if not ok.all():
            self.finite = False
            z = z[ok]
            z_agg = z_agg[ok] if z_agg is not None else None
            actions = actions[ok] if actions is not None else None
        x = z.reshape(-1, z.shape[-1])  # (s*V, D)
        self.z.add(x)
        self.zeros += (np.abs(x) <= ZERO_TOL).sum(0)
        if z_agg is not None:
            za = np.asarray(z_agg, np.float32)
            self.agg.add(za[np.isfinite(za).all(1)])
        if actions is not None and z.shape[1] > 1:
            dz = (z[:, 1:] - z[:, :-1]).reshape(-1, z.shape[-1])  # (s*(V-1), D) float32
            a = np.asarray(actions, np.float64)[:, :-1].reshape(len(dz), -1)
            for f, acc in self.iso.items():
                m = isolated_pairs(a, self.action_dims, f)
                if m.any():
                    acc.add(dz[m])
            if self.need_all:  # float64: the residualisation subtracts large terms
                d64 = dz.astype(np.float64)
                b = np.column_stack([np.ones(len(a)), a])
                self.s_zz += d64.T @ d64
                self.s_bz += b.T @ d64
                self.s_bb += b.T @ b
                self.s_dz += d64.sum(0)
                self.n_dz += len(d64)

    @property
    def z_singular_values(self) -> np.ndarray:
        return spectrum_from_gram(self.z.gram()) if self.z.n else np.array([np.nan])

    @property
    def zagg_singular_values(self) -> np.ndarray:
        return spectrum_from_gram(self.agg.gram()) if self.agg.n else np.array([np.nan])

    @property
    def unit_std(self) -> np.ndarray:
        if not self.z.n:
            return np.full(len(self.zeros), np.nan)
        return np.sqrt(np.clip(np.diag(self.z.cov()), 0, None))

    @property
    def sparsity(self) -> float:
        return float(self.zeros.sum() / max(self.z.n * len(self.zeros), 1))


def factor_covariance(st: SliceStats, factor: str, min_pairs: int = MIN_PAIRS) -> tuple[np.ndarray | None, str]:
    """Covariance (D, D) of the dz induced by ``factor`` and the method used.

    Same rule as :func:`colsim.analysis.metrics.factor_delta_z` with ``mode="auto"``: the pairs
    where only ``factor`` changes when there are at least ``min_pairs`` ("isolated"), else all
    pairs with the other factors' linear contribution removed ("residualised"). None when the
    factor does not vary.
    """
    iso = st.iso[factor]
    if iso.n >= max(min_pairs, 2):
        return iso.cov(), "isolated"
    n = st.n_dz
    if n < 2:  # no varying factor lacked isolated pairs, or no pairs at all
        return None, "none"
    names = st.action_dims
    bb = st.s_bb / n
    var = np.diag(bb)[1:] - (bb[0, 1:]) ** 2  # action variances
    mine = np.array([nm in FACTORS[factor] for nm in names])
    if not (mine & (var > 1e-12)).any():
        return None, "none"  # the factor does not vary in this probe set
    other = np.concatenate([[False], ~mine & (var > 1e-12)])  # over b's columns (intercept first)
    s_zz, s_bz, s_bb, s_dz = st.s_zz, st.s_bz, st.s_bb, st.s_dz
    if other.any():
        w = np.linalg.pinv(s_bb) @ s_bz  # (B, D) regression of dz on [1, a]
        wo = w[other]
        s_oz, s_oo = s_bz[other], s_bb[np.ix_(other, other)]
        s_zz = s_zz - wo.T @ s_oz - s_oz.T @ wo + wo.T @ s_oo @ wo
        s_dz = s_dz - s_bb[0, other] @ wo  # sum over pairs of b_o (row 0 of s_bb holds the sums)
    mean = s_dz / n
    return s_zz / n - np.outer(mean, mean), "residualised"


def _block_rows(arr, per_sample_bytes: int, target_bytes: int = 64 << 20) -> int:
    """Samples per block: a multiple of the on-disk sample chunk near ``target_bytes``."""
    chunk = None
    enc = getattr(arr, "encoding", {}) or {}
    dims = list(arr.dims)
    for key in ("preferred_chunks", "chunks"):
        c = enc.get(key)
        if isinstance(c, dict) and "sample" in c:
            chunk = int(c["sample"])
        elif isinstance(c, (tuple, list)) and len(c) == len(dims):
            chunk = int(c[dims.index("sample")])
        if chunk:
            break
    chunk = chunk or 1024
    k = max(1, target_bytes // max(per_sample_bytes * chunk, 1))
    return int(chunk * k)


def needs_residualisation(pair_actions: np.ndarray, action_dims, min_pairs: int = MIN_PAIRS) -> bool:
    """True when some factor varies but has fewer than ``min_pairs`` pairs where only it changes."""
    from colsim.analysis.metrics import factor_unchanged

    for f in FACTORS:
        varies = ~factor_unchanged(pair_actions, action_dims, f)
        if varies.any() and isolated_pairs(pair_actions, action_dims, f).sum() < min_pairs:
            return True
    return False


def accumulate_slice(probe, e: int, p: int, block_bytes: int = 32 << 20, min_pairs: int = MIN_PAIRS) -> SliceStats:
    """One pass over ``probe.z`` / ``z_agg`` at (eval=e, probe_set=p), block by block."""
    z = probe["z"]
    S, V, D = z.sizes["sample"], z.sizes["view"], z.sizes["unit"]
    has_act = "actions" in probe and "action_dim" in probe.dims
    A = probe.sizes["action_dim"] if has_act else 0
    names = [str(x) for x in probe["action_dim"].values] if has_act else []
    act_all = None
    need_all = False
    if has_act:  # (S, V, A): small next to z; decides whether the residualisation moments are needed
        act_all = np.asarray(probe["actions"].isel(probe_set=p).transpose("sample", "view", "action_dim").values,
                             np.float64)
        need_all = needs_residualisation(act_all[:, :-1].reshape(-1, A), names, min_pairs)
    st = SliceStats(D, A, names, need_all=need_all)
    rows = _block_rows(z, V * D * 4, block_bytes)
    for a in range(0, S, rows):
        sl = slice(a, min(a + rows, S))
        zb = z.isel(eval=e, probe_set=p, sample=sl).transpose("sample", "view", "unit").values
        zab = None
        if "z_agg" in probe:
            zab = probe["z_agg"].isel(eval=e, probe_set=p, sample=sl).transpose("sample", ...).values
        ab = act_all[sl] if act_all is not None else None
        st.update(zb, zab, ab)
    return st
