"""One owner of the run store's dimension names (colsim.analysis.schema): the writers spell no dimension name
themselves, and a real run's store uses only the schema's names."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

from colsim.analysis import schema as S

ROOT = Path(__file__).resolve().parents[1]


def test_writers_spell_no_dimension_name():
    """No tuple or list literal in colsim/ (the torch side that writes the store) holds a core dimension name:
    every (dims, array) pair is built from colsim.analysis.schema. colsim/cli prints tables (a "step" column
    heading) and never writes the store, so it is not scanned."""
    found = []
    for f in sorted((ROOT / "colsim").rglob("*.py")):
        if f.relative_to(ROOT / "colsim").parts[0] == "cli":
            continue
        for node in ast.walk(ast.parse(f.read_text(), str(f))):
            if isinstance(node, (ast.Tuple, ast.List)):
                hits = [e.value for e in node.elts if isinstance(e, ast.Constant) and e.value in S.CORE_DIMS]
                if hits:
                    found.append(f"{f.relative_to(ROOT)}:{node.lineno} {hits}")
    assert not found, "dimension names spelled outside colsim.analysis.schema:\n" + "\n".join(found)


def test_layouts():
    assert S.evaluation_layout("set") == ("eval", "probe_set")
    assert S.evaluation_layout("set_dim", circuit=True) == ("eval", "probe_set", "action_dim", "column")
    assert S.evaluation_layout("block", circuit=True) == ("eval", "probe_set", "block")  # blocks concatenated
    assert S.z_layout(circuit=True) == ("eval", "probe_set", "column", "sample", "view", "unit")
    assert S.label_layout("orientation", 3) == ("sample", "view", "quat")
    assert S.metric_layout(circuit=True) == ("step", "column")
    with pytest.raises(ValueError, match="kind"):
        S.evaluation_layout("per_phase")


def test_a_run_store_uses_only_the_schema_names(tmp_path):
    import xarray as xr
    from typer.testing import CliRunner

    from colsim.cli import app
    from tests._tiny import TINY

    out = tmp_path / "run"
    args = ["run", "nonstationary", "--steps", "6", "--quiet", "--out", str(out)]
    for kv in TINY:
        args += ["--set", kv]
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 0, res.output
    store = next(out.glob("*.zarr"))
    tree = xr.open_datatree(store, engine="zarr", consolidated=False)
    dims = {str(d) for g in ("metrics", "evaluation", "probe") if g in tree.children for d in tree[g].dims}
    labels = {d for v in S.LABEL_TRAILING_DIMS.values() for d in v}
    assert {"step", "eval", "probe_set", "sample", "view", "unit", "unit_agg", "action_dim", "block"} <= dims
    assert dims <= set(S.CORE_DIMS) | labels, dims - set(S.CORE_DIMS) - labels
