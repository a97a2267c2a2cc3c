"""The Rule interface and its combinators (docs/architecture.md, "Rule").

A rule is an optax-shaped NamedTuple of pure functions built by a factory::

    rule = lpl(cfg)
    state = rule.init(params)
    grads, state, metrics = rule.update(params, state, trace)

``grads`` follow the ``.grad`` convention (descent directions), so any ``torch.optim``
optimizer applies them; the Simulator is the single place where parameters change.
Loss-based rules call ``torch.autograd.grad`` on their own loss; local rules compute
``-dW`` under ``torch.no_grad``.

Two optional hooks keep the step schedule explicit (no hook zoo):

* ``post_step(params, state, delta) -> (delta, state)`` sees the update the optimizer
  just applied (``delta = theta_after - theta_before``) and may rescale it (metaplastic
  gating: Adam cancels a constant gradient scale, so availability is applied to the
  update) or accumulate from it (Synaptic Intelligence's path integral).
* ``boundary(params, state, event) -> state`` is called at ``"phase_end"`` (EWC's Fisher,
  SI's Omega). A rule whose method restarts the optimizer there (n-GateON resets Adam at each
  context switch) calls :func:`request_optimizer_reset` from its ``boundary``; the simulator then
  clears the optimizer's state (moments, step counts) after the boundary. The request passes through
  every wrapper and combinator, since each calls its inner rules' ``boundary``.

Order of ``post_step`` in nested modifiers (``--rule lpl+si+metaplastic`` is
``metaplastic(si(lpl))``): the ``delta`` a wrapper's ``post_step`` returns is the update that
is applied. A wrapper that *rescales* (metaplastic) rescales first and then passes the
rescaled update to its inner rule's ``post_step``; a wrapper that *accumulates* (SI) calls its
inner rule's ``post_step`` first and accumulates what that returns. So an accumulating
modifier sees every rescaling, inside or outside it, in any order of the modifiers.
``chain`` runs its rules' ``post_step`` one after the other on the same update (a rule
later in the chain sees the earlier ones' rescaling, not the other way round).

A rule that changes how its column is *evaluated* per probe set (n-GateON's ``probe_context: own``, each
task's probe set in that task's context) sets the column attribute :data:`PROBE_CONTEXT` to a callable
``j -> context manager``; ``colsim.evaluate.embed_probe_sets`` embeds probe set j inside it.

``needs`` names the Trace keys the rule reads; the special key ``"local"`` asks the
column to run with detached block inputs (layer-local learning).

``encoder_graph=False`` says that the rule computes every update of the current view's encoder
itself, under ``no_grad`` (local rules: ESPP, sparse coding), so no autograd graph of the
encoder's pass over the current view is ever read: the simulator then calls the column with
``encoder_graph=False`` and the column runs that pass without building it (the graph of the
modules the rule still differentiates, e.g. the aggregator and predictor, is kept). ``partition``
and ``chain`` need the graph when any of their rules does; modifiers keep the default (True).
"""
from __future__ import annotations

import contextlib
import contextvars
import fnmatch
from typing import Callable, Iterator, NamedTuple, Optional

import torch
from torch import Tensor

from colsim.types import Grads, Metrics, Params, PyTree, Trace

__all__ = [
    "Rule",
    "RuleState",
    "partition",
    "chain",
    "masked",
    "per_column",
    "loss_grads",
    "select", "first_match", "retain_graph", "request_optimizer_reset", "optimizer_reset_requests",
    "PROBE_CONTEXT",
]

PROBE_CONTEXT = "_colsim_probe_context"  # column attribute: j -> the context manager probe set j is embedded in

RuleState = PyTree  # nested dict of tensors / python scalars; must round-trip through torch.save

InitFn = Callable[[Params], RuleState]
UpdateFn = Callable[[Params, RuleState, Trace], "tuple[Grads, RuleState, Metrics]"]
PostStepFn = Callable[[Params, RuleState, "dict[str, Tensor]"], "tuple[dict[str, Tensor], RuleState]"]
BoundaryFn = Callable[[Params, RuleState, str], RuleState]


class Rule(NamedTuple):
    init: InitFn
    update: UpdateFn
    needs: frozenset = frozenset()
    post_step: Optional[PostStepFn] = None
    boundary: Optional[BoundaryFn] = None
    encoder_graph: bool = True  # False: no rule reads the autograd graph of the current view's encoder pass
    # True: ``update`` also works on parameters stacked over a leading seed dimension (``colsim run --ensemble``,
    # colsim/sim/ensemble.py): the trace's ``loss`` is then (S,), one per seed, and a metric may be (S,) too
    seed_batched: bool = False


