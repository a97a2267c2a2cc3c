"""``analyze_run``: compute a run's metrics and write them into the store's ``analysis`` group.

Out of core: per (eval, probe_set) one streaming pass over ``z`` / ``z_agg`` in blocks of
samples (:mod:`._stream`) gives exact effective ranks, RankMe, unit usage, sparsity and the
factor-induced dz eigenspectra; probes (linear probes, equivariance, leakage, circularity) run
on the first ``max_probe_samples`` samples of each probe set (samples are i.i.d. episodes, so
the prefix is an unbiased subsample), the MLP equivariance probe on the first
``mlp_max_samples``. Peak memory is O(unit^2 + block + probe subsample), not O(store).

The ``analysis`` group (idempotent: re-running replaces it):

* coords ``eval``, ``step`` (eval), ``phase`` (eval), ``probe_set``, ``action_dim``,
  ``regressor`` = [linear, mlp], ``factor`` = [rotation, translation, scale];
* (eval, probe_set): ``acc_agg``, ``acc_z`` (class, logistic probes on z_AGG / z),
  ``pose_from_z``, ``pose_from_zagg`` (leakage), ``z_eff_rank``, ``z_rankme``,
  ``zagg_eff_rank``, ``zagg_rankme``, ``unit_usage`` (fraction of units whose std exceeds
  ``usage_tol`` x the largest unit std of the run), ``z_sparsity``, ``radius_cv``,
  ``phase_residual`` (rotation circularity);
* ``equivariance_r2`` (eval, probe_set, regressor) and ``equivariance_r2_dim`` (+ action_dim)
  — MLP only at the evaluations chosen by ``mlp`` (NaN elsewhere); dropped constant
  dimensions are NaN; ``equivariance_r2_pooled`` (eval): the linear probe on the view pairs
  of all probe sets together (the number the run's summary.json reports: per-set probes see
  a fifth of the pairs and score lower);
* ``dz_eigenspectrum`` (eval, probe_set, factor, component): variance shares, descending;
  ``dz_top2_share`` (eval, probe_set, factor); ``dz_method`` (same dims): "isolated" (pairs
  where only that factor changes), "residualised" (other factors regressed out) or "none";
* ``head_matrix`` (after_phase, probe_set): a supervised column's own heads (models/classifier.py), task j
  after phase i, the rows of summary.json's ``head_matrix``;
* ``acc_matrix`` (after_phase, probe_set), ``acc_init`` (probe_set), ``forgetting_phase``
  (probe_set); ``circle_xy`` (orbit, view, xy) / ``circle_angle`` (orbit, view) for the last
  evaluation; ``unit_std`` (eval, probe_set, unit);
* ``layer_sparsity`` (eval, layer) when the store has the optional ``layers`` group;
* alarms (alarm,): ``alarm_kind``, ``alarm_variable``, ``alarm_step``, ``alarm_detail``;
* a circuit (``probe`` with a ``column`` dimension): ``circuit_*`` over ``column`` (the columns,
  then "vote"), ``column_other``, ``n_columns``, ``tick``, ``scored``
  (:func:`colsim.analysis.circuits.circuit_analysis`); every variable above then scores the vote's
  recorded output (``probe`` / ``evaluation`` at ``column="vote"``), and alarms watch each column's
  metrics (``loss[c0]``);
* attrs ``summary`` (the returned dict, JSON) and ``settings``.
"""
from __future__ import annotations

import contextlib
import json
import math
import time

import numpy as np
import xarray as xr

from colsim.analysis import metrics as M
from colsim.analysis._stream import accumulate_slice, factor_covariance
from colsim.analysis.continual import continual_of_rows, phase_end_rows
from colsim.analysis.alarms import health_alarms
from colsim.analysis.circuits import VOTE, circuit_analysis, circuit_config
from colsim.analysis.store import RunStoreError, open_run, run_info, store_path, write_group

__all__ = ["analyze_run", "summary_from_store", "trained_sets", "ANALYSIS_VERSION"]

