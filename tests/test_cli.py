"""CLI: runs end to end on tiny settings, bad input exits 2 with one line, divergence exits 1."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Literal

import numpy as np
import pytest
import torch
import xarray as xr
from typer.testing import CliRunner

from _tiny import TINY
from colsim import registry
from colsim.cli import app
from colsim.config import Strict
from colsim.rule import Rule, loss_grads

runner = CliRunner()
SETS = [a for s in TINY for a in ("--set", s)]


def _run(tmp_path: Path, *args: str, name="run"):
    out = tmp_path / name
    res = runner.invoke(app, ["run", *args, "--out", str(out), "--quiet", *SETS])
    return res, out


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("cli")
    res, out = _run(tmp, "protocols/nonstationary.yaml", "--rule", "lpl", "--steps", "10")
    assert res.exit_code == 0, res.output
    return out, res.output


def test_run_writes_everything(tiny_run):
    out, output = tiny_run
    assert (out / "config.yaml").is_file() and (out / "summary.json").is_file()
    ckpts = sorted(p.name for p in (out / "checkpoints").iterdir())
    assert ckpts == ["phase00-digits01.pt", "phase01-digits23.pt", "phase02-digits45.pt", "phase03-digits67.pt",
                     "phase04-digits89.pt"]
    s = json.loads((out / "summary.json").read_text())
    for k in ("accuracy_matrix", "forgetting", "bwt", "probe_acc_agg", "probe_acc_z", "equivariance_r2", "steps",
              "wall_s", "status"):
        assert k in s
    assert s["status"] == "completed" and s["steps"] == 10
    assert len(s["accuracy_matrix"]) == 6 and all(len(r) == 5 for r in s["accuracy_matrix"])
    A = np.array(s["accuracy_matrix"][1:])
    assert s["forgetting"] == pytest.approx(np.mean([A[k, k] - A[4, k] for k in range(4)]))
    assert s["bwt"] == pytest.approx(-s["forgetting"])
    assert "colsim summary" in output and "forgetting" in output


def test_store_round_trip(tiny_run):
    out, _ = tiny_run
    tree = xr.open_datatree(out / "store.zarr", engine="zarr")
    assert tree.attrs["status"] == "completed" and tree.attrs["rule"] == "lpl"
    assert tree.attrs["config"]["protocol"]["name"] == "nonstationary"
    m = tree["metrics"].to_dataset()
    assert list(m["step"].values) == list(range(10))
    # 2 steps per phase: the first tick of each phase predicts nothing (window reset) and records NaN
    loss = m["loss"].values
    assert np.isnan(loss[0::2]).all() and np.isfinite(loss[1::2]).all() and "lpl.l0.hebb" in m
    probe = tree["probe"].to_dataset()
    assert probe["z"].dims == ("eval", "probe_set", "sample", "view", "unit")
    assert probe["z"].shape[:4] == (6, 5, 20, 3)
    assert list(probe["phase"].values) == ["init", "digits01", "digits23", "digits45", "digits67", "digits89"]
    assert probe["label_class"].sel(probe_set="digits23").values.tolist().count(2) == 10
    ev = tree["evaluation"].to_dataset()
    s = json.loads((out / "summary.json").read_text())
    np.testing.assert_allclose(ev["acc_agg"].values, np.array(s["accuracy_matrix"], dtype=float))
    # recomputing the probe from the stored activity reproduces the recorded number
    from colsim.analysis.probes import fit_readout, group_sides, readout_accuracy

    # the in-run split: one seeded assignment of source images (episodes without image labels) to sides
    groups = probe["label_image"].values if "label_image" in probe else np.arange(5 * 20).reshape(5, 20)
    fit = group_sides(groups, seed=0)[1]
    z_agg = probe["z_agg"].isel(eval=2, probe_set=1).values
    y = probe["label_class"].isel(probe_set=1).values
    acc, _ = readout_accuracy(fit_readout(z_agg[fit], y[fit]), z_agg[~fit], y[~fit])
    assert acc == pytest.approx(float(ev["acc_agg"].isel(eval=2, probe_set=1)))


def test_checkpoint_loads_weights_only(tiny_run):
    out, _ = tiny_run
    ck = torch.load(out / "checkpoints" / "phase04-digits89.pt", weights_only=True)
    assert ck["step"] == 10 and ck["phase"] == 5
    for key in ("model", "optimizer", "rule_state", "torch_rng", "stream_state", "column_state", "config"):
        assert key in ck
    assert "rng" in ck["stream_state"] and ck["column_state"]["obs"].shape[0] == 8
    from _tiny import build_tiny

    *_, column, _, _, _ = build_tiny("lpl")
    column.load_state_dict(ck["model"])  # strict: every parameter and buffer present


def test_determinism_same_seed_same_summary(tmp_path):
    a, oa = _run(tmp_path, "nonstationary", "--rule", "backprop", "--steps", "6", "--seed", "5", name="a")
    b, ob = _run(tmp_path, "nonstationary", "--rule", "backprop", "--steps", "6", "--seed", "5", name="b")
    assert a.exit_code == 0 and b.exit_code == 0, a.output + b.output
    sa, sb = json.loads((oa / "summary.json").read_text()), json.loads((ob / "summary.json").read_text())
    for k in ("wall_s", "eval_s", "eval_share"):  # timings
        sa.pop(k), sb.pop(k)
    assert sa == sb
    c, oc = _run(tmp_path, "nonstationary", "--rule", "backprop", "--steps", "6", "--seed", "6", name="c")
    sc = json.loads((oc / "summary.json").read_text())
    sc.pop("wall_s")
    assert sc != sa


def test_existing_run_folder_never_overwritten(tiny_run):
    out, _ = tiny_run
    before = (out / "summary.json").read_text()
    res = runner.invoke(app, ["run", "nonstationary", "--out", str(out), "--quiet", *SETS, "--steps", "5"])
    assert res.exit_code == 2 and "already exists" in res.output
    assert (out / "summary.json").read_text() == before


@pytest.mark.parametrize("args,msg", [
    (["run", "nope.yaml"], "file not found"),
    (["run", "nonstationary", "--rule", "foo"], "unknown rule 'foo'; valid:"),
    (["run", "nonstationary", "--model", "foo"], "unknown model preset 'foo'; valid:"),
    (["run", "nonstationary", "--steps", "-4"], "--steps: must be > 0"),
    (["run", "nonstationary", "--set", "protocol.phases[2].steps=-1"], "protocol.phases[2].steps: must be > 0"),
    (["run", "nonstationary", "--set", "protocol.stream.batch=many"], "protocol.stream.batch"),
    (["run", "nonstationary", "--set", "model.bogus=1"], "model.bogus: unknown key"),
    (["run", "nonstationary", "--device", "tpu"], "device: must be cpu"),
    (["validate", "nonstationary", "--rule", "foo"], "unknown rule"),
    (["list", "things"], "unknown kind"),
])
def test_bad_input_exit_2_one_line(args, msg, tmp_path):
    res = runner.invoke(app, args + (["--out", str(tmp_path / "o")] if args[0] == "run" else []))
    assert res.exit_code == 2, res.output
    text = " ".join(res.output.split())
    assert msg in text
    assert "Traceback" not in res.output
    assert not (tmp_path / "o").exists()


def test_malformed_and_non_mapping_files(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\nphases: [1, 2\n")
    res = runner.invoke(app, ["validate", str(bad)])
    assert res.exit_code == 2 and "malformed YAML" in res.output
    lst = tmp_path / "list.yaml"
    lst.write_text("- a\n- b\n")
    res = runner.invoke(app, ["validate", str(lst)])
    assert res.exit_code == 2 and "must be a mapping" in res.output


def test_unwritable_output_folder(tmp_path):
    import os

    if os.geteuid() == 0:
        pytest.skip("running as root: directory permissions are not enforced (see test_output_path_is_a_file)")
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    try:
        res = runner.invoke(app, ["run", "nonstationary", "--quiet", "--out", str(ro / "sub" / "run"), "--steps", "5", *SETS])
        if res.exit_code == 0:  # root ignores permissions
            pytest.skip("running as root: permissions are not enforced")
        assert res.exit_code == 2 and "cannot create the run folder" in res.output
    finally:
        ro.chmod(0o700)


def test_output_path_is_a_file(tmp_path):
    f = tmp_path / "file"
    f.write_text("x")
    res = runner.invoke(app, ["run", "nonstationary", "--quiet", "--out", str(f / "run"), "--steps", "5", *SETS])
    assert res.exit_code == 2 and "cannot create the run folder" in " ".join(res.output.split())


class _NanCfg(Strict):
    name: Literal["nan_after_3"] = "nan_after_3"


def _nan_rule(cfg, column=None):
    def update(params, state, trace):
        n = state["n"] + 1
        loss = trace["loss"] * (float("nan") if n > 3 else 1.0)
        return loss_grads(loss, params), {"n": n}, {"loss.total": float(loss.detach())}

    return Rule(lambda p: {"n": 0}, update, frozenset({"loss", "global"}))


def test_diverged_run_exit_1_store_intact(tmp_path):
    registry.register_rule("nan_after_3", _NanCfg)(_nan_rule)
    try:
        res, out = _run(tmp_path, "nonstationary", "--rule", "nan_after_3", "--steps", "10")
    finally:
        registry.RULES.pop("nan_after_3")
    assert res.exit_code == 1, res.output
    tree = xr.open_datatree(out / "store.zarr", engine="zarr")
    assert tree.attrs["status"] == "diverged"
    loss = tree["metrics"]["loss.total"].values
    # steps 0 and 2 open a phase (nothing predicted: NaN, not a divergence); step 3 diverged
    assert len(loss) == 4 and np.isfinite(loss[1]) and np.isnan(loss[[0, 2, 3]]).all()
    s = json.loads((out / "summary.json").read_text())
    # the init evaluation and the one after phase 0 (2 steps) survive; phase 1 diverged at its 2nd step
    assert s["status"] == "diverged" and len(s["accuracy_matrix"]) == 2


def test_console_script_bad_input_no_traceback(tmp_path):
    exe = Path(sys.executable).parent / "colsim"
    res = subprocess.run([str(exe), "run", str(tmp_path / "missing.yaml")], capture_output=True, text=True,
                         cwd=tmp_path)
    assert res.returncode == 2
    assert "Traceback" not in res.stderr and "file not found" in res.stderr
    assert len([ln for ln in res.stderr.strip().splitlines() if ln.strip()]) == 1


def test_list_and_validate():
    res = runner.invoke(app, ["list", "rules"])
    assert res.exit_code == 0 and "lpl" in res.output and "backprop" in res.output
    res = runner.invoke(app, ["list", "protocols"])
    assert "nonstationary" in res.output and "stationary" in res.output
    res = runner.invoke(app, ["list", "worlds"])
    assert "affine_digits" in res.output
    res = runner.invoke(app, ["validate", "nonstationary", "--rule", "lpl"])
    assert res.exit_code == 0 and "layer-local" in res.output and "5 phases" in res.output
    res = runner.invoke(app, ["validate", "stationary"])
    assert res.exit_code == 0 and "stationary: 1 phase," in res.output  # issue 29: was "1 phases"


def test_resume_from_checkpoint_matches_uninterrupted_run(tmp_path):
    full, of = _run(tmp_path, "nonstationary", "--rule", "lpl", "--steps", "10", "--seed", "2", name="full")
    assert full.exit_code == 0, full.output
    res = runner.invoke(app, ["run", "nonstationary", "--resume", str(of / "checkpoints" / "phase01-digits23.pt"),
                              "--out", str(tmp_path / "resumed"), "--quiet"])
    assert res.exit_code == 0, res.output
    a = torch.load(of / "checkpoints" / "phase04-digits89.pt", weights_only=True)
    b = torch.load(tmp_path / "resumed" / "checkpoints" / "phase04-digits89.pt", weights_only=True)
    assert a["step"] == b["step"] == 10
    for k, v in a["model"].items():
        assert torch.equal(v, b["model"][k]), k
    s_full = json.loads((of / "summary.json").read_text())
    s_res = json.loads((tmp_path / "resumed" / "summary.json").read_text())
    assert s_res["accuracy_matrix"] == s_full["accuracy_matrix"][3:]  # evaluations after phases 2..4
    bad = runner.invoke(app, ["run", "nonstationary", "--resume", str(of / "config.yaml"), "--quiet",
                              "--out", str(tmp_path / "x")])
    assert bad.exit_code == 2 and "not a colsim checkpoint" in bad.output


def test_analyze_and_dashboard_of_a_real_run(tiny_run, tmp_path):
    """`colsim analyze` and `colsim dashboard` on a real short run; the page renders in headless Chromium."""
    import shutil

    out, _ = tiny_run
    res = runner.invoke(app, ["analyze", str(out)])
    assert res.exit_code == 0, res.output
    tree = xr.open_datatree(out / "store.zarr", engine="zarr")
    assert "analysis" in tree.children
    # the analysis' pooled linear equivariance probe is the run's own number (same pairs, split, penalty grid)
    from colsim.analysis.analyze import summary_from_store

    run_r2 = json.loads((out / "summary.json").read_text())["equivariance_r2"][-1]  # per evaluation: the last
    assert summary_from_store(out)["equivariance_r2_pooled"] == pytest.approx(run_r2, abs=1e-6)
    page = tmp_path / "dash.html"
    res = runner.invoke(app, ["dashboard", str(out), "-o", str(page)])
    assert res.exit_code == 0, res.output
    html = page.read_text()
    from colsim.analysis.dashboard import TITLES

    for title in ("Accuracy matrix", "Loss components"):
        assert any(title.lower() in t.lower() for t in TITLES)
        assert title.lower() in html.lower(), title
    assert "cdn.bokeh.org" not in html  # resources inline: opens with no network
    exe = shutil.which("chromium") or "/usr/bin/chromium"
    if not Path(exe).exists():
        pytest.skip("chromium is not installed (make test installs it with tests/analysis/ensure_chromium.sh)")
    png = tmp_path / "dash.png"
    subprocess.run([exe, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                    "--disable-background-networking", "--disable-component-update", "--disable-sync",
                    f"--user-data-dir={tmp_path / 'profile'}", f"--screenshot={png}", "--window-size=1400,1800",
                    "--virtual-time-budget=10000", page.resolve().as_uri()], capture_output=True, timeout=120)
    from PIL import Image

    img = np.asarray(Image.open(png).convert("RGB"))
    # one run: one narrow panel per row (240-px frames), so about 5 % of the page is drawn; the header alone is ~1 %
    assert (img < 240).any(-1).mean() > 0.03, "screenshot nearly blank"
    assert len(np.unique(img.reshape(-1, 3)[::7], axis=0)) > 50, "plots did not render"
    lower = img[700:].astype(int)  # below the header: coloured plot lines, not just grey text
    assert (np.abs(lower - lower.mean(-1, keepdims=True)) > 40).any(-1).mean() > 0.002


def test_list_descriptions_end_on_a_whole_word():
    """Issue 29: `colsim list models` cut descriptions mid-word ("the action embe")."""
    from colsim.cli.commands import first_sentence

    assert first_sentence("seq-JEPA with CRATE blocks (Yu et al. 2023): integration A. More text.") == \
        "seq-JEPA with CRATE blocks (Yu et al. 2023): integration A."
    long = "word " * 60
    short = first_sentence(long, limit=50)
    assert short.endswith(" …") and len(short) <= 50 and all(w == "word" for w in short[:-2].split())
    res = runner.invoke(app, ["list", "models"])
    assert res.exit_code == 0 and "the action embe\n" not in res.output and "embedding, no regulariser." in \
        " ".join(res.output.replace("│", " ").split())
