"""colsim.analysis.cli: plain functions the main typer CLI registers (analyze, compare, dashboard)."""
from __future__ import annotations

import shutil

import pytest

from colsim.analysis import cli

typer = pytest.importorskip("typer")
from typer.testing import CliRunner  # noqa: E402


@pytest.fixture(scope="module")
def app():
    a = typer.Typer()
    for fn in (cli.analyze, cli.compare, cli.dashboard):
        a.command()(fn)
    return a


@pytest.mark.parametrize("command", [["analyze"], ["compare"], ["dashboard"]])
def test_bad_input_exits_2_with_one_line(app, tmp_path, command):
    (tmp_path / "plain").mkdir()
    for bad in (tmp_path / "missing", tmp_path / "plain"):
        r = CliRunner().invoke(app, command + [str(bad)])
        assert r.exit_code == 2, r.output
        assert "Traceback" not in r.output
        lines = [ln for ln in r.output.splitlines() if ln.strip()]
        assert len(lines) == 1 and str(bad) in lines[0] and lines[0].startswith("error:")


def test_plain_function_raises_systemexit_2(tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        cli.analyze([str(tmp_path / "nope")])
    assert exc.value.code == 2
    assert "no such run folder" in capsys.readouterr().out


def test_analyze_compare_dashboard_through_typer(app, sweep_runs, tmp_path, monkeypatch):
    runs = [str(p) for p in sweep_runs]
    one = tmp_path / "one"
    shutil.copytree(runs[2], one)  # re-analysing must not change the shared session runs
    r = CliRunner().invoke(app, ["analyze", str(one)])
    assert r.exit_code == 0, r.output
    assert "forgetting" in r.output and "alarm" in r.output
    r = CliRunner().invoke(app, ["compare", *runs, "--by", "rule", "--out", str(tmp_path / "cmp")])
    assert r.exit_code == 0, r.output
    assert (tmp_path / "cmp" / "compare.csv").exists() and (tmp_path / "cmp" / "compare.html").exists()
    assert "lpl+metaplastic" in r.output
    assert "…" not in r.output  # 80 columns: the groups spread over several tables, no cell cut (issue 29)
    assert f"wrote {(tmp_path / 'cmp' / 'compare.csv').resolve()}" in " ".join(r.output.split())
    monkeypatch.chdir(tmp_path)
    r = CliRunner().invoke(app, ["compare", *runs, "--by", "rule"])  # no --out: a new named folder, path printed
    assert r.exit_code == 0, r.output
    made = list(tmp_path.glob("compare-*/compare.csv"))
    assert len(made) == 1 and made[0].parent.name in r.output
    r = CliRunner().invoke(app, ["compare", *runs, "--by", "colour"])
    assert r.exit_code == 2 and "colour" in r.output
    r = CliRunner().invoke(app, ["compare", *runs, "--by", "rule", "--vs", "backprop", "--out", str(tmp_path / "pv")])
    assert r.exit_code == 0, r.output
    rows = (tmp_path / "pv" / "paired-vs-backprop.csv").read_text().splitlines()
    assert len(rows) == 2 and rows[1].split(",")[1:4] == ["lpl+metaplastic", "backprop", "2"]
    assert "paired difference rule - backprop" in r.output
    r = CliRunner().invoke(app, ["compare", *runs, "--vs", "frozen", "--out", str(tmp_path / "pv2")])
    assert r.exit_code == 2 and "--vs 'frozen'" in r.output
    r = CliRunner().invoke(app, ["compare", *runs, "--metric", "forgeting", "--out", str(tmp_path / "cmp")])
    assert r.exit_code == 2 and "--metric 'forgeting'" in r.output and len(r.output.strip().splitlines()) == 1
    r = CliRunner().invoke(app, ["compare", *runs, "--metric", "forgetting", "--out", str(tmp_path / "cmp2")])
    assert r.exit_code == 0 and "forgetting" in (tmp_path / "cmp2" / "compare.csv").read_text().splitlines()[0]
    r = CliRunner().invoke(app, ["compare", *runs, "--metric", "loss_final", "--vs", "backprop",
                                 "--out", str(tmp_path / "pv3")])  # the paired table of the --metric metrics
    assert r.exit_code == 0, r.output
    head = (tmp_path / "pv3" / "paired-vs-backprop.csv").read_text().splitlines()[0].split(",")
    assert head[4:] == ["loss_final", "loss_final_ci95", "loss_final_mde"]
    out = tmp_path / "d.html"
    r = CliRunner().invoke(app, ["dashboard", *runs[:2], "-o", str(out)])
    assert r.exit_code == 0, r.output
    assert out.exists() and "Loss components - backprop" in out.read_text()
