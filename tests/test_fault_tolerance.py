"""Runs survive faults (issue 16): step-level checkpoints, exact resume in place after kill -9,
signals, a locked run folder, what the store holds after a kill.

The kills are real: ``tests/_kill_driver.py`` runs ``colsim`` in a subprocess that SIGKILLs itself
in the middle of a metrics flush, half-way through a checkpoint write, or inside a step."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from typing import Literal

import numpy as np
import pytest
import torch
import xarray as xr
import zarr

from _signals import invoke_with_signal_at_update
from _tiny import TINY
from colsim.cli import _lock
from colsim.config import ConfigError, Strict
from colsim.rule import Rule, loss_grads
from colsim.checkpoint import (CheckpointError, latest_checkpoint, load_checkpoint, prune_step_checkpoints,
                               restore_like, save_checkpoint, step_checkpoint_path)

HERE = Path(__file__).parent
DRIVER = HERE / "_kill_driver.py"
COLSIM = Path(sys.executable).parent / "colsim"
# 5 phases x 4 steps; a checkpoint every 3 steps; metrics flushed every 4 rows
SETS = [a for s in TINY + ["protocol.evaluation.probe_samples=10", "protocol.evaluation.views=2",
                           "protocol.checkpoint.every=3", "protocol.checkpoint.keep=2",
                           "protocol.record.flush_every=4",
                           # no time-based checkpoint or flush: these tests count checkpoints and flushes
                           "protocol.checkpoint.every_seconds=null", "protocol.record.flush_seconds=null"]
        for a in ("--set", s)]
RUN = ["run", "nonstationary", "--rule", "backprop+si", "--steps", "20", "--seed", "3", "--quiet", *SETS]
TIMING = {"wall_s", "eval_s", "eval_share"}  # wall-clock figures: never equal between two runs
ENV = {**os.environ, "OMP_WAIT_POLICY": "PASSIVE", "OMP_NUM_THREADS": "1", "PYTHONPATH": str(HERE)}


def _colsim(*args, mode="none", n=0, timeout=300) -> subprocess.CompletedProcess:
    cmd = [sys.executable, str(DRIVER), mode, str(n), "--", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=ENV)


def _open(run: Path) -> xr.DataTree:
    return xr.open_datatree(str(run / "store.zarr"), engine="zarr")


def _assert_same_run(a: Path, b: Path, status: str = "completed", phase_file: str = "phase04-digits89.pt") -> None:
    sa, sb = (json.loads((r / "summary.json").read_text()) for r in (a, b))
    assert sa["status"] == sb["status"] == status
    assert {k: v for k, v in sa.items() if k not in TIMING} == {k: v for k, v in sb.items() if k not in TIMING}
    ta, tb = _open(a), _open(b)
    for g in ("metrics", "evaluation", "probe"):
        da, db = ta[g].to_dataset(), tb[g].to_dataset()
        assert set(da.variables) == set(db.variables), g
        for v in da.variables:
            if v == "steps_per_s":  # a wall-clock rate
                continue
            x, y = da[v].values, db[v].values
            assert x.shape == y.shape, (g, v)
            assert np.array_equal(x, y, equal_nan=x.dtype.kind == "f"), (g, v)
    if status != "completed":
        return
    ma, mb = (torch.load(r / "checkpoints" / phase_file, weights_only=True)["model"] for r in (a, b))
    assert all(torch.equal(ma[k], mb[k]) for k in ma)


def _assert_readable_after_kill(run: Path) -> int:
    """The killed run's store opens with xarray, says interrupted and holds consecutive metric rows."""
    t = _open(run)
    assert t.attrs["status"] == "interrupted"
    steps = t["metrics"]["step"].values
    assert np.array_equal(steps, np.arange(len(steps)))
    return len(steps)


# ------------------------------------------------------------------------------------------ units

