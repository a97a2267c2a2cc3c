"""Metaplastic gating, n-GateON (Barry, Gerstner & Bellec 2025, Neural Networks 192:107728,
arXiv 2306.01690): per-unit availability that freezes the plasticity of important units.

Every unit i carries an availability ``a_i in [0, 1]`` (initially 1). Each step, from that
step's importance ``I_i`` normalised per layer (per parameter tensor), ``Ĩ = I / mean_layer(I)``::

    a_i <- clip(a_i - eta_a a_i (Ĩ_i - eps), 0, 1)                      (eta_a = 0.01, eps = 1)

and every incoming weight of unit i has its *update* scaled by ``a_i`` after the optimizer
step (``post_step``): Adam cancels a constant gradient scale, so scaling the gradient would do
nothing (docs/reference/rules.md, trap).

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
seeded) give unit i the gate ``g_i = tanh([U c]_i+)²``; a change point (the fast loss average
exceeding ``change_threshold`` (1.01) times the slow "recent mean", at most once per
``refractory`` steps) moves to the next context:

* ``activity`` — the paper's form: g multiplies the unit's activity (the module output, by
  forward hooks on the Linear / Conv2d modules whose weights match ``activity_gates_on``,
  default the encoder ``encoder.*``), so each context runs its own subnetwork; units with
  g = 0 are silent and receive no gradient. The gates of the current context act in every
  forward, evaluation included (the probes see the network of the current context). The gate
  multiplies the module output (the pre-activation); for a ReLU unit that equals gating its
  activity, but a BatchNorm right after the unit divides the scale out again, so there the
  gate acts as on (g > 0) / off (g = 0) only. After a resume the first forward runs in
  context 0 until the first update restores the saved context.
* ``plasticity`` — g scales unit i's update together with a_i; the forward is unchanged.
* ``off`` (``false``) — no gates. ``true`` means ``plasticity``.

The preset (rules/metaplastic.yaml) uses plasticity gating by availability only
(``context_gates: off``).

Trains: nothing by itself — it rescales the inner rule's updates unit by unit; all the
information it uses for unit i (its weights, its update, its activity and the error at its
output) is local to unit i. Metrics per gated layer: ``metaplastic.a.<layer>.mean|min|lt05``
(fraction of units with a < 0.5); with gates ``metaplastic.context`` and ``metaplastic.switches``.
"""
from __future__ import annotations

import fnmatch
from typing import Any, Literal, Union

import torch
from pydantic import Field, field_validator
from torch import Tensor, nn

from colsim.config import Strict
from colsim.registry import register_rule
from colsim.rule import Rule
from colsim.rules._params import gated_units, layer_name

__all__ = ["MetaplasticConfig", "metaplastic", "availability_step", "unit_importance", "per_sample_importance",
           "context_gate"]


class MetaplasticConfig(Strict):
    name: Literal["metaplastic"] = "metaplastic"
    importance: Literal["gradient", "activity"] = "gradient"
    eta_a: float = Field(0.01, ge=0)
    eps: float = Field(1.0, ge=0)  # normalised importance above which availability falls
    context_gates: Literal["off", "plasticity", "activity"] = "off"
    activity_gates_on: list[str] = Field(default_factory=lambda: ["encoder.*"])  # unit weights gated by activity
    max_contexts: int = Field(8, ge=1)
    change_threshold: float = Field(1.01, gt=0)
    fast_window: int = Field(10, ge=1)  # steps of the fast loss average
    slow_window: int = Field(100, ge=1)  # steps of the slow ("recent mean") loss average
    refractory: int = Field(100, ge=1)
    seed: int = Field(0, ge=0)

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


def per_sample_importance(h: Tensor, dh: Tensor, channel_dim: int) -> Tensor:
    """Per-sample importance from one module call: h, dh = dL/dh (N, ...) -> rows (N, C) of sum_pos h dL/dh."""
    p = (h * dh).movedim(channel_dim, -1)  # (N, ..., C)
    return p.reshape(p.shape[0], -1, p.shape[-1]).sum(1) if p.dim() > 1 else p.unsqueeze(0)


def context_gate(U: Tensor, context: int) -> Tensor:
    """n-GateON context gate g = tanh([U c]+)² for the one-hot context c: U (C, K) -> (C,)."""
    return torch.tanh(U[:, context].clamp(min=0)) ** 2


