"""ESPP (rules/espp.py) on hand-computed tiny layers: 2 inputs -> 2 LIF neurons, T = 3, beta 0.5.

Weights W = [[0.6, 0.5], [0.2, 0.0]], input spikes x_t = [1, 0], [1, 1], [0, 1] give (by hand, see
tests/models/test_spiking.py::test_lif_subtract_reset_by_hand)

    U_0 = (0.6, 1.4, 0.2)  S_0 = (0, 1, 0)        U_1 = (0.2, 0.3, 0.15)  S_1 = (0, 0, 0)
    x~  = [1, 0], [1.5, 1], [0.75, 1.5]           (x~_t = 0.5 x~_{t-1} + x_t)

and ΔW_ij = b 1[L > 0] sum_t e_i psi(U_i,t - 1) x~_j,t with psi(u) = 1 / (pi (1 + (pi u)²)).
"""
from __future__ import annotations

import math
import warnings

import pytest
import torch
from torch import nn

pytest.importorskip("snntorch")

from colsim.models.spiking import SpikingConfig, spiking  # noqa: E402
from colsim.rules.espp import EsppConfig, espp, espp_dw, espp_post, psi  # noqa: E402
from colsim.types import WorldSpec  # noqa: E402

W0 = [[0.6, 0.5], [0.2, 0.0]]
X = [[1.0, 0.0], [1.0, 1.0], [0.0, 1.0]]  # (T, J) input spikes
U = [[0.6, 1.4, 0.2], [0.2, 0.3, 0.15]]  # (N, T) membrane, by hand
XT = [[1.0, 0.0], [1.5, 1.0], [0.75, 1.5]]  # (T, J) input trace, by hand
W_NAME = "encoder.blocks.0.synapse.weight"


def _psi(u: float) -> float:
    return 1.0 / (math.pi * (1.0 + (math.pi * u) ** 2))


def _dw(e, b, bins=(0, 1, 2)) -> torch.Tensor:
    """sum over the given bins of b e_i psi(U_i,t - 1) x~_j,t, written out element by element."""
    out = torch.zeros(2, 2, dtype=torch.float64)
    for i in range(2):
        for j in range(2):
            out[i, j] = b * sum(e[i] * _psi(U[i][t] - 1.0) * XT[t][j] for t in bins)
    return out


def _column_and_rule(online=False, c_pos=1e-4, c_neg=-1e-4):
    spec = WorldSpec((1, 1, 2), 1, ("a",), 2)
    cfg = SpikingConfig(encoder={"kind": "mlp", "hidden": [2]}, T=3, beta=0.5, action_embed=2,
                        aggregator={"layers": 1, "heads": 2}, predictor={"hidden": 4}, teacher={"kind": "stopgrad"})
    torch.manual_seed(0)
    col = spiking(cfg, spec).double()
    with torch.no_grad():
        col.encoder.blocks[0].synapse.weight.copy_(torch.tensor(W0, dtype=torch.float64))
    x = torch.tensor(X, dtype=torch.float64)
    col.encoder.code = lambda obs, gen=None: x.view(3, 1, 1, 1, 2).expand(3, obs.shape[0], 1, 1, 2).clone()
    rule = espp(EsppConfig(online=online, c_pos=c_pos, c_neg=c_neg), col)
    return col, rule


def _step(col, rule, counts_prev, start):
    """One tick with the previous view's spike counts ``counts_prev`` (B, 2) -> (grads, metrics, trace)."""
    B = len(counts_prev)
    st = col.init_state(B, "cpu")
    st["counts_prev"] = [torch.tensor(counts_prev, dtype=torch.float64)]
    st["has_prev"] = torch.ones(B, dtype=torch.bool)
    obs = torch.zeros(B, 1, 1, 2, dtype=torch.float64)
    _, tr = col(st, obs, torch.zeros(B, 1, dtype=torch.float64), torch.tensor(start), local=True)
    params = col.trainable()
    grads, _, metrics = rule.update(params, rule.init(params), tr)
    return grads, metrics, tr


