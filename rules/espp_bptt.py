"""ESPP's objective by backprop through time: the control arm that asks what exact gradient descent on the
EchoSpike loss does where ESPP follows its local approximation (issue 31; Graf, Su & Indiveri 2024, "EchoSpike
Predictive Plasticity", arXiv 2405.13976; reference code largraf/EchoSpike).

The objective is ESPP's own (rules/espp.py). For LIF layer l with N_l neurons, spikes S_t (B, N_l) of the sample,
echo e (B, N_l) (the previous sample's spike counts, L1-normalised; a constant) and broadcast b in {-1, 0, +1}::

    L_l = sum_b [ -b sum_t <S_t, e> + c_b T N_l ]+          (streams with b = 0 add nothing)
    L   = sum_l L_l                                          (summed over the rule's layers)

ESPP descends each L_l with the update ``ΔW = eta 1[L > 0] b sum_t e psi(U_t - theta) x~_t``. That update is the
gradient of L_l with respect to layer l's own weights when (i) dS/dU is the surrogate psi, (ii) the reset term
``- theta S_{t-1}`` carries no gradient, so dU_t/dW = x~_t (the input trace), and (iii) no gradient reaches the
layers below. This rule instead recomputes the sample's forward with an autograd graph (the column's own LIF
blocks: snnTorch ``Leaky``, subtract reset, from the Trace's input spikes ``block_in[0]``, which gives the same
spikes bit for bit) and differentiates L by BPTT with the LIF code's surrogate, snnTorch's default ATan,
dS/dU = 1 / (1 + (pi (U - theta))²) = pi psi(U - theta).

Which sum, and why. The default (``layer_local: false``) is L = sum_l L_l with gradients crossing layers: layer l's
weights descend its own loss and every deeper layer's. The layer-local variant (``layer_local: true``: each
layer's loss on its own spikes, block inputs detached) is no separate arm: snnTorch detaches the reset (its
``mem_reset``), so (ii) holds in BPTT too and the layer-local BPTT gradient is exactly pi times ESPP's -ΔW / eta
(tests/rules/test_espp_bptt.py checks it to float precision). In EchoSpike the loss is defined per layer and
each layer learns from its own loss alone, with no error passed between layers (Graf et al. 2024; the reference's
``model.py`` updates every layer from its own spikes and echo under ``no_grad``); the one thing BPTT
can add to ESPP's gradient on this objective is therefore the credit from deeper layers' losses, which is what
the default measures. Temporal credit is already exact in ESPP for this neuron model (the input trace *is*
dU_t/dW without the reset's gradient).

Optimizer (rules/espp_bptt.yaml): ESPP's, plain SGD, with the loss summed over the batch as ESPP sums its
per-sample updates, at lr = 1e-4 / pi: the surrogate's factor pi cancels, so a layer's own-loss term of the step
is ESPP's step at its preset lr 1e-4, and the arms differ only by the credit from deeper layers.

Which parameters it trains: each LIF block's ``encoder.blocks.<l>.synapse.weight`` (all blocks, or ``layers``).
On a seq-JEPA spiking column (models/spiking.py) the action embedding, aggregator and predictor get the seq-JEPA
loss on detached encoder outputs, as under ESPP (``predictive_weight``). The column itself builds no graph (the
EchoSpike MLP has none: ``differentiable = False``): the rule recomputes the forward it differentiates, so it
needs the Trace's ``block_in``, ``echo`` and ``broadcast``, which only spiking columns provide; any other model is
refused before step 0. Recorded: ``espp_bptt.l<l>.loss`` (L_l per sample with b != 0) and ``.gate`` (the share of
those samples with L_l > 0, ESPP's gate).
"""
from __future__ import annotations

from typing import Literal, Optional

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import Tensor

from colsim.config import ConfigError, Strict
from colsim.registry import register_rule
from colsim.rule import Rule, loss_grads, retain_graph

__all__ = ["EsppBpttConfig", "espp_bptt", "espp_hinge", "spiking_blocks", "rerun_blocks"]