def _unit_output(mod: nn.Module, out) -> "tuple[Tensor, int, int] | None":
    """The units' output of a hooked module -> (h, channel dim, sample dim), or None (nothing to read).

    Linear (B, ..., C) batch-first; Conv2d (N, C, H, W); nn.MultiheadAttention's first output is its
    out_proj's output ((B, T, E) with ``batch_first``, else (T, B, E); unbatched calls are skipped)."""
    if isinstance(mod, nn.MultiheadAttention):
        h = out[0] if isinstance(out, tuple) else out
        if not isinstance(h, Tensor) or h.dim() != 3:
            return None
        return h, 2, 0 if mod.batch_first else 1
    if not isinstance(out, Tensor) or out.dim() < 2:
        return None
    return out, (1 if isinstance(mod, nn.Conv2d) and out.dim() == 4 else out.dim() - 1), 0


def _unit_modules(column: nn.Module, names: set) -> "list[tuple[str, nn.Module]]":
    """(unit weight name, module whose output is those units' h): Linear / Conv2d modules, and
    nn.MultiheadAttention for its out_proj (which it applies without calling the module)."""
    mods = dict(column.named_modules())
    out = [(f"{m}.out_proj.weight", mod) for m, mod in mods.items()
           if isinstance(mod, nn.MultiheadAttention) and f"{m}.out_proj.weight" in names]
    taken = {p for p, _ in out}
    out += [(f"{m}.weight", mod) for m, mod in mods.items()
            if isinstance(mod, (nn.Linear, nn.Conv2d)) and f"{m}.weight" in names and f"{m}.weight" not in taken]
    return out


_MAX_CALLS = 16  # module calls kept per step (context window, current view, replayed batch, ...)


class _Probe:
    """Forward hooks on Linear / Conv2d modules (training mode): per-sample h·dL/dh rows or mean |h|."""

    def __init__(self, column: nn.Module, names: set, kind: str):
        self.kind = kind
        self.rows: dict[str, list] = {}
        self.handles = [mod.register_forward_hook(self._hook(pname)) for pname, mod in _unit_modules(column, names)]

    def _hook(self, pname: str):
        def hook(mod, inp, out):
            got = _unit_output(mod, out) if mod.training else None
            if got is None or got[0].numel() == 0:
                return
            out, cdim, rdim = got
            calls = self.rows.setdefault(pname, [])
            del calls[:-_MAX_CALLS]  # forwards no rule update consumed (learning off) are dropped, not hoarded
            if self.kind == "activity":
                with torch.no_grad():
                    h = out.detach().abs().movedim(cdim, -1)
                    calls.append(h.reshape(-1, h.shape[-1]).mean(0).float())  # (C,)
                return
            if not (torch.is_grad_enabled() and out.requires_grad):
                return
            acc: dict[str, Any] = {"s": None}
            h = out.detach()  # shares storage: an in-place ReLU after the module turns h into relu(h), but
            # dL/dh is 0 wherever h < 0, so h dL/dh is unchanged
            channel = cdim if rdim == 0 else out.dim() - 1
            # the hook must not refer to `out`: out -> its hooks -> the hook -> out is a cycle that Python's
            # collector cannot see through, and it kept every step's graph alive (a full-size action_shift run
            # grew past the 24 GB host)

            def grad_hook(g: Tensor):
                with torch.no_grad():
                    s = per_sample_importance(h.movedim(rdim, 0), g.movedim(rdim, 0), channel).float()  # (N, C)
                acc["s"] = s if acc["s"] is None else acc["s"] + s

            out.register_hook(grad_hook)
            calls.append(acc)
        return hook

    def take(self) -> dict[str, Tensor]:
        """Per unit weight: importance (C,) of this step's calls (those that received a gradient)."""
        out = {}
        for pname, calls in self.rows.items():
            if self.kind == "activity":
                out[pname] = torch.stack(calls).mean(0)
            else:
                rows = [c["s"] for c in calls if c["s"] is not None]
                if rows:
                    out[pname] = (torch.cat(rows) ** 2).mean(0)  # mean over samples of (h dL/dh)²
        self.rows = {}
        return out


