"""Correlation-invariant sparse coding (Brito & Gerstner 2024, PLoS Comput. Biol. 20:e1011844,
"Learning what matters: Synaptic plasticity with invariance to second-order input
correlations"), applied to every encoder block.

For unit i with input x and drive ``u_i = w_i · x`` (docs/reference/rules.md)::

    Δw_i = eta x (f(u_i) - lambda_i u_i - beta sum_{k != i} G_ik u_k)          G = mean_b u uᵀ

f is the sparsifying Hebbian nonlinearity (``cube``: u³; ``relu_sq``: [u]+²). The linear
Hebbian depression ``- lambda_i x u_i`` is what cancels the input covariance: the fixed
points satisfy ``E[x f(w·x)] = lambda C w``, those of nonlinear Hebbian learning on
*whitened* inputs, so receptive fields follow higher-order (sparse) structure, not variance.
The lateral term (anti-Hebbian lateral connections whose weights are the units' running
correlation G) makes the units of a layer compete, so they do not all learn one feature.

Homeostatic lambda, per unit, from its own activity (batch means over b)::

    lambda_i = lambda*_i + Lambda_i + k_p (mean_b u_i² - 1),     lambda*_i = mean_b u_i f(u_i) / mean_b u_i²
    Lambda_i <- Lambda_i + eta_lambda (mean_b u_i² - 1)

lambda* is the depression that makes the update norm-preserving (no change of E[u²] to first
order); Lambda (integral, the reference's ``lambda += eta_l (u² - 1)``) and the proportional term
drive E[u²] -> 1. The integral term alone is unstable for an expansive f such as u³ (the
linearised (E[u²], lambda) dynamics have a positive trace: weights explode before lambda
catches up), hence lambda* and k_p. The step is normalised (a per-unit learning rate; the
direction and the fixed points are unchanged)::

    Δw_i <- Δw_i / (mean_b ||x_b||² max(1, |lambda_i|))

by the block's mean squared input norm, so one learning rate fits blocks of any fan-in, and by
|lambda_i|, so the linear depression step ``eta lambda_i C w_i`` stays below 1 when a unit's code
is very sparse (lambda* = E[u⁴]/E[u²] grows with the kurtosis; unnormalised, such units
overshoot and diverge after a few hundred steps).

In the column. For every encoder block l the rule re-runs the current view through the
encoder under ``no_grad`` and takes the block's leading Conv2d / Linear: x are its input
patches (``unfold``, (N, C_in k k) with N = B x positions, at most ``max_positions`` rows per
step, drawn with a seeded generator) or input vectors, u = its output minus the bias. The
rule returns ``-ΔW / eta`` as the weight's descent direction (plain SGD with lr = eta,
rules/sparse_coding.yaml). The bias is not changed by the rule.

Which parameters it trains:

* the leading weight of every encoder block: the local rule above — pre-synaptic x,
  post-synaptic u and f(u), a per-unit homeostatic lambda and lateral input from the same
  layer; no gradient anywhere;
* the action embedding, aggregator and predictor: the seq-JEPA prediction loss on detached
  encoder outputs (``predictive_weight``), as in LPL (the column runs with ``local=True``),
  with the optimizer every preset gives these shared modules: seq-JEPA's AdamW 4e-4, weight
  decay 1e-3, 20-step warm-up (rules/sparse_coding.yaml, rules/README.md "Shared modules").

Metrics: ``sparse_coding.l<l>.lambda.mean|min|max`` (homeostatic lambdas) and ``.u2`` (mean u²).
Supports encoders whose blocks are ``nn.Sequential`` with a leading Conv2d / Linear (``cnn``,
``mlp``); ResNet blocks are refused before step 0.
"""
from __future__ import annotations

from typing import Literal, Optional

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import Tensor, nn

from colsim.config import ConfigError, Strict
from colsim.registry import register_rule
from colsim.rule import Rule, loss_grads, retain_graph

__all__ = ["SparseCodingConfig", "sparse_coding", "sparse_coding_dw", "normalise_step", "homeostatic_lambda",
           "homeostasis_step"]


