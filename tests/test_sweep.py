"""colsim sweep: planning (grid x zip over any config field), bad input exit 2 with one line naming the
field, the SLURM job script dask-jobqueue generates, the folder lock, and a LocalCluster sweep end to end
(failure recorded, re-run skips finished runs, a sweep is one dataset, compare / dashboard on it)."""
from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from typer.testing import CliRunner

from _tiny import TINY
from colsim.cli import app
from colsim.config import ConfigError
from colsim.sweep import (ClusterConfig, SweepLock, coordinate_names, load_sweep, local_cluster_size, plan_runs,
                          slurm_cluster)

pytest.importorskip("distributed", reason="colsim sweep needs dask.distributed (pip install 'colsim[distributed]')")

runner = CliRunner()
FAST = TINY + ["protocol.evaluation.at_start=false"]


def _write(tmp_path: Path, doc: dict, name="sw.yaml") -> Path:
    p = tmp_path / name
    p.write_text(yaml.safe_dump(doc, sort_keys=False))
    return p


def _base(**kw) -> dict:
    return {"protocol": "stationary", "steps": 4, "set": list(FAST), **kw}


def test_packaged_rules_seeds_sweep_plans_the_readme_comparison():
    sw, path = load_sweep("protocols/sweeps/rules_seeds.yaml")
    assert path.name == "rules_seeds.yaml" and sw.name == "rules_seeds"
    runs = plan_runs(sw)
    assert len(runs) == 10 * 2 * 3
    rules = [r.point["rule"] for r in runs]
    assert sorted(set(rules)) == sorted(["frozen", "backprop", "lpl", "layerwise", "sparse_coding", "backprop+replay",
                                         "backprop+si", "backprop+ewc", "backprop+metaplastic", "lpl+replay"])
    r = next(r for r in runs if r.point == {"rule": "lpl+replay", "protocol": "action_shift", "seed": 2})
    assert r.name == "rule=lpl+replay__protocol=action_shift__seed=2"
    assert r.identity == {"rule": "lpl+replay", "model": "seqjepa_cnn", "protocol": "action_shift", "seed": 2}
    assert [w["name"] for w in r.config["rule"]["wrap"]] == ["replay"]
    assert r.config["protocol"]["name"] == "action_shift"
    assert r.config["seed"] == 2 and r.config["protocol"]["phases"][0]["steps"] == 250  # full length
    assert load_sweep("rules_seeds", steps=40)[0].base.steps == 40  # packaged name; --steps replaces base.steps


@pytest.mark.parametrize("name", ["forgetting_action_shift", "forgetting_nonstationary", "si_scan", "ewc_scan"])
def test_packaged_forgetting_sweeps_plan_ten_seeds_and_the_scans(name):
    sw, _ = load_sweep(name)
    runs = plan_runs(sw)
    if name.startswith("forgetting_"):
        assert len(runs) == 8 * 10 and {r.point["seed"] for r in runs} == set(range(10))
        assert {"frozen", "backprop", "backprop+replay", "lpl+replay"} <= {r.point["rule"] for r in runs}
        assert runs[0].config["protocol"]["phases"][0]["steps"] == (100 if "action" in name else 80)  # 400 steps
    else:
        assert all(r.config["protocol"]["evaluation"]["pool"] == "validation" for r in runs)  # never the probe sets


def test_protocols_learn_sweep_covers_every_other_packaged_protocol():
    """Issue 27's re-check: every packaged protocol not measured by the forgetting sweeps or the trained-vs-
    untrained test, at its packaged length with its own rule, three seeds."""
    from colsim import presets

    sw, _ = load_sweep("protocols_learn")
    runs = plan_runs(sw)
    protos = {r.identity["protocol"] for r in runs}
    # the supervised scenario protocols (issue 30) have no prediction loss; tests/models/test_classifier.py runs them
    # and EchoSpike's own setting (issue 31) no world-model objective; tests/models/test_echospike.py runs those
    scenarios = {n for n in presets.preset_names("protocols") if n.startswith(("split_", "permuted_", "echospike_"))}
    assert protos == set(presets.preset_names("protocols")) - {"stationary", "nonstationary", "action_shift"} - scenarios
    assert len(runs) == 3 * len(protos) and {r.point["seed"] for r in runs} == {0, 1, 2}
    online = next(r for r in runs if r.identity["protocol"] == "online")
    assert online.config["protocol"]["phases"][0]["steps"] == 4000  # the packaged length, not shortened


