"""ESPP — EchoSpike Predictive Plasticity (Graf, Su & Indiveri 2024, "EchoSpike Predictive
Plasticity: An Online Local Learning Rule for Spiking Neural Networks", arXiv 2405.13976),
on every LIF block of a spiking column (models/spiking.py).

Samples of T bins are presented in turn. For layer l with N neurons, membrane U_t, spikes S_t
(B, N) and presynaptic spikes x_t (B, J) (docs/reference/rules.md)::

    e    = s̄ / ||s̄||_1                       echo: the previous sample's spike counts, L1-normalised
    b    = +1 / -1                             same episode as the previous sample (predictive) /
                                               an episode boundary in between (contrastive)
    x~_t = beta x~_{t-1} + x_t                 input trace (reset at every sample)
    psi(u) = 1 / (pi (1 + (pi u)²))            surrogate of dS/dU
    L    = -b sum_t <S_t, e> + c_b T N         per-sample hinge gate, learn only where L > 0
    ΔW_ij = eta 1[L > 0] b sum_t e_i psi(U_i,t - theta) x~_j,t

so the predictive case pulls each neuron's activity towards its echo until the overlap reaches
c_+ T N, and the contrastive case pushes it away while the overlap exceeds -c_- T N (defaults
c = (1e-4, -1e-4), theta = 1). ``online: true`` is the paper's online variant: the gate is
evaluated per bin, ``L_t = -b <S_t, e> + c_b a_t`` with a_t = mean_j x_j,t the layer's input
activity, and a bin learns only where L_t > 0 and a_t > ``input_threshold`` (no learning from
near-silent input). The simulator applies one optimizer step per view, so the online variant
sums its per-bin updates over the view's T bins (all computed with the weights of that view).

In colsim "same object" is the same episode: ``b`` comes from the stream's ``start`` flags
(``broadcast`` in the column's Trace; 0, no update, for a stream's first view of a phase), so
the positives and negatives of the paper's same-class pairing come from the stream itself.

Which parameters it trains (the column runs with ``local=True``):

* each LIF block's synaptic weight ``encoder.blocks.<l>.synapse.weight`` (Linear (N, J) or
  Conv2d (C, C_in, k, k), where the sum over positions of a shared kernel is the correlation
  computed by ``torch.nn.grad.conv2d_weight``): the rule above, computed under ``no_grad`` from
  the Trace's ``spikes``, ``mem``, ``in_trace``, ``block_in`` (each (B, T, ...)), ``echo`` and ``broadcast``, and
  returned as ``-ΔW`` (descent direction, plain SGD at lr = eta). The update is summed over the
  batch, as the reference sums per-sample updates. Nothing crosses blocks;
* the action embedding, aggregator and predictor: the seq-JEPA loss on detached encoder outputs
  (``predictive_weight``) with the optimizer every preset gives these shared modules
  (rules/README.md, "Shared modules").

Defaults (rules/espp.yaml): SGD lr 1e-4 on the LIF blocks, c = (1e-4, -1e-4), the paper's N-MNIST
values. A model without spiking blocks does not provide ``spikes`` / ``echo`` / ``broadcast``: the
needs check refuses it before step 0.
"""
from __future__ import annotations

import math
import warnings
from typing import Literal, Optional

import torch
from pydantic import Field
from torch import Tensor, nn

from colsim.config import ConfigError, ConfigWarning, Strict
from colsim.registry import register_rule
from colsim.rule import Rule, loss_grads, retain_graph

__all__ = ["EsppConfig", "espp", "psi", "espp_gate", "espp_post", "espp_dw", "check_gate_range"]

THETA = 1.0


class EsppConfig(Strict):
    name: Literal["espp"] = "espp"
    c_pos: float = 1e-4  # c_+: predictive threshold per bin and neuron
    c_neg: float = -1e-4  # c_-: contrastive threshold
    online: bool = False  # gate per bin (the paper's online variant)
    input_threshold: float = Field(0.05, ge=0)  # online: minimum input activity of a learning bin
    layers: Optional[list[int]] = None  # LIF blocks under the rule (default: all)
    predictive_weight: float = Field(1.0, ge=0)  # seq-JEPA loss on action embedding, aggregator, predictor


def psi(u: Tensor) -> Tensor:
    """Surrogate derivative psi(u) = 1 / (pi (1 + (pi u)²))."""
    return 1.0 / (math.pi * (1.0 + (math.pi * u) ** 2))