class SparseCodingConfig(Strict):
    name: Literal["sparse_coding"] = "sparse_coding"
    nonlinearity: Literal["cube", "relu_sq"] = "cube"  # f
    eta_lambda: float = Field(0.05, ge=0)  # integral homeostatic rate
    k_p: float = Field(1.0, ge=0)  # proportional homeostatic gain
    beta: float = Field(1.0, ge=0)  # lateral decorrelation strength
    max_positions: Optional[int] = Field(4096, gt=0)  # rows (batch x positions) per step and block
    layers: Optional[list[int]] = None  # encoder blocks under the rule (default: all)
    predictive_weight: float = Field(1.0, ge=0)
    seed: int = Field(0, ge=0)


def _f(u: Tensor, kind: str) -> Tensor:
    return u ** 3 if kind == "cube" else F.relu(u) ** 2


def sparse_coding_dw(x: Tensor, u: Tensor, lam: Tensor, beta: float = 0.0, nonlinearity: str = "cube") -> Tensor:
    """ΔW / eta for inputs x (N, J), drives u (N, M), lambdas (M,) -> (M, J).

    ``mean_b (f(u) - lambda u - beta Off(G) u) xᵀ`` with ``G = mean_b u uᵀ``.
    """
    N = x.shape[0]
    post = _f(u, nonlinearity) - u * lam  # (N, M)
    if beta and u.shape[1] > 1:
        G = u.T @ u / N  # (M, M)
        post = post - beta * (u @ (G - torch.diag(torch.diagonal(G))))  # symmetric: (Off(G) u_b) per row
    return post.T @ x / N


def normalise_step(dw: Tensor, x: Tensor, lam: Tensor) -> Tensor:
    """Δw (M, J) / (mean_b ||x_b||² max(1, |lambda_i|)); x (N, J), lam (M,)."""
    return dw / ((x * x).sum(1).mean().clamp(min=1e-12) * lam.abs().clamp(min=1.0).unsqueeze(1))


def homeostatic_lambda(u: Tensor, Lam: Tensor, k_p: float, nonlinearity: str = "cube") -> Tensor:
    """lambda_i = mean u f(u) / mean u² + Lambda_i + k_p (mean u² - 1); u (N, M), Lam (M,) -> (M,)."""
    m = (u * u).mean(0)
    return (u * _f(u, nonlinearity)).mean(0) / m.clamp(min=1e-12) + Lam + k_p * (m - 1.0)


def homeostasis_step(Lam: Tensor, u: Tensor, eta_lambda: float) -> Tensor:
    """Lambda_i <- Lambda_i + eta_lambda (mean_b u_i² - 1); u (N, M)."""
    return Lam + eta_lambda * ((u * u).mean(0) - 1.0)


def _lead(block: nn.Module) -> "tuple[int, nn.Module] | None":
    if not isinstance(block, nn.Sequential):
        return None
    for i, m in enumerate(block):
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            return i, m
    return None


