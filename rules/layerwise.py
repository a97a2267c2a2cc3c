"""Layerwise predictive learning: an auxiliary action-conditioned predictive loss per encoder block.

docs/reference/rules.md (the seeds' Step 6 stage 1; cf. Greedy InfoMax, Löwe et al. 2019, and
CLAPP, Illing et al. 2021, for detached per-module objectives): every encoder block l gets a
small predictor P_l and the loss ``||P_l(z_l(t), e(a_t)) - sg(z_l(t+1))||²`` plus an
anti-collapse term; block inputs are detached, so no gradient crosses blocks.

Streaming form. At tick t the column's trace holds the pooled block outputs of the current
view, ``z_l(t)`` (with a block-local graph) and of the previous view ``z_l(t-1)`` (no graph; as
computed at t-1 when the column caches its window, ``local_context: cache``), and the action ``a_{t-1}`` from the previous to the current view (``act_ctx`` at slot
``count - 1``). A prediction made at t-1 cannot be kept for the target at t (the parameters
change in between), so the rule uses the same pair of views one tick later:

* ``direction: backward`` (default; retrodiction): ``L_pred = mean ||P_l(z_l(t), a_{t-1}) -
  sg(z_l(t-1))||²`` — the reference's pairs of consecutive views with time reversed: P_l predicts
  the previous view's block output from the current one and the action that led here
  (relative affine actions are invertible, so P_l learns the inverse map). No re-encoding:
  the step costs what an LPL step costs.
* ``direction: forward`` (the reference's orientation, shifted by one tick): the previous view is
  re-encoded with a block-local graph, ``z'_l(t-1) = f_l(sg(h_{l-1}(t-1)))``, and
  ``L_pred = mean ||P_l(z'_l(t-1), a_{t-1}) - sg(z_l(t))||²``. Cost: one extra encoder
  forward/backward of the B previous views (about +35 % step time on the default column).

The predictor input carries the gradient into block l; the target is a stop-gradient. A
constant code would make the loss zero, so each block also gets, on z_l(t) (B, C_l):

    L_var = mean_i [gamma - sqrt(Var_b z_il + 1e-4)]+           (VICReg variance hinge, gamma 1)
    L_cov = 1/(C²-C) sum_{i != k} Cov_ik²                          (decorrelation, LPL's L_dec)
    L_l   = lambda_pred L_pred + lambda_var L_var + lambda_cov L_cov        (1, 1, 1)

P_l = Linear(C_l + A -> hidden) -> GELU -> Linear(hidden -> C_l); its first layer takes the
raw action, so e is P_l's own linear action embedding. The predictors are parameters of the
column (``encoder_aux.layerwise.<l>``, attached when the rule is built, before the optimizer
exists), so the one optimizer step updates them; under a partition they must belong to the
layerwise group (use the pattern ``encoder*``, which matches ``encoder.*`` and
``encoder_aux.*``).

Which parameters each term trains (the column runs with ``local=True``):

* L_l trains encoder block l and P_l only — no gradient crosses blocks;
* the seq-JEPA loss ``1 - cos(z_hat, sg(z~))`` (weight ``predictive_weight``) trains the
  action embedding, aggregator and predictor on detached encoder outputs, never the encoder.

Locality: block l learns from its own input and output on two consecutive views, the action
between them, and its own predictor — no error is backpropagated between blocks.
Defaults (rules/layerwise.yaml): encoder blocks and their predictors Adam lr 1e-3, weight decay
1.5e-6 (as LPL); aggregator, predictor and action embedding seq-JEPA's AdamW 4e-4, weight decay
1e-3, 20-step warm-up, as in every preset (rules/README.md, "Shared modules").
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

__all__ = ["LayerwiseConfig", "layerwise", "layerwise_terms", "BlockPredictor"]

AUX = "encoder_aux"


class LayerwiseConfig(Strict):
    name: Literal["layerwise"] = "layerwise"
    direction: Literal["backward", "forward"] = "backward"
    hidden: int = Field(128, ge=1)  # width of each P_l
    lambda_pred: float = Field(1.0, ge=0)
    lambda_var: float = Field(1.0, ge=0)
    lambda_cov: float = Field(1.0, ge=0)
    gamma: float = Field(1.0, gt=0)  # target std of the variance hinge
    layers: Optional[list[int]] = None  # encoder blocks under the rule (default: all)
    predictive_weight: float = Field(1.0, ge=0)  # weight of the seq-JEPA loss on aggregator + predictor


class BlockPredictor(nn.Module):
    """P_l: concat(z_l (N, C_l), a (N, A)) -> (N, C_l)."""

    def __init__(self, width: int, action_dim: int, hidden: int):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(width + action_dim, hidden), nn.GELU(), nn.Linear(hidden, width))

    def forward(self, z: Tensor, a: Tensor) -> Tensor:
        return self.net(torch.cat([z, a], dim=-1))


def layerwise_terms(pred: Tensor, target: Tensor, z: Tensor, gamma: float = 1.0) -> dict[str, Tensor]:
    """pred, target (N, C) prediction and its (stop-gradient) target; z (B, C) current block output."""
    C = z.shape[1]
    p = ((pred - target.detach()) ** 2).mean() if pred.shape[0] else pred.sum() * 0.0
    B = z.shape[0]
    zc = z - z.mean(0, keepdim=True)
    var = (zc ** 2).sum(0) / max(B - 1, 1)  # (C,)
    v = F.relu(gamma - torch.sqrt(var + 1e-4)).mean()
    cov = zc.T @ zc / max(B - 1, 1)  # (C, C)
    off = cov - torch.diag(torch.diagonal(cov))
    c = (off ** 2).sum() / max(C * C - C, 1)
    return {"pred": p, "var": v, "cov": c}


def _attach_predictors(column, cfg: LayerwiseConfig) -> nn.ModuleList:
    enc, spec = getattr(column, "encoder", None), getattr(column, "spec", None)
    if enc is None or spec is None or not hasattr(enc, "blocks"):
        raise ConfigError(f"rule: layerwise needs a column with a block encoder (model {type(column).__name__} has "
                          f"none); use a seq-JEPA model")
    dev = next(enc.parameters()).device
    was = enc.training
    enc.eval()
    with torch.no_grad():
        _, layers = enc(torch.zeros(2, *spec.obs_shape, device=dev))
    enc.train(was)
    widths = [l.shape[-1] for l in layers]
    if not hasattr(column, AUX):
        column.add_module(AUX, nn.ModuleDict())
    aux = getattr(column, AUX)
    shape = [(w, spec.action_dim, cfg.hidden) for w in widths]
    if "layerwise" in aux:  # built twice on the same column (validation): reuse if it fits
        old = aux["layerwise"]
        if [(m.net[2].out_features, m.net[0].in_features - m.net[2].out_features, m.net[0].out_features) for m in old] == shape:
            return old
    aux["layerwise"] = nn.ModuleList([BlockPredictor(*s) for s in shape]).to(dev)
    return aux["layerwise"]


@register_rule("layerwise", LayerwiseConfig)
def layerwise(cfg: LayerwiseConfig, column=None) -> Rule:
    """Per-block action-conditioned predictor loss + variance/covariance anti-collapse, layer-local."""
    preds = _attach_predictors(column, cfg)
    pnames = {f"{AUX}.layerwise.{n}" for n, _ in preds.named_parameters()}
    n_blocks = len(preds)
    use = list(range(n_blocks)) if cfg.layers is None else cfg.layers
    bad = [l for l in use if not 0 <= l < n_blocks]
    if bad:
        raise ConfigError(f"rule.layers: block {bad[0]} does not exist (the encoder has {n_blocks} blocks)")

    def init(params):
        missing = sorted(pnames - set(params))
        if missing:
            raise ConfigError(f"rule.partition: layerwise's block predictors ({missing[0]}, ...) belong to another "
                              f"group; give them to the layerwise group, e.g. pattern 'encoder*' instead of 'encoder.*'")
        return {}

    def update(params, state, trace):
        layers, prev, valid = trace["layers"], trace["layers_prev"], trace["valid"]
        inputs = trace["inputs"]
        B = valid.shape[0]
        ar = torch.arange(B, device=valid.device)
        last = (inputs["count"] - 1).clamp(min=0)
        a = inputs["act_ctx"][ar, last][valid]  # (K, A) a_{t-1}: previous -> current view
        if cfg.direction == "forward":
            prev_obs = inputs["obs_ctx"][ar, last][valid]  # (K, C, H, W)
            _, prev_g = column.encoder(prev_obs, detach_blocks=True) if prev_obs.shape[0] else (None, None)
        total = cfg.predictive_weight * trace["loss"]
        metrics = {"loss.pred": float(trace["loss"].detach())}
        for l in use:
            z = layers[l]  # (B, C_l) current view, block-local graph
            if cfg.direction == "forward":
                if prev_g is None:
                    p, tgt = z[:0], z[:0]
                else:
                    p, tgt = preds[l](prev_g[l], a), z[valid]
            else:
                p, tgt = preds[l](z[valid], a), prev[l][valid]
            terms = layerwise_terms(p, tgt.detach(), z, cfg.gamma)
            total = total + cfg.lambda_pred * terms["pred"] + cfg.lambda_var * terms["var"] + cfg.lambda_cov * terms["cov"]
            for k, t in terms.items():
                metrics[f"layerwise.l{l}.{k}"] = float(t.detach())
        grads = loss_grads(total, params, retain_graph=retain_graph())
        metrics["loss.layerwise"] = float(total.detach())
        return grads, state, metrics

    return Rule(init, update, frozenset({"layers", "layers_prev", "valid", "loss", "inputs", "local"}))
