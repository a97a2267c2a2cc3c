"""Synaptic consolidation modifiers: Synaptic Intelligence and online EWC (REFERENCE.md section 4).

Both wrap any rule (``--rule backprop+si``, ``--rule layerwise+ewc``), leave the inner rule's
descent direction ``g`` untouched and add a quadratic pull towards the parameters at the
last phase end. Both train exactly the parameters the inner rule trains (every parameter
they are given); the penalty gradient of a parameter depends only on that parameter's own
history, so the modifiers are synapse-local whatever the inner rule is.

**SI** — Synaptic Intelligence (Zenke, Poole & Ganguli 2017, ICML, Eqs. 3-5)::

    per step     omega_k -= g_k * Δθ_k          (path integral; g = the inner rule's direction,
                                                 the gradient of the unregularised loss for
                                                 loss-based rules; Δθ = the update applied,
                                                 after any post-step rescaling)
    phase end    Omega_k = [Omega_k + omega_k / ((θ_k - θ~_k)² + xi)]+ ,  omega <- 0,  θ~ <- θ
    penalty      c * sum_k Omega_k (θ_k - θ~_k)²        (gradient 2 c Omega (θ - θ~))

Defaults c = 0.1, xi = 1e-3 (paper ranges c 0.1-1, xi 1e-3-0.1).

**EWC** — online Elastic Weight Consolidation (Kirkpatrick et al. 2017, PNAS, Eq. 3;
online form of Schwarz et al. 2018)::

    during a phase   F_acc += g²,  n += 1      (diagonal empirical Fisher of the rule's own
                                                 loss, from the minibatch direction g)
    phase end        F <- gamma F + F_acc / n,  θ* <- θ,  F_acc <- 0
    penalty          lambda / 2 * sum_k F_k (θ_k - θ*_k)²   (gradient lambda F (θ - θ*))

The Fisher is the *minibatch* empirical Fisher (the square of each step's mean gradient,
averaged over the phase's steps): per-sample gradients would cost a backward pass per
sample. Defaults lambda = 1e4 (minibatch Fishers are small), gamma = 1 (plain accumulation).

Metrics: ``si.Omega.<group>`` / ``ewc.F.<group>`` (L2 norms per parameter group, see
rules/_params.py), ``si.omega.total``, ``si.penalty`` / ``ewc.penalty``.
"""
from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field

from colsim.config import Strict
from colsim.registry import register_rule
from colsim.rule import Rule
from colsim.rules._params import group_norms, zeros_like_tree

__all__ = ["SIConfig", "EWCConfig", "si", "ewc"]


class SIConfig(Strict):
    name: Literal["si"] = "si"
    c: float = Field(0.1, ge=0)  # penalty strength
    xi: float = Field(1e-3, gt=0)  # damping of the phase displacement


class EWCConfig(Strict):
    name: Literal["ewc"] = "ewc"
    lam: float = Field(1e4, ge=0)  # lambda: penalty strength
    gamma: float = Field(1.0, ge=0, le=1)  # online decay of earlier Fishers


def _snapshot(params):
    return {n: p.detach().clone() for n, p in params.items()}


def _inner_post(inner: Rule, params, state, delta):
    if inner.post_step is None:
        return delta, state
    return inner.post_step(params, state, delta)


def _inner_boundary(inner: Rule, params, state, event):
    return inner.boundary(params, state, event) if inner.boundary is not None else state


