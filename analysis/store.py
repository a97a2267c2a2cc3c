"""Open run stores as xarray (docs/reference/store.md).

A run folder holds ``config.yaml``, ``store.zarr`` (zarr v3 groups ``metrics``, ``probe``,
``evaluation``, optional ``layers`` and ``analysis``), ``summary.json`` and ``checkpoints/``.

* :func:`open_run` — one run as an ``xr.DataTree`` (lazy: nothing large is read).
* :func:`open_runs` — several runs as one ``xr.Dataset`` with run dimensions
  ``(rule, model, protocol, seed)`` so a sweep is a data dimension; a ``colsim sweep`` folder
  opens lazily with one ``run`` dimension whose coordinates are the swept fields.
* :func:`is_sweep`, :func:`sweep_run_dirs`, :func:`run_point`, :func:`expand_runs` — sweep folders.
* :func:`write_group` — (re)write one group and re-consolidate the store's metadata.
"""
from __future__ import annotations

import contextlib
import json
import os
import warnings
from pathlib import Path
from typing import Iterable

import numpy as np
import xarray as xr

__all__ = ["RunStoreError", "RUN_DIMS", "store_path", "open_run", "open_runs", "run_info", "write_group",
           "quiet_zarr", "is_sweep", "sweep_run_dirs", "run_point", "expand_runs", "open_sweep"]

RUN_DIMS = ("rule", "model", "protocol", "seed")
_EVAL_GROUPS = ("evaluation", "analysis")


class RunStoreError(ValueError):
    """A path that is not a run folder / run store; the message names the path and what is wrong."""


@contextlib.contextmanager
def quiet_zarr():
    """Silence zarr's warnings about fixed-length strings and consolidated metadata in v3 stores."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*does not have a Zarr V3 specification.*")
        warnings.filterwarnings("ignore", message=".*Consolidated metadata is currently not part.*")
        warnings.filterwarnings("ignore", message=".*Failed to open Zarr store with consolidated metadata.*")
        yield


def store_path(path) -> Path:
    """``path`` is a run folder (holding ``store.zarr``) or the store itself -> the store's path."""
    p = Path(path).expanduser()
    if not p.exists():
        raise RunStoreError(f"{p}: no such run folder or store")
    if (p / "store.zarr").is_dir():
        p = p / "store.zarr"
    if not (p / "zarr.json").is_file():
        raise RunStoreError(f"{p}: not a colsim run store (no store.zarr/ or zarr.json inside); "
                            "pass a run folder written by `colsim run` or its store.zarr")
    return p


def open_run(path, chunks=None) -> xr.DataTree:
    """Open a run folder or ``store.zarr`` as a lazy ``xr.DataTree``.

    ``chunks=None`` gives lazily indexed arrays (``.isel(...).values`` reads only the chunks it
    needs); ``chunks={}`` gives dask arrays in the on-disk chunks. Stores without consolidated
    metadata (an interrupted run never closed) are opened group by group; a group whose arrays
    disagree on a dimension's length (a crash mid-append) is cut to the shortest length.
    """
    p = store_path(path)
    with quiet_zarr():
        try:
            return xr.open_datatree(str(p), engine="zarr", chunks=chunks)
        except Exception:  # noqa: BLE001 - fall back to a group-by-group open
            return _open_robust(p, chunks)


def _open_robust(p: Path, chunks) -> xr.DataTree:
    import zarr

    try:
        root = zarr.open_group(str(p), mode="r", use_consolidated=False)
    except Exception as exc:  # noqa: BLE001
        raise RunStoreError(f"{p}: cannot be opened as a zarr store ({exc})") from exc
    groups = {"/": xr.Dataset(attrs=dict(root.attrs))}
    for name, _ in root.groups():
        try:
            groups[name] = xr.open_dataset(str(p), engine="zarr", group=name, chunks=chunks, consolidated=False)
        except Exception:  # noqa: BLE001 - ragged arrays: build from zarr, truncated
            groups[name] = _truncated_group(root[name])
    return xr.DataTree.from_dict(groups)


