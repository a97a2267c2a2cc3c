"""CLI: a phase whose probe set would be empty is caught before any run folder is made."""
def test_phase_with_empty_probe_set_is_a_one_line_error(tmp_path):
    """A phase whose classes the world lacks: exit 2, one stderr line naming protocol.phases[1].classes,
    caught before any run folder is made (validate and run alike)."""
    import subprocess
    import sys
    from pathlib import Path

    import yaml

    from colsim.config import load_protocol

    doc = load_protocol("nonstationary")
    doc["phases"][1]["classes"] = [2, 12]
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(doc))
    exe = Path(sys.executable).parent / "colsim"
    for cmd in (["validate", str(bad)], ["run", str(bad), "--steps", "5", "--out", str(tmp_path / "o")]):
        res = subprocess.run([str(exe), *cmd], capture_output=True, text=True, cwd=tmp_path)
        lines = [ln for ln in res.stderr.strip().splitlines() if ln.strip()]
        assert res.returncode == 2, res.stderr
        assert len(lines) == 1 and "Traceback" not in res.stderr
        assert "protocol.phases[1].classes: must be a non-empty subset of the world's classes 0..9" in lines[0]
    assert not (tmp_path / "o").exists()