def test_plan_grid_times_zip_over_set_paths(tmp_path):
    p = _write(tmp_path, {"name": "g", "base": _base(rule="lpl"),
                          "grid": {"seed": "0-1", "rule.optimizer.lr": [1e-3, 3e-3]},
                          "zip": {"protocol.stream.batch": [4, 6], "model.predictor.hidden": [8, 12]}})
    sw, _ = load_sweep(str(p))
    runs = plan_runs(sw)
    assert len(runs) == 2 * 2 * 2
    assert runs[0].point == {"seed": 0, "lr": 1e-3, "batch": 4, "hidden": 8}
    for r in runs:
        c = r.config
        assert c["seed"] == r.point["seed"] and c["rule"]["optimizer"]["lr"] == r.point["lr"]
        assert c["protocol"]["stream"]["batch"] == r.point["batch"] and c["model"]["predictor"]["hidden"] == r.point[
            "hidden"]
        assert (r.point["batch"], r.point["hidden"]) in ((4, 8), (6, 12))  # zipped, not crossed
        assert c["rule"]["name"] == "lpl" and sum(ph["steps"] for ph in c["protocol"]["phases"]) == 4
    assert len({r.name for r in runs}) == 8
    assert runs[0].name == "seed=0__lr=0.001__batch=4__hidden=8"


def test_coordinate_names_short_unless_ambiguous():
    assert coordinate_names(["rule", "rule.optimizer.lr", "seed"]) == {"rule": "rule", "rule.optimizer.lr": "lr",
                                                                       "seed": "seed"}
    both = ["rule.optimizer.lr", "rule.partition.encoder.optimizer.lr"]
    assert coordinate_names(both) == {k: k for k in both}
    assert coordinate_names(["model.name"]) == {"model.name": "name"}
    assert coordinate_names(["protocol.rule"]) == {"protocol.rule": "protocol.rule"}  # would shadow `rule`


def test_local_cluster_sized_to_the_cores():
    assert local_cluster_size(ClusterConfig(), cores=8) == 8
    assert local_cluster_size(ClusterConfig(threads=2), cores=8) == 4
    assert local_cluster_size(ClusterConfig(threads=4), cores=2) == 1
    assert local_cluster_size(ClusterConfig(workers=3, threads=2), cores=8) == 3


BAD = [
    ({"grdi": {"seed": [0]}}, "sweep.grdi: unknown key"),
    ({"grid": {"sed": [0, 1]}}, "sweep.grid['sed']: unknown sweep field"),
    ({"grid": {"rule.optimizer.lrr": [1e-3]}},
     "sweep.grid['rule.optimizer.lrr'] = 0.001: rule.optimizer.lrr: unknown key"),
    ({"grid": {"rule.optimizer.lr": [1e-3, -1]}},
     "sweep.grid['rule.optimizer.lr'] = -1: rule.optimizer.lr: must be > 0"),
    ({"grid": {"seed": []}}, "sweep.grid['seed']: empty list of values"),
    ({"grid": {}}, "sweep.grid: empty grid"),
    ({"grid": {"rule": ["nosuchrule"]}}, "sweep.grid['rule'] = 'nosuchrule': unknown rule 'nosuchrule'"),
    ({"zip": {"seed": [0, 1], "rule": ["lpl"]}}, "sweep.zip['rule']: 1 values, but sweep.zip['seed'] has 2"),
    ({"grid": {"seed": [0]}, "cluster": {"threads": 0}}, "sweep.cluster.threads: must be >= 1"),
    ({"grid": {"seed": [0]}, "cluster": {"slurm": {"walltime": "two hours"}}}, "sweep.cluster.slurm.walltime:"),
    ({"grid": {"seed": [0]}, "base": {"protocol": "stationary", "sett": []}}, "sweep.base.sett: unknown key"),
]


