"""LPL — Latent Predictive Learning (Halvagal & Zenke 2023, Nat. Neurosci. 26:1906), per layer.

For every encoder block l with globally pooled output z (B, M) of the current view and
z_prev (B, M) of the previous view of the same episode (docs/reference/rules.md)::

    L_l = lambda_pred * L_pred + lambda_hebb * L_hebb + lambda_dec * L_dec        (1, 1, 10)
    L_pred = mean_{b valid, i} (z_bi(t) - sg(z_bi(t-1)))²                      causal stop-grad form
    L_hebb = -mean_i log(sigma_i² + 1e-4),  sigma_i² = 1/(B-1) sum_b (z_bi - sg(mu_i))²
    L_dec  = 1/(M²-M) sum_{i != k} C_ik²,    C = batch covariance (erratum's form)

``stats: running`` replaces batch estimates by running (EMA) means / variances per unit
for online or small-batch use: the Hebbian term then uses the surrogate
``-mean_i [1/(B-1) sum_b (z_bi - mu_i)²] / (sg(var_i) + 1e-4)`` whose gradient equals that of
``-log(sigma_i² + 1e-4)`` when the running variance equals the batch one. Like the batch
path (and the reference implementation) it divides by B-1, the decorrelation term centres
on the (stop-gradient) *batch* mean in both paths, and eps is added once, in the
denominator (the stored running variance carries no eps). The running estimates follow
``mu <- m mu + (1-m) mean_b z``, ``var <- m var + (1-m) 1/(B-1) sum_b (z - mu)²``
(m = ``stats_momentum``), initialised from the first batch (mean, unbiased variance).

Which parameters each term trains (the column runs with ``local=True``: every block's
input is detached, the aggregator sees detached encoder outputs):

* L_l (pred, hebb, dec) trains encoder block l only — the weights and biases of
  ``encoder.blocks.l``; no gradient crosses blocks.
* the seq-JEPA prediction loss ``1 - cos(z_hat, sg(z~))`` (weight ``predictive_weight``)
  trains the action embedding, aggregator and predictor only — never the encoder.

Locality: each encoder block learns from its own pre- and post-synaptic activity, the
previous view's activity (a trace) and per-unit statistics — no error is backpropagated
between layers.

Defaults (rules/lpl.yaml; the paper: Adam 1e-3, weight decay 1.5e-6): Adam, encoder blocks at
lr 3e-3 with weight decay 1.5e-6; aggregator, predictor and action embedding with the shared
setting of every preset, seq-JEPA's AdamW lr 4e-4, weight decay 1e-3, 20-step warm-up
(``optimizer.groups``, rules/README.md "Shared modules").

How the encoder rate was chosen: on the **validation pool** (``--set
protocol.evaluation.pool=validation``: probe sets drawn from images disjoint from the training
and the reported probe pools), protocols/nonstationary.yaml shortened to 500 steps, seeds 0 and
1, criterion the final pooled 10-way z_AGG accuracy on the validation sets; means over the two
seeds (the binomial s.e. of one seed's gain over step 0 is about 0.03)::

    encoder lr  pooled z_AGG   gain over step 0   equivariance R²   prediction loss
    1e-3        0.40           -0.03              0.56              0.66
    3e-3        0.58           +0.16              0.52              0.70
    1e-2        0.60           +0.17              0.48              0.70

(``examples/compare_rules.py --protocols nonstationary --rules lpl --seeds 0,1 --steps 500
--set rule.optimizer.lr=LR --set protocol.evaluation.pool=validation``). 3e-3 and 1e-2 are
indistinguishable on the criterion at two seeds; 3e-3 is kept, the smaller rate that keeps
more of the relative-action R². The paper's 1e-3 does not improve on the untrained encoder in
this horizon. An earlier choice of 3e-3 had been made on the reported probe sets; the
validation pool confirms it. The other presets' rates were not tuned (they are the papers'
values, rules/README.md).

At the paper's rate, 200 steps of a two-digit phase move the encoder away from its random
features (which already separate the digits) without reaching the invariant ones LPL
converges to; the aggregator, trained at the encoder's rate, additionally loses class
information while chasing it. The relative-action R² drops as z becomes invariant (0.56 ->
0.47): the predictive term removes transformation information from the encoder.
"""
from __future__ import annotations

from typing import Literal, Optional

import torch
from pydantic import Field
from torch import Tensor

from colsim.config import Strict
from colsim.registry import register_rule
from colsim.rule import Rule, loss_grads, retain_graph