class _Gates:
    """Context gates on activity: forward hooks multiply a module's output by g (current context)."""

    def __init__(self, column: nn.Module, names: set):
        self.U: dict[str, Tensor] = {}
        self.context = 0
        self.handles = [mod.register_forward_hook(self._hook(pname)) for pname, mod in _unit_modules(column, names)]

    def _hook(self, pname: str):
        def hook(mod, inp, out):
            U = self.U.get(pname)
            got = _unit_output(mod, out) if U is not None else None
            if got is None:
                return None
            h, cdim, _ = got
            g = context_gate(U, self.context).to(h.device, h.dtype)  # (C,)
            shape = [1] * h.dim()
            shape[cdim] = -1
            return (h * g.view(shape), *out[1:]) if isinstance(out, tuple) else h * g.view(shape)
        return hook


def _shared(column: nn.Module, attr: str, make):
    """One hook object per column and kind (the rule may be built twice on the same column)."""
    obj = getattr(column, attr, None)
    if obj is None:
        obj = make()
        setattr(column, attr, obj)
    return obj


@register_rule("metaplastic", MetaplasticConfig, kind="modifier")
def metaplastic(cfg: MetaplasticConfig, inner: Rule, column=None) -> Rule:
    """n-GateON availability per unit (per-sample gradient or activity importance) scaling the applied update."""
    probe = gates = None
    if column is not None:
        names = set(gated_units(column.trainable() if hasattr(column, "trainable") else
                                dict(column.named_parameters())))
        probe = _shared(column, f"_colsim_metaplastic_probe_{cfg.importance}",
                        lambda: _Probe(column, names, cfg.importance))
        if cfg.context_gates == "activity":
            gated = {n for n in names if any(fnmatch.fnmatchcase(n, q) for q in cfg.activity_gates_on)}
            gates = _shared(column, "_colsim_metaplastic_gates", lambda: _Gates(column, gated))
            gates.U = {}
    elif cfg.importance == "activity" or cfg.context_gates == "activity":
        raise ValueError("metaplastic(importance='activity' or context_gates='activity') needs the column")

    def init(params):
        units = gated_units(params)
        gen = torch.Generator().manual_seed(cfg.seed)
        state = {"inner": inner.init(params),
                 "a": {w: torch.ones(params[w].shape[d], device=params[w].device) for w, (d, _) in units.items()}}
        if cfg.context_gates != "off":
            state["U"] = {w: torch.randn(params[w].shape[d], cfg.max_contexts, generator=gen).to(params[w].device)
                          for w, (d, _) in units.items()}
            state.update(context=0, switches=0, since=0, fast=-1.0, slow=-1.0)
            if gates is not None:  # hooks exist only on the modules matching activity_gates_on
                gates.U, gates.context = dict(state["U"]), 0
        if probe is not None:
            probe.rows = {}
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
        units = gated_units(params)
        a = dict(state["a"])
        seen = probe.take() if probe is not None else {}
        n_ps = 0
        with torch.no_grad():
            for w, (d, b) in units.items():
                if w in seen and seen[w].shape[0] == a[w].shape[0]:
                    imp = seen[w].to(a[w].device)
                    n_ps += 1
                elif cfg.importance == "gradient" and w in g:
                    imp = unit_importance(params[w].detach(), g[w].detach(), params[b].detach() if b else None,
                                          g[b].detach() if b and b in g else None, dim=d)
                else:
                    continue
                a[w] = availability_step(a[w], imp, cfg.eta_a, cfg.eps)
        new = {**state, "inner": s_in, "a": a}
        metrics = dict(metrics)
        for w, v in a.items():
            ln = layer_name(w)
            metrics[f"metaplastic.a.{ln}.mean"] = float(v.mean())
            metrics[f"metaplastic.a.{ln}.min"] = float(v.min())
            metrics[f"metaplastic.a.{ln}.lt05"] = float((v < 0.5).float().mean())
        if cfg.importance == "gradient":
            metrics["metaplastic.per_sample"] = n_ps / max(len(units), 1)
        if cfg.context_gates != "off":
            new = _detect(new, float(trace["loss"].detach()))
            if gates is not None:
                gates.context = new["context"]
            metrics["metaplastic.context"] = float(new["context"])
            metrics["metaplastic.switches"] = float(new["switches"])
        return g, new, metrics

    def post_step(params, state, delta):
        # rescale first, then hand the rescaled update to the inner rule: an inner SI then integrates the
        # update that is finally applied, whatever the order of the modifiers (colsim/rule.py, post_step)
        out = dict(delta)
        for w, (d, b) in gated_units(params).items():
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
        return {**state, "inner": inner.boundary(params, state["inner"], event)}

    return Rule(init, update, inner.needs | ({"loss"} if cfg.context_gates != "off" else set()), post_step,
                boundary if inner.boundary is not None else None)