def _truncated_group(g) -> xr.Dataset:
    import dask.array as da

    arrays = {k: a for k, a in g.arrays()}
    dims = {k: tuple(a.metadata.dimension_names or [f"{k}_dim{i}" for i in range(a.ndim)]) for k, a in arrays.items()}
    size: dict[str, int] = {}
    for k, a in arrays.items():
        for d, n in zip(dims[k], a.shape):
            size[d] = min(size.get(d, n), n)
    out = {}
    for k, a in arrays.items():
        x = da.from_zarr(a)[tuple(slice(0, size[d]) for d in dims[k])]
        out[k] = xr.Variable(dims[k], x, attrs={kk: v for kk, v in a.attrs.items() if not kk.startswith("_")})
    coords = {k: v for k, v in out.items() if k in size and v.dims == (k,)}
    data = {k: v for k, v in out.items() if k not in coords}
    ds = xr.Dataset(data, coords=coords, attrs=dict(g.attrs))
    for extra in ("step", "phase"):  # eval-indexed coordinates of probe/evaluation
        if extra in ds.data_vars and ds[extra].dims == ("eval",):
            ds = ds.set_coords(extra)
    return ds


def run_info(tree: xr.DataTree) -> dict:
    """The run's identity and status from the root attributes (with fallbacks into ``config``)."""
    a = dict(tree.attrs)
    cfg = a.get("config") or {}

    def name(key):
        v = a.get(key)
        if v is None and isinstance(cfg.get(key), dict):
            v = cfg[key].get("name")
        return str(v) if v is not None else "unknown"

    seed = a.get("seed", cfg.get("seed", -1))
    return {"rule": name("rule"), "model": name("model"), "protocol": name("protocol"),
            "seed": int(seed) if seed is not None else -1, "status": str(a.get("status", "unknown")),
            "steps_done": a.get("steps_done")}


def write_group(path, group: str, ds: xr.Dataset) -> None:
    """Replace group ``group`` of the store with ``ds`` (other groups untouched) and re-consolidate."""
    import zarr

    p = store_path(path)
    with quiet_zarr():
        ds.to_zarr(str(p), group=group, mode="w", consolidated=False, zarr_format=3)
        zarr.consolidate_metadata(str(p), zarr_format=3)


def _eval_group(tree: xr.DataTree, group: str) -> xr.Dataset | None:
    if group not in tree.children:
        return None
    ds = tree[group].to_dataset()
    ren = {c: f"eval_{c}" for c in ("step", "phase") if c in ds.coords and ds[c].dims == ("eval",)}
    ds = ds.rename(ren).reset_coords(list(ren.values()))
    # keep what aligns across runs: every dimension labelled (or ``eval``, aligned by index);
    # per-sample arrays, alarms (a list per run), circles and unit-indexed arrays stay out
    keep = [v for v in ds.data_vars if all(d == "eval" or d in ds.indexes for d in ds[v].dims)]
    out = ds[keep].rename({v: f"{group}.{v}" for v in keep})
    if "alarm_kind" in ds:
        out[f"{group}.n_alarms"] = xr.DataArray(float(ds.sizes.get("alarm", 0)))
    return out.drop_vars([c for c in out.coords if c not in out.dims])