def test_checkpoint_atomic_write_prune_latest(tmp_path):
    d = tmp_path / "checkpoints"
    for s in (3, 6, 9):
        save_checkpoint(step_checkpoint_path(d, s), step=s, phase=0, t=s, model={}, optimizer={}, config="")
    save_checkpoint(d / "phase00-a.pt", step=4, phase=1, t=0, model={"w": torch.ones(2)}, optimizer={}, config="")
    (d / ".step00000012.pt.tmp").write_bytes(b"half a checkpoint")  # a write a kill cut short
    assert latest_checkpoint(d, [4, 8, 12]).name == "step00000009.pt"
    assert latest_checkpoint(d, [9, 12]).name == "phase00-a.pt"  # same step: the phase end wins
    gone = prune_step_checkpoints(d, keep=2)
    assert [p.name for p in gone] == ["step00000003.pt"]
    assert sorted(p.name for p in d.iterdir()) == ["phase00-a.pt", "step00000006.pt", "step00000009.pt"]
    ck = load_checkpoint(d / "phase00-a.pt")
    assert ck["step"] == 4 and torch.equal(ck["model"]["w"], torch.ones(2))
    (d / "bad.pt").write_bytes((d / "phase00-a.pt").read_bytes()[:40])  # truncated
    with pytest.raises(CheckpointError, match="not a readable colsim checkpoint"):
        load_checkpoint(d / "bad.pt")


def test_restore_like_rebuilds_named_tuples():
    from typing import NamedTuple

    class S(NamedTuple):
        w: torch.Tensor
        buf: list
        n: int

    saved = torch.load(_roundtrip(S(torch.arange(3.0), [torch.ones(1)], 5)), weights_only=True)
    back = restore_like(S(torch.zeros(3), [], 0), saved)
    assert isinstance(back, S) and torch.equal(back.w, torch.arange(3.0)) and back.n == 5
    assert len(back.buf) == 1 and torch.equal(back.buf[0], torch.ones(1))


def test_restore_like_keeps_each_tensor_where_its_template_is():
    """A state restored for a CUDA run: tensors whose fresh template lies on the CPU (a replay RNG state, a
    byte tensor that torch.Generator.set_state needs there) stay on the CPU; those without a template go to
    the run's device. ('meta' stands in for CUDA here; tests/test_device.py resumes a replay run on a GPU.)"""
    template = {"rng": torch.Generator().get_state(), "buf": {}}
    saved = {"rng": torch.Generator().manual_seed(3).get_state(), "buf": {"x": torch.ones(2)}}
    back = restore_like(template, saved, "meta")
    assert back["rng"].device.type == "cpu" and torch.equal(back["rng"], saved["rng"])
    assert back["buf"]["x"].device.type == "meta"


def _roundtrip(obj):
    import io

    from colsim.checkpoint import _plain

    b = io.BytesIO()
    torch.save(_plain(obj), b)
    b.seek(0)
    return b


# ------------------------------------------------------------------------------------------ runs

def test_signal_stops_at_a_step_boundary_and_resume_in_place_matches(tmp_path, monkeypatch):
    """SIGTERM inside step 10 (in process): the run finishes that step, flushes, checkpoints, says
    interrupted and exits 143 naming the --resume command; `colsim run --resume RUN_DIR` continues
    mid-phase and ends with the uninterrupted run's summary, store and parameters."""
    from typer.testing import CliRunner

    from colsim.cli import app

    runner = CliRunner()
    full, part = tmp_path / "full", tmp_path / "part"
    assert runner.invoke(app, [*RUN, "--out", str(full)]).exit_code == 0
    res = invoke_with_signal_at_update(runner, app, [*RUN, "--out", str(part)], monkeypatch, at=10)
    assert res.exit_code == 143, res.output
    assert f"colsim run --resume {part}" in " ".join(res.output.split())
    assert json.loads((part / "summary.json").read_text())["status"] == "interrupted"
    assert sorted(p.name for p in (part / "checkpoints").glob("step*.pt")) == ["step00000009.pt", "step00000010.pt"]
    assert _assert_readable_after_kill(part) == _rows_at_latest_checkpoint(part) == 10  # flushed at the checkpoint
    with _lock(part, "--resume"):  # another process writing the folder: a second run refuses
        busy = runner.invoke(app, ["run", "--resume", str(part)])
    assert busy.exit_code == 2 and "another colsim run is writing this folder" in busy.output
    res = runner.invoke(app, ["run", "--resume", str(part), "--quiet"])
    assert res.exit_code == 0, res.output
    _assert_same_run(full, part)
    again = runner.invoke(app, ["run", "--resume", str(part)])
    assert again.exit_code == 2 and "nothing to resume" in again.output