def _psi_times(U: Tensor, coef: Tensor) -> Tensor:
    """psi(U - theta) * coef as 1 / (pi + pi³ (U - theta)²) in four passes over U (the hot path:
    T x B x N elements a block; ``psi`` written out takes eight)."""
    v = U - THETA
    out = torch.addcmul(v.new_tensor(math.pi), v, v, value=math.pi ** 3)
    return out.reciprocal_().mul_(coef)


def espp_gate(S: Tensor, e: Tensor, b: Tensor, c_pos: float, c_neg: float, online: bool = False,
              x: Optional[Tensor] = None, input_threshold: float = 0.05) -> "tuple[Tensor, Tensor]":
    """The hinge gate. S (T, B, N); e (B, N); b (B,); x (T, B, J) (online only) -> gate (T, B) bool and
    L ((B,) per sample, or (T, B) per bin online)."""
    T, B, N = S.shape
    c = torch.where(b > 0, S.new_tensor(c_pos), S.new_tensor(c_neg))  # (B,) in S's precision: L = 0 is a tie
    overlap = torch.einsum("tbn,bn->tb", S, e)  # (T, B) <S_t, e>, no (T, B, N) temporary
    active = b != 0
    if online:
        a = x.reshape(T, B, -1).mean(-1)  # (T, B) input activity
        L = -b * overlap + c * a  # (T, B)
        return (L > 0) & (a > input_threshold) & active, L
    L = -b * overlap.sum(0) + c * T * N  # (B,)
    return ((L > 0) & active).unsqueeze(0).expand(T, B), L


def espp_post(S: Tensor, U: Tensor, e: Tensor, b: Tensor, c_pos: float, c_neg: float, online: bool = False,
              x: Optional[Tensor] = None, input_threshold: float = 0.05) -> "tuple[Tensor, Tensor, Tensor]":
    """Postsynaptic factor of ΔW. S, U (T, B, N); e (B, N); b (B,) in {-1, 0, +1}; x (T, B, J) the
    input spikes (online only) -> post (T, B, N) = b g e psi(U - theta), gate g (T, B) bool, L
    ((B,) per sample, or (T, B) per bin online)."""
    gate, L = espp_gate(S, e, b, c_pos, c_neg, online, x, input_threshold)
    g = b * gate if online else (b * gate[0]).unsqueeze(0)  # (T, B) or (1, B): the per-sample gate once
    return _psi_times(U, g.unsqueeze(-1).to(U.dtype) * e.unsqueeze(0)), gate, L


def espp_dw(post: Tensor, x_trace: Tensor, synapse: nn.Module) -> Tensor:
    """ΔW / eta = sum_{t, b} post ⊗ x~ for the block's synapse: Linear post (T, B, N), x~ (T, B, J) ->
    (N, J); Conv2d post (T, B, C, H', W'), x~ (T, B, C_in, H, W) -> (C, C_in, k, k)."""
    if isinstance(synapse, nn.Conv2d):
        return torch.nn.grad.conv2d_weight(x_trace.flatten(0, 1), synapse.weight.shape, post.flatten(0, 1),
                                           synapse.stride, synapse.padding, synapse.dilation, synapse.groups)
    N, J = post.shape[-1], x_trace.shape[-1]
    return torch.mm(post.reshape(-1, N).t(), x_trace.reshape(-1, J))  # one GEMM over the (t, b) pairs


def check_gate_range(cfg: EsppConfig, neurons: dict[int, int]) -> None:
    """Warn (ConfigWarning) where the hinge gate of the whole-sample rule cannot act, given each
    block's neuron count N (``neurons``: block -> N). The overlap sum_t <S_t, e> lies in [0, T]
    (S in {0, 1}, e >= 0 sums to 1), so the predictive gate (L = -overlap + c_+ T N > 0) is open for
    every pair when c_+ N > 1, and the contrastive gate (L = overlap + c_- T N > 0) never opens when
    -c_- N >= 1. N counts every neuron of a block: C H' W' for a conv block, so a c that suits an
    MLP layer of 256 neurons can be out of range for a conv block of 4,096."""
    for side, cn, out_of_range, what in (
            ("c_pos", "c_pos N", lambda n: cfg.c_pos * n > 1, "> 1",),
            ("c_neg", "-c_neg N", lambda n: -cfg.c_neg * n >= 1, ">= 1")):
        out = {l: n for l, n in neurons.items() if out_of_range(n)}
        if not out:
            continue
        where = ", ".join(f"block {l} (N = {n})" for l, n in out.items())
        effect = ("the predictive gate is always open: same-episode pairs are pulled towards the echo unchecked"
                  if side == "c_pos" else "the contrastive gate never opens: nothing is pushed apart across episodes")
        warnings.warn(f"rule.{side}: {cn} {what} in {where}, so {effect}; use |{side}| < 1/N = "
                      f"{1 / max(out.values()):.2g}", ConfigWarning, stacklevel=3)