__all__ = ["LPLConfig", "lpl", "lpl_terms"]


class LPLConfig(Strict):
    name: Literal["lpl"] = "lpl"
    lambda_pred: float = Field(1.0, ge=0)
    lambda_hebb: float = Field(1.0, ge=0)
    lambda_dec: float = Field(10.0, ge=0)
    eps: float = Field(1e-4, gt=0)
    stats: Literal["batch", "running"] = "batch"
    stats_momentum: float = Field(0.99, ge=0, lt=1)  # EMA factor of running statistics
    layers: Optional[list[int]] = None  # encoder blocks under LPL (default: all)
    predictive_weight: float = Field(1.0, ge=0)  # weight of the seq-JEPA loss on aggregator + predictor


def lpl_terms(z: Tensor, z_prev: Tensor, valid: Tensor, eps: float = 1e-4,
              running: Optional[tuple[Tensor, Tensor]] = None) -> dict[str, Tensor]:
    """The three LPL terms for one layer. z, z_prev (B, M); valid (B,) bool; running = (mean, var) (M,)."""
    B, M = z.shape
    v = valid.to(z.dtype).unsqueeze(1)  # (B, 1)
    nv = v.sum().clamp(min=1)
    pred = ((z - z_prev.detach()) ** 2 * v).sum() / (nv * M)
    mu_b = z.mean(0, keepdim=True).detach()  # (1, M) stop-gradient batch mean
    if running is None:
        var = ((z - mu_b) ** 2).sum(0) / max(B - 1, 1)  # (M,)
        hebb = -torch.log(var + eps).mean()
    else:
        mu_run, var_run = running[0].unsqueeze(0), running[1]  # (1, M), (M,) no eps inside
        var = ((z - mu_run) ** 2).sum(0) / max(B - 1, 1)  # (M,) around the running mean, B-1
        hebb = -(var / (var_run + eps)).mean()
    zc = z - mu_b  # the reference centres the covariance on the batch mean
    cov = zc.T @ zc / max(B - 1, 1)  # (M, M)
    off = cov - torch.diag(torch.diagonal(cov))
    dec = (off ** 2).sum() / max(M * M - M, 1)
    return {"pred": pred, "hebb": hebb, "dec": dec}


@register_rule("lpl", LPLConfig)
def lpl(cfg: LPLConfig, column=None) -> Rule:
    """Latent Predictive Learning per encoder block (pred + Hebbian + decorrelation), layer-local."""

    def init(params):
        return {"mean": [], "var": [], "count": 0}

    def update(params, state, trace):
        layers, prev, valid = trace["layers"], trace["layers_prev"], trace["valid"]
        use = range(len(layers)) if cfg.layers is None else cfg.layers
        total = cfg.predictive_weight * trace["loss"]
        metrics = {"loss.pred": float(trace["loss"].detach())}
        running = cfg.stats == "running"
        mean, var = list(state["mean"]), list(state["var"])
        if running and not mean:
            mean = [l.detach().mean(0) for l in layers]
            var = [l.detach().var(0, unbiased=l.shape[0] > 1) for l in layers]  # eps is added once, in lpl_terms
        for l in use:
            if l >= len(layers):
                raise ValueError(f"rule.layers: block {l} does not exist (the encoder has {len(layers)} blocks)")
            z = layers[l]
            terms = lpl_terms(z, prev[l], valid, cfg.eps, (mean[l], var[l]) if running else None)
            total = total + cfg.lambda_pred * terms["pred"] + cfg.lambda_hebb * terms["hebb"] + cfg.lambda_dec * terms["dec"]
            for k, t in terms.items():
                metrics[f"lpl.l{l}.{k}"] = float(t.detach())
            if running:
                m = cfg.stats_momentum
                zd = z.detach()
                mean[l] = m * mean[l] + (1 - m) * zd.mean(0)
                var[l] = m * var[l] + (1 - m) * ((zd - mean[l]) ** 2).sum(0) / max(zd.shape[0] - 1, 1)
                metrics[f"lpl.l{l}.hebb"] = float(-torch.log(var[l] + cfg.eps).mean())
        grads = loss_grads(total, params, retain_graph=retain_graph())
        metrics["loss.lpl"] = float(total.detach())
        return grads, {"mean": mean, "var": var, "count": state["count"] + 1}, metrics

    return Rule(init, update, frozenset({"layers", "layers_prev", "valid", "loss", "local"}))
