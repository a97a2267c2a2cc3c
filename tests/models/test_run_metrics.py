"""What the run records from a column's trace (issue 11, items 7 and 8): the in-run collapse
diagnostics use analysis' definitions and names of effective rank, and a tick where nothing was
predicted records missing values (NaN), not a 0 no computation produced."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from colsim.analysis import metrics as M
from colsim.record import MemoryRecorder
from colsim.simulate import collapse_diagnostics, run
from _tiny import build_tiny


def test_in_run_eff_rank_is_the_participation_ratio_of_eigenvalues():
    """Centred rows with singular values (3, 1): λ ∝ (9, 1) -> (sum λ)² / sum λ² = 100 / 82 (the
    old in-run (sum s)² / sum s² gave 16 / 10)."""
    a, b = 3 / math.sqrt(2), 1 / math.sqrt(2)
    z = torch.tensor([[a, 0.0], [-a, 0.0], [0.0, b], [0.0, -b]])
    d = collapse_diagnostics(z, "z")
    assert d["z_eff_rank"] == pytest.approx(100 / 82, rel=1e-5)
    assert d["z_rankme"] == pytest.approx(M.rankme(np.array([3.0, 1.0])), rel=1e-5)  # uncentred = centred here


def test_in_run_ranks_equal_the_analysis_functions():
    g = torch.Generator().manual_seed(0)
    z = torch.randn(24, 6, generator=g) * torch.tensor([3.0, 2.0, 1.0, 0.5, 0.1, 0.0]) + 4.0  # offset: centring matters
    d = collapse_diagnostics(z, "zagg")
    ref = M.embedding_rank(z.double().numpy())
    assert d["zagg_eff_rank"] == pytest.approx(ref["eff_rank"], rel=1e-4)
    assert d["zagg_rankme"] == pytest.approx(ref["rankme"], rel=1e-4)
    assert set(d) == {f"zagg_{k}" for k in ("std_min", "std_mean", "eff_rank", "rankme", "mean_cos")}


def test_collapse_diagnostics_keep_only_valid_rows_and_are_missing_below_two():
    g = torch.Generator().manual_seed(1)
    z = torch.randn(8, 5, generator=g)
    valid = torch.tensor([True, False, True, True, False, True, True, False])
    assert collapse_diagnostics(z, "zagg", valid) == pytest.approx(collapse_diagnostics(z[valid], "zagg"))
    one = torch.zeros(8, dtype=torch.bool)
    one[2] = True
    d = collapse_diagnostics(z, "zagg", one)
    assert len(d) == 5 and all(math.isnan(v) for v in d.values())


def test_first_tick_of_each_phase_records_nan_loss_not_zero():
    """Tiny nonstationary run, 5 phases x 2 steps: every phase starts with reset windows, so its first
    tick has no prediction. Its loss totals and z_AGG diagnostics are NaN; the second tick's are finite
    and the run completes (the NaN is recorded, not a divergence)."""
    cfg, world, column, rule, local, opt = build_tiny("backprop", steps=10)
    assert [ph.steps for ph in cfg.protocol.phases] == [2] * 5
    rec = MemoryRecorder()
    res = run(column, rule, cfg.protocol, rec, world=world, optimizer=opt, seed=0, local=local)
    assert res.status == "completed"
    steps = [s for s, _ in rec.metrics]
    assert steps == list(range(10))
    first = np.array([s % 2 == 0 for s in steps])
    for name in ("loss", "loss.pred", "zagg_eff_rank", "zagg_std_min", "zagg_mean_cos"):
        v = rec.series(name)
        assert np.isnan(v[first]).all(), (name, v)
        assert np.isfinite(v[~first]).all(), (name, v)
    assert np.isfinite(rec.series("z_eff_rank")).all()  # z of the current view exists on every tick


@pytest.mark.parametrize("model", ["seqjepa_crate", "seqjepa_tost"])
def test_block_diagnostics_are_missing_when_nothing_was_aggregated(model):
    """Every window just reset: the aggregator saw only [AGG], so its statistics are NaN; one tick later
    (every stream has a context) they are finite."""
    from colsim.build import build_run
    from colsim.config import resolve_run_config
    from colsim.simulate import _seeded
    from _tiny import TINY

    extra = [o for o in TINY if not o.startswith("model.predictor")]
    extra += ["model.predictor.layers=1", "model.predictor.heads=2"] if model == "seqjepa_crate" else \
        ["model.predictor.hidden=16"]
    cfg = resolve_run_config("stationary", rule="backprop", model=model, overrides=extra, seed=0)
    world, column, *_ = build_run(cfg)
    stream = world.stream(4, 4, list(range(10)), {})
    ss = stream.init(_seeded(0, 1))
    cs = column.init_state(4, "cpu")
    for t in range(2):
        ss, st = stream.step(ss)
        cs, trace = column(cs, st.obs, st.action, torch.full((4,), t == 0))
        d = {k: v for k, v in column.diagnostics().items() if k.startswith(("crate", "tost"))}
        assert d, column.diagnostics()
        if t == 0:
            assert not trace["valid"].any() and all(math.isnan(v) for v in d.values()), d
        else:
            assert trace["valid"].all() and all(math.isfinite(v) for v in d.values()), d
