"""colsim.analysis — installed as a subpackage of `colsim` (see DESIGN.md section 1)."""
if __name__ != "colsim.analysis":  # guard: the folder must not be importable under its bare name
    raise ImportError("import colsim.analysis, not 'analysis': the analysis/ folder installs as colsim.analysis (pip install -e .)")
