"""colsim.analysis.figures: the rule-comparison figures draw the numbers colsim compare computes."""
from __future__ import annotations

import numpy as np

from colsim.analysis.figures import paired_figure, per_rule_figure, save_png


def _summaries():
    # frozen forgets 0; backprop 0.2, 0.3, 0.4 on seeds 0-2 -> paired differences 0.2, 0.3, 0.4
    out = [{"rule": "frozen", "seed": k, "status": "completed", "frozen_forgetting": 0.0} for k in range(3)]
    out += [{"rule": "backprop", "seed": k, "status": "completed", "frozen_forgetting": 0.2 + 0.1 * k} for k in range(3)]
    return out


def _layer(obj, kind):
    return [el for el in obj if type(el).__name__ == kind]


def test_per_rule_figure_shows_every_seed_and_the_mean_with_its_ci():
    fig = per_rule_figure(_summaries(), "frozen_forgetting", ["frozen", "backprop"], "t", "forgetting")
    bars = _layer(fig, "ErrorBars")[0].array().astype(float)
    # mean 0.3, sd 0.1, n 3: t(0.975, 2) = 4.303 (compare.t_quantile_975's table) -> half-width 0.2484
    assert np.allclose(bars[1], [1, 0.3, 4.303 * 0.1 / np.sqrt(3)], atol=1e-5)
    assert np.allclose(bars[0], [0, 0.0, 0.0])
    assert len(_layer(fig, "Scatter")[0].array()) == 6  # every seed of both rules


def test_paired_figure_is_the_per_seed_difference_from_the_control(tmp_path):
    fig = paired_figure(_summaries(), "frozen_forgetting", "frozen", ["backprop"], "t", "difference")
    bars = _layer(fig, "ErrorBars")[0].array().astype(float)
    assert np.allclose(bars[0], [0, 0.3, 4.303 * 0.1 / np.sqrt(3)], atol=1e-5)
    png = save_png(fig, tmp_path / "f.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