@register_rule("sparse_coding", SparseCodingConfig)
def sparse_coding(cfg: SparseCodingConfig, column=None) -> Rule:
    """Correlation-invariant sparse coding per encoder block (nonlinear Hebbian, homeostatic LTD, lateral)."""
    enc = getattr(column, "encoder", None)
    if enc is None or not hasattr(enc, "blocks"):
        raise ConfigError(f"rule: sparse_coding needs a column with a block encoder (model {type(column).__name__} "
                          f"has none); use a seq-JEPA model")
    leads = [_lead(b) for b in enc.blocks]
    use = list(range(len(leads))) if cfg.layers is None else cfg.layers
    for l in use:
        if not 0 <= l < len(leads):
            raise ConfigError(f"rule.layers: block {l} does not exist (the encoder has {len(leads)} blocks)")
        if leads[l] is None or (isinstance(leads[l][1], nn.Conv2d) and leads[l][1].groups != 1):
            raise ConfigError(f"rule: sparse_coding needs encoder blocks made of a leading Conv2d/Linear "
                              f"(nn.Sequential); block {l} of {type(enc).__name__} is not; use model.encoder.kind "
                              f"cnn or mlp")
    mod_to_name = {id(m): n for n, m in column.named_modules()}
    wnames = {l: mod_to_name[id(leads[l][1])] + ".weight" for l in use}

    def init(params):
        Lam = {l: torch.zeros(params[wnames[l]].shape[0], device=params[wnames[l]].device)
               for l in use if wnames[l] in params}
        return {"Lambda": Lam, "step": 0}

    def _rows(x_in: Tensor, u: Tensor, m: nn.Module, gen: torch.Generator) -> "tuple[Tensor, Tensor]":
        """Inputs x (N, J) and drives u (N, M) at up to ``max_positions`` sampled (sample, position) rows."""
        if isinstance(m, nn.Conv2d):
            X3 = F.unfold(x_in, m.kernel_size, m.dilation, m.padding, m.stride)  # (B, J, L)
            U3 = u.flatten(2)  # (B, M, L)
            B, _, L = X3.shape
            n = B * L if cfg.max_positions is None else min(cfg.max_positions, B * L)
            idx = torch.randperm(B * L, generator=gen)[:n].to(X3.device) if n < B * L else torch.arange(B * L, device=X3.device)
            b, pos = idx // L, idx % L
            return X3[b, :, pos], U3[b, :, pos]  # (n, J), (n, M): gathered, no full transposed copy
        X, U = x_in.reshape(-1, x_in.shape[-1]), u.reshape(-1, u.shape[-1])
        if cfg.max_positions is not None and X.shape[0] > cfg.max_positions:
            idx = torch.randperm(X.shape[0], generator=gen)[: cfg.max_positions].to(X.device)
            X, U = X[idx], U[idx]
        return X, U

    @torch.no_grad()
    def _local(obs: Tensor, step: int):
        """Yield, block by block, (l, x (N, J), u (N, M)) of the leading layer on the current view."""
        gen = torch.Generator().manual_seed(cfg.seed * 1_000_003 + step)
        h = obs
        for l, block in enumerate(enc.blocks):
            lead = leads[l]
            if l not in wnames or lead is None:
                h = block(h)
                continue
            i0, m = lead
            for j, sub in enumerate(block):
                if j == i0:
                    x_in = h
                    h = sub(h)
                    u = h - m.bias.view(1, -1, *([1] * (h.dim() - 2))) if m.bias is not None else h
                    X, U = _rows(x_in, u, m, gen)
                    yield l, X.float(), U.float()
                    del X, U, x_in, u
                else:
                    h = sub(h)

    def update(params, state, trace):
        if not retain_graph():
            # no rule after this one reads the current view's block-local graph (built by the local
            # forward, unused here): drop the trace's references so its activations are freed now
            trace["z"] = trace["z"].detach()
            trace["layers"] = [l.detach() for l in trace["layers"]]
        total = cfg.predictive_weight * trace["loss"]
        grads = loss_grads(total, params, retain_graph=retain_graph())
        metrics = {"loss.pred": float(trace["loss"].detach())}
        Lam = dict(state["Lambda"])
        if Lam:
            for l, X, U in _local(trace["inputs"]["obs"], state["step"]):
                w = wnames[l]
                if w not in params:
                    continue
                lam = homeostatic_lambda(U, Lam[l], cfg.k_p, cfg.nonlinearity)  # (M,)
                dw = sparse_coding_dw(X, U, lam, cfg.beta, cfg.nonlinearity)  # (M, J)
                dw = normalise_step(dw, X, lam)
                grads[w] = -dw.view_as(params[w]).to(params[w].dtype)
                b = w[: -len("weight")] + "bias"
                if b in params:
                    grads[b] = torch.zeros_like(params[b])
                Lam[l] = homeostasis_step(Lam[l], U, cfg.eta_lambda)
                metrics[f"sparse_coding.l{l}.lambda.mean"] = float(lam.mean())
                metrics[f"sparse_coding.l{l}.lambda.min"] = float(lam.min())
                metrics[f"sparse_coding.l{l}.lambda.max"] = float(lam.max())
                metrics[f"sparse_coding.l{l}.u2"] = float((U * U).mean())
        return grads, {"Lambda": Lam, "step": state["step"] + 1}, metrics

    # the block updates are computed under no_grad from a re-run of the view: the column's encoder pass needs
    # no autograd graph (unless a regulariser on z reaches the encoder; the column keeps it then)
    return Rule(init, update, frozenset({"inputs", "loss", "local"}), encoder_graph=False)
