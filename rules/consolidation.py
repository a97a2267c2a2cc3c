"""Synaptic consolidation modifiers: Synaptic Intelligence and online EWC (docs/reference/rules.md).

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

    during a phase   keep the last K = fisher_samples valid column inputs (trace["inputs"])
    phase end        F_new = 1/N sum_n g_n²        (diagonal empirical Fisher at θ* = the phase-end θ,
                                                    g_n = the inner rule's direction on sample n alone)
                     F <- gamma F + F_new,  θ* <- θ,  held inputs cleared
    penalty          lambda / 2 * sum_k F_k (θ_k - θ*_k)²   (gradient lambda F (θ - θ*))

The Fisher is the *per-sample* empirical Fisher of the rule's own loss (for self-supervised
losses, docs/reference/rules.md): at the phase end the column re-runs each of the N <= K held
inputs alone (``column.forward_inputs``, a batch of one, in eval mode so that dropout is off
and BatchNorm uses its running statistics — each sample's loss then depends on that sample
only) and the inner rule's ``update`` gives its direction g_n on that sample (its state
update is discarded). This is a loop over samples, K backward passes once per phase. Terms
built from batch statistics (LPL's Hebbian / decorrelation terms with ``stats: batch``,
layerwise's variance / covariance hinges) have no per-sample form: with one sample their
gradient is zero, so the Fisher of such rules is that of their per-sample terms. A sample
whose direction is not finite (a regulariser taking a variance over a batch of one) is left
out; ``ewc.fisher_samples`` records how many entered the last Fisher. With replay, put EWC
inside it (``lpl+ewc+replay``): as the inner rule of EWC (``lpl+replay+ewc``) replay would mix
replayed items into each "sample" of the Fisher; outside it, the held inputs are those of the
merged (live + replayed) batch.

lambda: not tuned. The preset's lambda = 1e4 was set for the former minibatch Fisher and is
kept as is; per-sample Fishers are larger (mean of squares >= square of the mean), so the pull
is at least as strong as before (measured on the tiny test column, 4 steps of batch 8 after 8
warm-up steps: the per-sample Fisher's sum is 3.7x / 3.3x / 2.8x the minibatch form's under
backprop / layerwise / lpl; the K = 32 re-runs take 0.3-0.4 s on one CPU thread). Choose
lambda on validation data, never on the reported probe sets. gamma = 1 (plain accumulation).

Metrics: ``si.Omega.<group>`` / ``ewc.F.<group>`` (L2 norms per parameter group, see
rules/_params.py), ``si.omega.total``, ``si.penalty`` / ``ewc.penalty``, ``si.penalty_share`` /
``ewc.penalty_share`` (the penalty's share of the total loss, :func:`penalty_share`: an inert
regulariser shows as a share near 0 in the dashboard), ``ewc.held`` (inputs
held for the next Fisher), ``ewc.fisher_samples``.
"""
from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field

from colsim.config import ConfigError, Strict
from colsim.registry import register_rule
from colsim.rule import Rule
from colsim.rules._params import group_norms, zeros_like_tree

__all__ = ["SIConfig", "EWCConfig", "si", "ewc", "per_sample_fisher", "penalty_share"]


class SIConfig(Strict):
    name: Literal["si"] = "si"
    c: float = Field(0.1, ge=0, allow_inf_nan=False)  # penalty strength
    xi: float = Field(1e-3, gt=0)  # damping of the phase displacement


class EWCConfig(Strict):
    name: Literal["ewc"] = "ewc"
    lam: float = Field(1e4, ge=0, allow_inf_nan=False)  # lambda: penalty strength
    gamma: float = Field(1.0, ge=0, le=1)  # online decay of earlier Fishers
    fisher_samples: int = Field(32, ge=1)  # K: held inputs (the phase's last ones) for the per-sample Fisher


