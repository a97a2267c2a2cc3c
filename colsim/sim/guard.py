"""The finite-check guard (schedule step 4): one fused gradient norm per tick, and the terms that went
non-finite named when any did."""
from __future__ import annotations

import math
from typing import Optional

import torch

__all__ = ["grad_norm", "all_finite", "nonfinite_terms"]


def grad_norm(grads: dict) -> float:
    """The global L2 norm of the gradients in one fused pass (``torch._foreach_norm``): the recorded
    ``grad_norm`` and the divergence check (NaN / Inf in any gradient makes it non-finite). A finite
    gradient whose norm overflows float32 is told apart by :func:`all_finite`, off the hot path."""
    gs = [g for g in grads.values() if g is not None]
    if not gs:
        return 0.0
    norms = torch._foreach_norm(gs)
    if len({(n.dtype, n.device) for n in norms}) > 1:
        norms = [n.double().cpu() for n in norms]
    return float(torch.linalg.vector_norm(torch.stack(norms)))


def all_finite(grads: dict) -> bool:
    return all(bool(torch.isfinite(g).all()) for g in grads.values() if g is not None)


def nonfinite_terms(loss: float, rule_metrics: dict, grads: dict, gn: float) -> Optional[list[str]]:
    """None when the tick is finite; else the terms that are not: ``loss``, ``loss.<rule term>``, and
    ``grads`` (or ``grad:<parameter>`` for up to five parameters when no loss term says why)."""
    bad = [k for k, v in rule_metrics.items() if k.startswith("loss") and not math.isfinite(v)]
    if math.isfinite(loss) and not bad and (math.isfinite(gn) or all_finite(grads)):
        return None
    terms = (["loss"] if not math.isfinite(loss) else []) + bad
    if not math.isfinite(gn):  # the gradients too: named when no loss term says why
        nf = [n for n, g in grads.items() if g is not None and not bool(torch.isfinite(g).all())]
        terms += [f"grad:{n}" for n in nf[:5]] + ([f"grad:+{len(nf) - 5} more"] if len(nf) > 5
                                                    else []) if not terms else ["grads"]
    return terms
