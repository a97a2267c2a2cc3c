"""Dashboard: standalone HTML (inline bokeh, no network) rendered by headless Chromium."""
from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from colsim.analysis.dashboard import TITLES, dashboard

ENSURE = Path(__file__).with_name("ensure_chromium.sh")


def _chromium() -> str:
    """Path of Debian's chromium, installing it (as root, apt) when missing; skip only if that fails."""
    exe = shutil.which("chromium") or ("/usr/bin/chromium" if Path("/usr/bin/chromium").exists() else None)
    if exe:
        return exe
    try:
        r = subprocess.run(["sh", str(ENSURE)], capture_output=True, text=True, timeout=900)
    except (OSError, subprocess.TimeoutExpired) as exc:
        pytest.skip(f"chromium missing and could not be installed: {exc}")
    if r.returncode != 0 or not Path("/usr/bin/chromium").exists():
        pytest.skip(f"chromium missing and could not be installed: {r.stderr.strip() or r.stdout.strip()}")
    return "/usr/bin/chromium"


@pytest.fixture(scope="module")
def page(sweep_runs, tmp_path_factory):
    out = tmp_path_factory.mktemp("dash") / "dashboard.html"
    assert dashboard(sweep_runs, out) == out
    return out


def test_dashboard_html_is_standalone_with_expected_titles(page):
    text = page.read_text(encoding="utf-8")
    assert not re.search(r"<script[^>]+src=[\"']https?://", text)  # bokeh resources inline
    assert "cdn.bokeh.org" not in text and "Bokeh" in text
    for title in TITLES:
        for rule in ("backprop", "lpl+metaplastic"):
            if title == "Rule state" and rule == "backprop":
                continue
            assert f"{title} - {rule}" in text, f"missing panel title {title!r} for {rule}"
    assert "rising_component" in text and "grad_spike" in text  # alarms listed and marked


def test_dashboard_renders_in_headless_chromium(page, tmp_path):
    exe = _chromium()
    png = tmp_path / "dash.png"
    cmd = [exe, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
           "--disable-background-networking", "--disable-component-update", "--disable-sync",
           f"--user-data-dir={tmp_path / 'profile'}", f"--screenshot={png}", "--window-size=1400,2000",
           "--virtual-time-budget=10000", page.resolve().as_uri()]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert png.exists(), f"chromium wrote no screenshot (rc {r.returncode}): {r.stderr[-2000:]}"
    from PIL import Image  # bokeh depends on pillow

    img = np.asarray(Image.open(png).convert("RGB"))
    assert img.shape[:2] == (2000, 1400)
    non_white = (img < 240).any(-1).mean()
    colours = len(np.unique(img.reshape(-1, 3)[::7], axis=0))
    assert non_white > 0.05, f"screenshot nearly blank ({non_white:.3f} non-white)"
    assert colours > 50, f"screenshot has only {colours} colours: plots did not render"
    # the plots themselves (canvas) drew something below the header: look for plot colours
    lower = img[700:]
    assert (np.abs(lower.astype(int) - lower.mean(-1, keepdims=True)) > 40).any(-1).mean() > 0.002


def test_dashboard_renders_runs_of_different_protocols_and_probe_sets(tmp_path):
    """Issue 29: one rule on two protocols with different probe sets and evaluation counts (what the packaged
    rules_seeds sweep gives) crashed the forgetting panel with a holoviews DataError."""
    from colsim.analysis._synthetic import write_synthetic_run
    from colsim.analysis.analyze import analyze_run

    from colsim.analysis._synthetic_circuit import write_synthetic_circuit_run

    a = write_synthetic_run(tmp_path / "a", rule="backprop", protocol="nonstationary", n_phases=3,
                            steps_per_phase=100, n_samples=64)
    b = write_synthetic_run(tmp_path / "b", rule="backprop", protocol="action_shift", n_phases=2, steps_per_phase=150,
                            n_samples=64)
    c = write_synthetic_circuit_run(tmp_path / "c", n_columns=2, n_samples=60, n_evals=3, with_actions=False)
    d = write_synthetic_run(tmp_path / "d", rule="lpl", protocol="nonstationary", n_phases=3, steps_per_phase=100,
                            n_samples=64)
    for r in (a, b, c, d):
        analyze_run(r, mlp="none")
    out = dashboard([b, a], tmp_path / "mixed.html")  # the run with fewer evaluations first
    assert out.stat().st_size > 10_000
    # a circuit beside single columns of the same rule, and another rule: one page
    text = dashboard([b, c, a, d], tmp_path / "all.html").read_text(encoding="utf-8")
    assert "Loss components - backprop" in text and "Loss components - lpl" in text


@pytest.fixture(scope="module")
def five_rules(tmp_path_factory):
    from colsim.analysis._synthetic import write_synthetic_run
    from colsim.analysis.analyze import analyze_run

    root = tmp_path_factory.mktemp("five")
    paths = []
    for i, rule in enumerate(["backprop", "lpl", "lpl+replay", "layerwise", "frozen"]):
        p = write_synthetic_run(root / rule, rule=rule, rising_component=i in (1, 2), grad_spike_at=200,
                                n_samples=32)
        analyze_run(p, mlp="none")
        paths.append(p)
    return paths


def test_loss_panel_keeps_its_legend_and_stacks_alarm_labels(five_rules):
    """Issue 29: past 25 glyphs holoviews dropped the LPL loss panel's legend, and alarm labels overprinted at
    y = 0; the rank panel is log-scaled so RankMe does not squash the participation ratios."""
    import holoviews as hv

    from colsim.analysis.dashboard import build_layout

    rows, _, by_rule = build_layout([five_rules[1]] * 6)  # one LPL run six times: 30 curves and alarm marks
    loss = rows[0][0]
    fig = hv.render(loss, backend="bokeh")
    assert len(fig.renderers) > 25 and fig.legend and len(fig.legend[0].items) > 0
    texts = [e for e in loss if isinstance(e, hv.Text)]
    assert texts and len({round(t.y, 9) for t in texts}) == len(texts)  # each label on its own height
    rank = hv.render(rows[1][0], backend="bokeh")
    assert type(rank.y_scale).__name__ == "LogScale"


def test_many_rules_wrap_onto_rows_within_1400_px(five_rules, tmp_path):
    """Five rules: three panels per row at most; a 2200-px-wide headless Chromium shows nothing right of 1385 px
    (the page fits a 1400-px window with its scrollbar)."""
    exe = _chromium()
    page = dashboard(five_rules, tmp_path / "five.html")
    png = tmp_path / "five.png"
    cmd = [exe, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
           f"--user-data-dir={tmp_path / 'profile'}", f"--screenshot={png}", "--window-size=2200,3000",
           "--virtual-time-budget=8000", page.resolve().as_uri()]
    subprocess.run(cmd, capture_output=True, text=True, timeout=180)
    assert png.exists()
    from PIL import Image

    img = np.asarray(Image.open(png).convert("RGB"))[:, :-20]  # the vertical scrollbar
    cols = np.nonzero((img[450:] < 240).any(-1).any(0))[0]
    assert 900 < cols.max() <= 1385, cols.max()