def test_hand_values_of_the_layer():
    col, rule = _column_and_rule()
    _, _, tr = _step(col, rule, [[0.0, 3.0]], [False])
    torch.testing.assert_close(tr["mem"][0][0].T, torch.tensor(U, dtype=torch.float64))  # (B, T, N)
    torch.testing.assert_close(tr["in_trace"][0][0], torch.tensor(XT, dtype=torch.float64))
    assert tr["spikes"][0][0].tolist() == [[0, 0], [1, 0], [0, 0]]


def test_predictive_case():
    """Echo (0, 1) (previous counts (0, 3)), same episode: b = +1; overlap sum_t <S_t, e> = 0, so
    L = 0 + 1e-4 * 3 * 2 > 0: the gate opens and only neuron 1 (the echo's) learns."""
    col, rule = _column_and_rule()
    grads, metrics, tr = _step(col, rule, [[0.0, 3.0]], [False])
    assert tr["broadcast"].tolist() == [1.0]
    expected = _dw([0.0, 1.0], +1)
    assert expected[0].abs().sum() == 0 and (expected[1] > 0).all()
    torch.testing.assert_close(grads[W_NAME], -expected)  # .grad convention: -ΔW
    # the literal value of one entry: psi(-0.8) * 1 + psi(-0.7) * 1.5 + psi(-0.85) * 0.75
    assert float(-grads[W_NAME][1, 0]) == pytest.approx(0.0435055 + 0.0545415 * 1.5 + 0.0391487 * 0.75, abs=1e-6)
    assert metrics["espp.l0.gate"] == 1.0


def test_contrastive_case():
    """Echo (2/3, 1/3), an episode boundary: b = -1; L = +2/3 - 1e-4 * 6 > 0: both neurons are pushed
    away from the echo, each in proportion to its echo share."""
    col, rule = _column_and_rule()
    grads, metrics, tr = _step(col, rule, [[2.0, 1.0]], [True])
    assert tr["broadcast"].tolist() == [-1.0]
    expected = _dw([2 / 3, 1 / 3], -1)
    assert (expected[:, 0] < 0).all()
    torch.testing.assert_close(grads[W_NAME], -expected)
    assert metrics["espp.l0.hinge"] == pytest.approx(2 / 3 - 6e-4)


def test_closed_gate():
    """Echo (2/3, 1/3), same episode: L = -2/3 + 6e-4 < 0, the prediction is already good: no update."""
    col, rule = _column_and_rule()
    grads, metrics, _ = _step(col, rule, [[2.0, 1.0]], [False])
    assert torch.equal(grads[W_NAME], torch.zeros(2, 2, dtype=torch.float64))
    assert metrics["espp.l0.gate"] == 0.0 and metrics["espp.l0.hinge"] == pytest.approx(-2 / 3 + 6e-4)


def test_gate_range_warning_at_its_bounds():
    """The overlap sum_t <S_t, e> is at most T, so c_+ N > 1 keeps the predictive gate open even at the
    maximal overlap (every neuron firing every bin), and -c_- N >= 1 keeps the contrastive gate shut:
    check_gate_range warns exactly there, naming the field and the blocks out of range."""
    from colsim.config import ConfigWarning
    from colsim.rules.espp import check_gate_range, espp_gate

    T, N = 3, 1024  # a power of two: e = 1/N and the sums are exact, so L = 0 is an exact tie
    S, e = torch.ones(T, 2, N, dtype=torch.float64), torch.full((2, N), 1.0 / N, dtype=torch.float64)
    b = torch.tensor([1.0, -1.0], dtype=torch.float64)
    gate, L = espp_gate(S, e, b, 1.001 / N, -1.0 / N)  # overlap T = 3: L = -3 + 3.003 > 0; 3 - 3 = 0, shut
    assert gate[:, 0].all() and not gate[:, 1].any()
    torch.testing.assert_close(L, torch.tensor([3e-3, 0.0], dtype=torch.float64))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        check_gate_range(EsppConfig(c_pos=1.0 / N, c_neg=-0.999 / N), {0: N, 1: 256})  # c_+ N = 1: in range
    with pytest.warns(ConfigWarning) as rec:
        check_gate_range(EsppConfig(c_pos=1.001 / N, c_neg=-1.0 / N), {0: N, 1: 256})
    msgs = [str(w.message) for w in rec]
    assert len(msgs) == 2
    assert msgs[0].startswith("rule.c_pos: c_pos N > 1 in block 0 (N = 1024), so the predictive gate is always open")
    assert msgs[1].startswith("rule.c_neg: -c_neg N >= 1 in block 0 (N = 1024), so the contrastive gate never opens")
    assert msgs[0].endswith("use |c_pos| < 1/N = 0.00098") and "block 1" not in msgs[0] + msgs[1]


