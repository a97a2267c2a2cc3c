"""Per-tick diagnostics recorded with the metrics (schedule step 7): collapse of z and z_AGG, and a circuit's
per-column metric row."""
from __future__ import annotations

from typing import Optional

import torch

from colsim.column import Circuit

__all__ = ["collapse_diagnostics", "circuit_metrics", "CollapseMonitor"]


def collapse_diagnostics(z: torch.Tensor, prefix: str, valid: Optional[torch.Tensor] = None) -> dict[str, float]:
    """Per-dim std (min / mean), effective ranks and mean pairwise cosine of the rows of z (B, D).

    ``valid`` (B,) bool keeps only the rows that hold a representation (z_AGG of the streams with a
    context). Fewer than 2 rows: every value is NaN (recorded as missing, not as a number no
    computation produced). ``{prefix}_eff_rank`` = the participation ratio of the centred
    covariance and ``{prefix}_rankme`` = RankMe of the uncentred singular values — the functions
    and names :mod:`colsim.analysis.metrics` uses for the same quantities (docs/reference/metrics.md).
    """
    from colsim.analysis.metrics import participation_ratio, rankme  # numpy only; analysis never imports torch

    keys = [f"{prefix}_{k}" for k in ("std_min", "std_mean", "eff_rank", "rankme", "mean_cos")]
    if z.shape[0] < 2:  # B = 1 (the online protocol): no tensor work, no host sync
        return dict.fromkeys(keys, float("nan"))
    z = z.detach().float()
    if valid is not None:
        z = z[valid.to(torch.bool)]
    if z.shape[0] < 2:
        return dict.fromkeys(keys, float("nan"))
    std = z.std(0)
    s_c = _singular_values(z - z.mean(0, keepdim=True))  # centred
    s_u = _singular_values(z)  # uncentred
    zn = torch.nn.functional.normalize(z, dim=-1)
    cos = zn @ zn.T
    B = z.shape[0]
    mean_cos = float((cos.sum() - cos.diagonal().sum()) / (B * B - B))
    vals = [float(std.min()), float(std.mean()), participation_ratio(s_c ** 2 / (B - 1)), rankme(s_u), mean_cos]
    return dict(zip(keys, vals))


def _singular_values(z: torch.Tensor):
    """The singular values of z (B, D), from the eigenvalues of the smaller Gram matrix in float64 (z zᵀ or zᵀ z):
    the same values as ``torch.linalg.svdvals`` to float32 precision, at a fraction of its cost (an SVD of the
    (128, 400) features of the supervised column took ~20 % of its training step; issue 30, item 7)."""
    z = z.double()
    g = z @ z.T if z.shape[0] <= z.shape[1] else z.T @ z
    ev = torch.linalg.eigvalsh(g).clamp_min(0).flip(0)  # descending, as svdvals
    return ev.sqrt().cpu().numpy()


class CollapseMonitor:
    """The collapse diagnostics of each tick. With B >= 2 rows they are the tick's (:func:`collapse_diagnostics`);
    with one stream (B = 1, the ``online`` protocol) one row cannot show a collapse, so they are computed over the
    rows of the last ``window`` ticks (NaN until the window has filled). The window is part of a checkpoint
    (:meth:`state_dict`), so a resumed run records the same diagnostics as the uninterrupted one."""

    def __init__(self, window: int = 32):
        self.window = int(window)
        self.rows: dict[str, list[torch.Tensor]] = {}

    def __call__(self, z: torch.Tensor, prefix: str, valid: Optional[torch.Tensor] = None) -> dict[str, float]:
        if z.shape[0] >= 2 or self.window < 2:
            return collapse_diagnostics(z, prefix, valid)
        z = z.detach().float()
        if valid is not None:
            z = z[valid.to(torch.bool)]
        buf = self.rows.setdefault(prefix, [])
        buf.extend(z)  # no row when the one stream has no representation yet (z_AGG before a context)
        del buf[:-self.window]
        if len(buf) < self.window:
            return collapse_diagnostics(z[:0], prefix)  # every value NaN
        return collapse_diagnostics(torch.stack(buf), prefix)

    def state_dict(self) -> dict:
        return {k: torch.stack(v).cpu() if v else torch.empty(0) for k, v in self.rows.items()}

    def load_state_dict(self, state: Optional[dict], device) -> None:
        self.rows = {k: list(v.to(device)) for k, v in (state or {}).items() if v.numel()}


def circuit_metrics(circ: Circuit, trace, metrics: dict) -> dict:
    """A circuit's metric row: ``loss`` (column,) each column's prediction loss, ``loss_circuit`` what the rule
    minimised, collapse diagnostics per column (``z_*`` over its B streams), and every ``<column>/<key>``
    (per-column rules' metrics, per-column models' diagnostics) as a (column,) array."""
    out = dict(metrics)
    if "loss" in out:
        out["loss_circuit"] = out.pop("loss")
    if "loss_pred" in trace:
        out["loss"] = circ.column_losses(trace)
    if "z" in trace:
        N = circ.n
        z, za = trace["z"].detach().view(N, -1, trace["z"].shape[-1]), trace["z_agg"].detach().view(N, -1, trace["z_agg"].shape[-1])
        valid = trace["valid"].view(N, -1) if "valid" in trace else None
        for i, n in enumerate(circ.names):
            out.update({f"{n}/{k}": v for k, v in collapse_diagnostics(z[i], "z").items()})
            out.update({f"{n}/{k}": v for k, v in collapse_diagnostics(za[i], "zagg", None if valid is None
                                                                         else valid[i]).items()})
    return circ.group_metrics(out)
