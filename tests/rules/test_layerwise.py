"""Layerwise predictive learning: the terms by hand, gradient locality (no gradient crosses
blocks), both streaming directions, and the predictors' place in a partition."""
from __future__ import annotations

import pytest
import torch

from colsim.config import ConfigError
from colsim.rules.layerwise import layerwise_terms
from _tiny import build_tiny, rule_updates


def test_terms_hand_computed():
    pred = torch.tensor([[1.0, 2.0]])
    target = torch.tensor([[0.0, 0.0]])
    z = torch.tensor([[0.0, 0.0], [2.0, 0.5]])  # std per unit (unbiased, B=2): [sqrt 2, sqrt 0.125]
    t = layerwise_terms(pred, target, z, gamma=1.0)
    assert float(t["pred"]) == pytest.approx((1 + 4) / 2)
    s = torch.sqrt(torch.tensor([2.0, 0.125]) + 1e-4)
    assert float(t["var"]) == pytest.approx(float(torch.relu(1 - s).mean()), rel=1e-5)
    # C = zcᵀ zc / 1, zc = [[-1, -.25], [1, .25]] -> C_01 = 0.5; (0.5² * 2) / 2
    assert float(t["cov"]) == pytest.approx(0.25)
    zg = z.clone().requires_grad_(True)
    layerwise_terms(pred, target, zg)["var"].backward()
    # the hinge only acts on the unit whose std is below gamma, and pushes it apart
    assert float(zg.grad[:, 0].abs().sum()) == 0.0 and float(zg.grad[1, 1]) < 0 < float(zg.grad[0, 1])


def _grads(spec, extra=()):
    return rule_updates(spec, extra)[:3]


def _nz(grads, prefix):
    return sum(float(v.abs().sum()) for k, v in grads.items() if k.startswith(prefix))


@pytest.mark.parametrize("direction", ["forward", "backward"])
def test_block_loss_trains_only_its_block_and_predictor(direction):
    grads, m, local = _grads("layerwise", [f"rule.direction={direction}", "rule.layers=[1]",
                                           "rule.predictive_weight=0.0"])
    assert local
    assert _nz(grads, "encoder.blocks.1.") > 0 and _nz(grads, "encoder_aux.layerwise.1.") > 0
    assert _nz(grads, "encoder.blocks.0.") == 0  # block 1's input is detached
    assert _nz(grads, "encoder_aux.layerwise.0.") == 0
    assert _nz(grads, "aggregator.") == 0 and _nz(grads, "predictor.") == 0
    assert m["layerwise.l1.pred"] > 0 and "layerwise.l0.pred" not in m


def test_prediction_loss_trains_aggregator_not_encoder():
    # (without the default column's coding-rate term on z, whose gradient reaches the last encoder block)
    grads, m, _ = _grads("layerwise", ["rule.lambda_pred=0.0", "rule.lambda_var=0.0", "rule.lambda_cov=0.0",
                                       "model.regularizers=[]"])
    assert _nz(grads, "aggregator.") > 0 and _nz(grads, "predictor.") > 0
    assert _nz(grads, "encoder.") == 0


PART = 'rule={partition: {"%s": {name: layerwise}, "*": {name: backprop}}}'


def test_partition_must_give_the_predictors_to_layerwise():
    with pytest.raises(ConfigError, match="encoder\\*"):
        build_tiny("backprop", extra=[PART % "encoder.*"])
    cfg, world, column, rule, local, opt = build_tiny("backprop", extra=[PART % "encoder*"])
    assert local and any(n.startswith("encoder_aux.layerwise.") for n in column.trainable())
