"""Docs integrity (issue 29): every Python snippet in README.md, docs/ and protocols/README.md runs, against real
runs made here at the paths the snippets name; the reference tables list every packaged rule, protocol and model."""
from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from colsim import registry

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", ROOT / "protocols" / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
BLOCK = re.compile(r"```python\n(.*?)```", re.S)
sys.path.insert(0, str(Path(__file__).parent))
from _tiny import TINY  # noqa: E402


def snippets() -> list[tuple[str, str]]:
    return [(f"{p.relative_to(ROOT)}#{k}", code) for p in PAGES for k, code in enumerate(BLOCK.findall(p.read_text()))]


def _colsim(*args, cwd):
    res = subprocess.run([str(Path(sys.executable).parent / "colsim"), *args], cwd=cwd, capture_output=True,
                         text=True, timeout=600, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-2000:]


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    """runs/stationary (a finished tiny run) and runs/rules_seeds_20 (a finished tiny two-run sweep)."""
    d = tmp_path_factory.mktemp("snippets")
    sets = [a for s in TINY + ["protocol.evaluation.probe_samples=20"] for a in ("--set", s)]
    _colsim("run", "stationary", "--steps", "6", "--quiet", *sets, "--out", "runs/stationary", cwd=d)
    sweep = {"name": "rules_seeds_20", "base": {"protocol": "stationary", "steps": 4, "set": list(TINY)},
             "grid": {"rule": ["backprop", "lpl"], "seed": [0]}, "cluster": {"workers": 1, "dashboard_address": ":0"}}
    (d / "sw.yaml").write_text(yaml.safe_dump(sweep))
    _colsim("sweep", "sw.yaml", "--out", "runs/rules_seeds_20", "--quiet", cwd=d)
    return d


@pytest.mark.slow
@pytest.mark.parametrize("where,code", snippets(), ids=[w for w, _ in snippets()])
def test_snippet_runs(where, code, workdir):
    code = code.replace("runs/<run>", "runs/stationary")
    res = subprocess.run([sys.executable, "-c", code], cwd=workdir, capture_output=True, text=True, timeout=600,
                         env={**os.environ, "MPLBACKEND": "Agg"})
    assert res.returncode == 0, f"{where}:\n{code}\n{res.stderr[-3000:]}"


def test_there_are_snippets():
    assert len(snippets()) >= 3


def _table_names(page: Path) -> set[str]:
    return set(re.findall(r"^\| `([^`]+)`", page.read_text(), re.M))


@pytest.mark.parametrize("page,names", [
    ("docs/reference/rules.md", lambda: set(registry.RULES)),
    ("docs/reference/protocols.md", lambda: set(registry.preset_names("protocols"))),
    ("docs/reference/models.md", lambda: set(registry.preset_names("models"))),
])
def test_reference_tables_list_every_packaged_name(page, names):
    registry.load_plugins()
    missing = names() - _table_names(ROOT / page)
    assert not missing, f"{page} lacks a table row for {sorted(missing)}"