class EsppBpttConfig(Strict):
    name: Literal["espp_bptt"] = "espp_bptt"
    c_pos: float = 1e-4  # c_+ of the hinge (rules/espp.py)
    c_neg: float = -1e-4  # c_-
    layer_local: bool = False  # True: each layer's loss on its own spikes only (= pi x ESPP's gradient)
    layers: Optional[list[int]] = None  # LIF blocks whose loss is summed (default: all)
    predictive_weight: float = Field(1.0, ge=0)  # seq-JEPA loss on a seq-JEPA column's shared modules


def espp_hinge(S: Tensor, e: Tensor, b: Tensor, c_pos: float, c_neg: float) -> Tensor:
    """ESPP's per-sample loss: S (T, B, N) spikes, e (B, N) echo, b (B,) -> (B,) [-b sum_t <S_t, e> + c_b T N]+,
    0 where b = 0."""
    T, _, N = S.shape
    c = torch.where(b > 0, S.new_tensor(c_pos), S.new_tensor(c_neg))  # (B,)
    overlap = torch.einsum("tbn,bn->b", S, e)  # (B,) sum_t <S_t, e>
    return F.relu(-b * overlap + c * T * N) * (b != 0)


def spiking_blocks(column) -> list:
    """The column's LIF blocks (synapse + lif), or [] when it has none (the needs check then refuses it)."""
    blocks = list(getattr(getattr(column, "encoder", None), "blocks", []))
    return blocks if blocks and all(hasattr(b, "synapse") and hasattr(b, "lif") for b in blocks) else []


def rerun_blocks(column, trace, detach_blocks: bool) -> "list[Tensor]":
    """The sample's forward again, with an autograd graph: the Trace's input spikes ``block_in[0]`` (B, T, *in)
    through the column's LIF blocks -> each block's spikes [(T, B, N_l)] (flattened per bin)."""
    x = trace["block_in"][0].transpose(0, 1)  # (T, B, *in)
    with torch.enable_grad():
        recs = column.encoder.run(x, detach_blocks=detach_blocks)  # [(x_l, S_l, U_l)]
    return [s.flatten(2) for _, s, _ in recs]


@register_rule("espp_bptt", EsppBpttConfig)
def espp_bptt(cfg: EsppBpttConfig, column=None) -> Rule:
    """ESPP's hinge objective summed over layers, by BPTT with the LIF's ATan surrogate (SGD 1e-4 / pi)."""
    blocks = spiking_blocks(column)
    use = [] if not blocks else (list(range(len(blocks))) if cfg.layers is None else list(cfg.layers))
    for l in use:
        if not 0 <= l < len(blocks):
            raise ConfigError(f"rule.layers: block {l} does not exist (the spiking encoder has {len(blocks)} blocks)")
    wnames = [f"encoder.blocks.{l}.synapse.weight" for l in range(len(blocks))]

    def init(params):
        return {}

    def update(params, state, trace):
        if not retain_graph():
            trace["z"] = trace["z"].detach()
        grads = loss_grads(cfg.predictive_weight * trace["loss"], params, retain_graph=retain_graph()) \
            if trace["loss"].requires_grad else {}
        metrics = {"loss.pred": float(trace["loss"].detach())}
        b = trace["broadcast"]  # (B,)
        active = b != 0
        n_act = int(active.sum())
        spikes = rerun_blocks(column, trace, detach_blocks=cfg.layer_local)  # [(T, B, N_l)]
        total = spikes[0].new_zeros(())
        for l in use:
            L = espp_hinge(spikes[l], trace["echo"][l].flatten(1), b, cfg.c_pos, cfg.c_neg)  # (B,)
            total = total + L.sum()
            metrics[f"espp_bptt.l{l}.loss"] = float(L.detach()[active].mean()) if n_act else float("nan")
            metrics[f"espp_bptt.l{l}.gate"] = float((L.detach()[active] > 0).float().mean()) if n_act \
                else float("nan")
        own = {w: params[w] for w in wnames if w in params}
        grads.update(loss_grads(total, own) if total.requires_grad else {w: torch.zeros_like(p) for w, p in own.items()})
        metrics["loss.espp_bptt"] = float(total.detach()) / max(n_act, 1)
        return grads, state, metrics

    # the graph it differentiates is its own re-run of the blocks: the column's encoder pass needs none
    return Rule(init, update, frozenset({"spikes", "block_in", "echo", "broadcast", "loss", "local"}),
                encoder_graph=False)

