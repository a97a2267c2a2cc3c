"""A spiking column's activity in the run store and on the dashboard (issue 12, item 5): per-unit
spike counts of every probe view and a raster in ``probe``, block statistics in ``metrics``."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import xarray as xr
from typer.testing import CliRunner

pytest.importorskip("snntorch")

from colsim.cli import app  # noqa: E402
from colsim.evaluate import embed_probe_sets, spiking_probe_arrays  # noqa: E402
from colsim.models.spiking import SpikingConfig, spiking  # noqa: E402
from colsim.record import ZarrRecorder  # noqa: E402
from colsim.stream import ProbeSet  # noqa: E402
from colsim.types import WorldSpec  # noqa: E402

# Hand-computed LIF (beta 0.9, theta 1, subtract reset) under input spikes in every bin (x = 1):
# block 0 currents (2.0, 0, 0.6): U = 2, 2.8, ... -> spikes every bin; silent;
# U = 0.6, 1.14 (spike), 0.626, 1.1634 (spike) -> bins 2 and 4.
# block 1 currents from block 0's spikes, weights (1.2, 0, 0) -> spikes every bin;
# (0, 0, 0.7) -> current 0.7 at bins 2 and 4: U = 0, 0.7, 0.63, 1.267 (spike) -> bin 4.
RASTER0 = np.array([[1, 0, 0], [1, 0, 1], [1, 0, 0], [1, 0, 1]], np.uint8)  # (T, neurons) of block 0
COUNTS = [np.array([4.0, 0.0, 2.0]), np.array([4.0, 1.0])]


def _hand_column():
    spec = WorldSpec((1, 2, 2), 2, ("a", "b"), 2)
    cfg = SpikingConfig(encoder={"kind": "mlp", "hidden": [3, 2]}, T=4, beta=0.9, action_embed=2,
                        aggregator={"layers": 1, "heads": 2}, predictor={"hidden": 8}, teacher={"kind": "stopgrad"})
    col = spiking(cfg, spec)
    with torch.no_grad():
        col.encoder.blocks[0].synapse.weight.copy_(torch.tensor([[0.5] * 4, [0.0] * 4, [0.15] * 4]))
        col.encoder.blocks[1].synapse.weight.copy_(torch.tensor([[1.2, 0.0, 0.0], [0.0, 0.0, 0.7]]))
    return col, spec


def test_block_statistics_by_hand():
    col, spec = _hand_column()
    col.train()
    obs = torch.ones(2, *spec.obs_shape)
    _, tr = col(col.init_state(2, "cpu"), obs, torch.zeros(2, 2), torch.ones(2, dtype=torch.bool), local=True)
    np.testing.assert_array_equal(tr["spikes"][0][0].numpy(), RASTER0)
    d = col.diagnostics()
    assert d["spiking.l0.rate"] == pytest.approx(6 / 12) and d["spiking.l1.rate"] == pytest.approx(5 / 8)
    assert d["spiking.l0.silent"] == pytest.approx(1 / 3) and d["spiking.l0.saturated"] == pytest.approx(1 / 3)
    assert d["spiking.l1.silent"] == 0.0 and d["spiking.l1.saturated"] == pytest.approx(1 / 2)
    col.eval()  # learning off (a frozen phase): the statistics follow the forward, not the last training one
    _, tr = col(col.init_state(2, "cpu"), torch.zeros(2, *spec.obs_shape), torch.zeros(2, 2),
                torch.ones(2, dtype=torch.bool))
    assert col.diagnostics()["spiking.l0.rate"] == 0.0 and col.diagnostics()["spiking.l0.silent"] == 1.0


def test_probe_spike_counts_and_raster_by_hand(tmp_path):
    col, spec = _hand_column()
    ps = ProbeSet(torch.ones(3, 2, *spec.obs_shape), torch.zeros(3, 2, 2), {"class": torch.tensor([0, 1, 0])})
    emb = embed_probe_sets(col, [ps, ps], batch=2, device="cpu")
    assert [c.shape for c in emb.spike_count] == [(2, 3, 2, 3), (2, 3, 2, 2)]
    for c, want in zip(emb.spike_count, COUNTS):
        np.testing.assert_array_equal(c, np.broadcast_to(want, c.shape))
    data, static = spiking_probe_arrays(emb)
    assert data["spike_count_l1"][0] == ("eval", "probe_set", "sample", "view", "unit_l1")
    assert data["raster_l0"][0] == ("eval", "view", "bin", "neuron_l0") and data["raster_l0"][1].dtype == np.uint8
    np.testing.assert_array_equal(data["raster_l0"][1][0], np.stack([RASTER0, RASTER0]))  # (V, T, K)
    np.testing.assert_array_equal(static["raster_neuron_l1"][1], [0, 1])
    # two evaluations through the Zarr recorder, opened with xarray
    rec = ZarrRecorder(tmp_path / "store.zarr", {})
    for k in range(2):
        rec.record_eval("probe", data, {"eval": (("eval",), np.array([k]))}, static)
    rec.close("completed")
    ds = xr.open_datatree(tmp_path / "store.zarr", engine="zarr")["probe"].to_dataset()
    assert ds["spike_count_l0"].dims == ("eval", "probe_set", "sample", "view", "unit_l0")
    assert ds["spike_count_l0"].shape == (2, 2, 3, 2, 3)
    np.testing.assert_array_equal(ds["spike_count_l1"].isel(eval=1, probe_set=1, sample=2, view=0).values, COUNTS[1])
    np.testing.assert_array_equal(ds["raster_l0"].isel(eval=1, view=1).values, RASTER0)
    assert "spike_count_l0" not in spiking_probe_arrays(emb._replace(spike_count=(), raster=(), raster_neuron=()))[0]


TINY_RUN = ["--model", "spiking_mlp", "--rule", "espp", "--steps", "4", "--quiet",
            "--set", "model.encoder.hidden=[24,12]", "--set", "model.action_embed=4",
            "--set", "model.aggregator.layers=1",
            "--set", "model.aggregator.heads=2", "--set", "model.predictor.hidden=8", "--set", "model.T=5",
            "--set", "protocol.world.image_size=16", "--set", "protocol.stream.batch=4",
            "--set", "protocol.stream.episode_length=3", "--set", "protocol.evaluation.probe_samples=12",
            "--set", "protocol.evaluation.views=3"]


@pytest.fixture(scope="module")
def spiking_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("spk") / "run"
    res = CliRunner().invoke(app, ["run", "stationary", *TINY_RUN, "--out", str(out)])
    assert res.exit_code == 0, res.output
    return out


def test_run_store_holds_counts_raster_and_block_metrics(spiking_run):
    tree = xr.open_datatree(spiking_run / "store.zarr", engine="zarr")
    probe, metrics = tree["probe"].to_dataset(), tree["metrics"].to_dataset()
    T = 5
    assert probe.sizes["eval"] == 2 and probe.sizes["bin"] == T
    c0, c1 = probe["spike_count_l0"].values, probe["spike_count_l1"].values  # (eval, P, N, V, units)
    assert c0.shape == (2, 1, 12, 3, 24) and c1.shape == (2, 1, 12, 3, 12)
    for c in (c0, c1):  # MLP units are neurons: whole spike counts in [0, T]
        assert np.array_equal(c, np.round(c)) and c.min() >= 0 and c.max() <= T and c.sum() > 0
    # z (readout: rate) is the last block's spikes per bin
    np.testing.assert_allclose(probe["z"].values, c1 / T, rtol=0, atol=1e-6)
    for l, c in enumerate((c0, c1)):  # the raster summed over its bins is the count of its neurons
        ras = probe[f"raster_l{l}"].values  # (eval, V, T, K)
        idx = probe[f"raster_neuron_l{l}"].values
        np.testing.assert_array_equal(ras.sum(2), c[:, 0, 0][:, :, idx])
    for l in range(2):
        rate, silent = metrics[f"spiking.l{l}.rate"].values, metrics[f"spiking.l{l}.silent"].values
        sat = metrics[f"spiking.l{l}.saturated"].values
        assert len(rate) == 4 and np.isfinite(rate).all()
        assert ((0 <= silent) & (silent + sat <= 1) & (rate > 0) & (rate < 1)).all()
        assert (rate <= 1 - silent + 1e-6).all()  # a silent unit adds no spikes: rate <= active fraction
    tree.close()


def test_dashboard_raster_and_rate_histogram(spiking_run, tmp_path):
    from colsim.analysis._synthetic import write_synthetic_run
    from colsim.analysis.dashboard import SPIKING_TITLES, TITLES, build_layout, dashboard

    rows, _, by_rule = build_layout([spiking_run])
    run = by_rule["espp"][0]
    probe = xr.open_datatree(spiking_run / "store.zarr", engine="zarr")["probe"].to_dataset()
    raster, hist = rows[-2][0], rows[-1][0]
    assert raster.opts.get().kwargs["title"] == f"{SPIKING_TITLES[0]} - espp (step 4)"
    pts = raster.Scatter.Block_0.data  # block 0: (view * T + bin, neuron) of every spike
    v, t, k = np.nonzero(probe["raster_l0"].isel(eval=-1).values)
    np.testing.assert_array_equal(np.sort(pts.iloc[:, 0].values * 100 + pts.iloc[:, 1].values),
                                  np.sort((v * 5 + t) * 100 + k))
    rate = probe["spike_count_l1"].isel(eval=-1).mean(["probe_set", "sample", "view"]).values / 5
    np.testing.assert_allclose(run.spiking["rate"][1], rate, rtol=1e-6)
    counts = hist.Histogram.Block_1.dimension_values(1)
    assert counts.sum() == 12 and counts[np.searchsorted(np.linspace(0, 1, 21), rate.max(), "right") - 1] >= 1
    out = dashboard([spiking_run], tmp_path / "d.html")
    text = out.read_text(encoding="utf-8")
    assert all(f"{t} - espp" in text for t in SPIKING_TITLES) and f"{TITLES[7]} - espp" in text
    other = write_synthetic_run(tmp_path / "plain", n_phases=2, steps_per_phase=20, n_samples=24, n_units=8)
    rows2, _, _ = build_layout([other])
    assert not any(SPIKING_TITLES[0] in p.opts.get().kwargs.get("title", "") for row in rows2 for p in row)
    probe.close()