def open_runs(paths, groups: tuple[str, ...] = ("metrics", "evaluation", "analysis"),
              load: bool | None = None) -> xr.Dataset:
    """Open several runs as one ``xr.Dataset`` with dimensions ``rule, model, protocol, seed``.

    Each store's root attributes give its coordinates on those four dimensions (so a
    ``colsim sweep`` is a data dimension: ``ds["loss"].mean("seed")``). Variables:

    * ``metrics`` variables under their own names over ``step`` (``loss``, ``lpl.l0.hebb`` ...);
    * per-evaluation groups prefixed with the group name (``evaluation.acc_agg``,
      ``analysis.acc_matrix``, ``analysis.n_alarms`` ...) — the variables whose dimensions
      are labelled (eval, probe_set, action_dim, after_phase, factor, regressor, component,
      layer); per-sample, per-unit, per-orbit and per-alarm arrays stay in the stores. Their
      ``step``/``phase`` coordinates become ``evaluation.eval_step`` / ``evaluation.eval_phase``;
    * ``status`` and ``steps_done`` per run.

    Ragged runs are aligned by an outer join: ``step`` on the union of recorded steps, ``eval``
    on the evaluation index (0 = the evaluation before training), ``probe_set`` and
    ``action_dim`` on their names; whatever a run lacks (fewer steps or evaluations after a
    divergence, a metric its rule does not emit, a run combination not in the sweep) is NaN.
    Integer variables therefore become float. Two stores with the same (rule, model,
    protocol, seed) are an error. ``load=False`` keeps arrays lazy (dask).

    ``paths`` may instead be one ``colsim sweep`` folder (or a list holding only it): see
    :func:`open_sweep` (lazy unless ``load=True``).
    """
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    paths = list(paths)
    sweeps = [p for p in paths if is_sweep(p)]
    if sweeps:
        if len(paths) != 1:
            raise RunStoreError(f"{sweeps[0]}: a sweep folder opens on its own (open_runs(SWEEP_DIR)); "
                                "give one sweep folder, or run folders")
        return open_sweep(paths[0], groups, load=bool(load))
    load = True if load is None else load
    per_run = []
    seen = {}
    for path in paths:
        tree = open_run(path, chunks=None if load else {})
        info = run_info(tree)
        key = tuple(info[d] for d in RUN_DIMS)
        if key in seen:
            raise RunStoreError(f"{path}: same (rule, model, protocol, seed) = {key} as {seen[key]}; "
                                "open_runs needs one run per combination")
        seen[key] = str(path)
        ds = _run_dataset(tree, groups, load, info["status"], info["steps_done"])
        per_run.append(ds.expand_dims(run=1).assign_coords({d: ("run", [info[d]]) for d in RUN_DIMS}))
    if not per_run:
        raise RunStoreError("open_runs: no runs given")
    run = _concat(per_run)
    out = run.set_index(run=list(RUN_DIMS)).unstack("run", fill_value=np.nan)
    out = out.transpose(*RUN_DIMS, ...)
    out.attrs["runs"] = list(seen.values())
    return out


def _run_dataset(tree, groups, load: bool, status: str, steps_done) -> xr.Dataset:
    parts = []
    if tree is not None and "metrics" in groups and "metrics" in tree.children:
        parts.append(tree["metrics"].to_dataset())
    for g in groups:
        if tree is not None and g != "metrics":
            e = _eval_group(tree, g)
            if e is not None:
                parts.append(e)
    ds = xr.merge(parts, join="outer", compat="override", combine_attrs="drop") if parts else xr.Dataset()
    if load:
        ds = ds.load()
    ds["status"] = xr.DataArray(str(status))
    ds["steps_done"] = xr.DataArray(float(steps_done) if steps_done is not None else np.nan)
    for v in list(ds.data_vars):  # so that missing entries can be NaN
        if ds[v].dtype.kind in "iub":
            ds[v] = ds[v].astype(np.float64)
        elif ds[v].dtype.kind == "U":
            ds[v] = ds[v].astype(object)
    return ds


def _concat(per_run: list[xr.Dataset]) -> xr.Dataset:
    return xr.concat(per_run, dim="run", join="outer", data_vars="all", coords="minimal", compat="override",
                     fill_value=np.nan, combine_attrs="drop")


# ------------------------------------------------------------------------------------------
# sweep folders (colsim sweep): DIR/sweep.yaml, DIR/runs/<name>/{sweep_run.json, store.zarr, ...}

def is_sweep(path) -> bool:
    """True for a folder written by ``colsim sweep`` (``sweep.yaml`` and ``runs/`` inside)."""
    p = Path(path).expanduser()
    return (p / "sweep.yaml").is_file() and (p / "runs").is_dir()