@pytest.mark.parametrize("doc,msg", BAD, ids=[m.split(":")[0] for _, m in BAD])
def test_bad_sweep_exit_2_one_line(tmp_path, doc, msg):
    res = runner.invoke(app, ["sweep", str(_write(tmp_path, doc)), "--out", str(tmp_path / "o")])
    assert res.exit_code == 2, res.output
    lines = res.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and msg in lines[0], res.output
    assert not (tmp_path / "o").exists()  # nothing written before the sweep is valid


@pytest.mark.parametrize("args,msg", [
    (["--scheduler", "tcp://127.0.0.1:1"], "--scheduler tcp://127.0.0.1:1: cannot reach a dask scheduler"),
    (["--scheduler", "no address"], "--scheduler no address: not a scheduler address"),
    (["--cluster", "pbs"], "--cluster pbs: choose local or slurm"),
    (["--cluster", "slurm"], "sweep.cluster.slurm: required for --cluster slurm"),
    (["--scheduler", "tcp://127.0.0.1:1", "--cluster", "local"], "--scheduler / --cluster: give one"),
    (["--threads", "0"], "--threads: must be >= 1"),
])
def test_bad_cluster_options_exit_2_fast(tmp_path, args, msg):
    p = _write(tmp_path, {"base": _base(), "grid": {"seed": [0]}})
    t0 = time.perf_counter()
    res = runner.invoke(app, ["sweep", str(p), "--out", str(tmp_path / "o"), *args])
    assert res.exit_code == 2, res.output
    assert res.output.count("error:") == 1 and msg in res.output, res.output
    assert time.perf_counter() - t0 < 15  # an unreachable scheduler does not hang
    assert not (tmp_path / "o").exists()  # checked before the sweep folder is made


def test_slurm_without_dask_jobqueue_exit_2(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "dask_jobqueue", None)  # as if not installed
    p = _write(tmp_path, {"base": _base(), "grid": {"seed": [0]}, "cluster": {"slurm": {"queue": "q"}}})
    res = runner.invoke(app, ["sweep", str(p), "--out", str(tmp_path / "o"), "--cluster", "slurm"])
    assert res.exit_code == 2 and "--cluster slurm: needs dask-jobqueue" in res.output, res.output
    assert not (tmp_path / "o").exists()


def test_slurm_job_script_from_the_sweep_yaml(tmp_path):
    pytest.importorskip("dask_jobqueue", reason="dask-jobqueue not installed")
    p = _write(tmp_path, {"base": _base(), "grid": {"seed": [0]},
                          "cluster": {"kind": "slurm", "threads": 2, "dashboard_address": ":0",
                                      "slurm": {"queue": "gpu", "account": "lab", "cores": 8, "memory": "32GB",
                                                "walltime": "02:30:00", "jobs": 3,
                                                "job_extra_directives": ["--gres=gpu:1"],
                                                "prologue": ["module load cuda"]}}})
    sw, _ = load_sweep(str(p))
    cluster = slurm_cluster(sw.cluster)
    try:
        script = cluster.job_script()
    finally:
        cluster.close()
    lines = script.splitlines()
    assert lines[0] == "#!/usr/bin/env bash"
    for want in ("#SBATCH -p gpu", "#SBATCH -A lab", "#SBATCH -n 1", "#SBATCH --cpus-per-task=8",
                 "#SBATCH -t 02:30:00", "#SBATCH --gres=gpu:1", "export OMP_NUM_THREADS=2", "module load cuda"):
        assert want in lines, (want, script)
    assert any(ln.startswith("#SBATCH --mem=") and ln.endswith("G") for ln in lines), script
    cmd = lines[-1]
    assert cmd.startswith(sys.executable + " -m distributed.cli.dask_worker tcp://")
    assert "--nworkers 4" in cmd and "--nthreads 2" in cmd  # 8 cores / 2 threads per run
    assert "--resources run=1" in cmd  # one run at a time per worker process
    assert "--memory-limit 7.45GiB" in cmd  # 32 GB over 4 workers


def test_second_sweep_on_a_locked_folder_refuses(tmp_path):
    p = _write(tmp_path, {"base": _base(), "grid": {"seed": [0]}})
    out = tmp_path / "o"
    out.mkdir()
    with SweepLock(out):
        assert (out / ".sweep.lock").read_text().strip() == str(__import__("os").getpid())
        res = runner.invoke(app, ["sweep", str(p), "--out", str(out)])
        assert res.exit_code == 2, res.output
        line = res.output.strip()
        assert len(line.splitlines()) == 1
        assert "another colsim sweep is writing to this folder" in line and ".sweep.lock" in line
        with pytest.raises(ConfigError, match="another colsim sweep"):
            SweepLock(out).__enter__()
    with SweepLock(out):  # released
        pass