def test_rule_warns_on_the_column_it_is_built_for():
    """The factory counts each block's neurons on the column: the tiny layer has N = 2, so c_+ = 0.6 is
    out of range (1.2 > 1) and 0.4 is not; the online variant's gate has no N and is not checked."""
    from colsim.config import ConfigWarning

    with pytest.warns(ConfigWarning, match=r"rule\.c_pos: .* block 0 \(N = 2\)"):
        _column_and_rule(c_pos=0.6)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        _column_and_rule(c_pos=0.4)
        _column_and_rule(online=True, c_pos=0.6)


def test_cli_prints_a_config_warning_on_one_line(capsys):
    from colsim.cli import _show_warning
    from colsim.config import ConfigWarning

    _show_warning(ConfigWarning("rule.c_pos: out of range; use |c_pos| < 1/N = 0.001"), ConfigWarning, "x.py", 1)
    err = capsys.readouterr().err
    assert err == "warning: rule.c_pos: out of range; use |c_pos| < 1/N = 0.001\n"


def test_gate_is_per_sample_and_updates_sum_over_the_batch():
    """Sample 0 predictive and open, sample 1 predictive and closed: ΔW is sample 0's alone; two open
    samples sum."""
    col, rule = _column_and_rule()
    grads, _, _ = _step(col, rule, [[0.0, 3.0], [2.0, 1.0]], [False, False])
    torch.testing.assert_close(grads[W_NAME], -_dw([0.0, 1.0], +1))
    grads, _, _ = _step(col, rule, [[0.0, 3.0], [2.0, 1.0]], [False, True])
    torch.testing.assert_close(grads[W_NAME], -(_dw([0.0, 1.0], +1) + _dw([2 / 3, 1 / 3], -1)))


def test_online_variant_gates_per_bin():
    """Online: L_t = -<S_t, e> + 1e-4 a_t with input activity a = (0.5, 1, 0.5): bins 0 and 2 have no
    overlap (L > 0, a > 0.05), bin 1 has the spike of neuron 0 (L = -2/3 + 1e-4 < 0): it does not learn."""
    col, rule = _column_and_rule(online=True)
    grads, metrics, _ = _step(col, rule, [[2.0, 1.0]], [False])
    torch.testing.assert_close(grads[W_NAME], -_dw([2 / 3, 1 / 3], +1, bins=(0, 2)))
    assert metrics["espp.l0.gate"] == pytest.approx(2 / 3)


def test_no_previous_view_no_update():
    col, rule = _column_and_rule()
    st = col.init_state(1, "cpu")  # has_prev False: a phase's first view
    _, tr = col(st, torch.zeros(1, 1, 1, 2, dtype=torch.float64), torch.zeros(1, 1, dtype=torch.float64),
                torch.tensor([True]), local=True)
    params = col.trainable()
    grads, _, metrics = rule.update(params, {}, tr)
    assert torch.equal(grads[W_NAME], torch.zeros(2, 2, dtype=torch.float64)) and math.isnan(metrics["espp.l0.gate"])


