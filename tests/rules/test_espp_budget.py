"""ESPP's positive assertion (issue 31, item 5), slow: on EchoSpike's setting on Fashion-MNIST, after 1e5 samples
ESPP's deepest layer reads out above random layers firing at ESPP's own rates.

The budget curve (docs/results/espp.md, "The budget curve on Fashion-MNIST"; protocols/sweeps/echospike_budget*.yaml,
probe pool, seeds 0-4) shows ESPP's layers above the untrained ones only at 1e6 samples (layer 3 +0.029 ± 0.022),
five runs of about 8 minutes on a 2-core host, too long for CI. The cheapest win it shows is against the
rate-matched arm at 1e5 samples (782 steps of 128): layer 3 +0.030 ± 0.017 over seeds 0-4 (+0.035, +0.031, +0.025,
+0.047, +0.010), layer 2 +0.021 ± 0.015. Over seeds 0-2 alone, layer 3's paired difference is +0.030 ± 0.012 (its
lower end 0.018 above 0), which is what this test asserts; layer 2's (+0.028 ± 0.023, lower end 0.005) is printed,
not asserted. Settings: ESPP's chosen on the validation pool for 1e5 samples (lr 5e-4, c = ±1e-3;
echospike_budget_val.yaml). The rate-matched arm (rules/rate_matched.py, rule.from_run = the same seed's ESPP run)
runs 200 steps; its premise is checked too: each layer's spikes per neuron and view on the probe images within
15 % of the ESPP run's (measured: within 11 % at seeds 0-2).

A win against random features at equal rates is not a win against the untrained layers: at this budget ESPP's
layer 3 is still below them (−0.026 ± 0.012, seeds 0-4), because ESPP lowers the layers' rates and random layers
at lower rates read out worse. Two ``colsim run`` processes of one thread, one after the other (the second reads the
first's folders).
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("snntorch")

from colsim.analysis.compare import mean_ci  # noqa: E402
from colsim.protocols import image_files as imf  # noqa: E402

HAVE_FASHION = all((Path(imf.FASHION_MNIST) / f"{p}-{k}-ubyte.gz").is_file()
                   for p in ("train", "t10k") for k in ("images-idx3", "labels-idx1"))
pytestmark = pytest.mark.skipif(not HAVE_FASHION, reason=f"Fashion-MNIST is not installed in {imf.FASHION_MNIST} "
                                "(apt-get install dataset-fashion-mnist; .ci/run installs it)")

SEEDS = (0, 1, 2)
ESPP = ["--rule", "espp", "--steps", "782", "--set", "rule.optimizer.lr=5e-4", "--set", "rule.c_pos=1e-3",
        "--set", "rule.c_neg=-1e-3"]


def _run(args: list[str]) -> None:
    p = subprocess.run([sys.executable, "-m", "colsim.cli", "run", "echospike_fashion", *args, "--quiet"],
                       env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True)
    assert p.returncode == 0, (p.stdout + p.stderr)[-3000:]


@pytest.fixture(scope="module")
def arms(tmp_path_factory) -> dict:
    """{"espp" | "rate_matched": [summary.json per seed]}."""
    root = tmp_path_factory.mktemp("espp_budget")
    _run([*ESPP, "--seeds", ",".join(map(str, SEEDS)), "--out", str(root / "espp")])
    for s in SEEDS:
        _run(["--rule", "rate_matched", "--steps", "200", "--seed", str(s), "--set",
              f"rule.from_run={root / f'espp-s{s}'}", "--out", str(root / f"rm-s{s}")])
    return {arm: [json.loads((root / f"{arm}-s{s}" / "summary.json").read_text()) for s in SEEDS]
            for arm in ("espp", "rm")}


def _paired(arms, layer: int):
    d = [e["layer_readout_accuracy"][-1][layer] - r["layer_readout_accuracy"][-1][layer]
         for e, r in zip(arms["espp"], arms["rm"])]
    m, h, n = mean_ci(d)
    print(f"\nlayer {layer}: espp - rate_matched {m:+.3f} ± {h:.3f} ({[round(x, 3) for x in d]})")
    assert n == len(SEEDS)
    return m, h


@pytest.mark.slow
def test_rate_matched_layers_fire_at_espp_s_rates(arms):
    for e, r in zip(arms["espp"], arms["rm"]):
        for k in (1, 2, 3):
            a, b = e["layer_readout_spikes"][-1][k], r["layer_readout_spikes"][-1][k]
            assert abs(b - a) <= 0.15 * a, (k, a, b)


@pytest.mark.slow
def test_espp_layer_3_beats_rate_matched_random_layers_at_1e5_samples(arms):
    _paired(arms, 2)  # layer 2, printed
    m, h = _paired(arms, 3)
    assert m - h > 0
