"""Collapse diagnostics with one stream (B = 1, the online protocol): computed over a window of recent ticks, so
a collapse shows in z_eff_rank and raises an alarm (issue 29: the online run collapsed to effective rank 1.46 and
no alarm fired, every diagnostic being NaN at B = 1)."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import xarray as xr

from colsim.analysis.alarms import health_alarms
from colsim.sim.diagnostics import CollapseMonitor, collapse_diagnostics


def test_window_fills_then_equals_the_diagnostics_of_its_rows():
    g = torch.Generator().manual_seed(0)
    rows = torch.randn(40, 16, generator=g)
    m = CollapseMonitor(window=8)
    for i in range(7):
        assert math.isnan(m(rows[i:i + 1], "z")["z_eff_rank"])  # not yet 8 rows
    out = m(rows[7:8], "z")
    want = collapse_diagnostics(rows[:8], "z")
    assert out == pytest.approx(want)
    for i in range(8, 20):
        out = m(rows[i:i + 1], "z")
    assert out == pytest.approx(collapse_diagnostics(rows[12:20], "z"))  # the last 8 rows
    # B >= 2: the tick's own rows, as before
    assert m(rows[:5], "z") == pytest.approx(collapse_diagnostics(rows[:5], "z"))
    # a checkpoint round trip continues with the same window
    m2 = CollapseMonitor(window=8)
    m2.load_state_dict(m.state_dict(), "cpu")
    assert m2(rows[20:21], "z") == pytest.approx(m(rows[20:21], "z"))
    # z_AGG of a stream without a context yet: no row enters the window
    m3 = CollapseMonitor(window=2)
    m3(rows[:1], "zagg", torch.tensor([False]))
    assert m3.rows.get("zagg", []) == []


def test_a_collapse_at_batch_one_is_flagged():
    """200 ticks of one stream: diverse z for 100 ticks, then every z on one line (rank 1). The windowed effective
    rank falls from about the dimension's to 1, and health_alarms flags a rank collapse after tick 100."""
    g = torch.Generator().manual_seed(1)
    d = torch.randn(16, generator=g)
    m = CollapseMonitor(window=32)
    ranks = []
    for t in range(200):
        z = torch.randn(1, 16, generator=g) if t < 100 else (1 + 0.01 * torch.randn(1, 1, generator=g)) * d[None]
        ranks.append(m(z, "z")["z_eff_rank"])
    ranks = np.array(ranks)
    assert np.isnan(ranks[:31]).all() and ranks[31:100].min() > 6 and ranks[-1] < 1.1
    metrics = xr.Dataset({"z_eff_rank": ("step", ranks), "loss": ("step", np.linspace(1, 0.1, 200))},
                         coords={"step": np.arange(200)})
    alarms = [a for a in health_alarms(metrics) if a["kind"] == "rank_collapse"]
    assert alarms and 100 <= alarms[0]["step"] <= 140, alarms