ANALYSIS_VERSION = 4  # 2: equivariance_r2_pooled, CV ridge penalty; 3: eff_rank = centred participation ratio, acc_z on all views, pose leakage over the context views; 4: circuit_* variables
REGRESSORS = ["linear", "mlp"]
N_ORBITS = 32


def trained_sets(phase: str, probe_sets) -> list[int]:
    """Indices of probe sets whose phase has been trained by the evaluation closing ``phase``
    (all of them for "init" or an unknown name, so a stationary run is scored on its one set)."""
    names = [str(p) for p in probe_sets]
    if phase in names:
        return list(range(names.index(phase) + 1))
    return list(range(len(names)))


def _jsonable(obj):
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, (np.integer,)):
        return int(obj)
    if isinstance(obj, (float, np.floating)):
        f = float(obj)
        return f if math.isfinite(f) else None
    if isinstance(obj, np.ndarray):
        return _jsonable(obj.tolist())
    return obj


def _eval_coords(ds: xr.Dataset) -> dict:
    c = {"eval": ds["eval"].values if "eval" in ds.coords else np.arange(ds.sizes.get("eval", 0))}
    c["step"] = ("eval", ds["step"].values.astype(np.int64) if "step" in ds.coords else np.full(len(c["eval"]), -1))
    ph = ds["phase"].values if "phase" in ds.coords else np.array(["?"] * len(c["eval"]))
    c["phase"] = ("eval", np.array([str(x) for x in ph], dtype=str))
    return c


def analyze_run(path, *, max_probe_samples: int = 2000, mlp: str = "last", mlp_max_samples: int = 1000,
                usage_tol: float = 0.05, seed: int = 0, write: bool = True, block_bytes: int = 32 << 20,
                blas_threads: int | None = 1) -> dict:
    """Analyse one run (folder or store.zarr), write ``analysis`` into its store, return a summary dict.

    Works on what exists: a diverged / interrupted run with fewer evaluations (or none) is
    analysed up to where it stopped. ``mlp`` = "last" | "all" | "none" picks the evaluations
    that also get the MLP equivariance probe. ``blas_threads`` caps BLAS threads while it runs
    (the matrices are small; multi-threaded OpenBLAS on a busy machine was 4-10x slower);
    None leaves them alone.
    """
    if mlp not in ("last", "all", "none"):
        raise ValueError(f"mlp must be 'last', 'all' or 'none', got {mlp!r}")
    with _blas_limit(blas_threads):
        return _analyze_run(path, max_probe_samples, mlp, mlp_max_samples, usage_tol, seed, write, block_bytes)


@contextlib.contextmanager
def _blas_limit(n):
    try:
        from threadpoolctl import threadpool_limits  # a scikit-learn dependency
    except ImportError:  # pragma: no cover
        n = None
    if n is None:
        yield
        return
    with threadpool_limits(limits=n, user_api="blas"):
        yield