def test_psi_and_conv_update_against_an_explicit_sum():
    assert float(psi(torch.tensor(0.0))) == pytest.approx(1 / math.pi)
    assert float(psi(torch.tensor(-0.8))) == pytest.approx(_psi(-0.8))
    g = torch.Generator().manual_seed(0)
    conv = nn.Conv2d(2, 3, 3, stride=2, padding=1, bias=False).double()
    T, B = 3, 2
    xt = torch.rand(T, B, 2, 5, 5, generator=g, dtype=torch.float64)
    post = torch.randn(T, B, 3, 3, 3, generator=g, dtype=torch.float64)
    dw = espp_dw(post, xt, conv)
    xp = torch.nn.functional.pad(xt, (1, 1, 1, 1))  # (T, B, 2, 7, 7)
    ref = torch.zeros(3, 2, 3, 3, dtype=torch.float64)
    for y in range(3):
        for x in range(3):
            patch = xp[:, :, :, 2 * y:2 * y + 3, 2 * x:2 * x + 3]  # (T, B, 2, 3, 3)
            ref += torch.einsum("tbc,tbikl->cikl", post[:, :, :, y, x], patch)
    torch.testing.assert_close(dw, ref)


def test_espp_post_shapes_and_zero_broadcast():
    S = torch.zeros(3, 2, 4)
    post, gate, L = espp_post(S, torch.zeros(3, 2, 4), torch.full((2, 4), 0.25), torch.tensor([0.0, 1.0]), 1e-4, -1e-4)
    assert post.shape == (3, 2, 4) and gate.shape == (3, 2) and L.shape == (2,)
    assert not gate[:, 0].any() and gate[:, 1].all() and (post[:, 0] == 0).all()


@pytest.mark.parametrize("spec", ["espp", "espp+replay", "espp+si"])
def test_espp_run_on_the_spiking_column(spec):
    """--rule espp (alone and under modifiers; replayed streams carry no echo, b = 0) runs on the tiny
    spiking column and updates every LIF block's weight."""
    from _tiny import TINY
    from colsim.build import build_run
    from colsim.config import resolve_run_config
    from colsim.simulate import _seeded

    cfg = resolve_run_config("nonstationary", rule=spec, model="spiking_cnn", overrides=TINY + ["model.T=3"])
    world, column, rule, local, opt = build_run(cfg)
    assert local
    params = column.trainable()
    state = rule.init(params)
    stream = world.stream(8, 4, [0, 1], {})
    ss = stream.init(_seeded(0, 1))
    cs = column.init_state(8, "cpu")
    for t in range(4):
        ss, st = stream.step(ss)
        cs, tr = column(cs, st.obs, st.action, st.start | (t == 0), local=local)
        grads, state, metrics = rule.update(params, state, tr)
        assert all(bool(torch.isfinite(g).all()) for g in grads.values())
    for l in range(len(column.encoder.blocks)):
        assert f"encoder.blocks.{l}.synapse.weight" in grads and any(k.endswith(f"espp.l{l}.gate") for k in metrics)


def test_resume_is_bit_exact(tmp_path):
    """The rate-coding generator's seed is column state: a run resumed from a phase checkpoint ends
    with the same accuracy and prediction-loss matrices as the uninterrupted run."""
    import json

    from typer.testing import CliRunner

    from _tiny import TINY
    from colsim.cli import app

    sets = [a for s in TINY + ["model.T=3"] for a in ("--set", s)]
    runner = CliRunner()
    res = runner.invoke(app, ["run", "nonstationary", "--model", "spiking_cnn", "--rule", "espp", "--steps", "10",
                              "--quiet", "--out", str(tmp_path / "a"), *sets])
    assert res.exit_code == 0, res.output
    res = runner.invoke(app, ["run", "nonstationary", "--resume", str(tmp_path / "a/checkpoints/phase01-digits23.pt"),
                              "--quiet", "--out", str(tmp_path / "b")])
    assert res.exit_code == 0, res.output
    a, b = (json.loads((tmp_path / n / "summary.json").read_text()) for n in "ab")
    assert a["accuracy_matrix"][-1] == b["accuracy_matrix"][-1]
    assert a["prediction_loss_matrix"][-1] == b["prediction_loss_matrix"][-1]
