"""The summary table wraps instead of cutting cells at 80 columns (issue 29); the README's demo table is rendered
with the same code (examples/readme_demo_table.py)."""
from __future__ import annotations

import io

import pytest
from rich.console import Console

from colsim.cli.summary import print_summary, render_summary



def _summary(P: int) -> dict:
    names = [f"set{j}" for j in range(P)]
    ev = [{"phase": "init", "step": 0}] + [{"phase": n, "step": 100 * (j + 1)} for j, n in enumerate(names)]
    acc = [[round(0.1 + 0.01 * (i + j), 2) for j in range(P)] for i in range(len(ev))]
    return {"probe_sets": names, "evaluations": ev, "accuracy_matrix": acc, "status": "completed", "steps": 100 * P,
            "wall_s": 3.0, "probe_acc_agg": [0.4713] * len(ev), "probe_acc_z": [0.3822] * len(ev),
            "equivariance_r2": [0.5931] * len(ev), "forgetting": 0.1, "forgetting_se": 0.01, "gain": {}}


@pytest.mark.parametrize("P", [2, 5, 10])
def test_the_summary_never_cuts_a_cell_at_80_columns(P):
    buf = io.StringIO()
    print_summary(_summary(P), Console(file=buf, width=80, color_system=None, force_terminal=False))
    text = buf.getvalue()
    assert "…" not in text
    assert max(len(line) for line in text.splitlines()) <= 80
    assert text.count("0.47") == P + 1 and text.count("0.59") == P + 1  # every R² and pooled value, whole
    assert f"set{P - 1}" in text and "0.1" in text


def test_render_summary_drops_the_wall_time_title():
    text = render_summary(_summary(5))
    assert "colsim summary" not in text and "3 s" not in text and "┃ after" in text

# The README's table against a real demo run: tests/test_default_run.py (one run for both checks).