def _analyze_run(path, max_probe_samples, mlp, mlp_max_samples, usage_tol, seed, write, block_bytes) -> dict:
    t0 = time.perf_counter()
    sp = store_path(path)
    tree = open_run(sp)
    info = run_info(tree)
    metrics = tree["metrics"].to_dataset() if "metrics" in tree.children else None
    probe = tree["probe"].to_dataset() if "probe" in tree.children else None
    evaluation = tree["evaluation"].to_dataset() if "evaluation" in tree.children else None
    if probe is not None and ("z" not in probe or probe.sizes.get("eval", 0) == 0):
        probe = None
    circuit = None
    if probe is not None and "column" in probe.dims:  # a circuit: its analyses, then the vote's as a column's
        circuit = circuit_analysis(probe, seed=seed, max_samples=max_probe_samples,
                                   vote_kind=circuit_config(tree.attrs).get("vote"))
        probe = _vote(probe)
    evaluation = _vote(evaluation) if evaluation is not None else None
    out: dict = {}
    coords: dict = {}
    summary: dict = {"run": str(sp.parent if sp.name == "store.zarr" else sp), **info,
                     "analysis_version": ANALYSIS_VERSION}
    eval_series: dict = {}

    if probe is not None:
        coords.update(_eval_coords(probe))
        window = ((tree.attrs.get("config") or {}).get("model") or {}).get("window")  # views z_AGG aggregates
        res = _analyze_probe(probe, max_probe_samples, mlp, mlp_max_samples, usage_tol, seed, block_bytes, window)
        out.update(res["vars"])
        coords.update(res["coords"])
        steps = coords["step"][1]
        eval_series["analysis.z_eff_rank"] = ("rank_collapse", steps, _rowmean(res["vars"]["z_eff_rank"][1]))
        eval_series["analysis.unit_usage"] = ("usage_collapse", steps, _rowmean(res["vars"]["unit_usage"][1]))
        acc = xr.DataArray(res["vars"]["acc_agg"][1], dims=("eval", "probe_set"),
                           coords={"probe_set": coords["probe_set"], "phase": coords["phase"]})
        summary["acc_source"] = "analysis probes (z_agg, logistic)"
    elif evaluation is not None and "acc_agg" in evaluation and evaluation.sizes.get("eval", 0) > 0:
        coords.update(_eval_coords(evaluation))
        coords["probe_set"] = [str(p) for p in evaluation["probe_set"].values]
        acc = evaluation["acc_agg"].load()
        out["acc_agg"] = (("eval", "probe_set"), acc.transpose("eval", "probe_set").values.astype(np.float64))
        summary["acc_source"] = "in-run evaluation group (no probe activity recorded)"
    else:
        acc = None
        summary["acc_source"] = None

    if circuit is not None:
        cds, csum = circuit
        out.update({k: (v.dims, v.values) for k, v in cds.data_vars.items()})
        coords.update({k: cds[k].values for k in cds.coords if k != "eval"})
        summary.update(csum)
        summary["circuit_note"] = ("acc_agg, ranks, equivariance ... score the vote's recorded output; "
                                   "circuit_* score the columns and the vote")

    if "layers" in tree.children:
        ls = _layer_sparsity(tree["layers"].to_dataset(), max_probe_samples)
        if ls is not None:
            out["layer_sparsity"] = (("eval", "layer"), ls.values)
            coords["layer"] = [str(x) for x in ls["layer"].values]
            coords.setdefault("eval", ls["eval"].values)

    if acc is not None and acc.sizes["eval"] > 0:
        A, init = M.accuracy_matrix(acc)
        cont = M.continual_metrics(A, init)
        out["acc_matrix"] = (("after_phase", "probe_set"), A.values)
        coords["after_phase"] = [str(x) for x in A["after_phase"].values]
        if init is not None:
            out["acc_init"] = (("probe_set",), init.values)
        fp = np.full(A.shape[1], np.nan)
        fp[: len(cont["per_phase_forgetting"])] = cont["per_phase_forgetting"]
        out["forgetting_phase"] = (("probe_set",), fp)
        summary.update({k: cont[k] for k in ("forgetting", "bwt", "fwt", "phases_completed")})
        summary["acc_matrix"] = A.values.tolist()
        summary["probe_sets"] = [str(x) for x in A["probe_set"].values]
    summary.update(_final_summary(out, coords))
    if evaluation is not None and evaluation.sizes.get("eval", 0) > 0:
        summary.update(readout_summary(evaluation))
        if "head_acc" in evaluation:  # a supervised column's own heads: task j after phase i (summary.json's)
            da = evaluation["head_acc"].load().transpose("eval", "probe_set")
            names = [str(p) for p in da["probe_set"].values]
            rows, index = phase_end_rows([str(p) for p in evaluation["phase"].values], da.values, names)
            out["head_matrix"] = (("after_phase", "probe_set"), rows)
            coords.setdefault("probe_set", names)
            coords.setdefault("after_phase", names[: len(rows)])

    rule = str(tree.attrs.get("rule", info["rule"]))
    alarms = health_alarms(metrics, rule=rule, eval_series=eval_series)
    out["alarm_kind"] = (("alarm",), np.array([a["kind"] for a in alarms], dtype=str))
    out["alarm_variable"] = (("alarm",), np.array([a["variable"] for a in alarms], dtype=str))
    out["alarm_step"] = (("alarm",), np.array([a["step"] for a in alarms], dtype=np.int64))
    out["alarm_detail"] = (("alarm",), np.array([a["detail"] for a in alarms], dtype=str))
    summary["alarms"] = alarms
    summary["n_alarms"] = len(alarms)
    summary["n_evals"] = int(len(coords.get("eval", [])))
    if metrics is not None and "loss" in metrics and metrics.sizes.get("step", 0):
        loss = metrics["loss"]
        loss = (loss.mean("column") if "column" in loss.dims else loss).values.astype(np.float64)
        fin = loss[np.isfinite(loss)]
        summary["loss_final"] = float(np.mean(fin[-max(1, len(fin) // 20):])) if len(fin) else float("nan")
    summary["seconds"] = round(time.perf_counter() - t0, 3)
    summary = _jsonable(summary)
    settings = {"max_probe_samples": max_probe_samples, "mlp": mlp, "mlp_max_samples": mlp_max_samples,
                "usage_tol": usage_tol, "seed": seed, "probe_classifier": "logistic regression (linear)",
                "equivariance_regressors": "linear = ridge(alpha=1); mlp = MLPRegressor(256)"}
    ds = xr.Dataset({k: xr.Variable(*v) for k, v in out.items()}, coords=coords,
                    attrs={"summary": json.dumps(summary), "settings": json.dumps(settings),
                           "analysis_version": ANALYSIS_VERSION})
    tree.close()
    if write:
        write_group(sp, "analysis", ds)
    return summary


# in-run read-outs (colsim.evaluate) -> summary prefix, higher is better
_READOUTS = {"seen_": ("seen_acc", True), "frozen_": ("frozen_acc", True), "prediction_": ("prediction_loss", False),
             "head_": ("head_acc", True)}  # head_: a supervised column's own heads, only in its runs


def readout_summary(evaluation: xr.Dataset) -> dict:
    """Forgetting / BWT / FWT of the in-run read-outs stored in ``evaluation`` (seen-so-far probe,
    frozen read-out, prediction loss — a loss is negated, so forgetting > 0 means it went up), the
    final pooled accuracies and equivariance R² with their standard errors, and ``gain_*``: each
    headline number's change from the step-0 evaluation (a loss counts as its decrease)."""
    out: dict = {}
    phases = [str(p) for p in evaluation["phase"].values] if "phase" in evaluation.coords else []
    for prefix, (key, higher) in _READOUTS.items():
        if key not in evaluation:
            continue
        da = evaluation[key].load().transpose("eval", "probe_set")
        names = [str(p) for p in da["probe_set"].values]
        values = da.values.astype(np.float64)
        rows, index = phase_end_rows(phases, values, names)
        se = evaluation[f"{key}_se"].transpose("eval", "probe_set").values[index] \
            if f"{key}_se" in evaluation and "probe_set" in evaluation[f"{key}_se"].dims else None
        init = values[0] if phases and phases[0] == "init" else None
        cont = continual_of_rows(rows, init, se, higher)  # the arithmetic of the run's summary.json
        out.update({f"{prefix}{k}": cont[k] for k in ("forgetting", "bwt", "fwt", "forgetting_se")})
        if prefix == "head_":  # van de Ven & Tolias 2019's headline number, as in the run's summary.json
            out["average_accuracy"], out["average_accuracy_se"] = cont["average_accuracy"], cont["average_accuracy_se"]
    for key, sign in (("probe_acc_agg", 1), ("probe_acc_z", 1), ("equivariance_r2", 1), ("prediction_loss", -1)):
        if key not in evaluation:
            continue
        x = evaluation[key].load()
        x = x.mean("probe_set") if "probe_set" in x.dims else x  # prediction loss: mean over probe sets
        vals = x.values.astype(np.float64)
        name = key if key != "prediction_loss" else "prediction_loss_mean"
        out[f"{name}_final"] = float(vals[-1])
        if f"{key}_se" in evaluation and "probe_set" not in evaluation[f"{key}_se"].dims:
            out[f"{name}_final_se"] = float(evaluation[f"{key}_se"].values[-1])
        if phases and phases[0] == "init" and len(vals) > 1:
            out[f"gain_{key}"] = float(sign * (vals[-1] - vals[0]))
    return out


def _vote(ds: xr.Dataset) -> xr.Dataset:
    """A circuit's group with only the vote's entry of ``column`` (dropped), so the single-column analyses
    score the circuit's output; unchanged without a ``column`` dimension."""
    if "column" not in ds.dims:
        return ds
    names = [str(c) for c in ds["column"].values]
    if VOTE not in names:
        raise RunStoreError(f"the store's 'column' coordinate {names} has no {VOTE!r} entry; a circuit run records "
                         "its vote's output next to the columns'")
    return ds.sel(column=VOTE, drop=True)


def _rowmean(x: np.ndarray) -> np.ndarray:
    """Mean over the probe sets of each evaluation; NaN (no warning) where all are NaN."""
    x = np.asarray(x, np.float64)
    n = np.isfinite(x).sum(1)
    return np.where(n > 0, np.nansum(x, 1) / np.maximum(n, 1), np.nan)


def _analyze_probe(probe: xr.Dataset, max_probe_samples, mlp, mlp_max_samples, usage_tol, seed, block_bytes,
                   window=None):
    E, P = probe.sizes["eval"], probe.sizes["probe_set"]
    S, V, D = probe.sizes["sample"], probe.sizes["view"], probe.sizes["unit"]
    probe_sets = [str(p) for p in probe["probe_set"].values]
    phases = [str(p) for p in probe["phase"].values] if "phase" in probe.coords else ["?"] * E
    has_act = "actions" in probe
    adims = [str(a) for a in probe["action_dim"].values] if has_act else []
    factors = list(M.FACTORS)
    nan = lambda *shape: np.full(shape, np.nan)  # noqa: E731
    v = {k: nan(E, P) for k in ("acc_agg", "acc_z", "pose_from_z", "pose_from_zagg", "z_eff_rank", "z_rankme",
                                "zagg_eff_rank", "zagg_rankme", "z_sparsity", "radius_cv", "phase_residual")}
    unit_std = nan(E, P, D)
    r2 = nan(E, P, len(REGRESSORS))
    r2d = nan(E, P, len(REGRESSORS), len(adims))
    r2_pooled = nan(E)
    spec = nan(E, P, len(factors), D)
    top2 = nan(E, P, len(factors))
    dz_method = np.full((E, P, len(factors)), "none", dtype="<U12")
    circle = None
    n = min(S, max_probe_samples)
    labels = {k: probe[k].isel(sample=slice(0, n)).load() for k in
              ("label_class", "label_angle", "label_scale", "label_shift", "label_image", "actions") if k in probe}
    context = min(int(window), V) if window else None  # embed() aggregates the first min(window, V) views
    last_sets = trained_sets(phases[-1], probe_sets)
    circle_p = last_sets[-1] if last_sets else 0
    for e in range(E):
        pool_z, pool_a, pool_g = [], [], []  # view pairs of every probe set: the pooled linear equivariance probe
        do_mlp = mlp == "all" or (mlp == "last" and e == E - 1)
        for p in range(P):
            st = accumulate_slice(probe, e, p, block_bytes)
            # eff_rank: participation ratio of the centred covariance; rankme: uncentred singular values
            if st.z.n:
                v["z_eff_rank"][e, p] = M.participation_ratio(np.linalg.eigvalsh(st.z.cov()))
            v["z_rankme"][e, p] = M.rankme(st.z_singular_values)
            if "z_agg" in probe:
                if st.agg.n:
                    v["zagg_eff_rank"][e, p] = M.participation_ratio(np.linalg.eigvalsh(st.agg.cov()))
                v["zagg_rankme"][e, p] = M.rankme(st.zagg_singular_values)
            unit_std[e, p] = st.unit_std
            v["z_sparsity"][e, p] = st.sparsity
            plane = None
            for f, fac in enumerate(factors):
                cov, how = factor_covariance(st, fac) if has_act else (None, "none")
                dz_method[e, p, f] = how
                if cov is None or not np.isfinite(cov).all():
                    continue
                w, vec = np.linalg.eigh(cov)
                w, vec = np.clip(w[::-1], 0, None), vec[:, ::-1]
                if w.sum() > 0:
                    spec[e, p, f] = w / w.sum()
                    top2[e, p, f] = M.topk_share(w, 2)
                if fac == "rotation":
                    plane = vec[:, :2].T
            # ---- probes on the sample prefix
            z = probe["z"].isel(eval=e, probe_set=p, sample=slice(0, n)).transpose("sample", "view", "unit").values
            za = (probe["z_agg"].isel(eval=e, probe_set=p, sample=slice(0, n)).transpose("sample", ...).values
                  if "z_agg" in probe else None)
            lab = {k: x.isel(probe_set=p).values for k, x in labels.items()}
            if not np.isfinite(z).all():
                continue  # diverged activity: probes are NaN
            if "label_class" in lab and za is not None:
                lk = M.leakage(z, za, lab["label_class"], lab.get("label_angle"), lab.get("label_scale"),
                               lab.get("label_shift"), seed=seed, context_views=context, groups=lab.get("label_image"))
                v["acc_agg"][e, p], v["acc_z"][e, p] = lk["class_from_zagg"], lk["class_from_z"]
                v["pose_from_z"][e, p] = lk.get("pose_from_z", np.nan)
                v["pose_from_zagg"][e, p] = lk.get("pose_from_zagg", np.nan)
            elif "label_class" in lab:
                grp = lab.get("label_image", np.arange(n))  # every view, split by image / episode, as in leakage()
                v["acc_z"][e, p] = M.linear_probe_accuracy(z.reshape(n * V, -1), np.repeat(lab["label_class"], V),
                                                           seed=seed, groups=np.repeat(grp, V))
            if has_act and V > 1:
                pool_z.append(z)
                pool_a.append(lab["actions"])
                pool_g.append(lab["label_image"] if "label_image" in lab else p * n + np.arange(n))
                for r, reg in enumerate(REGRESSORS):
                    if reg == "mlp" and not do_mlp:
                        continue
                    m = n if reg == "linear" else min(n, mlp_max_samples)
                    res = M.equivariance(z[:m], lab["actions"][:m], adims, probe=reg, seed=seed)
                    r2[e, p, r] = res["r2"]
                    for k, name in enumerate(adims):
                        r2d[e, p, r, k] = res["per_dim"].get(name, np.nan)
            if plane is not None and "label_angle" in lab and V >= 2:
                circ = M.rotation_circle(z, lab["label_angle"], plane)
                c = M.circularity(circ)
                v["radius_cv"][e, p], v["phase_residual"][e, p] = c["radius_cv"], c["phase_residual"]
                if e == E - 1 and p == circle_p:
                    circle = circ.isel(orbit=slice(0, N_ORBITS))
        if pool_z:
            r2_pooled[e] = M.equivariance(np.concatenate(pool_z), np.concatenate(pool_a), adims, probe="linear",
                                          seed=seed, groups=np.concatenate(pool_g))["r2"]
    ref = np.nanmax(unit_std) if np.isfinite(unit_std).any() else np.nan
    with np.errstate(invalid="ignore"):
        usage = np.where(np.isfinite(unit_std).all(-1), (unit_std > usage_tol * ref).mean(-1), np.nan)
    out = {k: (("eval", "probe_set"), x) for k, x in v.items()}
    out["unit_usage"] = (("eval", "probe_set"), usage)
    out["unit_std"] = (("eval", "probe_set", "unit"), unit_std)
    out["equivariance_r2"] = (("eval", "probe_set", "regressor"), r2)
    out["equivariance_r2_dim"] = (("eval", "probe_set", "regressor", "action_dim"), r2d)
    out["equivariance_r2_pooled"] = (("eval",), r2_pooled)
    out["dz_eigenspectrum"] = (("eval", "probe_set", "factor", "component"), spec)
    out["dz_top2_share"] = (("eval", "probe_set", "factor"), top2)
    out["dz_method"] = (("eval", "probe_set", "factor"), dz_method)
    coords = {"probe_set": probe_sets, "regressor": REGRESSORS, "factor": factors, "component": np.arange(D)}
    if adims:
        coords["action_dim"] = adims
    if circle is not None:
        out["circle_xy"] = (("orbit", "view", "xy"), circle["xy"].values)
        out["circle_angle"] = (("orbit", "view"), circle["angle"].values)
    return {"vars": out, "coords": coords}


def _layer_sparsity(layers: xr.Dataset, max_samples: int) -> xr.DataArray | None:
    """Fraction of near-zero activity per (eval, layer) from the optional ``layers`` group.

    A variable with a ``layer`` dimension gives one row per layer; any other variable with an
    ``eval`` dimension counts as one layer named after it. Reads the first ``max_samples``
    samples only.
    """
    from colsim.analysis._stream import ZERO_TOL

    rows = []
    for name, da in layers.data_vars.items():
        if "eval" not in da.dims:
            continue
        if "sample" in da.dims:
            da = da.isel(sample=slice(0, max_samples))
        x = da.load()
        zero = (np.abs(x) <= ZERO_TOL).where(np.isfinite(x))
        if "layer" in da.dims:
            frac = zero.mean([d for d in da.dims if d not in ("eval", "layer")])
            frac = frac.assign_coords(layer=[f"{name}.{v}" if len(layers.data_vars) > 1 else str(v)
                                             for v in da["layer"].values])
        else:
            frac = zero.mean([d for d in da.dims if d != "eval"]).expand_dims(layer=[str(name)])
        rows.append(frac.transpose("eval", "layer").drop_vars([c for c in frac.coords if c not in ("eval", "layer")]))
    if not rows:
        return None
    return xr.concat(rows, "layer")


def _final_summary(out: dict, coords: dict) -> dict:
    """Key numbers at the last evaluation, averaged over the probe sets trained so far."""
    if "eval" not in coords or not len(coords["eval"]):
        return {}
    phase = coords["phase"][1][-1]
    sets = trained_sets(phase, coords.get("probe_set", []))
    res = {"final_eval_phase": phase, "final_step": int(coords["step"][1][-1])}

    def last(name, *idx):
        if name not in out:
            return float("nan")
        x = np.asarray(out[name][1])[-1][sets]
        for i in idx:
            x = x[:, i]
        x = x[np.isfinite(x)]
        return float(np.mean(x)) if len(x) else float("nan")

    for k in ("acc_agg", "acc_z", "pose_from_z", "pose_from_zagg", "z_eff_rank", "z_rankme", "zagg_eff_rank",
              "zagg_rankme", "unit_usage", "z_sparsity", "radius_cv", "phase_residual"):
        res[k] = last(k)
    res["class_leak"] = res["acc_z"] - res["acc_agg"]
    res["pose_leak"] = res["pose_from_zagg"]
    if "equivariance_r2" in out:
        res["equivariance_r2_linear"] = last("equivariance_r2", 0)
        res["equivariance_r2_mlp"] = last("equivariance_r2", 1)
        res["equivariance_r2_pooled"] = float(np.asarray(out["equivariance_r2_pooled"][1])[-1])
        res["equivariance_r2_dim_linear"] = {a: last("equivariance_r2_dim", 0, k)
                                             for k, a in enumerate(coords.get("action_dim", []))}
    if "dz_top2_share" in out:
        for f, fac in enumerate(coords["factor"]):
            res[f"dz_top2_share_{fac}"] = last("dz_top2_share", f)
    return res


def summary_from_store(path) -> dict | None:
    """The summary dict stored by the last ``analyze_run`` (None when the run was never analysed)."""
    tree = open_run(path)
    if "analysis" not in tree.children:
        return None
    s = tree["analysis"].attrs.get("summary")
    return json.loads(s) if isinstance(s, str) else s