def _meta(run_dir: Path) -> dict:
    return json.loads((run_dir / "sweep_run.json").read_text())


@pytest.mark.skipif(torch.cuda.is_available(), reason="the failing run is a CUDA run on a machine without CUDA")
def test_local_cluster_sweep_end_to_end(tmp_path):
    """2 rules x (cpu, cuda) on a 2-worker LocalCluster: the CUDA runs fail and are recorded, the others
    complete exactly as `colsim run` would; a re-run (on the same cluster via --scheduler) skips the
    finished runs, re-runs the failed and interrupted ones; open_runs / compare / dashboard take the folder."""
    from distributed import LocalCluster

    from colsim.analysis import open_run, open_runs

    p = _write(tmp_path, {"name": "tiny", "base": _base(), "grid": {"rule": ["backprop", "lpl"],
                                                                     "device": ["cpu", "cuda"]},
                          "cluster": {"workers": 2, "dashboard_address": ":0"}})
    out = tmp_path / "sweep"
    res = runner.invoke(app, ["sweep", str(p), "--out", str(out)])
    assert res.exit_code == 1, res.output  # some runs failed
    assert "dask dashboard: http://" in res.output and "4/4" in res.output
    assert "runs: completed 2, failed 2" in res.output
    runs = out / "runs"
    names = sorted(d.name for d in runs.iterdir())
    assert names == ["rule=backprop__device=cpu", "rule=backprop__device=cuda", "rule=lpl__device=cpu",
                     "rule=lpl__device=cuda"]
    for n in names:
        m = _meta(runs / n)
        assert m["attempts"] == 1 and m["point"]["device"] in ("cpu", "cuda")
        if m["point"]["device"] == "cuda":
            assert m["status"] == "failed" and "CUDA is not available" in m["error"]
            assert "ConfigError" in (runs / n / "error.txt").read_text()
        else:
            assert m["status"] == "completed" and m["steps"] == 4
            s = json.loads((runs / n / "summary.json").read_text())
            assert s["status"] == "completed" and s["steps"] == 4
            assert m["identity"] == {"rule": m["point"]["rule"], "model": "seqjepa_cnn_cr", "protocol": "stationary",
                                     "seed": 0}
    # a sweep run is an ordinary run: `colsim run` with the same settings and threads (1) records the same losses
    ref = tmp_path / "ref"
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        r = runner.invoke(app, ["run", "stationary", "--rule", "lpl", "--steps", "4", "--quiet", "--out", str(ref),
                                *[a for s in FAST for a in ("--set", s)]])
    finally:
        torch.set_num_threads(threads)
    assert r.exit_code == 0, r.output
    mine = open_run(runs / "rule=lpl__device=cpu")["metrics"]["loss"].values
    np.testing.assert_array_equal(mine, open_run(ref)["metrics"]["loss"].values)
    assert yaml.safe_load((runs / "rule=lpl__device=cpu" / "config.yaml").read_text()) == \
        yaml.safe_load((ref / "config.yaml").read_text())

    # a sweep is a dataset: one lazy Dataset over `run`, swept fields as coordinates
    ds = open_runs(out)
    assert ds.sizes["run"] == 4 and list(ds["run"].values) == names
    assert list(ds["rule"].values) == ["backprop", "backprop", "lpl", "lpl"]
    assert list(ds["device"].values) == ["cpu", "cuda", "cpu", "cuda"]
    assert list(ds["status"].values) == ["completed", "failed", "completed", "failed"]
    assert ds.attrs["swept"] == ["rule", "device"]
    assert ds["loss"].chunks is not None  # lazy (dask)
    loss = ds["loss"].sel(run="rule=lpl__device=cpu").values
    np.testing.assert_array_equal(loss, mine)
    assert np.isnan(ds["loss"].sel(run="rule=lpl__device=cuda").values).all()

    # re-run on the same folder: an interrupted run (killed worker) is run again, finished ones are skipped
    st = _meta(runs / "rule=backprop__device=cpu")
    st["status"] = "running"
    (runs / "rule=backprop__device=cpu" / "sweep_run.json").write_text(json.dumps(st))
    kept = (runs / "rule=lpl__device=cpu" / "summary.json").stat().st_mtime_ns
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0") as cluster:
        res = runner.invoke(app, ["sweep", str(p), "--out", str(out), "--scheduler", cluster.scheduler_address])
    assert res.exit_code == 1, res.output
    assert "4 runs (1 already done, 3 to run)" in res.output
    assert (runs / "rule=lpl__device=cpu" / "summary.json").stat().st_mtime_ns == kept
    assert _meta(runs / "rule=lpl__device=cpu")["attempts"] == 1
    assert _meta(runs / "rule=backprop__device=cpu")["attempts"] == 2
    assert _meta(runs / "rule=backprop__device=cpu")["status"] == "completed"
    assert _meta(runs / "rule=lpl__device=cuda")["attempts"] == 2

    # another sweep (other --steps) into the same folder is refused
    res = runner.invoke(app, ["sweep", str(p), "--out", str(out), "--steps", "5"])
    assert res.exit_code == 2 and "config differs from what the sweep now asks" in res.output, res.output

    # compare and dashboard take the sweep folder (its runs with a store)
    res = runner.invoke(app, ["compare", str(out), "--by", "rule", "--by", "device", "--out", str(tmp_path / "cmp")])
    assert res.exit_code == 0, res.output
    rows = (tmp_path / "cmp" / "compare.csv").read_text().splitlines()
    assert rows[0].startswith("rule,device,n_runs") and len(rows) == 3
    assert [r.split(",")[:3] for r in rows[1:]] == [["backprop", "cpu", "1"], ["lpl", "cpu", "1"]]
    res = runner.invoke(app, ["dashboard", str(out)])
    assert res.exit_code == 0, res.output
    assert (out / "dashboard.html").stat().st_size > 10_000


