"""Metaplastic gating, n-GateON (Barry, Gerstner & Bellec 2025, Neural Networks 192:107728,
arXiv 2306.01690): per-unit availability that freezes the plasticity of important units.

Every unit i carries an availability ``a_i in [0, 1]`` (initially 1) that scales the *update* of
its incoming weights (and bias) after the optimizer step (``post_step``): Adam cancels a constant
gradient scale, so scaling the gradient would do nothing (docs/reference/rules.md, trap).

**Default (the paper's reference code).** Two copies: the applied availability ``a`` and a running
copy ``â`` that is updated every training step, from that step's importance ``I_i`` normalised per
layer (per parameter tensor), ``Ĩ = I / mean_layer(I)``::

    every step       â_i <- clip(â_i - eta_a â_i (Ĩ_i - eps), 0, 1)         (eta_a = 0.01, eps = 0)
    update applied   Δθ_i <- a_i Δθ_i                                       (a fixed during a context)
    context switch   a <- â;  the next context's gates;  the optimizer's state (Adam moments) reset

This is GATEONMNIST ``pkg/nGateON.py``: ``network.update_ages`` (type ``full``) decrements
``tmp_availabilities`` by ``lr * tmp_availabilities * (post - epsilon)``, ``post`` the batch mean of
``(dL/dI * I)²`` over its layer mean, lr = 0.01, clipped to [0, 1]; ``update_learning_rate`` scales
the gradients by ``availabilities``; ``fixing_ages`` copies the running availabilities into the applied
ones, called from ``pkg/simulator.py`` ``simulator.start_new_context`` at each context switch, which
also builds a fresh ``torch.optim.Adam``; ``epsilon`` defaults to 0 (``pkg/general_utils.py``,
``get_options``). With eps = 0 the decrement ``eta_a â Ĩ`` is never negative: availability only
falls (a unit's running availability is multiplied by ``1 - eta_a Ĩ_i`` each step), and units the
current context leaves silent (gate 0, importance 0) keep theirs for the next context. Units are not
frozen while the current context is learning them: a unit's availability drops only at the next switch.

Deliberate differences from the reference, each for a stated reason:

* the applied availability scales the update after the optimizer step, not the gradient (the
  reference scales ``.grad`` under Adam, where a constant per-unit factor cancels except at 0);
* every unit of the column is gated, the read-out (head) included — the reference leaves its output
  layer ungated; ``exempt`` (fnmatch patterns, e.g. ``["head.*"]``) exempts parameters;
* importance is read at the unit's pre-activation (the module output, see below), the reference reads
  it after its ReLU(BatchNorm) and ``F.normalize``;
* the context gates' projection U is fixed (N(0, 1), seeded); the reference trains its context
  projection ``projections_context`` with Adam;
* the reference evaluates each task under that task's own context (the task identity at test time)
  and restarts each context from the best model on the test set; colsim's probes run by default in the
  context trained last (Domain-IL has no task id at test) and select nothing on probe data.
  ``probe_context: own`` evaluates probe set j (phase j's task) in context j, as the reference does:
  the evaluation is then told the task, which makes a Domain-IL or Class-IL protocol task-informed at
  test time (van de Ven & Tolias 2019 would call it Task-IL); it needs ``context_gates: activity`` and
  ``switch: phase`` (context j is phase j's, modulo ``max_contexts``).

**Context switch** (``switch``): ``phase`` (default) — the protocol's phase end, the simulator's
``boundary(..., "phase_end")``, when the world's task changes (the reference's known switch,
``context_fed``); the optimizer reset is requested there (``colsim.rule.request_optimizer_reset``).
The next context's gates act in training forwards from then on; evaluation forwards keep the gates of
the context trained last until the next context's first update. ``detect`` — the change-point
detector for protocols without phases: the fast loss average exceeding ``change_threshold`` (1.01)
times the slow "recent mean", at most once per ``refractory`` steps (the reference's
``deviate_from_mean``); at a detected switch a <- â and the context moves on, but the optimizer is
not reset (the rule does not own it).

**Variant ``metaplastic_step``** (rules/metaplastic_step.yaml, colsim's earlier behaviour):
``apply: step`` (one availability, updated and applied every step: a = â), eps = 1 (zero-sum around
the layer mean: units above the mean lose availability, below it regain it), no context gates, no
optimizer reset.

Which parameters are gated (``rules/_params.py``, ``gated_units``): every parameter that is
the incoming weights of a unit — the rows of a Linear weight and the filters of a conv weight
(with the unit's bias), ``nn.MultiheadAttention``'s ``in_proj_weight`` (+ ``in_proj_bias``),
CRATE's ISTA dictionary ``D`` (d, p) by column (atom j of code unit j) and CRATE-alpha's
decoder ``D_hat`` by row. Exempt, because no single unit owns them: normalisation gains and
shifts (LayerNorm / BatchNorm ``weight`` / ``bias``, shared by the feature across all inputs,
not synapses), the TSSA temperature (one scalar per head, shared by the head's d/heads units),
and learned input tokens and embeddings (the aggregation token ``agg``, position embeddings
``pos``, ``type_emb``, seq-JEPA's ``reverse_flag``): they are inputs to the network, not the
incoming weights of any unit.

Importance, ``importance:``

* ``gradient`` (default) — the paper's per-sample form ``I_i = mean_b (h_i dL/dh_i)²``, with
  h_i the unit's pre-activation (the module's output) and ``h_i dL/dh_i`` summed over the
  unit's positions (conv pixels, tokens) for sample b. Forward hooks on the column's Linear /
  Conv2d modules keep h during training-mode forwards with a graph and register a gradient
  hook on it; the inner rule's own ``autograd.grad`` then delivers dL/dh (summed over the
  rule's backward passes when it makes several). A "sample" is a row of the module's batch:
  the leading dimension (Linear outputs are batch-first (B, ..., C); conv (N, C, H, W)),
  rows of several calls in one step (context window and current view) are pooled. ``L`` is
  the inner rule's batch-mean loss, which scales every I of a layer by the same 1/B², removed
  by the per-layer normalisation. Units for which no dL/dh arrives in a step — units of a
  local inner rule (sparse coding computes -ΔW without a loss), projections computed without
  a module call (``nn.MultiheadAttention``'s in-projection — its out-projection is read from
  the attention module's output —, CRATE's MSSA and ToST's TSSA projections, ``D`` / ``D_hat``)
  — use the direction form ``(sum_j θ_ij g_ij)²`` with g the
  inner rule's direction, which for a loss is the *batch-summed* ``(sum_b h_i dL/dh_i)²``.
  Metric ``metaplastic.per_sample`` is the fraction of gated tensors that had the per-sample
  form in the step. Why it matters: on the tiny test column with the ResNet-18 encoder (batch
  8, third step, backprop), the batch-summed form of the 20 encoder conv tensors, all followed
  by BatchNorm, is 1.6e-9 (median; at most 5e-3) of the per-sample form — numerical noise that
  the per-layer normalisation would turn into availability.
* ``activity`` (local variant) — ``I_i = mean_b |h_i|``, the unit's mean absolute output,
  read by the same kind of forward hooks. Units computed without a module call keep their
  availability.

Context gates (``context_gates``), a context index k (one-hot c) and fixed random U (N(0, 1),
seeded) give unit i the gate ``g_i = tanh([U c]_i+)²`` (the reference's ``ReTanh``):

* ``activity`` (default) — the paper's form: g multiplies the unit's activity (the module output, by
  forward hooks on the Linear / Conv2d modules whose weights match ``activity_gates_on``,
  default the encoder ``encoder.*``), so each context runs its own subnetwork; units with
  g = 0 are silent and receive no gradient. The gate multiplies the module output (the
  pre-activation); for a ReLU unit that equals gating its activity, but a BatchNorm right after
  the unit divides the scale out again, so there the gate acts as on (g > 0) / off (g = 0) only.
  After a resume the first forward runs in context 0 until the first update restores the saved context.
* ``plasticity`` — g scales unit i's update together with a_i; the forward is unchanged.
* ``off`` (``false``) — no gates. ``true`` means ``plasticity``.

Trains: nothing by itself — it rescales the inner rule's updates unit by unit; all the
information it uses for unit i (its weights, its update, its activity and the error at its
output) is local to unit i. Metrics per gated layer: ``metaplastic.a.<layer>.mean|min|lt05``
(applied availability; fraction of units with a < 0.5), ``metaplastic.a_next.<layer>.mean`` (the
running copy, default only); with gates ``metaplastic.context`` and ``metaplastic.switches``.
"""
from __future__ import annotations

