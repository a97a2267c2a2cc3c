"""Health alarms, each with the step where the problem began."""
from __future__ import annotations

import time

import numpy as np
import xarray as xr

from colsim.analysis.alarms import (grad_spikes, health_alarms, loss_components, nonfinite, rising_component,
                                    series_collapse)

N = 1000
STEP = np.arange(N) * 10


def test_rising_component_while_total_falls_flags_its_onset():
    rng = np.random.default_rng(0)
    t = np.arange(N) / N
    comp = 0.35 + 0.75 * np.clip((t - 0.6) / 0.4, 0, 1) + 0.005 * rng.standard_normal(N)
    total = 2 * np.exp(-4 * t) + 0.05 * comp
    a = rising_component(STEP, comp, total, "lpl.l0.dec")
    assert a is not None and a["kind"] == "rising_component" and a["variable"] == "lpl.l0.dec"
    assert abs(a["step"] - 6000) <= 300  # the ramp starts at t = 0.6 -> step 6000
    assert rising_component(STEP, np.exp(-3 * t), total, "x") is None  # both fall: no alarm
    assert rising_component(STEP, comp, comp + 1, "x") is None  # the total rises too: no alarm
    assert rising_component(STEP, comp * 1e-4, total, "x") is None  # a rise negligible next to the total


def test_grad_spike_nonfinite_and_collapse_steps():
    g = np.exp(0.1 * np.random.default_rng(1).standard_normal(N))
    g[400:403] *= 60
    a = grad_spikes(STEP, g)
    assert a["step"] == 4000 and a["detail"].startswith("3 step(s)")
    assert grad_spikes(STEP, np.ones(N)) is None
    early = np.ones(N)
    early[0] = 0.0  # no gradient at the first step, then normal ones: no spike against a median of 0
    early[3] = 5.0  # within the first min_history points: not judged
    assert grad_spikes(STEP, early) is None
    loss = np.ones(N)
    loss[:50] = np.nan  # not yet recorded: not a divergence
    loss[700:] = np.nan
    assert nonfinite(STEP, loss, "loss")["step"] == 7000
    rank = np.where(np.arange(N) < 800, 20.0, 1.2)
    a = series_collapse(STEP, rank, "z_eff_rank")
    assert a["kind"] == "rank_collapse" and abs(a["step"] - 8000) <= 100
    assert series_collapse(STEP, np.full(N, 20.0), "z_eff_rank") is None


def test_missing_loss_at_phase_starts_is_skipped_not_divergence():
    """The simulator records NaN for the loss of each phase's first tick (nothing predicted). Those
    NaNs, followed by finite values, raise no alarm and do not disturb the other detectors; a run
    that ends in NaN (the simulator stops a diverged run there) or hits inf still does."""
    t = np.arange(N) / N
    loss = np.exp(-3 * t)
    loss[::200] = np.nan  # 5 phases of 200 recorded steps
    assert nonfinite(STEP, loss, "loss") is None
    ds = xr.Dataset({"loss": ("step", loss), "loss.pred": ("step", loss), "grad_norm": ("step", np.ones(N)),
                     "zagg_eff_rank": ("step", np.where(np.arange(N) % 200 == 0, np.nan, 10.0))}, coords={"step": STEP})
    assert health_alarms(ds, "backprop") == []
    diverged = loss.copy()
    diverged[-1] = np.nan
    assert nonfinite(STEP, diverged, "loss")["step"] == STEP[-1]
    inf = loss.copy()
    inf[500] = np.inf
    assert nonfinite(STEP, inf, "loss")["step"] == 5000


def test_health_alarms_on_a_metrics_group_and_eval_series():
    t = np.arange(N) / N
    ds = xr.Dataset({"loss": ("step", np.exp(-3 * t)), "loss.pred": ("step", np.exp(-3 * t)),
                     "lpl.l0.dec": ("step", 0.3 + np.clip(t - 0.5, 0, 1)),
                     "grad_norm": ("step", np.ones(N)), "z_eff_rank": ("step", np.full(N, 10.0)),
                     "metaplastic.availability_mean.encoder.blocks.0": ("step", np.exp(-5 * t)),
                     "codebook.usage": ("step", np.where(t < 0.3, 0.9, 0.1))}, coords={"step": STEP})
    assert loss_components(ds, "lpl+metaplastic") == ["loss.pred", "lpl.l0.dec"]
    usage = ("usage_collapse", np.array([0, 100, 200]), np.array([1.0, 0.9, 0.2]))
    alarms = health_alarms(ds, "lpl+metaplastic", eval_series={"analysis.unit_usage": usage})
    kinds = {(a["kind"], a["variable"]): a["step"] for a in alarms}
    assert ("rising_component", "lpl.l0.dec") in kinds
    assert abs(kinds[("usage_collapse", "codebook.usage")] - 3000) <= 100
    assert kinds[("usage_collapse", "analysis.unit_usage")] == 200
    assert [a["step"] for a in alarms] == sorted(a["step"] for a in alarms)
    assert health_alarms(None) == []


def test_alarms_on_a_million_steps_are_fast():
    n = 1_000_000
    rng = np.random.default_rng(0)
    t = np.arange(n) / n
    g = 1 + 0.1 * rng.random(n)
    g[777_777] = 100
    ds = xr.Dataset({"loss": ("step", np.exp(-3 * t)), "loss.pred": ("step", np.exp(-3 * t)),
                     "grad_norm": ("step", g), "z_eff_rank": ("step", 10 + rng.random(n))},
                    coords={"step": np.arange(n)})
    t0 = time.perf_counter()
    alarms = health_alarms(ds, "lpl")
    assert time.perf_counter() - t0 < 15
    assert [(a["kind"], a["step"]) for a in alarms] == [("grad_spike", 777_777)]


def test_a_first_tick_without_baseline_raises_no_alarm():
    """Issue 29: LPL's predictive term reads 0 at the first tick (no previous view); the running median's edge
    padding made that 0 the minimum, and every LPL run got 'rose 0 -> x at step 0'. A term that really rises
    while the total falls is still flagged."""
    n = 400
    step = np.arange(n)
    total = np.linspace(2.0, 1.0, n)
    comp = np.full(n, 0.5)
    comp[0] = 0.0  # undefined at the first tick, recorded as 0
    assert rising_component(step, comp, total, "loss_pred") is None
    comp2 = comp.copy()
    comp2[200:] = 0.9  # a real rise at step 200 while the total falls
    a = rising_component(step, comp2, total, "loss_pred")
    assert a is not None and 150 <= a["step"] <= 200, a
