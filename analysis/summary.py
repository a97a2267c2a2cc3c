"""``summary.json`` of a run: the read-out matrices over evaluations and probe sets, and forgetting / BWT / FWT of
every read-out on its phase-end rows (Avalanche's definitions, :mod:`colsim.analysis.continual`).

numpy only (no torch): the run writes it (:func:`colsim.simulate.run`) and any analysis can recompute it from the
same evaluation rows.
"""
from __future__ import annotations

import math
from typing import Any, Optional

import numpy as np

from colsim.analysis.continual import continual_of_rows, phase_end_rows

__all__ = ["make_summary", "READOUTS", "HEAD_READOUT", "COLUMN_SUMMARY_KEYS"]

# a circuit's per-column pooled accuracies in the summary (colsim/circuit/evaluate.py fills them per evaluation)
COLUMN_SUMMARY_KEYS = ("probe_acc_agg", "probe_acc_agg_se", "probe_acc_z", "probe_acc_z_se")
# summary prefix -> (evaluation key, higher is better)
READOUTS = {"": ("acc_agg", True), "seen_": ("seen_acc", True), "frozen_": ("frozen_acc", True),
            "prediction_": ("prediction_loss", False)}
# a supervised column's own heads (models/classifier.py), present only in its runs
HEAD_READOUT = ("head_", ("head_acc", True))


def _f(x) -> Optional[float]:
    x = float(x)
    return x if math.isfinite(x) else None


def _rows(evals: list[dict], key: str) -> list:
    return [[_f(v) for v in e[key]] for e in evals]


def _continual(evals: list[dict], names: list[str], key: str, higher_better: bool, at_start: bool) -> dict:
    """Forgetting / BWT / FWT of ``key`` (eval x probe_set) on the phase-end rows of the phases completed, with
    the forgetting's standard error (:func:`colsim.analysis.continual.continual_of_rows`, the implementation
    ``colsim analyze`` uses too)."""
    P = len(names)
    if not evals:
        return {"forgetting": None, "bwt": None, "fwt": None, "forgetting_se": None}
    values = np.stack([np.asarray(e[key], dtype=float) for e in evals])
    rows, index = phase_end_rows([e["phase"] for e in evals], values, names)
    se = np.stack([np.asarray(e.get(f"{key}_se", np.full(P, np.nan)), dtype=float) for e in evals])[index]
    init = values[0] if at_start and evals[0]["phase"] == "init" else None
    c = continual_of_rows(rows, init, se, higher_better)
    return {k: _f(c[k]) for k in ("forgetting", "bwt", "fwt", "forgetting_se", "average_accuracy",
                                  "average_accuracy_se")}


