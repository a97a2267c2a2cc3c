"""compare_runs: mean ± t-based 95 % CI over seeds, grouped by run attributes."""
from __future__ import annotations

import csv
import math

import numpy as np
import pytest

from colsim.analysis.analyze import summary_from_store
from colsim.analysis.compare import compare_runs, compare_runs_to_files, t_quantile_975


def test_compare_values_are_mean_and_t_ci_over_seeds(sweep_runs):
    table = compare_runs(sweep_runs, by=["rule"])
    assert [r["rule"] for r in table.rows] == ["backprop", "lpl+metaplastic"]
    assert all(r["n_runs"] == 2 and r["statuses"] == "completed:2" for r in table.rows)
    assert "equivariance_r2_mlp" not in table.metrics  # no run has it (mlp="none")
    for row, runs in zip(table.rows, (sweep_runs[:2], sweep_runs[2:])):
        for m in ("acc_agg", "forgetting", "z_eff_rank", "n_alarms"):
            v = np.array([summary_from_store(p)[m] for p in runs], float)
            assert row[m] == pytest.approx(v.mean())
            assert row[f"{m}_ci95"] == pytest.approx(t_quantile_975(1) * v.std(ddof=1) / math.sqrt(2))
    lpl = table.rows[1]
    assert lpl["n_alarms"] == pytest.approx(1.0)  # seed 0: rising lpl.l0.dec; seed 1: grad spike
    by_seed = compare_runs(sweep_runs, by=["rule", "seed"])
    assert len(by_seed.rows) == 4 and all(math.isnan(r["acc_agg_ci95"]) for r in by_seed.rows)


def test_compare_writes_csv_and_html(sweep_runs, tmp_path):
    table, csv_path, html_path = compare_runs_to_files(sweep_runs, ["rule"], tmp_path / "cmp")
    rows = list(csv.DictReader(csv_path.open()))
    assert [r["rule"] for r in rows] == ["backprop", "lpl+metaplastic"]
    assert float(rows[0]["acc_agg"]) == pytest.approx(table.rows[0]["acc_agg"])
    page = html_path.read_text()
    assert "<table>" in page and "lpl+metaplastic" in page and "±" in page


def test_paired_rows_are_per_seed_differences_with_their_ci_and_mde(sweep_runs):
    """rule - vs, matched on seed within a protocol: the mean and t-CI of the differences, and the minimum
    detectable effect (t_0.975 + t_0.8) sd / sqrt(n) (hand-computed)."""
    from scipy.stats import t as student_t

    from colsim.analysis.compare import min_detectable_effect, paired_rows

    rows = paired_rows(sweep_runs, "backprop", metrics=("acc_agg", "forgetting"))
    assert [(r["rule"], r["vs"], r["n"]) for r in rows] == [("lpl+metaplastic", "backprop", 2)]
    base = {summary_from_store(p)["seed"]: summary_from_store(p) for p in sweep_runs[:2]}
    other = {summary_from_store(p)["seed"]: summary_from_store(p) for p in sweep_runs[2:]}
    d = np.array([other[k]["acc_agg"] - base[k]["acc_agg"] for k in sorted(base)])
    assert rows[0]["acc_agg"] == pytest.approx(d.mean())
    assert rows[0]["acc_agg_ci95"] == pytest.approx(12.706 * d.std(ddof=1) / math.sqrt(2))
    assert rows[0]["acc_agg_mde"] == pytest.approx((12.706 + student_t.ppf(0.8, 1)) * d.std(ddof=1) / math.sqrt(2),
                                                   rel=1e-3)
    # 10 pairs with a spread of 0.1: (2.262 + 0.883) * 0.1 / sqrt(10) = 0.0995
    assert min_detectable_effect(0.1, 10) == pytest.approx(0.0995, abs=2e-4)
    assert math.isnan(min_detectable_effect(0.1, 1))
    assert paired_rows(sweep_runs, "no-such-rule") == []