@pytest.mark.slow
def test_sweep_from_the_clone_root_with_a_non_editable_install(tmp_path):
    """`pip install .` (not -e) and `colsim sweep` run from the clone's root: the working folder's colsim/ source
    tree (which lacks the mapped sub-packages) must not shadow the installed package in the LocalCluster workers
    (the forkserver puts the working folder first on sys.path, so the sweep starts them with spawn there)."""
    import shutil
    import sysconfig

    root = Path(__file__).resolve().parents[1]
    src = tmp_path / "src"
    shutil.copytree(root, src, ignore=shutil.ignore_patterns(".venv", "build", "site", ".git", "*.egg-info",
                                                                "__pycache__", "runs"))
    res = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(tmp_path / "whl"),
                          str(src)], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr[-2000:]
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    site = next((venv / "lib").glob("python*/site-packages"))
    # the dependencies come from this environment's site-packages (a .pth line; its own .pth files, among them
    # an editable colsim's finder, are not processed), colsim from the wheel
    (site / "zz_deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    whl = next((tmp_path / "whl").glob("colsim-*.whl"))
    res = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(site), str(whl)],
                         capture_output=True, text=True)
    assert res.returncode == 0, res.stderr[-2000:]
    p = _write(tmp_path, {"name": "tiny", "base": {**_base(), "steps": 2}, "grid": {"seed": [0]},
                          "cluster": {"workers": 1, "dashboard_address": ":0"}})
    script = venv / "bin" / "colsim"  # what pip writes for the console script: its folder, not the cwd, on sys.path
    script.write_text(f"#!{venv / 'bin' / 'python'}\nimport sys\nfrom colsim.cli import main\nif __name__ == '__main__':\n    sys.exit(main())\n")
    script.chmod(0o755)
    run = subprocess.run([str(script), "sweep", str(p), "--out", str(tmp_path / "sw")], cwd=root,
                         capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, (run.stdout + run.stderr)[-3000:]
    assert "runs: completed 1" in run.stdout


@pytest.mark.slow
def test_sigterm_stops_the_sweep_and_records_its_runs_interrupted(tmp_path):
    """Issue 29: one SIGTERM to `colsim sweep` stops it (exit 143); the runs that were in flight read
    `interrupted` in sweep_run.json (before: `running` for ever), and the message says the same command re-runs
    them."""
    import signal as _signal

    p = _write(tmp_path, {"name": "long", "base": {**_base(), "steps": 3000}, "grid": {"seed": [0, 1]},
                          "cluster": {"workers": 2, "dashboard_address": ":0"}})
    out = tmp_path / "sw"
    proc = subprocess.Popen([str(Path(sys.executable).parent / "colsim"), "sweep", str(p), "--out", str(out),
                             "--quiet"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.time() + 240
        while time.time() < deadline:
            metas = [_meta(d) for d in (out / "runs").glob("*") if (d / "sweep_run.json").exists()] \
                if (out / "runs").exists() else []
            if len(metas) == 2 and all(m["status"] == "running" for m in metas):
                break
            time.sleep(0.5)
        else:
            pytest.fail("the sweep's runs never started")
        time.sleep(2)
        proc.send_signal(_signal.SIGTERM)
        log, _ = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 143, log[-2000:]
    assert "sweep interrupted" in log and "2 stopped in flight" in " ".join(log.split()), log[-2000:]
    for d in (out / "runs").glob("*"):
        m = _meta(d)
        assert m["status"] == "interrupted" and "signal" in m["error"], m


def test_sweep_runs_seed_axes_as_ensembles(tmp_path):
    """``ensemble: true``: the runs that differ only in their seed run as one seed ensemble per task (issue 32); a
    run with no seed sibling runs alone. Each seed still gets its own run folder, store and sweep_run.json.
    (That an ensemble's seeds record what their separate runs record, to 1e-6, is tests/test_ensemble.py's.)"""
    from colsim.analysis import open_run
    from colsim.sweep import ensemble_groups

    doc = {"name": "ens", "base": _base(rule="backprop"), "grid": {"seed": [0, 1]}, "ensemble": True,
           "cluster": {"workers": 1, "dashboard_address": ":0"}}
    sw, _ = load_sweep(str(_write(tmp_path, {**doc, "grid": {"seed": [0, 1], "steps": [4, 5]}})))
    from colsim import registry
    registry.load_plugins()
    groups = ensemble_groups(plan_runs(sw))
    assert [[r.name for r in g] for g in groups] == [["seed=0__steps=4", "seed=1__steps=4"],
                                                     ["seed=0__steps=5", "seed=1__steps=5"]]
    p = _write(tmp_path, {**doc, "zip": {"seed": [0, 1, 2], "steps": [4, 4, 5]}, "grid": {}})
    out = tmp_path / "sweep"
    res = runner.invoke(app, ["sweep", str(p), "--out", str(out)])
    assert res.exit_code == 0, res.output
    assert "seed ensembles: 3 runs as 2 task(s) (2, 1 seeds)" in res.output and "runs: completed 3" in res.output
    loss = {}
    for s, steps in ((0, 4), (1, 4), (2, 5)):
        run_dir = out / "runs" / f"seed={s}__steps={steps}"
        m = _meta(run_dir)
        assert m["status"] == "completed" and m["steps"] == steps
        ds = open_run(run_dir)
        assert ds.attrs["seed"] == s and ds.attrs.get("ensemble") == ([0, 1] if s < 2 else None)
        assert m.get("ensemble") == ([0, 1] if s < 2 else None)
        loss[s] = ds["metrics"]["loss"].values
        assert np.isfinite(loss[s][1:]).all()  # no context at tick 0
    assert not np.array_equal(loss[0][1:], loss[1][1:])  # two seeds, not one twice


def test_sweep_ensemble_with_a_rule_not_batched_exits_2(tmp_path):
    p = _write(tmp_path, {"name": "ens", "base": _base(rule="lpl"), "grid": {"seed": [0, 1]}})
    res = runner.invoke(app, ["sweep", str(p), "--out", str(tmp_path / "sweep"), "--ensemble"])
    assert res.exit_code == 2, res.output
    assert res.output.strip().startswith("error: sweep.ensemble: rule 'lpl' cannot run as a seed ensemble")
    assert len(res.output.strip().splitlines()) == 1
    assert not list((tmp_path / "sweep" / "runs").glob("*"))