def _sweep_status(run_dir: Path) -> dict:
    try:
        return json.loads((run_dir / "sweep_run.json").read_text())
    except (OSError, ValueError):
        return {}


def sweep_run_dirs(path, with_store: bool = False) -> list[Path]:
    """The run folders of a sweep folder, sorted by name (only those holding a store if ``with_store``)."""
    p = Path(path).expanduser()
    if not is_sweep(p):
        raise RunStoreError(f"{p}: not a colsim sweep folder (no sweep.yaml and runs/ inside)")
    dirs = sorted(d for d in (p / "runs").iterdir() if d.is_dir() and (d / "sweep_run.json").is_file())
    return [d for d in dirs if (d / "store.zarr" / "zarr.json").is_file()] if with_store else dirs


def run_point(path) -> dict:
    """A sweep run's swept values (``{"rule": "lpl", "seed": 0, "lr": 0.001}``); {} outside a sweep."""
    p = Path(path).expanduser()
    if p.name == "store.zarr":
        p = p.parent
    return dict(_sweep_status(p).get("point") or {})


def expand_runs(paths) -> list[str]:
    """Run paths with every sweep folder replaced by its runs that hold a store."""
    out: list[str] = []
    for r in paths:
        out += [str(d) for d in sweep_run_dirs(r, with_store=True)] if is_sweep(r) else [str(r)]
    return out


def open_sweep(path, groups: tuple[str, ...] = ("metrics", "evaluation", "analysis"), load: bool = False) -> xr.Dataset:
    """A sweep folder as one ``xr.Dataset`` over ``run`` (lazy dask arrays unless ``load``).

    Coordinates on ``run``: the run folder's name (``run``), every swept field under its
    coordinate name (``rule``, ``seed``, ``lr`` ... in the sweep's order), and the run identity
    fields not swept (``rule``, ``model``, ``protocol``, ``seed``). ``status`` is the sweep's
    record of each run (completed, diverged, failed, interrupted, running); a run that failed
    before writing a store is there with NaN data, so ``ds.where(ds.status == "completed")``
    selects results. Variables as in :func:`open_runs`, aligned by outer joins.
    """
    p = Path(path).expanduser()
    dirs = sweep_run_dirs(p)
    if not dirs:
        raise RunStoreError(f"{p}: the sweep has no run folders yet (run `colsim sweep` on it first)")
    names: list[str] = []
    points, per_run = [], []
    for d in dirs:
        st = _sweep_status(d)
        point = dict(st.get("point") or {})
        for k in point:
            if k not in names:
                names.append(k)
        ident = {k: st.get("identity", {}).get(k) for k in RUN_DIMS}
        status, steps_done, tree = st.get("status"), st.get("steps"), None
        if (d / "store.zarr" / "zarr.json").is_file():
            tree = open_run(d, chunks=None if load else {})
            info = run_info(tree)
            ident = {k: info[k] for k in RUN_DIMS}
            status = status or info["status"]
            steps_done = info["steps_done"] if info["steps_done"] is not None else steps_done
        per_run.append(_run_dataset(tree, groups, load, status or "unknown", steps_done))
        points.append((d.name, point, ident))
    coords_order = names + [k for k in RUN_DIMS if k not in names]
    out = []
    for ds, (name, point, ident) in zip(per_run, points):
        vals = {k: point.get(k, ident.get(k)) for k in coords_order}
        vals = {k: json.dumps(v) if isinstance(v, (list, dict)) else v for k, v in vals.items()}  # one label a run
        out.append(ds.expand_dims(run=1).assign_coords(run=[name], **{k: ("run", [v]) for k, v in vals.items()}))
    res = _concat(out)
    for k in coords_order:  # a field missing from some runs (a sweep extended later) is None there
        if res[k].dtype == object and all(isinstance(v, (int, np.integer)) for v in res[k].values):
            res = res.assign_coords({k: ("run", res[k].values.astype(np.int64))})
    res.attrs.update(sweep=str(p), swept=names, runs=[str(d) for d in dirs])
    return res
