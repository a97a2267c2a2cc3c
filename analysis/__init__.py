"""colsim.analysis — open run stores as xarray, metrics, compare, dashboards.

Imports xarray, numpy, scikit-learn, dask and holoviews only — never torch — so a laptop
without the training stack can analyse any run.

* :mod:`.store` — ``open_run`` (DataTree), ``open_runs`` (Dataset over rule/model/protocol/seed)
* :mod:`.metrics`, :mod:`.probes`, :mod:`.continual`, :mod:`.alarms` — metric functions
* :mod:`.circuits` — circuits of many columns: per-column / voted probes, accuracy vs number of
  columns, evidence accumulation and steps to recognition, linear CKA between columns
* :mod:`.analyze` — ``analyze_run``: metrics -> the store's ``analysis`` group + summary
* :mod:`.compare` — ``compare_runs`` / ``compare_runs_to_files`` (mean ± 95 % CI over seeds)
* :mod:`.dashboard` — ``dashboard``: standalone HTML (holoviews/bokeh) or a panel server
* :mod:`.cli` — ``analyze``, ``compare``, ``dashboard`` commands for the main CLI
"""
if __name__ != "colsim.analysis":  # guard: the folder must not be importable under its bare name
    raise ImportError("import colsim.analysis, not 'analysis': the analysis/ folder installs as colsim.analysis "
                      "(pip install -e .)")

from colsim.analysis.continual import bwt, continual_summary, forgetting, fwt  # noqa: E402
from colsim.analysis.probes import equivariance_r2, linear_probe_accuracy  # noqa: E402

__all__ = ["bwt", "continual_summary", "forgetting", "fwt", "equivariance_r2", "linear_probe_accuracy",
           "open_run", "open_runs", "analyze_run", "compare_runs", "compare_runs_to_files", "dashboard",
           "health_alarms", "circuit_analysis"]

_LAZY = {"open_run": "store", "open_runs": "store", "analyze_run": "analyze", "compare_runs": "compare",
         "compare_runs_to_files": "compare", "dashboard": "dashboard", "health_alarms": "alarms",
         "circuit_analysis": "circuits"}


def __getattr__(name):  # lazy: importing colsim.analysis stays light (the core imports probes/continual)
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(f"colsim.analysis.{_LAZY[name]}"), name)
    raise AttributeError(f"module 'colsim.analysis' has no attribute {name!r}")
