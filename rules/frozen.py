"""Frozen weights: the control arm of every rule comparison (docs/results/forgetting.md.

``--rule frozen`` runs the same schedule as any rule — the same stream, the column's forward in
training mode (dropout on, any normalisation layer with running statistics updating them), the
teacher's EMA step, the evaluations — and changes no parameter: its update returns no gradient,
so the optimizer skips every parameter (no weight decay either, ``torch.optim`` skips parameters
whose ``.grad`` is None) and the EMA teacher, a copy of an unchanged student, stays equal to it.

What a rule's forgetting means is then "forgetting beyond this arm": whatever the frozen arm
forgets comes from state that no parameter-level rule controls (normalisation buffers, the
read-outs themselves), and it is exactly 0 for a column without such buffers (the packaged
default; tests/rules/test_forgetting.py).

It differs from the protocol switch ``protocol.learn: false``, which puts the column in
evaluation mode (dropout off, running statistics frozen) and skips the rule altogether (its
update, its phase-end boundary and replay's buffer). ``frozen+replay`` is allowed (replay's
extra forward passes then run too, and refresh any running statistics); the modifiers that act
on parameter updates (``si``, ``ewc``, ``metaplastic``) have nothing to act on and are refused
before step 0. Recorded: ``loss.pred``, the column's prediction loss, as for backprop.
"""
from __future__ import annotations

from typing import Literal

from colsim.config import Strict
from colsim.registry import register_rule
from colsim.rule import Rule

__all__ = ["FrozenConfig", "frozen"]


class FrozenConfig(Strict):
    name: Literal["frozen"] = "frozen"


@register_rule("frozen", FrozenConfig, updates=False)
def frozen(cfg: FrozenConfig, column=None) -> Rule:
    """Frozen weights (control arm): training-mode forward passes, no parameter update."""

    def init(params):
        return {}

    def update(params, state, trace):
        return {}, state, {"loss.pred": float(trace["loss"].detach())}

    return Rule(init, update, frozenset({"loss"}))
