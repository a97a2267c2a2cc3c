"""Science check of ESPP on the spiking column (issue 12, item 6), slow.

Three assertions on the same runs (docs/results/espp.md). Issue 31 explains why claim 1 does not test ESPP and
why the xfail of claim 2 alone would hide a regression (hence claim 3); its ESPP column in EchoSpike's own setting
is to replace this check.

1. The issue's claim: training the spiking column with ``--rule espp`` raises its pooled z_AGG
   probe accuracy above the same column untrained (its step-0 evaluation), by a margin outside the
   seed-to-seed noise (the lower end of the t-based 95 % CI over seeds of the per-seed gain is
   above 0). Measured at 4,000 steps (64,000 views), seeds 0-2: +0.186, +0.104, +0.092, so +0.127 +- 0.127:
   it holds, by a margin of 0.0005 (at 8,000 steps, docs/results/espp.md, the lower end is about +0.03). Runs
   are seeded and single-threaded, so the margin is the same on every run on one platform; a change of the
   numerics may flip it, and then the frozen arm below says whether anything of ESPP's was lost.
2. The control that tells who did it: the same runs with the LIF layers' ESPP learning rate at
   1e-12 (frozen in effect; 0 is refused by the config), so that only the shared modules learn
   (aggregator, predictor, action embedding, trained by the seq-JEPA loss under both arms). Claim:
   ESPP's LIF layers beat the frozen ones, per seed, outside the noise. Measured: they do not (4,000 steps,
   seeds 0-2: -0.010, -0.012, -0.016, so -0.013 +- 0.008: ESPP's layers are slightly worse), so the gain of
   claim 1 is the aggregator's (the frozen arm gains +0.140 +- 0.121), not ESPP's. That claim
   stays marked ``xfail(strict=True)``: a change that makes ESPP's layers help turns it into an
   unexpected pass, which fails the suite until docs/results/espp.md and this mark are updated.
3. The guard that xfail cannot give: ESPP's layers are not much worse than the frozen ones (the paired
   difference's CI stays above -0.1), so a regression that makes ESPP destroy information fails the suite.

Setting (mild affine digits, c = +-1e-3, ESPP lr 1e-4, batch 16) chosen on the validation pool, seeds 0-2;
docs/results/espp.md measured it at 8,000 steps, seeds 0-4. This test runs 4,000 steps (to keep CI under 30
minutes) and reads the probe pool at seeds 0-2. The two arms run side by side as two ``colsim run --seeds 0-2``
processes of one torch thread each (about 5 minutes on 2 cores).
"""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

pytest.importorskip("snntorch")

from colsim.analysis.compare import mean_ci  # noqa: E402

SEEDS = (0, 1, 2)
ARGS = ["--rule", "espp", "--model", "spiking_mlp", "--steps", "4000", "--quiet",
        "--set", "protocol.stream.batch=16", "--set", "protocol.evaluation.probe_samples=1000",
        "--set", "protocol.world.rotation=15", "--set", "protocol.world.translation=2",
        "--set", "protocol.world.scale=[0.9,1.0]", "--set", "protocol.schedule=constant",
        "--set", "rule.c_pos=1e-3", "--set", "rule.c_neg=-1e-3"]
ARMS = {"espp": "1e-4", "frozen": "1e-12"}  # rule.optimizer.lr: the LIF layers' ESPP rate


@pytest.fixture(scope="module")
def accuracies(tmp_path_factory) -> dict[str, list[list[float]]]:
    """arm -> per seed [pooled z_AGG accuracy at step 0, at the end]."""
    root = tmp_path_factory.mktemp("espp_science")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    procs = {arm: subprocess.Popen(
        [sys.executable, "-m", "colsim.cli", "run", "stationary", *ARGS, "--set", f"rule.optimizer.lr={lr}",
         "--seeds", ",".join(map(str, SEEDS)), "--out", str(root / arm)],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for arm, lr in ARMS.items()}
    out = {}
    for arm, p in procs.items():
        log, _ = p.communicate()
        assert p.returncode == 0, log[-3000:]
        out[arm] = [json.loads((root / f"{arm}-s{s}" / "summary.json").read_text())["probe_acc_agg"] for s in SEEDS]
    return out


def _report(what: str, values: list[float]) -> tuple[float, float]:
    m, h, n = mean_ci(values)
    print(f"\n{what}, seeds {SEEDS}: {', '.join(f'{v:+.3f}' for v in values)}; mean {m:+.3f} +- {h:.3f} "
          f"(95 % CI, n={n})")
    return m, h


@pytest.mark.slow
def test_espp_rule_raises_pooled_zagg_accuracy_over_untrained(accuracies, capsys):
    for acc in accuracies["espp"]:
        assert len(acc) == 2 and 0.5 < acc[0] < 1.0, acc  # the untrained column is well above chance (0.1)
    with capsys.disabled():
        m, h = _report("--rule espp: gain in pooled z_AGG accuracy over step 0", [a[1] - a[0] for a in accuracies["espp"]])
    assert m - h > 0, f"gain {m:+.3f} +- {h:.3f}: not outside the seed-to-seed noise"


@pytest.mark.slow
def test_espp_layers_are_not_much_worse_than_the_same_layers_frozen(accuracies, capsys):
    """The regression guard the strict xfail below cannot be: that xfail passes whatever ESPP does short of
    beating the frozen layers, so a change that made ESPP's layers destroy information would go unseen.
    Non-inferiority with a margin of 0.1: the lower end of the paired difference's 95 % CI stays above -0.1
    (seeds 0-2: -0.013 +- 0.008 at 4,000 steps; -0.013 +- 0.063 at 8,000, from docs/results/espp.md's rounded
    per-seed values; the spiking CNN's ESPP, at -0.15, would fail it)."""
    diff = [e[1] - f[1] for e, f in zip(accuracies["espp"], accuracies["frozen"])]
    with capsys.disabled():
        m, h = _report("final pooled z_AGG, ESPP minus frozen LIF layers (non-inferiority)", diff)
    assert m - h > -0.1, f"ESPP's layers lose {m:+.3f} +- {h:.3f} of pooled z_AGG accuracy against frozen layers"


class NotAboveFrozen(Exception):
    """The paired difference's 95 % CI reaches 0 or below (the expected failure)."""


@pytest.mark.slow
@pytest.mark.xfail(strict=True, raises=NotAboveFrozen,
                   reason="measured (docs/results/espp.md): ESPP's LIF layers do not beat the same layers frozen; the pooled "
                          "z_AGG gain of --rule espp is the seq-JEPA-trained aggregator's")
def test_espp_layers_beat_the_same_layers_frozen(accuracies, capsys):
    # the two arms start from the same column (same seed): equal step-0 accuracies
    assert [a[0] for a in accuracies["espp"]] == [a[0] for a in accuracies["frozen"]]
    diff = [e[1] - f[1] for e, f in zip(accuracies["espp"], accuracies["frozen"])]
    with capsys.disabled():
        m, h = _report("final pooled z_AGG accuracy, ESPP minus frozen LIF layers", diff)
    if not m - h > 0:
        raise NotAboveFrozen(f"paired difference {m:+.3f} +- {h:.3f}: not outside the seed-to-seed noise")