@register_rule("espp", EsppConfig)
def espp(cfg: EsppConfig, column=None) -> Rule:
    """EchoSpike Predictive Plasticity on every LIF block: echo, +-1 broadcast, hinge gate, -ΔW (SGD 1e-4)."""
    blocks = list(getattr(getattr(column, "encoder", None), "blocks", []))
    spiking = bool(blocks) and all(hasattr(b, "synapse") and hasattr(b, "lif") for b in blocks)
    use = [] if not spiking else (list(range(len(blocks))) if cfg.layers is None else list(cfg.layers))
    for l in use:
        if not 0 <= l < len(blocks):
            raise ConfigError(f"rule.layers: block {l} does not exist (the spiking encoder has {len(blocks)} blocks)")
    wnames = {l: f"encoder.blocks.{l}.synapse.weight" for l in use}
    if not cfg.online:
        check_gate_range(cfg, {l: math.prod(column.block_shapes[l]) for l in use})

    def init(params):
        return {}

    @torch.no_grad()
    def _block(l: int, trace) -> "tuple[Tensor, Tensor, Tensor]":
        """ΔW / eta of block l, its gate (T, B) and hinge L. Samples whose gate is shut in every bin add
        nothing to ΔW: only the others go through psi and the weight correlation."""
        S, U = trace["spikes"][l].transpose(0, 1), trace["mem"][l].transpose(0, 1)  # (T, B, *shape_l)
        T, B = S.shape[:2]
        x_in = trace["block_in"][l].transpose(0, 1)  # (T, B, *in_l)
        e, b = trace["echo"][l], trace["broadcast"]
        gate, L = espp_gate(S.reshape(T, B, -1), e, b, cfg.c_pos, cfg.c_neg, cfg.online, x_in, cfg.input_threshold)
        syn = blocks[l].synapse
        keep = gate.any(0).nonzero().squeeze(1)  # (K,) samples that learn in some bin
        if not len(keep):
            return torch.zeros_like(syn.weight), gate, L
        x_tr = trace["in_trace"][l].transpose(0, 1)  # (T, B, *in_l)
        if len(keep) < B:  # only the learning samples (no copy when all learn, as on contrastive ticks)
            U, x_tr, b, e, gate_k = U[:, keep], x_tr[:, keep], b[keep], e[keep], gate[:, keep]
        else:
            gate_k = gate
        g = (b * gate_k).to(U.dtype) if cfg.online else b.to(U.dtype).unsqueeze(0)  # (T|1, K)
        coef = g.unsqueeze(-1) * e.unsqueeze(0)  # (T|1, K, N_l)
        post = _psi_times(U, coef.view(*coef.shape[:2], *U.shape[2:]))  # (T, K, *shape_l)
        return espp_dw(post, x_tr, syn), gate, L

    def update(params, state, trace):
        if not retain_graph():  # nothing after this rule reads the block-local graphs
            trace["z"] = trace["z"].detach()
            trace["layers"] = [l.detach() for l in trace["layers"]]
        retain = retain_graph()
        # a column without a differentiable objective (EchoSpike's MLP: LIF layers only) has nothing else to train
        grads = loss_grads(cfg.predictive_weight * trace["loss"], params, retain_graph=retain) \
            if trace["loss"].requires_grad else {}
        metrics = {"loss.pred": float(trace["loss"].detach())}
        active = trace["broadcast"] != 0  # (B,)
        n_act = int(active.sum())
        for l in use:
            w = wnames[l]
            if w not in params:
                continue
            dw, gate, L = _block(l, trace)
            grads[w] = -dw.to(params[w].dtype)
            if n_act:
                g = gate[:, active].float()  # (T, n) bins (or samples, repeated) of streams with an echo
                metrics[f"espp.l{l}.gate"] = float(g.mean())
                metrics[f"espp.l{l}.hinge"] = float(L[..., active].mean())
            else:
                metrics[f"espp.l{l}.gate"] = float("nan")
                metrics[f"espp.l{l}.hinge"] = float("nan")
        return grads, state, metrics

    # ΔW comes from the Trace's spikes / membranes under no_grad and the seq-JEPA loss reaches no encoder
    # weight (detached encoder outputs): the column's encoder pass needs no autograd graph
    return Rule(init, update, frozenset({"spikes", "mem", "in_trace", "block_in", "echo", "broadcast", "loss",
                                         "local"}), encoder_graph=False)