@pytest.mark.slow
def test_sigterm_to_a_process_checkpoints_and_resume_in_place_matches(tmp_path):
    """A real SIGTERM to a `colsim run` process: exit 143, a checkpoint at the step boundary, status
    interrupted, the message names the --resume command; `colsim run --resume RUN_DIR` then completes it
    with the uninterrupted run's summary and store. While it runs, its folder is locked."""
    full, part = tmp_path / "full", tmp_path / "part"
    assert _colsim(*RUN, "--out", str(full)).returncode == 0
    proc = subprocess.Popen([sys.executable, str(DRIVER), "none", "0", "--", *RUN, "--out", str(part)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV)
    deadline = time.time() + 120
    while not list((part / "checkpoints").glob("phase01-*.pt")) and time.time() < deadline:
        time.sleep(0.05)  # let it reach phase 2
    with pytest.raises(ConfigError, match="another colsim run is writing this folder"):
        _lock(part, "--resume")  # what a second `colsim run` into the folder meets (exit 2)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 143, err
    assert f"colsim run --resume {part}" in " ".join(err.split())
    assert json.loads((part / "summary.json").read_text())["status"] == "interrupted"
    n = _assert_readable_after_kill(part)
    ck = latest_checkpoint(part / "checkpoints", [4, 8, 12, 16, 20])
    assert torch.load(ck, weights_only=True)["recorder"]["rows"] == n  # flushed at the checkpoint
    res = _colsim("run", "--resume", str(part))
    assert res.returncode == 0, res.stderr
    _assert_same_run(full, part)


@pytest.mark.slow
def test_sigkill_three_times_then_resume_is_bit_for_bit(tmp_path):
    """Killed with SIGKILL three times — mid metrics flush, mid checkpoint write, inside a step — and
    resumed each time: summary.json, every metric / evaluation / probe array and the final parameters
    equal the uninterrupted run's. After each kill the store opens with xarray and says interrupted,
    and `colsim analyze` works on what was recorded (~165 s on 2 shared cores at load ~18)."""
    full, run = tmp_path / "full", tmp_path / "killed"
    assert _colsim(*RUN, "--out", str(full)).returncode == 0
    # 1. in the 3rd flush that writes rows (the one before the checkpoint at step 6)
    first = _colsim(*RUN, "--out", str(run), mode="flush", n=3)
    assert first.returncode == -signal.SIGKILL, first.stderr
    metrics = zarr.open_group(str(run / "store.zarr"), mode="r", use_consolidated=False)["metrics"]
    assert len({a.shape[0] for _, a in metrics.arrays()}) > 1  # the kill cut a flush short: ragged on disk ...
    assert _assert_readable_after_kill(run) == _rows_at_latest_checkpoint(run) == 4  # ... xarray reads a whole flush
    ana = subprocess.run([str(COLSIM), "analyze", str(run)], capture_output=True, text=True, env=ENV, timeout=300)
    assert ana.returncode == 0, ana.stderr
    # 2. half-way through writing its 2nd checkpoint (phase 1's end): the previous ones are untouched
    r = _colsim("run", "--resume", str(run), mode="checkpoint", n=2)
    assert r.returncode == -signal.SIGKILL, r.stderr
    assert [p.name for p in (run / "checkpoints").glob(".*.tmp")] == [".phase01-digits23.pt.tmp"]
    assert latest_checkpoint(run / "checkpoints", [4, 8, 12, 16, 20]).name == "step00000006.pt"
    assert _assert_readable_after_kill(run) >= _rows_at_latest_checkpoint(run)
    # 3. inside step 9 (its optimizer step), resumed from the checkpoint at step 6
    r = _colsim("run", "--resume", str(run), mode="step", n=4)
    assert r.returncode == -signal.SIGKILL, r.stderr
    assert not list((run / "checkpoints").glob(".*.tmp"))  # removed by the checkpoint at step 9
    assert _assert_readable_after_kill(run) >= _rows_at_latest_checkpoint(run) == 9
    last = _colsim("run", "--resume", str(run))  # from step 9, mid-phase
    assert last.returncode == 0, last.stderr
    assert sorted(p.name for p in (run / "checkpoints").glob("step*.pt")) == ["step00000015.pt", "step00000018.pt"]
    _assert_same_run(full, run)


def _rows_at_latest_checkpoint(run: Path) -> int:
    return int(load_checkpoint(latest_checkpoint(run / "checkpoints", [4, 8, 12, 16, 20]))["recorder"]["rows"])


def test_resume_bad_input_exits_2(tmp_path):
    from typer.testing import CliRunner

    from colsim.cli import app

    runner = CliRunner()
    r = runner.invoke(app, ["run", "--resume", str(tmp_path)])
    assert r.exit_code == 2 and "no config.yaml" in r.output
    r = runner.invoke(app, ["run", "--resume", str(tmp_path), "--steps", "3"])
    assert r.exit_code == 2 and "drop --steps" in r.output
    r = runner.invoke(app, ["run", "nonstationary", "--set", "protocol.checkpoint.every=0"])
    assert r.exit_code == 2 and "protocol.checkpoint.every" in r.output
    r = runner.invoke(app, ["run"])
    assert r.exit_code == 2 and "PROTOCOL" in r.output


def test_resume_corrupt_checkpoint_falls_back_or_store_exits_2(tmp_path):
    """A folder whose only checkpoint is corrupt: `--resume` names the file it skipped and why, and starts the run
    again from step 0 (issue 29: before, exit 2 and nothing to do); a valid checkpoint without a store: exit 2."""
    import yaml
    from typer.testing import CliRunner

    from colsim.cli import app
    from colsim.config import resolve_run_config

    runner = CliRunner()
    cfg = resolve_run_config("nonstationary", overrides=TINY + ["protocol.evaluation.probe_samples=10",
                                                                "protocol.evaluation.views=2"], steps=5)
    a, b = tmp_path / "a", tmp_path / "b"
    for d in (a, b):
        (d / "checkpoints").mkdir(parents=True)
        (d / "config.yaml").write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False))
    (a / "checkpoints" / "step00000003.pt").write_bytes(b"PK\x03\x04 truncated")
    r = runner.invoke(app, ["run", "--resume", str(a), "--quiet"])
    assert r.exit_code == 0, r.output
    out = " ".join(r.output.split())
    assert "skipped checkpoints/step00000003.pt (not a readable colsim checkpoint" in out, out
    assert "no readable checkpoint: starting again from step 0 of 5" in out
    assert json.loads((a / "summary.json").read_text())["status"] == "completed"
    save_checkpoint(b / "checkpoints" / "step00000003.pt", step=3, phase=0, t=3, model={}, optimizer={},
                    config="", recorder={"rows": 3, "evals": {}})
    r = runner.invoke(app, ["run", "--resume", str(b)])
    assert r.exit_code == 2 and "store.zarr cannot be opened" in r.output


