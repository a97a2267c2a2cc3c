"""Packaging and layering (docs/architecture.md): one distribution `colsim`, mapped subpackages, guards."""
from __future__ import annotations

import ast
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
MAPPED = ["models", "rules", "protocols", "analysis"]


def test_no_shadow_folders_inside_colsim():
    for name in MAPPED:
        assert not (ROOT / "colsim" / name).exists(), f"colsim/{name}/ must not exist: {name}/ is mapped to colsim.{name}"


def test_subpackages_import_from_outside_the_repo(tmp_path):
    code = ("import colsim, colsim.models, colsim.rules, colsim.protocols, colsim.analysis, colsim.cli;"
            "import colsim.rules as r; print(r.__name__)")
    res = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == "colsim.rules"


@pytest.mark.parametrize("name", MAPPED)
def test_bare_name_import_is_refused(name):
    res = subprocess.run([sys.executable, "-c", f"import {name}"], cwd=ROOT, capture_output=True, text=True)
    assert res.returncode != 0
    assert f"import colsim.{name}, not '{name}'" in res.stderr


def test_presets_ship_as_package_data():
    from importlib import resources

    for pkg, name in [("colsim.rules", "lpl.yaml"), ("colsim.models", "seqjepa_cnn.yaml"),
                      ("colsim.protocols", "nonstationary.yaml")]:
        assert (resources.files(pkg) / name).is_file()


def test_wheel_contains_only_colsim(tmp_path):
    # build from a copy: setuptools reuses a build/ folder left in the tree, which would hide a missing package
    src = tmp_path / "src"
    shutil.copytree(ROOT, src, ignore=shutil.ignore_patterns(".venv", "build", "site", ".git", "*.egg-info",
                                                                "__pycache__", "runs", "node_modules"))
    res = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w",
                          str(tmp_path), str(src)], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr[-2000:]
    wheels = list(tmp_path.glob("colsim-*.whl"))
    assert len(wheels) == 1
    names = zipfile.ZipFile(wheels[0]).namelist()
    tops = {n.split("/")[0] for n in names}
    dist = {t for t in tops if t.endswith(".dist-info")}
    assert tops - dist == {"colsim"}, tops
    for sub in MAPPED:
        assert f"colsim/{sub}/__init__.py" in names
    assert "colsim/rules/lpl.yaml" in names and "colsim/protocols/nonstationary.yaml" in names
    # every module of the source tree is in the wheel (a sub-package missing from pyproject's list installs
    # without it: `colsim` then fails on a non-editable install)
    folders = {"colsim": ROOT / "colsim", **{f"colsim/{sub}": ROOT / sub for sub in MAPPED}}
    missing = [f"{dest}/{f.relative_to(src).as_posix()}" for dest, src in folders.items() for f in src.rglob("*.py")
               if "__pycache__" not in f.parts and f"{dest}/{f.relative_to(src).as_posix()}" not in names]
    assert not missing, missing
    assert not any(n.startswith("tests/") or n.startswith("benchmarks/") for n in names)


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), str(path))
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out.add(node.module)
    return out


def _files(folder: str):
    return sorted((ROOT / folder).rglob("*.py"))


def test_layering():
    """core <- models, rules, protocols; analysis imports none of colsim's other parts nor torch;
    only colsim.cli imports everything. (Core may use colsim.analysis's torch-free metrics.)"""
    plugins = ("colsim.models", "colsim.rules", "colsim.protocols")
    problems = []
    for f in _files("colsim"):
        if f.name == "cli.py":
            continue
        for m in _imports(f):
            if m.startswith(plugins):
                problems.append(f"{f.relative_to(ROOT)} imports {m}")
    for f in _files("analysis"):
        for m in _imports(f):
            if m == "torch" or m.startswith("torch.") or (m.startswith("colsim") and not m.startswith("colsim.analysis")):
                problems.append(f"{f.relative_to(ROOT)} imports {m}")
    for folder, own in [("models", "colsim.models"), ("rules", "colsim.rules"), ("protocols", "colsim.protocols")]:
        others = tuple(p for p in plugins if p != own) + ("colsim.cli",)
        for f in _files(folder):
            for m in _imports(f):
                if m.startswith(others):
                    problems.append(f"{f.relative_to(ROOT)} imports {m}")
    assert not problems, "\n".join(problems)


def test_analysis_imports_without_torch(tmp_path):
    code = ("import sys; sys.modules['torch'] = None\n"
            "import colsim.analysis, pkgutil, importlib\n"
            "for m in pkgutil.iter_modules(colsim.analysis.__path__):\n"
            "    importlib.import_module('colsim.analysis.' + m.name)\n"
            "print('ok')")
    res = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True)
    assert res.returncode == 0 and res.stdout.strip() == "ok", res.stderr[-2000:]