def penalty_share(penalty: float, trace) -> float:
    """The penalty's share of the total loss, ``penalty / (penalty + |loss|)`` (loss = the column's, the
    inner rule's objective for loss-based rules): 0 = the regulariser is inert, 1 = it dominates. NaN on
    a tick with no prediction (the loss total is then not a measurement)."""
    if "loss" not in trace or ("valid" in trace and not bool(trace["valid"].any())):
        return float("nan")
    loss = abs(float(trace["loss"].detach()))
    return penalty / (penalty + loss) if penalty + loss > 0 else 0.0


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
        metrics["si.penalty_share"] = penalty_share(cfg.c * penalty, trace)
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
    """Online EWC: per-sample empirical Fisher of the rule's own loss at the phase end, quadratic pull."""
    if column is None or not hasattr(column, "forward_inputs"):
        raise ConfigError(f"rule.wrap: ewc re-runs held inputs for its per-sample Fisher but model "
                          f"{type(column).__name__} has no forward_inputs(); use a seq-JEPA column or drop '+ewc'")
    K = cfg.fisher_samples

    def init(params):
        return {"inner": inner.init(params), "F": zeros_like_tree(params), "anchor": _snapshot(params),
                "phases": 0, "held": {}, "held_n": 0, "local": False, "fisher_n": 0}

    def update(params, state, trace):
        g, s_in, metrics = inner.update(params, state["inner"], trace)
        grads = dict(g)
        penalty = 0.0
        with torch.no_grad():
            for n, p in params.items():
                d = p.detach() - state["anchor"][n]
                pen_g = cfg.lam * state["F"][n] * d
                grads[n] = grads[n] + pen_g if n in grads else pen_g
                penalty += float((state["F"][n] * d * d).sum())
        held, held_n = _hold(state["held"], state["held_n"], trace["inputs"], trace["valid"], K)
        metrics = dict(metrics)
        metrics["ewc.penalty"] = 0.5 * cfg.lam * penalty
        metrics["ewc.penalty_share"] = penalty_share(0.5 * cfg.lam * penalty, trace)
        metrics["ewc.held"] = float(min(held_n, K))
        metrics["ewc.fisher_samples"] = float(state["fisher_n"])
        metrics.update(group_norms(state["F"], "ewc.F"))
        return grads, {**state, "inner": s_in, "held": held, "held_n": held_n,
                       "local": bool(trace["local"]) if "local" in trace else False}, metrics

    def post_step(params, state, delta):
        delta, s_in = _inner_post(inner, params, state["inner"], delta)
        return delta, {**state, "inner": s_in}

    def boundary(params, state, event):
        if event != "phase_end":
            return {**state, "inner": _inner_boundary(inner, params, state["inner"], event)}
        F_new, used = per_sample_fisher(inner, column, params, state["inner"], state["held"],
                                        min(state["held_n"], K), state["local"])
        s_in = _inner_boundary(inner, params, state["inner"], event)
        F = {k: cfg.gamma * state["F"][k] + F_new[k] for k in state["F"]}
        return {**state, "inner": s_in, "F": F, "anchor": _snapshot(params), "phases": state["phases"] + 1,
                "held": {}, "held_n": 0, "fisher_n": used}

    return Rule(init, update, inner.needs | {"inputs", "valid"},
                post_step if inner.post_step is not None else None, boundary)


def _hold(held: dict, held_n: int, inputs: dict, valid, K: int) -> "tuple[dict, int]":
    """Ring buffer of the last K valid column inputs (CPU): item i of the phase goes to slot i mod K."""
    items = valid.detach().cpu().nonzero().flatten()  # (k,)
    if items.numel() == 0:
        return held, held_n
    B = valid.shape[0]
    if not held:
        held = {k: torch.zeros((K, *v.shape[1:]), dtype=v.dtype) for k, v in inputs.items()
                if isinstance(v, torch.Tensor) and v.dim() >= 1 and v.shape[0] == B}
    items = items[-K:]
    slots = (held_n + torch.arange(items.numel())) % K
    out = {}
    for k, buf in held.items():
        buf = buf.clone()
        buf[slots] = inputs[k].detach()[items.to(inputs[k].device)].cpu().to(buf.dtype)
        out[k] = buf
    return out, held_n + int(items.numel())


def per_sample_fisher(inner: Rule, column, params, inner_state, held: dict, n: int, local: bool
                      ) -> "tuple[dict, int]":
    """Diagonal empirical Fisher 1/N sum_n g_n² over the first n held inputs, each re-run alone in eval mode.

    held: name -> (K, ...) column inputs; returns (F_new: name -> tensor like params, samples used)."""
    acc = zeros_like_tree(params)
    used = 0
    if n == 0:
        return acc, 0
    dev = next(iter(params.values())).device
    modes = [(m, m.training) for m in column.modules()]  # restored one by one (a teacher may stay in eval)
    column.eval()
    try:
        for i in range(n):
            inp = {k: v[i:i + 1].to(dev) for k, v in held.items()}  # a batch of one sample
            with torch.enable_grad():
                trace = column.forward_inputs(inp, local=local)
                g, _, _ = inner.update(params, inner_state, trace)
            g = {k: v.detach() for k, v in g.items() if k in acc}
            if not all(bool(torch.isfinite(v).all()) for v in g.values()):
                continue
            for k, v in g.items():
                acc[k] += v * v
            used += 1
    finally:
        for m, mode in modes:
            m.training = mode
    return ({k: v / used for k, v in acc.items()} if used else acc), used
