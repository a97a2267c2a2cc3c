"""Regenerate (or check) the README's demo table from `make demo`'s run.

    python examples/readme_demo_table.py             # runs the demo, rewrites the README block
    python examples/readme_demo_table.py --check     # runs the demo, exit 1 with a diff if the README differs
    python examples/readme_demo_table.py --run DIR   # use an existing run of the demo command instead

The block sits between ``<!-- demo-table:start -->`` and ``<!-- demo-table:end -->`` in README.md: the end-of-run
table of ``colsim run protocols/nonstationary.yaml --rule lpl`` (seed 0, CPU) at 80 columns, without its title
(which holds the wall time). tests/test_readme_demo.py runs the check.
"""
from __future__ import annotations

import argparse
import difflib
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from colsim.cli.summary import render_summary

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
START, END = "<!-- demo-table:start -->", "<!-- demo-table:end -->"
DEMO = ["run", "protocols/nonstationary.yaml", "--rule", "lpl", "--quiet"]
# the README's table comes from the reference machine's `make demo`: 2 cores, so 2 torch threads. Float reductions
# differ with the thread count (a run repeats bit for bit only at the same count), so the demo runs with 2 here.
THREADS = "2"


def block(summary: dict) -> str:
    return f"{START}\n```\n{render_summary(summary, width=80)}\n```\n{END}"


def run_demo(out: Path) -> dict:
    colsim = Path(sys.executable).parent / "colsim"
    env = {**os.environ, "OMP_NUM_THREADS": THREADS, "MKL_NUM_THREADS": THREADS}
    res = subprocess.run([str(colsim), *DEMO, "--out", str(out)], cwd=ROOT, capture_output=True, text=True, env=env)
    if res.returncode != 0:
        sys.exit(f"the demo run failed (exit {res.returncode}):\n{res.stderr[-2000:]}")
    return json.loads((out / "summary.json").read_text())


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--check", action="store_true", help="compare only; exit 1 if the README differs")
    ap.add_argument("--run", type=Path, help="an existing run folder of the demo command")
    a = ap.parse_args()
    if a.run is not None:
        s = json.loads((a.run / "summary.json").read_text())
    else:
        with tempfile.TemporaryDirectory() as tmp:
            s = run_demo(Path(tmp) / "demo")
    text = README.read_text()
    i, j = text.find(START), text.find(END)
    if i < 0 or j < i:
        sys.exit(f"{README}: no {START} ... {END} block")
    old, new = text[i:j + len(END)], block(s)
    if a.check:
        if old != new:
            sys.stdout.writelines(difflib.unified_diff(old.splitlines(True), new.splitlines(True), "README.md",
                                                       "make demo"))
            return 1
        print("README demo table: up to date")
        return 0
    README.write_text(text[:i] + new + text[j + len(END):])
    print(f"wrote the demo table into {README}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