def loss_grads(loss: Tensor, params: Params, retain_graph: bool = False) -> Grads:
    """Gradients of ``loss`` w.r.t. ``params``; parameters the loss does not reach get zeros."""
    names = [n for n, p in params.items() if p.requires_grad]
    if not names:
        return {}
    if not loss.requires_grad:
        return {n: torch.zeros_like(params[n]) for n in names}
    gs = torch.autograd.grad(loss, [params[n] for n in names], retain_graph=retain_graph, allow_unused=True)
    return {n: (g if g is not None else torch.zeros_like(params[n])) for n, g in zip(names, gs)}


_RETAIN_GRAPH: contextvars.ContextVar[bool] = contextvars.ContextVar("colsim_retain_graph", default=False)


def retain_graph() -> bool:
    """True while a combinator (``partition``, ``chain``) runs a rule after which another rule will differentiate
    the same graph: a rule passes it to ``torch.autograd.grad(..., retain_graph=...)`` and keeps the graphs it
    would otherwise free. False for a rule on its own."""
    return _RETAIN_GRAPH.get()


@contextlib.contextmanager
def _retaining(on: bool) -> Iterator[None]:
    token = _RETAIN_GRAPH.set(on)
    try:
        yield
    finally:
        _RETAIN_GRAPH.reset(token)


_RESET_REQUESTS: contextvars.ContextVar[Optional[list]] = contextvars.ContextVar("colsim_reset_requests", default=None)


def request_optimizer_reset() -> None:
    """From a rule's ``boundary``: ask the simulator to reset the optimizer's state once the boundary is done (no
    effect outside :func:`optimizer_reset_requests`, e.g. a boundary called by hand)."""
    req = _RESET_REQUESTS.get()
    if req is not None:
        req.append(True)


@contextlib.contextmanager
def optimizer_reset_requests() -> Iterator[list]:
    """Collect :func:`request_optimizer_reset` calls made inside the block: the list is non-empty if any was made."""
    req: list = []
    token = _RESET_REQUESTS.set(req)
    try:
        yield req
    finally:
        _RESET_REQUESTS.reset(token)


def select(params: Params, patterns: "list[str] | str") -> Params:
    """The parameters whose names match any fnmatch pattern (``"encoder.*"``)."""
    pats = [patterns] if isinstance(patterns, str) else list(patterns)
    return {n: p for n, p in params.items() if any(fnmatch.fnmatchcase(n, q) for q in pats)}


def first_match(params: dict, patterns) -> list[dict]:
    """Split ``params`` by fnmatch patterns, first matching pattern wins: one dict per pattern, in order (a
    parameter no pattern matches is in none). The one rule behind ``partition``, ``rule.partition`` and
    ``optimizer.groups``."""
    taken: set[str] = set()
    out = []
    for pat in patterns:
        sub = {n: p for n, p in params.items() if n not in taken and fnmatch.fnmatchcase(n, pat)}
        taken |= set(sub)
        out.append(sub)
    return out


def _prefix(metrics: Metrics, prefix: str) -> Metrics:
    return {f"{prefix}/{k}": v for k, v in metrics.items()}


def partition(rules: "dict[str, Rule]") -> Rule:
    """Give each parameter to the first rule whose fnmatch pattern matches its name.

    ``partition({"encoder.*": lpl(...), "*": backprop(...)})``. Every parameter must be
    matched (the Simulator checks this before step 0); each sub-rule sees only its own
    parameters. Sub-rules share the Trace, so loss-based sub-rules keep the graph alive for
    the ones after them.
    """
    items = list(rules.items())

    def assign(params: Params) -> list[Params]:
        return first_match(params, [pat for pat, _ in items])

    def init(params: Params) -> RuleState:
        return {pat: r.init(sub) for (pat, r), sub in zip(items, assign(params))}

    def update(params, state, trace):
        grads: Grads = {}
        metrics: Metrics = {}
        new_state = {}
        for (pat, r), sub in zip(items, assign(params)):
            with _retaining(True):  # later sub-rules may differentiate the same graph
                g, s, m = r.update(sub, state[pat], trace)
            grads.update(g)
            new_state[pat] = s
            metrics.update(_prefix(m, pat.rstrip(".*") or "all"))
        return grads, new_state, metrics

    post = [r.post_step for _, r in items]

    def post_step(params, state, delta):
        state = dict(state)
        out = dict(delta)
        for (pat, r), sub in zip(items, assign(params)):
            if r.post_step is not None:
                d_sub = {n: delta[n] for n in sub if n in delta}
                d_sub, state[pat] = r.post_step(sub, state[pat], d_sub)
                out.update(d_sub)
        return out, state

    def boundary(params, state, event):
        state = dict(state)
        for (pat, r), sub in zip(items, assign(params)):
            if r.boundary is not None:
                state[pat] = r.boundary(sub, state[pat], event)
        return state

    needs = frozenset().union(*(r.needs for _, r in items))
    return Rule(init, update, needs, post_step if any(p is not None for p in post) else None,
                boundary if any(r.boundary is not None for _, r in items) else None,
                any(r.encoder_graph for _, r in items))


