"""Supervised upper bound for a spiking column: BPTT of the cross-entropy of a linear head on the last LIF
layer's spike counts against the world's labels (issue 31, item 2; the supervised surrogate-gradient SNN of
Neftci, Mostafa & Zenke 2019, "Surrogate Gradient Learning in Spiking Neural Networks", IEEE SPM 36(6), as
snnTorch trains it, Eshraghian et al. 2023).

With the sample's spikes S^L_t (B, N_L) of the last LIF layer, the spike counts c = sum_t S^L_t (B, N_L), a linear
head (W_h, b_h) (K, N_L) and the tick's labels y (B,)::

    logits = W_h c + b_h                         (B, K)
    L      = mean_b CE(logits_b, y_b)

differentiated through every LIF layer by BPTT with the LIF code's surrogate (snnTorch's ``Leaky``, ATan,
dS/dU = 1 / (1 + (pi (U - theta))²)). Like rules/espp_bptt.py it recomputes the sample's forward with an autograd
graph from the Trace's input spikes ``block_in[0]`` (the EchoSpike MLP's own forward builds none). The head is a
parameter of the column (``encoder_aux.supervised``, attached when the rule is built, before the optimizer exists,
as rules/layerwise.py attaches its predictors), so the one optimizer step trains it; the evaluation does not use
it: the per-layer read-outs (``layer_readout_accuracy``) are fitted on the spike counts as for every other arm,
so this arm bounds what a supervised objective puts into the same read-outs.

Labels: the world's ``labels["target"]`` where the world declares ``num_targets`` (K = num_targets), else
``labels["class"]`` (K = num_classes). echospike_samples gives both (target = class, K = 10). The simulator puts the
tick's world labels into the Trace (``trace["labels"]``) after the column's forward (colsim/sim/tick.py).

Which parameters it trains: every LIF block's synaptic weight and the head. On a seq-JEPA spiking column the
other modules get the seq-JEPA loss on detached encoder outputs (``predictive_weight``). Optimizer
(rules/supervised_bptt.yaml): Adam, lr 1e-3 (a usual setting for surrogate-gradient MLPs, not tuned). Recorded:
``loss.supervised`` and ``supervised.acc`` (the head's accuracy on the training batch). A model without LIF
blocks does not provide ``block_in``; the needs check refuses it before step 0.
"""
from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from colsim.config import ConfigError, Strict
from colsim.registry import register_rule
from colsim.rule import Rule, loss_grads, retain_graph
from colsim.rules.espp_bptt import rerun_blocks, spiking_blocks

__all__ = ["SupervisedBpttConfig", "supervised_bptt"]

AUX = "encoder_aux"


class SupervisedBpttConfig(Strict):
    name: Literal["supervised_bptt"] = "supervised_bptt"
    predictive_weight: float = Field(1.0, ge=0)  # seq-JEPA loss on a seq-JEPA column's shared modules


def _attach_head(column, blocks) -> "tuple[nn.Linear, str]":
    spec = getattr(column, "spec", None)
    if spec is None:
        raise ConfigError(f"rule: supervised_bptt needs a column built for a world (model {type(column).__name__} "
                          f"has no spec); use --model echospike_mlp")
    k, key = (spec.num_targets, "target") if spec.num_targets else (spec.num_classes, "class")
    if k < 2:
        raise ConfigError(f"rule: supervised_bptt needs a world with labelled classes (this one gives {k}); use "
                          f"protocol echospike_digits or echospike_fashion")
    syn = blocks[-1].synapse
    n = syn.out_features if isinstance(syn, nn.Linear) else None
    if n is None:  # a conv block: its neurons are C H' W'
        n = int(torch.Size(column.block_shapes[-1]).numel())
    if not hasattr(column, AUX):
        column.add_module(AUX, nn.ModuleDict())
    aux = getattr(column, AUX)
    old = aux["supervised"] if "supervised" in aux else None
    if old is None or (old.in_features, old.out_features) != (n, k):  # built twice (validation): reuse if it fits
        aux["supervised"] = nn.Linear(n, k).to(syn.weight.device)
    return aux["supervised"], key


@register_rule("supervised_bptt", SupervisedBpttConfig)
def supervised_bptt(cfg: SupervisedBpttConfig, column=None) -> Rule:
    """Supervised upper bound: cross-entropy of a linear head on the last LIF layer's spike counts, BPTT (Adam 1e-3)."""
    blocks = spiking_blocks(column)
    head, key = _attach_head(column, blocks) if blocks else (None, "class")
    hnames = {f"{AUX}.supervised.{n}" for n, _ in head.named_parameters()} if head is not None else set()
    wnames = [f"encoder.blocks.{l}.synapse.weight" for l in range(len(blocks))]

    def init(params):
        missing = sorted(hnames - set(params))
        if missing:
            raise ConfigError(f"rule.partition: supervised_bptt's head ({missing[0]}) belongs to another group; give "
                              f"it to this rule's group, e.g. pattern 'encoder*'")
        return {}

    def update(params, state, trace):
        if "labels" not in trace:
            raise ConfigError("rule: supervised_bptt reads the world's labels from the Trace (trace['labels']), "
                              "which only a run's tick puts there")
        if not retain_graph():
            trace["z"] = trace["z"].detach()
        grads = loss_grads(cfg.predictive_weight * trace["loss"], params, retain_graph=retain_graph()) \
            if trace["loss"].requires_grad else {}
        y = trace["labels"][key].to(trace["block_in"][0].device).long()  # (B,)
        with torch.enable_grad():
            counts = rerun_blocks(column, trace, detach_blocks=False)[-1].sum(0)  # (B, N_L)
            logits = head(counts)  # (B, K)
            loss = F.cross_entropy(logits, y)
        own = {n: params[n] for n in (*wnames, *sorted(hnames)) if n in params}
        grads.update(loss_grads(loss, own))
        metrics = {"loss.pred": float(trace["loss"].detach()), "loss.supervised": float(loss.detach()),
                   "supervised.acc": float((logits.detach().argmax(1) == y).float().mean())}
        return grads, state, metrics

    return Rule(init, update, frozenset({"block_in", "loss", "local"}), encoder_graph=False)