def test_full_disk_exits_1_store_readable_then_resume_completes(tmp_path):
    """The disk fills mid-run (a 1.2 MB tmpfs; needs root, skipped otherwise): one line, exit 1, the store
    opens at its last flush with status interrupted, the checkpoints load; with room again (remount),
    `--resume` completes the run with every metric row once."""
    from typer.testing import CliRunner

    from colsim.cli import app

    disk = tmp_path / "disk"
    disk.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1200k", "tmpfs", str(disk)], capture_output=True).returncode:
        pytest.skip("cannot mount a tmpfs here (needs root)")
    try:
        runner = CliRunner()
        run = disk / "run"
        r = runner.invoke(app, [*RUN, "--out", str(run)])
        assert r.exit_code == 1, r.output
        err = [ln for ln in r.output.splitlines() if ln.startswith("error:")]
        assert len(err) == 1 and "the disk is full" in err[0] and f"colsim run --resume {run}" in err[0]
        n = _assert_readable_after_kill(run)
        assert 0 < n < 20
        for p in (run / "checkpoints").glob("*.pt"):
            load_checkpoint(p)  # none half-written under a checkpoint's name
        subprocess.run(["mount", "-o", "remount,size=16m", str(disk)], check=True)
        r = runner.invoke(app, ["run", "--resume", str(run), "--quiet"])
        assert r.exit_code == 0, r.output
        t = _open(run)
        assert t.attrs["status"] == "completed"
        assert np.array_equal(t["metrics"]["step"].values, np.arange(20))
        assert json.loads((run / "summary.json").read_text())["steps"] == 20
    finally:
        subprocess.run(["umount", str(disk)], capture_output=True)


