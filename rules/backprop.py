"""Backprop: the end-to-end seq-JEPA objective through every block (docs/reference/rules.md).

Trains every trainable parameter of the column (encoder, action embedding, aggregator,
predictor) with the gradient of the column's prediction loss ``1 - cos(z_hat, sg(z~))``
(Ghaemi et al. 2025, arXiv 2505.03176), plus any regulariser the column adds to ``loss``.
Nothing about it is local: the encoder's gradient arrives through the aggregator and
predictor. Paper optimiser defaults (rules/backprop.yaml): AdamW, lr 4e-4, weight decay 1e-3.
"""
from __future__ import annotations

from typing import Literal

from colsim.config import Strict
from colsim.registry import register_rule
from colsim.rule import Rule, loss_grads, retain_graph

__all__ = ["BackpropConfig", "backprop"]


class BackpropConfig(Strict):
    name: Literal["backprop"] = "backprop"


@register_rule("backprop", BackpropConfig)
def backprop(cfg: BackpropConfig, column=None) -> Rule:
    """End-to-end gradient of the column's loss through all blocks (AdamW 4e-4, wd 1e-3)."""

    def init(params):
        return {}

    def update(params, state, trace):
        loss = trace["loss"]  # () or, in a seed ensemble, (S,): the seeds' losses share no parameter
        grads = loss_grads(loss.sum(), params, retain_graph=retain_graph())
        return grads, state, {"loss.pred": float(loss.detach()) if loss.dim() == 0 else loss.detach()}

    return Rule(init, update, frozenset({"loss", "global"}), seed_batched=True)