@register_rule("si", SIConfig, kind="modifier")
def si(cfg: SIConfig, inner: Rule, column=None) -> Rule:
    """Synaptic Intelligence: path-integral importance, quadratic pull to the last phase's parameters."""

    def init(params):
        return {"inner": inner.init(params), "omega": zeros_like_tree(params), "Omega": zeros_like_tree(params),
                "anchor": _snapshot(params), "g": zeros_like_tree(params), "phases": 0}

    def update(params, state, trace):
        g, s_in, metrics = inner.update(params, state["inner"], trace)
        grads = dict(g)
        penalty = 0.0
        with torch.no_grad():
            last = {n: (g[n].detach().clone() if n in g else torch.zeros_like(p)) for n, p in params.items()}
            for n, p in params.items():
                d = p.detach() - state["anchor"][n]
                pen_g = 2.0 * cfg.c * state["Omega"][n] * d
                grads[n] = grads[n] + pen_g if n in grads else pen_g
                penalty += float((state["Omega"][n] * d * d).sum())
        metrics = dict(metrics)
        metrics["si.penalty"] = cfg.c * penalty
        metrics.update(group_norms(state["Omega"], "si.Omega"))
        metrics["si.omega.total"] = group_norms(state["omega"], "si.omega")["si.omega.total"]
        return grads, {**state, "inner": s_in, "g": last}, metrics

    def post_step(params, state, delta):
        delta, s_in = _inner_post(inner, params, state["inner"], delta)
        omega = {n: state["omega"][n] - state["g"][n] * delta[n] if n in delta else state["omega"][n]
                 for n in state["omega"]}
        return delta, {**state, "inner": s_in, "omega": omega}

    def boundary(params, state, event):
        s_in = _inner_boundary(inner, params, state["inner"], event)
        if event != "phase_end":
            return {**state, "inner": s_in}
        Omega, anchor = {}, {}
        with torch.no_grad():
            for n, p in params.items():
                d = p.detach() - state["anchor"][n]
                Omega[n] = torch.clamp(state["Omega"][n] + state["omega"][n] / (d * d + cfg.xi), min=0.0)
                anchor[n] = p.detach().clone()
        return {**state, "inner": s_in, "Omega": Omega, "anchor": anchor, "omega": zeros_like_tree(params),
                "phases": state["phases"] + 1}

    return Rule(init, update, inner.needs, post_step, boundary)


@register_rule("ewc", EWCConfig, kind="modifier")
def ewc(cfg: EWCConfig, inner: Rule, column=None) -> Rule:
    """Online EWC: diagonal empirical Fisher of the rule's own loss, quadratic pull to phase-end parameters."""

    def init(params):
        return {"inner": inner.init(params), "F": zeros_like_tree(params), "F_acc": zeros_like_tree(params),
                "n": 0, "anchor": _snapshot(params), "phases": 0}

    def update(params, state, trace):
        g, s_in, metrics = inner.update(params, state["inner"], trace)
        grads = dict(g)
        penalty = 0.0
        F_acc = {}
        with torch.no_grad():
            for n, p in params.items():
                gn = g[n].detach() if n in g else None
                F_acc[n] = state["F_acc"][n] + gn * gn if gn is not None else state["F_acc"][n]
                d = p.detach() - state["anchor"][n]
                pen_g = cfg.lam * state["F"][n] * d
                grads[n] = grads[n] + pen_g if n in grads else pen_g
                penalty += float((state["F"][n] * d * d).sum())
        metrics = dict(metrics)
        metrics["ewc.penalty"] = 0.5 * cfg.lam * penalty
        metrics.update(group_norms(state["F"], "ewc.F"))
        return grads, {**state, "inner": s_in, "F_acc": F_acc, "n": state["n"] + 1}, metrics

    def post_step(params, state, delta):
        delta, s_in = _inner_post(inner, params, state["inner"], delta)
        return delta, {**state, "inner": s_in}

    def boundary(params, state, event):
        s_in = _inner_boundary(inner, params, state["inner"], event)
        if event != "phase_end":
            return {**state, "inner": s_in}
        n = max(state["n"], 1)
        F = {k: cfg.gamma * state["F"][k] + state["F_acc"][k] / n for k in state["F"]}
        return {**state, "inner": s_in, "F": F, "F_acc": zeros_like_tree(params), "n": 0,
                "anchor": _snapshot(params), "phases": state["phases"] + 1}

    return Rule(init, update, inner.needs, post_step if inner.post_step is not None else None, boundary)
