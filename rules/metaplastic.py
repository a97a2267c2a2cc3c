"""Metaplastic gating, n-GateON (Barry, Gerstner & Bellec 2025, Neural Networks 192:107728,
arXiv 2306.01690): per-unit availability that freezes the plasticity of important units.

Every unit i (an output row of a Linear weight, an output channel of a conv weight; see
rules/_params.py) carries an availability ``a_i in [0, 1]`` (initially 1). Each step, from
that step's importance ``I_i`` normalised per layer, ``Ĩ = I / mean_layer(I)``::

    a_i <- clip(a_i - eta_a a_i (Ĩ_i - eps), 0, 1)                      (eta_a = 0.01, eps = 1)

and every incoming weight of unit i (its weight row / filter and its bias) has its *update*
scaled by ``a_i`` after the optimizer step (``post_step``): Adam cancels a constant gradient
scale, so scaling the gradient would do nothing (REFERENCE.md section 4, trap).

Importance, ``importance:``

* ``gradient`` — ``I_i = (sum_j θ_ij g_ij)²`` over the unit's incoming weights and bias, with
  ``g`` the inner rule's descent direction. For a Linear / conv unit with pre-activation h
  this equals ``(sum_b h_i dL/dh_i)²`` exactly (``sum_j W_ij dL/dW_ij + b_i dL/db_i =
  sum_{b, pos} h_i dL/dh_i``): the batch-summed form of the paper's ``mean_b (h_i dL/dh_i)²``
  (the per-sample form needs per-sample gradients). It works for every unit, including the
  attention projections, and for local inner rules (g = the rule's own direction).
* ``activity`` (local variant) — ``I_i = mean_b |h_i|``, the unit's mean absolute output,
  read by forward hooks on the column's Linear / Conv2d modules during training-mode
  forwards. Units computed without a module call (``nn.MultiheadAttention``'s in/out
  projections) have no activity and keep their availability.

Optional context gates (``context_gates: true``): a context index k (one-hot c) gates the
plasticity of unit i by ``g_i = tanh([U c]_i+)²`` with fixed random U (N(0, 1), seeded), so
each context gets its own subset of plastic units; a change point (the fast loss average
exceeding ``change_threshold`` (1.01) times the slow "recent mean", at most once per
``refractory`` steps) moves to the next context. The gates scale the update together with
a (the paper gates activity; here only plasticity is gated, the forward is unchanged).

Trains: nothing by itself — it rescales the inner rule's updates unit by unit; all the
information it uses for unit i (its weights, its update, its activity) is local to unit i.
Metrics per gated layer: ``metaplastic.a.<layer>.mean|min|lt05`` (fraction of units with
a < 0.5); with gates ``metaplastic.context`` and ``metaplastic.switches``.
"""
from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field
from torch import Tensor, nn

from colsim.config import Strict
from colsim.registry import register_rule
from colsim.rule import Rule
from colsim.rules._params import layer_name, unit_layers

__all__ = ["MetaplasticConfig", "metaplastic", "availability_step", "unit_importance"]


class MetaplasticConfig(Strict):
    name: Literal["metaplastic"] = "metaplastic"
    importance: Literal["gradient", "activity"] = "gradient"
    eta_a: float = Field(0.01, ge=0)
    eps: float = Field(1.0, ge=0)  # normalised importance above which availability falls
    context_gates: bool = False
    max_contexts: int = Field(8, ge=1)
    change_threshold: float = Field(1.01, gt=0)
    fast_window: int = Field(10, ge=1)  # steps of the fast loss average
    slow_window: int = Field(100, ge=1)  # steps of the slow ("recent mean") loss average
    refractory: int = Field(100, ge=1)
    seed: int = Field(0, ge=0)


def availability_step(a: Tensor, importance: Tensor, eta_a: float, eps: float) -> Tensor:
    """One n-GateON step: a, importance (C,) -> clip(a - eta_a a (I/mean(I) - eps), 0, 1)."""
    m = importance.mean()
    it = importance / m if float(m) > 0 else torch.zeros_like(importance)
    return (a - eta_a * a * (it - eps)).clamp(0.0, 1.0)


def unit_importance(w: Tensor, gw: Tensor, b: "Tensor | None" = None, gb: "Tensor | None" = None) -> Tensor:
    """(sum_j θ_ij g_ij)² per unit i (dim 0), bias included: w, gw (C, ...), b, gb (C,) -> (C,)."""
    s = (w * gw).flatten(1).sum(1)
    if b is not None and gb is not None:
        s = s + b * gb
    return s * s