import fnmatch
from typing import Literal, Union

import torch
from pydantic import Field, field_validator, model_validator
from torch import Tensor

from colsim.config import Strict
from colsim.registry import register_rule
from colsim.rule import PROBE_CONTEXT, Rule, request_optimizer_reset
from colsim.rules._metaplastic_hooks import Gates, Probe, context_gate, per_sample_importance, shared
from colsim.rules._params import gated_units, layer_name

__all__ = ["MetaplasticConfig", "metaplastic", "availability_step", "unit_importance", "per_sample_importance",
           "context_gate"]


class MetaplasticConfig(Strict):
    name: Literal["metaplastic"] = "metaplastic"
    importance: Literal["gradient", "activity"] = "gradient"
    eta_a: float = Field(0.01, ge=0, allow_inf_nan=False)
    eps: float = Field(0.0, ge=0, allow_inf_nan=False)  # normalised importance above which availability falls
    apply: Literal["switch", "step"] = "switch"  # availability applied at the context switch, or every step
    switch: Literal["phase", "detect"] = "phase"  # the context switch: the protocol's phase end, or a loss change point
    reset_optimizer: bool = True  # the optimizer's state (Adam moments) reset at each phase-end switch
    context_gates: Literal["off", "plasticity", "activity"] = "activity"
    activity_gates_on: list[str] = Field(default_factory=lambda: ["encoder.*"])  # unit weights gated by activity
    exempt: list[str] = Field(default_factory=list)  # fnmatch patterns of unit weights never gated (e.g. head.*)
    max_contexts: int = Field(8, ge=1)
    # the context probe set j is evaluated in: "last" (the one trained last; no task id at test) or "own"
    # (context j, the reference's evaluation: the task identity given at test)
    probe_context: Literal["last", "own"] = "last"
    change_threshold: float = Field(1.01, gt=0)
    fast_window: int = Field(10, ge=1)  # steps of the fast loss average
    slow_window: int = Field(100, ge=1)  # steps of the slow ("recent mean") loss average
    refractory: int = Field(100, ge=1)
    seed: int = Field(0, ge=0)

    @model_validator(mode="after")
    def _own_context_needs_phase_gates(self) -> "MetaplasticConfig":
        if self.probe_context == "own" and (self.context_gates != "activity" or self.switch != "phase"):
            raise ValueError("probe_context: own evaluates probe set j in phase j's context and needs "
                             "context_gates: activity and switch: phase")
        return self

    @field_validator("context_gates", mode="before")
    @classmethod
    def _bool_gates(cls, v: Union[bool, str]):
        return {False: "off", True: "plasticity"}.get(v, v) if isinstance(v, bool) else v