def make_summary(evals: list[dict], names: list[str], steps: int, wall: float, status: str, at_start: bool,
                 columns: Optional[list[str]] = None) -> dict:
    """summary.json. Matrices have rows = evaluations (init first when present) and columns = probe
    sets, each with a ``_se`` twin: ``accuracy_matrix`` (task probe on z_AGG), ``seen_matrix``,
    ``frozen_matrix``, ``prediction_loss_matrix``; a supervised column's runs add ``head_matrix`` (its own heads'
    accuracy), ``average_accuracy`` (the mean of its phase-end row after the last phase: van de Ven & Tolias 2019)
    and ``head_forgetting`` / ``head_bwt`` / ``head_fwt``. For each read-out, forgetting / BWT / FWT on its
    phase-end rows: ``forgetting``, ``bwt``, ``fwt`` (task probe), ``seen_*``, ``frozen_*``,
    ``prediction_*`` (loss: forgetting > 0 = the loss went up), each forgetting with ``_se``.
    A column that reads its layers out (models/echospike.py) adds ``layer_readout_accuracy`` (rows = evaluations,
    columns = ``layer_readout_names``: the input first, then each layer; a linear classifier on the layer's full
    spike-count vector), its ``_se`` and ``layer_readout_spikes`` (mean spikes per unit and view).
    ``gain`` holds every headline metric's change from the step-0 evaluation (positive = better; a
    loss counts as its decrease) with its standard error."""
    P = len(names)
    out: dict[str, Any] = {
        "accuracy_matrix": _rows(evals, "acc_agg"),
        "accuracy_matrix_se": _rows(evals, "acc_agg_se"),
        "seen_matrix": _rows(evals, "seen_acc"),
        "seen_matrix_se": _rows(evals, "seen_acc_se"),
        "frozen_matrix": _rows(evals, "frozen_acc"),
        "frozen_matrix_se": _rows(evals, "frozen_acc_se"),
        "prediction_loss_matrix": _rows(evals, "prediction_loss"),
        "prediction_loss_matrix_se": _rows(evals, "prediction_loss_se"),
        "evaluations": [{"phase": e["phase"], "step": int(e["step"])} for e in evals],
        "probe_sets": names,
    }
    for prefix, (key, hb) in READOUTS.items():
        out.update({f"{prefix}{k}": v for k, v in _continual(evals, names, key, hb, at_start).items()
                    if not k.startswith("average_")})
    if evals and all(HEAD_READOUT[1][0] in e for e in evals):  # the column's own heads: the scenarios' metrics
        prefix, (key, hb) = HEAD_READOUT
        out["head_matrix"], out["head_matrix_se"] = _rows(evals, key), _rows(evals, f"{key}_se")
        c = _continual(evals, names, key, hb, at_start)
        out["average_accuracy"], out["average_accuracy_se"] = c.pop("average_accuracy"), c.pop("average_accuracy_se")
        out.update({f"{prefix}{k}": v for k, v in c.items()})
    if evals and all("layer_acc" in e for e in evals):  # per-layer read-outs (models/echospike.py), input first
        out["layer_readout_names"] = list(evals[-1]["layer_names"])
        out["layer_readout_accuracy"] = _rows(evals, "layer_acc")
        out["layer_readout_accuracy_se"] = _rows(evals, "layer_acc_se")
        out["layer_readout_spikes"] = _rows(evals, "layer_spikes")
    for key in ("probe_acc_agg", "probe_acc_z", "equivariance_r2"):
        out[key] = [_f(e[key]) for e in evals]
        out[f"{key}_se"] = [_f(e[f"{key}_se"]) for e in evals]
    out["prediction_loss"] = [_f(np.nanmean(e["prediction_loss"])) if np.isfinite(e["prediction_loss"]).any()
                              else None for e in evals]
    out["prediction_loss_se"] = [_f(np.sqrt(np.nansum(np.square(e["prediction_loss_se"]))) / P) for e in evals]
    out["equivariance_probe"] = "linear"
    gain: dict[str, Any] = {}
    if at_start and len(evals) >= 2 and evals[0]["phase"] == "init":
        for key, sign in (("probe_acc_agg", 1), ("probe_acc_z", 1), ("equivariance_r2", 1), ("prediction_loss", -1)):
            v, se = out[key], out[f"{key}_se"]
            if v[0] is not None and v[-1] is not None:
                gain[key] = _f(sign * (v[-1] - v[0]))
                gain[f"{key}_se"] = _f(math.sqrt((se[-1] or 0.0) ** 2 + (se[0] or 0.0) ** 2)) \
                    if se[0] is not None and se[-1] is not None else None
    out["gain"] = gain
    if columns:  # a circuit: the matrices above are the vote's; pooled accuracies per column and the vote
        out["columns"] = {"names": list(columns), **{k: [[_f(x) for x in np.asarray(e[f"col_{k}"])] for e in evals]
                                                      for k in COLUMN_SUMMARY_KEYS if all(f"col_{k}" in e for e in evals)}}
    out.update({"steps": int(steps), "wall_s": round(float(wall), 3), "status": status})
    return out