class _ActivityProbe:
    """Forward hooks: mean |output| per unit of Linear / Conv2d modules in training mode."""

    def __init__(self, column: nn.Module, names: set[str]):
        self.sum: dict[str, Tensor] = {}
        self.n: dict[str, int] = {}
        self.handles = []
        for mname, mod in column.named_modules():
            pname = f"{mname}.weight"
            if isinstance(mod, (nn.Linear, nn.Conv2d)) and pname in names:
                self.handles.append(mod.register_forward_hook(self._hook(pname)))

    def _hook(self, pname: str):
        def hook(mod, inp, out):
            if not mod.training or not isinstance(out, Tensor) or out.numel() == 0:
                return
            with torch.no_grad():
                h = out.detach().abs()
                dims = [d for d in range(h.dim()) if d != (1 if isinstance(mod, nn.Conv2d) else h.dim() - 1)]
                m = h.mean(dim=dims).float()  # (C,)
            self.sum[pname] = self.sum[pname] + m if pname in self.sum else m
            self.n[pname] = self.n.get(pname, 0) + 1
        return hook

    def take(self) -> dict[str, Tensor]:
        out = {k: v / self.n[k] for k, v in self.sum.items()}
        self.sum, self.n = {}, {}
        return out


@register_rule("metaplastic", MetaplasticConfig, kind="modifier")
def metaplastic(cfg: MetaplasticConfig, inner: Rule, column=None) -> Rule:
    """n-GateON availability per unit (importance: gradient or activity) scaling the applied update."""
    probe = None
    if cfg.importance == "activity":
        if column is None:
            raise ValueError("metaplastic(importance='activity') needs the column to read unit activities")
        names = set(unit_layers(dict(column.named_parameters())))
        probe = getattr(column, "_colsim_activity_probe", None)
        if probe is None:  # one probe per column (the rule may be built twice on the same column)
            probe = _ActivityProbe(column, names)
            column._colsim_activity_probe = probe

    def init(params):
        units = unit_layers(params)
        gen = torch.Generator().manual_seed(cfg.seed)
        state = {"inner": inner.init(params),
                 "a": {w: torch.ones(params[w].shape[0], device=params[w].device) for w in units}}
        if cfg.context_gates:
            state["U"] = {w: torch.randn(params[w].shape[0], cfg.max_contexts, generator=gen).to(params[w].device)
                          for w in units}
            state.update(context=0, switches=0, since=0, fast=-1.0, slow=-1.0)
        return state

    def _detect(state, loss: float) -> dict:
        s = dict(state)
        if s["fast"] < 0:
            s["fast"] = s["slow"] = loss
        else:
            s["fast"] += (loss - s["fast"]) / cfg.fast_window
            s["slow"] += (loss - s["slow"]) / cfg.slow_window
        s["since"] += 1
        if s["since"] >= cfg.refractory and s["fast"] > cfg.change_threshold * s["slow"]:
            s["context"] = (s["context"] + 1) % cfg.max_contexts
            s["switches"] += 1
            s["since"] = 0
            s["fast"] = s["slow"] = loss  # the new context's loss level starts the averages afresh
        return s

    def update(params, state, trace):
        g, s_in, metrics = inner.update(params, state["inner"], trace)
        units = unit_layers(params)
        a = dict(state["a"])
        with torch.no_grad():
            if cfg.importance == "gradient":
                for w, b in units.items():
                    if w not in g:
                        continue
                    imp = unit_importance(params[w].detach(), g[w].detach(),
                                          params[b].detach() if b else None, g.get(b) if b else None)
                    a[w] = availability_step(a[w], imp, cfg.eta_a, cfg.eps)
            else:
                acts = probe.take()
                for w in units:
                    if w in acts:
                        a[w] = availability_step(a[w], acts[w].to(a[w].device), cfg.eta_a, cfg.eps)
        new = {**state, "inner": s_in, "a": a}
        metrics = dict(metrics)
        for w, v in a.items():
            ln = layer_name(w)
            metrics[f"metaplastic.a.{ln}.mean"] = float(v.mean())
            metrics[f"metaplastic.a.{ln}.min"] = float(v.min())
            metrics[f"metaplastic.a.{ln}.lt05"] = float((v < 0.5).float().mean())
        if cfg.context_gates:
            new = _detect(new, float(trace["loss"].detach()))
            metrics["metaplastic.context"] = float(new["context"])
            metrics["metaplastic.switches"] = float(new["switches"])
        return g, new, metrics

    def post_step(params, state, delta):
        # rescale first, then hand the rescaled update to the inner rule: an inner SI then integrates the
        # update that is finally applied, whatever the order of the modifiers (colsim/rule.py, post_step)
        out = dict(delta)
        for w, b in unit_layers(params).items():
            scale = state["a"][w]
            if cfg.context_gates:
                scale = scale * torch.tanh(state["U"][w][:, state["context"]].clamp(min=0)) ** 2
            if w in out:
                out[w] = out[w] * scale.view(-1, *([1] * (out[w].dim() - 1)))
            if b is not None and b in out:
                out[b] = out[b] * scale
        s_in = state["inner"]
        if inner.post_step is not None:
            out, s_in = inner.post_step(params, s_in, out)
        return out, {**state, "inner": s_in}

    def boundary(params, state, event):
        return {**state, "inner": inner.boundary(params, state["inner"], event)}

    return Rule(init, update, inner.needs | ({"loss"} if cfg.context_gates else set()), post_step,
                boundary if inner.boundary is not None else None)
