"""One tick of the schedule, steps 1-4: the Step, the column's forward, the rule's update and the finite check.

:func:`tick` changes no parameter: the caller applies the gradients it returns (step 5, the single mutation
point, in :func:`colsim.simulate.run`). It returns the states the next tick starts from, the trace, the metric
row so far, and the non-finite terms when the tick diverged.
"""
from __future__ import annotations

from typing import Any, NamedTuple, Optional

import torch

from colsim.device import host_to_device
from colsim.sim.guard import grad_norm, nonfinite_terms

__all__ = ["TickContext", "TickOut", "tick", "mask_missing_losses"]


class TickContext(NamedTuple):
    """What stays fixed over a phase's ticks."""
    column: Any
    rule: Any
    params: dict
    device: str
    local: bool
    graph_kw: dict  # {"encoder_graph": False} for a local rule that reads no graph of the encoder's pass
    amp: Any  # autocast context factory (a null context on CPU)
    cast_grads: bool  # autocast on: a rule's grads computed in bf16 / fp16 are cast to their parameters' dtype
    circuit: Any  # the Circuit, or None for one column


class TickOut(NamedTuple):
    sstate: Any
    cstate: Any
    rstate: Any
    trace: dict
    grads: Optional[dict]  # None when the phase does not learn
    grad_norm: Optional[float]
    metrics: dict
    diverged: Optional[list[str]]  # the non-finite terms, or None


def tick(ctx: TickContext, ahead, sstate, cstate, rstate, *, p_idx: int, first: bool, last: bool, learn: bool,
         progress) -> TickOut:
    column, circ = ctx.column, ctx.circuit
    # 1. Step
    sstate, st = ahead.step(sstate)
    if not last:
        ahead.ahead(sstate)  # step_ahead: the next Step, on another core while the column works
    st.labels["phase"] = torch.full_like(st.labels["class"], p_idx)  # (B,) phase id
    obs, action = host_to_device(st.obs, ctx.device), host_to_device(st.action, ctx.device)  # pinned to CUDA
    start = st.start.to(ctx.device) | first
    metrics: dict[str, float] = {"phase": float(p_idx)}
    # a supervised column's objective reads the world's labels (colsim.column, reads_labels)
    sup = {"labels": {k: v.to(ctx.device) for k, v in st.labels.items()}} if getattr(column, "reads_labels", False) \
        else {}
    progress.lap("stream")
    if not learn:
        with torch.no_grad(), ctx.amp():
            cstate, trace = column(cstate, obs, action, start, local=False, **sup)
        metrics["loss"] = float(trace["loss"])
        progress.lap("learn")
        return TickOut(sstate, cstate, rstate, trace, None, None, metrics, None)
    with ctx.amp():
        # 2. column forward
        cstate, trace = column(cstate, obs, action, start, local=ctx.local, **ctx.graph_kw, **sup)
        # world truth, for rule diagnostics only (replay's class histogram); laid out like the trace
        trace["labels"] = st.labels if circ is None else circ.batch_labels(st.labels)
        # 3. rule update
        grads, rstate, rm = ctx.rule.update(ctx.params, rstate, trace)
    if ctx.cast_grads:  # a local rule's -dW computed in bf16 / fp16: the optimizer steps in float32
        grads = {n: g if g is None or g.dtype == ctx.params[n].dtype else g.to(ctx.params[n].dtype)
                 for n, g in grads.items()}
    loss = float(trace["loss"].detach())
    metrics["loss"] = loss
    metrics.update(rm)
    progress.lap("learn")
    # 4. divergence check: one fused norm over every gradient (non-finite iff some entry is)
    gn = grad_norm(grads)
    terms = nonfinite_terms(loss, rm, grads, gn)
    progress.lap("check")
    return TickOut(sstate, cstate, rstate, trace, grads, gn, metrics, terms)


def mask_missing_losses(metrics: dict, trace: dict) -> None:
    """No stream had a context (a phase's first tick): the prediction term was not computed, so every loss
    total is missing (NaN), not 0."""
    if "valid" in trace and not bool(trace["valid"].any()):
        metrics.update({k: float("nan") for k in metrics if k == "loss" or k.startswith("loss.")})