class _NanCfg(Strict):
    name: Literal["nan_after_8"] = "nan_after_8"


def _nan_rule(cfg, column=None):
    def update(params, state, trace):  # backprop whose loss turns NaN at its 9th update (the count is rule state)
        n = state["n"] + 1
        loss = trace["loss"] * (float("nan") if n > 8 else 1.0)
        return loss_grads(loss, params), {"n": n}, {"loss.total": float(loss.detach())}

    return Rule(lambda p: {"n": 0}, update, frozenset({"loss", "global"}))


def test_divergence_after_resume_matches_uninterrupted(tmp_path, monkeypatch):
    """A run that diverges at step 8, stopped by SIGTERM at step 5 (mid-phase) and resumed: it diverges at
    the same step (the rule's counter came back with its state), says which terms went non-finite, and
    keeps every record from before and after the resume — equal to the uninterrupted run's."""
    from typer.testing import CliRunner

    from colsim import registry
    from colsim.cli import app

    registry.register_rule("nan_after_8", _NanCfg)(_nan_rule)
    try:
        runner = CliRunner()
        args = ["run", "nonstationary", "--rule", "nan_after_8", "--steps", "15", "--quiet",
                *[a for s in TINY + ["protocol.evaluation.probe_samples=10", "protocol.evaluation.views=2",
                                     "protocol.checkpoint.every=2"] for a in ("--set", s)]]
        full, part = tmp_path / "full", tmp_path / "part"
        assert runner.invoke(app, [*args, "--out", str(full)]).exit_code == 1
        assert invoke_with_signal_at_update(runner, app, [*args, "--out", str(part)], monkeypatch, at=5).exit_code == 143
        assert latest_checkpoint(part / "checkpoints", [3, 6, 9, 12, 15]).name == "step00000005.pt"
        res = runner.invoke(app, ["run", "--resume", str(part)])
        assert res.exit_code == 1 and "run diverged" in res.output
    finally:
        registry.RULES.pop("nan_after_8")
    _assert_same_run(full, part, status="diverged")
    s = json.loads((part / "summary.json").read_text())
    assert s["diverged"] == {"step": 8, "phase": "digits45", "terms": ["loss.total", "grads"]}
    t = _open(part)
    assert t.attrs["status"] == "diverged" and t.attrs["diverged"]["step"] == 8
    assert np.array_equal(t["metrics"]["step"].values, np.arange(9))
    assert len(t["evaluation"]["eval"]) == 3  # init, after phases 0 and 1


