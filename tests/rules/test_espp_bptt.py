"""The BPTT control arms of issue 31: espp_bptt (ESPP's hinge objective by backprop through time,
rules/espp_bptt.py) and supervised_bptt (cross-entropy of a linear head on the last layer's spike counts,
rules/supervised_bptt.py), on EchoSpike's MLP (models/echospike.py)."""
from __future__ import annotations

import math

import pytest
import torch
from _tiny import stream_steps
from typer.testing import CliRunner

pytest.importorskip("snntorch")

from colsim.cli import app  # noqa: E402
from colsim.models.echospike import EchoSpikeConfig, echospike  # noqa: E402
from colsim.protocols.echospike_samples import EchoSpikeSamples, EchoSpikeSamplesConfig  # noqa: E402
from colsim.rules.espp import EsppConfig, espp  # noqa: E402
from colsim.rules.espp_bptt import EsppBpttConfig, espp_bptt, espp_hinge, rerun_blocks  # noqa: E402
from colsim.rules.supervised_bptt import SupervisedBpttConfig, supervised_bptt  # noqa: E402
from colsim.types import WorldSpec  # noqa: E402

runner = CliRunner()


def test_hinge_by_hand():
    S = torch.tensor([[[1., 0.], [1., 1.], [1., 1.]],
                      [[1., 1.], [0., 1.], [1., 0.]]])  # (T=2, B=3, N=2)
    e = torch.tensor([[0.5, 0.5], [0.25, 0.75], [1.0, 0.0]])
    b = torch.tensor([1.0, -1.0, 0.0])
    # b = +1: overlap 0.5 + 1.0 = 1.5, [-1.5 + 0.5 * 2 * 2]+ = 0.5; b = -1: overlap 1.0 + 0.75, [1.75 - 0.25 * 4]+ = 0.75
    torch.testing.assert_close(espp_hinge(S, e, b, c_pos=0.5, c_neg=-0.25), torch.tensor([0.5, 0.75, 0.0]))
    assert espp_hinge(S, e, b, c_pos=0.1, c_neg=-0.5).tolist() == [0.0, 0.0, 0.0]  # both gates shut


def _column(hidden=(12, 8), T=6):
    torch.manual_seed(0)
    return echospike(EchoSpikeConfig(hidden=list(hidden), T=T, weight_scale=6.0),
                     WorldSpec((1, 8, 8), 1, ("none",), 10))


def _ticks(col, n=2, batch=16):
    """Traces of the first n ticks of EchoSpike's digits stream (with the world's labels, as the simulator's tick)."""
    steps = stream_steps(EchoSpikeSamples(EchoSpikeSamplesConfig(data="digits")), n, batch)
    s = col.init_state(batch, "cpu")
    s["seed"] = torch.tensor(7)
    out = []
    for st in steps:
        s, tr = col(s, st.obs, st.action, st.start, local=True)
        tr["labels"] = st.labels
        out.append(tr)
    return out


@pytest.mark.parametrize("tick", [1, 2])  # predictive (b = +1), contrastive (b = -1)
def test_layer_local_bptt_is_pi_times_espp_and_the_default_adds_deeper_credit(tick):
    """snnTorch detaches the reset, so layer-local BPTT of ESPP's loss is ESPP's update x the ATan surrogate's pi
    (rules/espp_bptt.py docstring); with gradients crossing layers only the last layer's stays the same."""
    col = _column()
    tr = _ticks(col, 3)[tick]
    params = col.trainable()
    c = dict(c_pos=0.05, c_neg=-0.01)  # gates open in both cases on this small column
    g_espp, _, m = espp(EsppConfig(**c), col).update(params, {}, dict(tr))
    assert all(m[f"espp.l{l}.gate"] > 0 for l in range(2)), m
    for l, s in enumerate(rerun_blocks(col, tr, detach_blocks=False)):  # the re-run gives the Trace's spikes
        assert torch.equal(s, tr["spikes"][l].transpose(0, 1))
    g_local, _, _ = espp_bptt(EsppBpttConfig(**c, layer_local=True), col).update(params, {}, dict(tr))
    g_deep, _, m2 = espp_bptt(EsppBpttConfig(**c), col).update(params, {}, dict(tr))
    w0, w1 = "encoder.blocks.0.synapse.weight", "encoder.blocks.1.synapse.weight"
    for w in (w0, w1):
        assert g_espp[w].abs().sum() > 0
        torch.testing.assert_close(g_local[w], math.pi * g_espp[w], rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(g_deep[w1], math.pi * g_espp[w1], rtol=1e-5, atol=1e-7)
    assert not torch.allclose(g_deep[w0], g_local[w0])  # layer 1's loss reaches layer 0
    assert 0 < m2["espp_bptt.l0.gate"] <= 1


def _train(rule, col, ticks, lr, key, steps):
    """Plain SGD / Adam on the rule's grads over ``steps`` ticks (cycling ``ticks``) -> the rule's ``key`` metric
    summed over ``ticks`` before and after."""
    params = col.trainable()

    def objective():
        return sum(rule.update(params, {}, dict(tr))[2][key] for tr in ticks)

    opt = torch.optim.Adam(params.values(), lr=lr)
    before = objective()
    for k in range(steps):
        grads, _, _ = rule.update(params, {}, dict(ticks[k % len(ticks)]))
        for n, p in params.items():
            p.grad = grads.get(n)
        opt.step()
    return before, objective()


def test_espp_bptt_lowers_its_own_objective_on_digits():
    col = _column()
    ticks = _ticks(col, 4)[1:]  # predictive, contrastive, predictive: every stream has an echo
    before, after = _train(espp_bptt(EsppBpttConfig(c_pos=0.05, c_neg=-0.01), col), col, ticks, 1e-2,
                           "loss.espp_bptt", 30)
    assert after < 0.75 * before, (before, after)  # measured: 6.45 -> 4.11


def test_supervised_bptt_lowers_the_cross_entropy_on_digits():
    col = _column()
    rule = supervised_bptt(SupervisedBpttConfig(), col)
    assert "encoder_aux.supervised.weight" in col.trainable()  # the head is the column's (one optimizer step)
    ticks = _ticks(col, 3)
    before, after = _train(rule, col, ticks, 1e-2, "loss.supervised", 30)
    assert before > 3 * math.log(10) * 0.8 and after < 0.5 * before, (before, after)


@pytest.mark.parametrize("args,field", [
    (["stationary", "--rule", "espp_bptt"], "rule 'espp_bptt' needs ['block_in', 'broadcast', 'echo', 'spikes']"),
    (["stationary", "--rule", "supervised_bptt"], "rule 'supervised_bptt' needs ['block_in']"),
    (["echospike_digits", "--rule", "espp_bptt", "--set", "rule.layers=[3]"], "rule.layers: block 3 does not exist"),
])
def test_refused_on_a_column_that_is_not_spiking_and_on_bad_layers(args, field, tmp_path):
    res = runner.invoke(app, ["run", *args, "--out", str(tmp_path / "o"), "--quiet"])
    assert res.exit_code == 2, res.output
    assert field in " ".join(res.output.split()) and "Traceback" not in res.output
    assert len(res.output.strip().splitlines()) == 1, res.output