def chain(*rules: Rule) -> Rule:
    """Sum the descent directions of several rules over the same parameters."""

    def init(params):
        return [r.init(params) for r in rules]

    def update(params, state, trace):
        grads: Grads = {}
        metrics: Metrics = {}
        new_state = []
        for i, (r, s) in enumerate(zip(rules, state)):
            with _retaining(i < len(rules) - 1 or retain_graph()):
                g, s, m = r.update(params, s, trace)
            for n, v in g.items():
                grads[n] = grads[n] + v if n in grads else v
            new_state.append(s)
            metrics.update(m)
        return grads, new_state, metrics

    def post_step(params, state, delta):
        state = list(state)
        for i, r in enumerate(rules):
            if r.post_step is not None:
                delta, state[i] = r.post_step(params, state[i], delta)
        return delta, state

    def boundary(params, state, event):
        return [r.boundary(params, s, event) if r.boundary is not None else s for r, s in zip(rules, state)]

    return Rule(init, update, frozenset().union(*(r.needs for r in rules)),
                post_step if any(r.post_step for r in rules) else None,
                boundary if any(r.boundary for r in rules) else None,
                any(r.encoder_graph for r in rules))


def per_column(rules: "dict[str, Rule]") -> Rule:
    """One rule per column of a circuit with per-column weights (``colsim.column.Circuit``).

    Column ``n``'s rule sees its own parameters under their column-local names (``c0.encoder.w`` ->
    ``encoder.w``) and its own Trace (``trace["columns"][n]``, with the circuit's ``labels``); its
    grads come back prefixed, its metrics as ``n/<key>`` (the store gives them a ``column`` dim).
    """
    items = list(rules.items())

    def split(tree: dict) -> "dict[str, dict]":
        out: dict = {n: {} for n, _ in items}
        for k, v in tree.items():
            head, _, rest = k.partition(".")
            if head in out:
                out[head][rest] = v
        return out

    def init(params):
        sub = split(params)
        return {n: r.init(sub[n]) for n, r in items}

    def update(params, state, trace):
        sub = split(params)
        grads: Grads = {}
        metrics: Metrics = {}
        new_state = {}
        for n, r in items:
            tr = trace["columns"][n]
            if "labels" in trace:
                tr["labels"] = trace["labels"]
            g, new_state[n], m = r.update(sub[n], state[n], tr)
            grads.update({f"{n}.{k}": v for k, v in g.items()})
            metrics.update({f"{n}/{k}": v for k, v in m.items()})
        return grads, new_state, metrics

    def post_step(params, state, delta):
        sub, dsub = split(params), split(delta)
        state, out = dict(state), dict(delta)
        for n, r in items:
            if r.post_step is not None:
                d, state[n] = r.post_step(sub[n], state[n], dsub[n])
                out.update({f"{n}.{k}": v for k, v in d.items()})
        return out, state

    def boundary(params, state, event):
        sub = split(params)
        return {n: r.boundary(sub[n], state[n], event) if r.boundary is not None else state[n] for n, r in items}

    return Rule(init, update, frozenset().union(*(r.needs for _, r in items)),
                post_step if any(r.post_step for _, r in items) else None,
                boundary if any(r.boundary for _, r in items) else None)


def masked(rule: Rule, patterns: "list[str] | str") -> Rule:
    """Apply ``rule`` only to parameters matching ``patterns``; the others get no update."""
    return Rule(lambda params: rule.init(select(params, patterns)),
                lambda params, state, trace: rule.update(select(params, patterns), state, trace),
                rule.needs,
                (lambda params, state, delta: _masked_post(rule, patterns, params, state, delta)) if rule.post_step else None,
                (lambda params, state, event: rule.boundary(select(params, patterns), state, event))
                if rule.boundary else None,
                rule.encoder_graph)


def _masked_post(rule, patterns, params, state, delta):
    sub = select(params, patterns)
    d_sub, state = rule.post_step(sub, state, {n: delta[n] for n in sub if n in delta})
    out = dict(delta)
    out.update(d_sub)
    return out, state