def availability_step(a: Tensor, importance: Tensor, eta_a: float, eps: float) -> Tensor:
    """One n-GateON step: a, importance (C,) -> clip(a - eta_a a (I/mean(I) - eps), 0, 1)."""
    m = importance.mean()
    it = importance / m if float(m) > 0 else torch.zeros_like(importance)
    return (a - eta_a * a * (it - eps)).clamp(0.0, 1.0)


def unit_importance(w: Tensor, gw: Tensor, b: "Tensor | None" = None, gb: "Tensor | None" = None,
                    dim: int = 0) -> Tensor:
    """Direction form (sum_j θ_ij g_ij)² per unit i along ``dim``, bias included.

    w, gw (C, ...) (units along ``dim``), b, gb (C,) -> (C,)."""
    s = (w * gw).movedim(dim, 0).flatten(1).sum(1)
    if b is not None and gb is not None:
        s = s + b * gb
    return s * s


@register_rule("metaplastic", MetaplasticConfig, kind="modifier")
def metaplastic(cfg: MetaplasticConfig, inner: Rule, column=None) -> Rule:
    """n-GateON availability per unit (per-sample gradient or activity importance) scaling the applied update."""
    probe = gates = None
    detect = cfg.switch == "detect" and (cfg.context_gates != "off" or cfg.apply == "switch")

    def units_of(params):
        return {w: v for w, v in gated_units(params).items() if not any(fnmatch.fnmatchcase(w, q) for q in cfg.exempt)}

    if column is not None:
        names = set(units_of(column.trainable() if hasattr(column, "trainable") else dict(column.named_parameters())))
        probe = shared(column, f"_colsim_metaplastic_probe_{cfg.importance}", lambda: Probe(column, names, cfg.importance))
        if cfg.context_gates == "activity":
            gated = {n for n in names if any(fnmatch.fnmatchcase(n, q) for q in cfg.activity_gates_on)}
            gates = shared(column, "_colsim_metaplastic_gates", lambda: Gates(column, gated))
            gates.U, gates.context, gates.eval_context = {}, 0, 0  # a new rule starts in context 0 (init keeps
            # the context: a resumed run's column, loaded after this, holds the checkpoint's)
        if cfg.probe_context == "own":  # colsim.evaluate.embed_probe_sets embeds probe set j in context j
            setattr(column, PROBE_CONTEXT, lambda j: gates.in_context(j % cfg.max_contexts))
    elif cfg.importance == "activity" or cfg.context_gates == "activity":
        raise ValueError("metaplastic(importance='activity' or context_gates='activity') needs the column")

    def init(params):
        units = units_of(params)
        gen = torch.Generator().manual_seed(cfg.seed)
        a = {w: torch.ones(params[w].shape[d], device=params[w].device) for w, (d, _) in units.items()}
        state = {"inner": inner.init(params), "a": a}
        if cfg.apply == "switch":
            state["a_next"] = {w: v.clone() for w, v in a.items()}  # the running copy â
        if cfg.context_gates != "off":
            state["U"] = {w: torch.randn(params[w].shape[d], cfg.max_contexts, generator=gen).to(params[w].device)
                          for w, (d, _) in units.items()}
            state.update(context=0, switches=0)
            if gates is not None:  # hooks exist only on the modules matching activity_gates_on
                gates.U = dict(state["U"])
        if detect:
            state.update(since=0, fast=-1.0, slow=-1.0)
        if probe is not None:
            probe.rows = {}
        return state

    def _switch(s: dict) -> dict:
        """The context switch: the running availability becomes the applied one; the next context."""
        s = dict(s)
        if cfg.apply == "switch":
            s["a"] = {w: v.clone() for w, v in s["a_next"].items()}
        if cfg.context_gates != "off":
            s["context"] = (s["context"] + 1) % cfg.max_contexts
            s["switches"] += 1
            if gates is not None:
                gates.context = s["context"]  # training forwards from now on; evaluation at the next update
        return s

    def _detect(state, loss: float) -> dict:
        s = dict(state)
        if s["fast"] < 0:
            s["fast"] = s["slow"] = loss
        else:
            s["fast"] += (loss - s["fast"]) / cfg.fast_window
            s["slow"] += (loss - s["slow"]) / cfg.slow_window
        s["since"] += 1
        if s["since"] >= cfg.refractory and s["fast"] > cfg.change_threshold * s["slow"]:
            s = _switch(s)
            s["since"] = 0
            s["fast"] = s["slow"] = loss  # the new context's loss level starts the averages afresh
        return s

    def update(params, state, trace):
        g, s_in, metrics = inner.update(params, state["inner"], trace)
        units = units_of(params)
        key = "a_next" if cfg.apply == "switch" else "a"
        run = dict(state[key])
        seen = probe.take() if probe is not None else {}
        n_ps = 0
        with torch.no_grad():
            for w, (d, b) in units.items():
                if w in seen and seen[w].shape[0] == run[w].shape[0]:
                    imp = seen[w].to(run[w].device)
                    n_ps += 1
                elif cfg.importance == "gradient" and w in g:
                    imp = unit_importance(params[w].detach(), g[w].detach(), params[b].detach() if b else None,
                                          g[b].detach() if b and b in g else None, dim=d)
                else:
                    continue
                run[w] = availability_step(run[w], imp, cfg.eta_a, cfg.eps)
        new = {**state, "inner": s_in, key: run}
        if detect:
            new = _detect(new, float(trace["loss"].detach()))
        metrics = dict(metrics)
        for w, v in new["a"].items():
            ln = layer_name(w)
            metrics[f"metaplastic.a.{ln}.mean"] = float(v.mean())
            metrics[f"metaplastic.a.{ln}.min"] = float(v.min())
            metrics[f"metaplastic.a.{ln}.lt05"] = float((v < 0.5).float().mean())
            if cfg.apply == "switch":
                metrics[f"metaplastic.a_next.{ln}.mean"] = float(new["a_next"][w].mean())
        if cfg.importance == "gradient":
            metrics["metaplastic.per_sample"] = n_ps / max(len(units), 1)
        if cfg.context_gates != "off":
            if gates is not None:
                gates.context = gates.eval_context = new["context"]
            metrics["metaplastic.context"] = float(new["context"])
            metrics["metaplastic.switches"] = float(new["switches"])
        return g, new, metrics

    def post_step(params, state, delta):
        # rescale first, then hand the rescaled update to the inner rule: an inner SI then integrates the
        # update that is finally applied, whatever the order of the modifiers (colsim/rule.py, post_step)
        out = dict(delta)
        for w, (d, b) in units_of(params).items():
            scale = state["a"][w]
            if cfg.context_gates == "plasticity":
                scale = scale * context_gate(state["U"][w], state["context"])
            if w in out:
                shape = [1] * out[w].dim()
                shape[d] = -1
                out[w] = out[w] * scale.view(shape)
            if b is not None and b in out:
                out[b] = out[b] * scale
        s_in = state["inner"]
        if inner.post_step is not None:
            out, s_in = inner.post_step(params, s_in, out)
        return out, {**state, "inner": s_in}

    def boundary(params, state, event):
        s_in = inner.boundary(params, state["inner"], event) if inner.boundary is not None else state["inner"]
        new = {**state, "inner": s_in}
        if event == "phase_end" and cfg.switch == "phase":
            new = _switch(new)
            if cfg.reset_optimizer:
                request_optimizer_reset()
        return new

    phase_switch = cfg.switch == "phase" and (cfg.apply == "switch" or cfg.context_gates != "off" or cfg.reset_optimizer)
    return Rule(init, update, inner.needs | ({"loss"} if detect else set()), post_step,
                boundary if phase_switch or inner.boundary is not None else None)