@pytest.mark.slow
@pytest.mark.parametrize("spec,at,extra", [("lpl+metaplastic+replay", 7, []), ("layerwise+ewc", 14, []),
                                           ("backprop+metaplastic+si+replay", 11, []),
                                           ("espp", 6, ["--model", "spiking_cnn", "--set", "model.T=3"]),
                                           ("backprop", 11, ["--set", "protocol.schedule=cosine",
                                                             "--set", "rule.optimizer.warmup_steps=4"])],
                         ids=["lpl+metaplastic+replay", "layerwise+ewc", "backprop+metaplastic+si+replay", "espp-spiking",
                              "backprop-cosine"])
def test_stateful_rules_resume_mid_phase_bit_for_bit(tmp_path, monkeypatch, spec, at, extra):
    """Every rule's state survives a mid-phase stop and in-place resume: LPL's running statistics,
    metaplastic availabilities, SI / EWC accumulators, replay buffers and their RNG, layerwise's
    predictors, the spiking column's state (rate-coding seeds) under ESPP, a cosine learning-rate
    schedule stopped half-way down — the resumed run equals the uninterrupted one (~40 s each, 2
    shared cores at load ~18)."""
    from typer.testing import CliRunner

    from colsim.cli import app

    runner = CliRunner()
    args = [*RUN[:2], "--rule", spec, *RUN[4:], *extra]
    full, part = tmp_path / "full", tmp_path / "part"
    assert runner.invoke(app, [*args, "--out", str(full)]).exit_code == 0
    res = invoke_with_signal_at_update(runner, app, [*args, "--out", str(part)], monkeypatch, at=at, sig=signal.SIGINT)
    assert res.exit_code == 130, res.output
    assert (part / "checkpoints" / f"step{at:08d}.pt").is_file()
    res = runner.invoke(app, ["run", "--resume", str(part), "--quiet"])
    assert res.exit_code == 0, res.output
    _assert_same_run(full, part)
    if "protocol.schedule=cosine" in extra:  # the stop fell on the way down: warm-up to 4e-4, cosine to 1e-5
        lr = _open(part)["metrics"]["lr"].values
        assert lr[3] == pytest.approx(4e-4) and lr[3] > lr[at - 1] > lr[at] > lr[-1] == pytest.approx(1e-5)


def test_a_signal_under_seeds_stops_the_whole_command(tmp_path, monkeypatch):
    """Issue 29: SIGINT during seed 0 of --seeds 0,1 stops seed 0 at a step boundary with a checkpoint, exits 130
    and starts no further seed (before, seed 1 ran anyway and the command ended 'runs failed')."""
    from typer.testing import CliRunner

    from colsim.cli import app

    runner = CliRunner()
    args = ["run", "nonstationary", "--rule", "backprop", "--steps", "20", "--seeds", "0,1", "--quiet", *SETS,
            "--out", str(tmp_path / "r")]
    res = invoke_with_signal_at_update(runner, app, args, monkeypatch, at=5, sig=signal.SIGINT)
    assert res.exit_code == 130, res.output
    out = " ".join(res.output.split())
    assert f"colsim run --resume {tmp_path / 'r-s0'}" in out and "seeds 1 were not started" in out
    assert (tmp_path / "r-s0" / "checkpoints").is_dir() and not (tmp_path / "r-s1").exists()
    assert json.loads((tmp_path / "r-s0" / "summary.json").read_text())["status"] == "interrupted"


# packaged defaults (stationary: no step checkpoints, a time-based one every 120 s), a 12-step run of the tiny column
DEFAULTS = ["run", "stationary", "--steps", "12", "--seed", "1", "--quiet",
            *[a for s in TINY + ["protocol.evaluation.probe_samples=10", "protocol.evaluation.views=2"]
              for a in ("--set", s)]]


