"""Every packaged preset and protocol resolves to what it resolved to before the presets began to extend one
another (issue 28): tests/data/resolved_presets.json was written by the former loader (top-level keys
replaced whole, protocols given by path read without ``extends``) before the copied lines were removed.

After a deliberate change to a preset, regenerate the file and review its diff:
    python tests/test_preset_resolution.py
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from colsim import presets
from colsim.config import resolve_run_config

SNAPSHOT = Path(__file__).parent / "data" / "resolved_presets.json"
ROOT = Path(__file__).resolve().parents[1]


def _plain(x):
    return json.loads(json.dumps(x, default=str))


def current() -> dict:
    out: dict = {"presets": {}, "runs": {}}
    for kind in ("models", "rules", "protocols"):
        out["presets"][kind] = {n: presets.preset(kind, n) for n in presets.preset_names(kind)}
    for n in presets.preset_names("protocols"):
        out["runs"][n] = resolve_run_config(n).to_dict()
        out["runs"][n + "@path"] = resolve_run_config(ROOT / "protocols" / f"{n}.yaml").to_dict()
    return _plain(out)


@pytest.fixture(scope="module")
def now():
    return current()


@pytest.mark.parametrize("kind", ["models", "rules", "protocols"])
def test_packaged_presets_resolve_as_before(now, kind):
    before = json.loads(SNAPSHOT.read_text())["presets"][kind]
    assert sorted(now["presets"][kind]) == sorted(before)
    for name in before:
        assert now["presets"][kind][name] == before[name], name


def test_protocols_resolve_to_the_same_run_config_by_name_and_by_path(now):
    before = json.loads(SNAPSHOT.read_text())["runs"]
    for name, cfg in before.items():
        assert now["runs"][name] == cfg, name
    for name in presets.preset_names("protocols"):
        assert now["runs"][name + "@path"] == now["runs"][name]


if __name__ == "__main__":
    SNAPSHOT.write_text(json.dumps(current(), indent=1))
    print(f"wrote {SNAPSHOT}")


def test_a_folder_named_like_a_preset_does_not_shadow_it(tmp_path, monkeypatch):
    """`colsim run ... --out backprop` then `--rule backprop+si` from the same directory: the run folder
    `backprop/` is not a rule file (it used to fail with "backprop: not a file")."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "backprop").mkdir()
    (tmp_path / "stationary").mkdir()
    assert presets.load("rules", "backprop") == presets.preset("rules", "backprop")
    assert presets.load("protocols", "stationary") == presets.preset("protocols", "stationary")
    cfg = resolve_run_config("stationary", rule="backprop+si")
    assert cfg.to_dict() == resolve_run_config(ROOT / "protocols" / "stationary.yaml", rule="backprop+si").to_dict()
