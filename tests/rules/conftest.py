"""Helpers for the rule unit tests: a fake inner rule and the simulator's optimizer/post-step schedule."""
from __future__ import annotations

import pytest
import torch

from colsim.rule import Rule, loss_grads


def fake_rule(grad_fn, needs=("g",)) -> Rule:
    """A base rule whose descent direction is ``grad_fn(params, trace)`` (a dict name -> tensor)."""

    def init(params):
        return {}

    def update(params, state, trace):
        return grad_fn(params, trace), state, {"loss.fake": 0.0}

    return Rule(init, update, frozenset(needs))


def loss_rule(loss_fn) -> Rule:
    """A loss-based rule: gradient of ``loss_fn(params, trace)``."""
    return fake_rule(lambda params, trace: loss_grads(loss_fn(params, trace), params))


def apply_step(rule: Rule, params: dict, state, trace, opt: torch.optim.Optimizer):
    """Steps 3 and 5 of the simulator's schedule: rule update, optimizer step, post_step rescaling."""
    grads, state, metrics = rule.update(params, state, trace)
    for n, p in params.items():
        p.grad = grads.get(n)
    before = {n: p.detach().clone() for n, p in params.items()}
    opt.step()
    if rule.post_step is not None:
        with torch.no_grad():
            delta = {n: p.detach() - before[n] for n, p in params.items()}
            delta, state = rule.post_step(params, state, delta)
            for n, p in params.items():
                p.copy_(before[n] + delta[n])
    for p in params.values():
        p.grad = None
    return state, grads, metrics


class _Helpers:
    fake_rule = staticmethod(fake_rule)
    loss_rule = staticmethod(loss_rule)
    step = staticmethod(apply_step)


@pytest.fixture
def h():
    """``h.fake_rule``, ``h.loss_rule``, ``h.step`` (see the module docstring)."""
    return _Helpers
