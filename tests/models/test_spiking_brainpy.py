"""Cross-check of the torch spiking column + espp rule against the independent BrainPy backend
(models/_spiking_brainpy.py): identical weights and input spike trains must give identical spikes
over the T bins and, after K = 6 ESPP updates, weights equal within 1e-6 (float64); for the seq-JEPA spiking column
and for EchoSpike's plain MLP (models/echospike.py)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

pytest.importorskip("snntorch")
pytest.importorskip("brainpy", reason="the BrainPy cross-check needs the brainpy extra: pip install -e '.[brainpy]'")

from colsim.models._spiking_brainpy import run_layers_bp, train_espp_bp  # noqa: E402
from colsim.models.echospike import EchoSpikeConfig, echospike  # noqa: E402
from colsim.models.spiking import SpikingConfig, spiking  # noqa: E402
from colsim.rules.espp import EsppConfig, espp  # noqa: E402
from colsim.types import WorldSpec  # noqa: E402

K, T, B = 6, 5, 4
STARTS = [[True] * B, [False, False, True, False], [False] * B, [True, False, False, True], [False] * B,
          [False, True, False, False]]


def _torch_column(beta_spread: float, online: bool, c: float, model: str = "spiking"):
    spec = WorldSpec((1, 3, 4), 1, ("a",), 2)
    torch.manual_seed(0)
    if model == "echospike":  # EchoSpike's plain MLP (models/echospike.py): the same LIF blocks, no aggregator
        col = echospike(EchoSpikeConfig(hidden=[6, 4], T=T, beta=0.8, beta_spread=beta_spread), spec).double()
        return col, espp(EsppConfig(online=online, c_pos=c, c_neg=-c), col)
    cfg = SpikingConfig(encoder={"kind": "mlp", "hidden": [6, 4]}, T=T, beta=0.8, beta_spread=beta_spread,
                        action_embed=2, aggregator={"layers": 1, "heads": 2}, predictor={"hidden": 4},
                        teacher={"kind": "stopgrad"})
    col = spiking(cfg, spec).double()
    rule = espp(EsppConfig(online=online, c_pos=c, c_neg=-c), col)
    return col, rule


@pytest.mark.parametrize("online, beta_spread, c, model", [(False, 0.0, 1e-2, "spiking"), (True, 0.1, 1e-4, "spiking"),
                                                          (False, 0.1, 0.05, "spiking"), (False, 0.0, 1e-2, "echospike")])
def test_torch_and_brainpy_agree(online, beta_spread, c, model):
    col, rule = _torch_column(beta_spread, online, c, model)
    g = torch.Generator().manual_seed(1)
    xs = (torch.rand(K, T, B, 1, 3, 4, generator=g, dtype=torch.float64) < 0.4).double()  # input spike trains
    blocks = col.encoder.blocks
    W0 = [b.synapse.weight.detach().numpy().copy() for b in blocks]
    betas = [b.lif.beta.detach().reshape(-1).numpy().copy() for b in blocks]  # the torch neurons' own betas
    lr = 0.5

    # BrainPy: the same spikes for the initial weights ...
    recs = run_layers_bp(W0, betas, xs[0].reshape(T, B, -1).numpy())
    # ... and K updates
    W_bp, S_bp = train_espp_bp(W0, betas, 0.8, xs.reshape(K, T, B, -1).numpy(), STARTS, lr, c, -c, online)

    # torch: the column and rule, one SGD step on -ΔW per sample
    params = col.trainable()
    state = col.init_state(B, "cpu")
    rstate = rule.init(params)
    names = [f"encoder.blocks.{l}.synapse.weight" for l in range(len(blocks))]
    opened = 0.0
    for k in range(K):
        col.encoder.code = lambda obs, gen=None, k=k: xs[k].clone()
        state, tr = col(state, torch.zeros(B, 1, 3, 4, dtype=torch.float64), torch.zeros(B, 1, dtype=torch.float64),
                        torch.tensor(STARTS[k]), local=True)
        if k == 0:
            for l, (_, S, V) in enumerate(recs):
                assert np.array_equal(tr["spikes"][l].transpose(0, 1).numpy(), S), f"spikes of layer {l} differ"
                np.testing.assert_allclose(tr["mem"][l].transpose(0, 1).numpy(), V, rtol=0, atol=1e-12)
        for l in range(len(blocks)):  # identical spikes over the T bins, sample after sample
            assert np.array_equal(tr["spikes"][l].transpose(0, 1).numpy(), S_bp[k][l]), (k, l)
        grads, rstate, metrics = rule.update(params, rstate, tr)
        opened += sum(v for m, v in metrics.items() if m.endswith(".gate") and np.isfinite(v))
        with torch.no_grad():
            for n in names:
                params[n].sub_(lr * grads[n])
        for l, n in enumerate(names):
            np.testing.assert_allclose(params[n].detach().numpy(), W_bp[k][l], rtol=0, atol=1e-6)
    moved = sum(float(np.abs(W_bp[-1][l] - W0[l]).max()) for l in range(len(blocks)))
    assert opened > 0 and moved > 1e-3, "the check is vacuous: no gate opened or the weights did not move"
    assert any(S.sum() > 0 for S in S_bp[-1]), "silent layers"
