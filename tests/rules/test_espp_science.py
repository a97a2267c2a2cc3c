"""Science check of ESPP on the spiking column (issue 12, item 6), slow.

Claim under test: ESPP on affine digits raises the spiking column's pooled z_AGG probe accuracy
above the same column untrained (its step-0 evaluation), by a margin outside the seed-to-seed
noise: the lower end of the t-based 95 % CI over seeds of the per-seed gain is above 0.

Measured: it does not (README, "ESPP on the spiking column: measured"). On mild affine digits
(rotation 15, translation 2, scale [0.9, 1]; on the packaged ranges a linear read-out of the raw
pixels is at chance, 0.11, and so is every column we tried) ESPP lowers the accuracy at every
setting tried on the validation pool; the setting kept (gate c = +-1e-3, ten times the paper's
N-MNIST value, lr 1e-3) lowers it least. The test keeps the claim and is marked xfail(strict):
it reports the gap every time it runs (any other error is a real failure), and a change that
makes ESPP beat the untrained column turns it into an unexpected pass, which fails the suite
until the README and this mark are updated. Runs are seeded, so the outcome is the same on every run on one platform.

Scaled down from the README's measurement to a few minutes of CI: 3 seeds, 150 steps, 400 probe
episodes (README: 5 seeds, 300 steps, 1000 episodes).
"""
from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

pytest.importorskip("snntorch")

from colsim.analysis.compare import mean_ci  # noqa: E402
from colsim.cli import app  # noqa: E402

SEEDS = (0, 1, 2)
ARGS = ["--rule", "espp", "--model", "spiking_mlp", "--steps", "150", "--quiet",
        "--set", "protocol.stream.batch=16", "--set", "protocol.evaluation.probe_samples=400",
        "--set", "protocol.world.rotation=15", "--set", "protocol.world.translation=2",
        "--set", "protocol.world.scale=[0.9,1.0]",
        "--set", "rule.c_pos=1e-3", "--set", "rule.c_neg=-1e-3", "--set", "rule.optimizer.lr=1e-3",
        "--set", "protocol.schedule=constant"]  # measured at a constant rate, before `stationary` annealed


class NotAboveUntrained(Exception):
    """The gain's 95 % CI reaches 0 or below (the expected failure; any other error fails the test)."""


@pytest.mark.slow
@pytest.mark.xfail(strict=True, raises=NotAboveUntrained,
                   reason="measured (README): ESPP does not raise the spiking column's pooled z_AGG accuracy above "
                          "the untrained column on affine digits")
def test_espp_raises_pooled_zagg_accuracy_over_untrained(tmp_path, capsys):
    gains = []
    for seed in SEEDS:
        out = tmp_path / f"s{seed}"
        res = CliRunner().invoke(app, ["run", "stationary", *ARGS, "--seed", str(seed), "--out", str(out)])
        assert res.exit_code == 0, res.output
        acc = json.loads((out / "summary.json").read_text())["probe_acc_agg"]  # [step 0, end]
        assert len(acc) == 2 and 0.3 < acc[0] < 1.0, acc  # the untrained column is well above chance (0.1)
        gains.append(acc[-1] - acc[0])
    m, h, n = mean_ci(gains)
    with capsys.disabled():
        print(f"\nESPP gain in pooled z_AGG accuracy over step 0, seeds {SEEDS}: "
              f"{', '.join(f'{g:+.3f}' for g in gains)}; mean {m:+.3f} +- {h:.3f} (95 % CI, n={n})")
    if not m - h > 0:
        raise NotAboveUntrained(f"gain {m:+.3f} +- {h:.3f}: not outside the seed-to-seed noise")
