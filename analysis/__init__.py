"""colsim.analysis — open run stores as xarray, metrics, comparisons, dashboards.

Imports xarray, numpy, scikit-learn, dask and holoviews only — never torch — so a laptop
without the training stack can analyse any run.
"""
if __name__ != "colsim.analysis":  # guard: the folder must not be importable under its bare name
    raise ImportError("import colsim.analysis, not 'analysis': the analysis/ folder installs as colsim.analysis "
                      "(pip install -e .)")

from colsim.analysis.continual import bwt, continual_summary, forgetting, fwt  # noqa: E402
from colsim.analysis.probes import equivariance_r2, linear_probe_accuracy  # noqa: E402

__all__ = ["bwt", "continual_summary", "forgetting", "fwt", "equivariance_r2", "linear_probe_accuracy"]