@pytest.mark.slow
def test_a_kill_before_the_first_checkpoint_restarts_in_place_and_after_it_resumes(tmp_path):
    """Issue 29: packaged defaults, SIGKILL inside step 7, before any checkpoint: `--resume` starts the run again
    in place from step 0 with its resolved config (before: refused, and the folder could not be reused) and ends
    with the uninterrupted run. The reference is `colsim run KILLED/config.yaml`, the run's resolved config run
    again. With a time-based checkpoint at every step boundary (every_seconds tiny), a kill inside step 7 resumes
    from step 6; a corrupt newest checkpoint is skipped, named, and the older one used."""
    killed = tmp_path / "killed"
    r = _colsim(*DEFAULTS, "--out", str(killed), mode="step", n=7)
    assert r.returncode == -signal.SIGKILL, r.stderr
    assert not list((killed / "checkpoints").glob("*.pt"))
    ref = tmp_path / "ref"
    r = _colsim("run", str(killed / "config.yaml"), "--quiet", "--out", str(ref))
    assert r.returncode == 0, r.stderr
    r = _colsim("run", "--resume", str(killed), "--quiet")
    assert r.returncode == 0, r.stderr
    assert "starting again from step 0 of 12" in " ".join(r.stdout.split())
    _assert_same_run(ref, killed, phase_file="phase00-all_digits.pt")

    timed = tmp_path / "timed"
    r = _colsim(*DEFAULTS, "--set", "protocol.checkpoint.every_seconds=1e-6", "--out", str(timed), mode="step", n=7)
    assert r.returncode == -signal.SIGKILL, r.stderr
    names = sorted(p.name for p in (timed / "checkpoints").glob("step*.pt"))
    assert names == ["step00000005.pt", "step00000006.pt"], names  # one per step boundary, the last 2 kept
    (timed / "checkpoints" / "step00000006.pt").write_bytes(b"PK\x03\x04 truncated")
    r = _colsim("run", "--resume", str(timed), "--quiet")
    assert r.returncode == 0, r.stderr
    out = " ".join((r.stdout + r.stderr).split())
    assert "skipped checkpoints/step00000006.pt" in out and "from step 5 of 12 (step00000005.pt)" in out
    ref2 = tmp_path / "ref2"
    assert _colsim("run", str(timed / "config.yaml"), "--quiet", "--out", str(ref2)).returncode == 0
    _assert_same_run(ref2, timed, phase_file="phase00-all_digits.pt")


def test_read_only_run_folder_exits_2_one_line(tmp_path, monkeypatch):
    """Issue 29: `--resume` and `analyze` on a run folder this process may not write exit 2 with one line naming
    the path (before: a 98-line PermissionError traceback). Runs as root ignore chmod, so os.access is patched."""
    import os as _os

    from typer.testing import CliRunner

    from colsim.cli import app

    runner = CliRunner()
    run = tmp_path / "run"
    res = runner.invoke(app, [*DEFAULTS[:3], "4", *DEFAULTS[4:], "--out", str(run)])
    assert res.exit_code == 0, res.output
    real = _os.access
    monkeypatch.setattr(_os, "access", lambda p, mode, **kw: False if mode == _os.W_OK and str(run) in str(p)
                        else real(p, mode, **kw))
    for args in (["run", "--resume", str(run)], ["analyze", str(run)]):
        res = runner.invoke(app, args)
        assert res.exit_code == 2, res.output
        assert "not writable (permission denied)" in res.output and str(run) in res.output, res.output
        assert "Traceback" not in res.output and len(res.output.strip().splitlines()) == 1, res.output


def test_permission_error_mid_run_is_not_called_a_full_disk(tmp_path, monkeypatch):
    """A store made read-only in mid-run: exit 1 naming the permission, not the disk-full message."""
    import errno as _errno

    from typer.testing import CliRunner

    import colsim.record as R
    from colsim.cli import app

    flush = R.ZarrRecorder.flush
    calls = {"n": 0}

    def denied(self):
        calls["n"] += 1
        if calls["n"] == 2:
            raise PermissionError(_errno.EACCES, "Permission denied", str(self.path / "metrics"))
        return flush(self)

    monkeypatch.setattr(R.ZarrRecorder, "flush", denied)
    res = CliRunner().invoke(app, [*DEFAULTS, "--out", str(tmp_path / "run")])
    assert res.exit_code == 1, res.output
    out = " ".join(res.output.split())
    assert "permission denied writing" in out and "disk is full" not in out and "once there is room" not in out
