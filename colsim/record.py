"""Recorders: write a run's activity as it goes, every array carrying its dimension names.

``ZarrRecorder`` writes the run store (docs/reference/store.md) so ``xr.open_datatree(store,
engine="zarr")`` opens it directly:

* ``metrics`` — one float32 array per scalar metric over the ``step`` dimension; a metric
  that appears later is NaN before; names use "." as separator (``lpl.l0.hebb``).
  Buffered in memory and appended every ``flush_every`` records; the simulator also flushes at
  every evaluation and before every checkpoint, so the store on disk always holds every row up to
  the latest checkpoint. The most a hard kill (``kill -9``, power loss) can lose is the rows
  buffered since the last flush: at most ``flush_every`` rows, and never a row a checkpoint covers.
  A circuit's per-column metrics (a value that is an array of length N) are (step, column) arrays,
  labelled by the ``column`` coordinate given to :meth:`Recorder.set_columns`.
* ``probe`` / ``evaluation`` — one slice per evaluation along ``eval`` (written with xarray).
* root attributes — resolved config, seed, versions, git revision, device and ``status``. The
  status is ``interrupted`` from the start until the run ends (a run killed with ``kill -9``
  cannot rewrite it), then ``completed`` / ``diverged`` / ``interrupted``.

Readable after a kill at any moment: every file write is atomic (zarr's local store writes a
temporary file and renames it), and after every flush and evaluation the metadata is
consolidated into the root ``zarr.json`` (one atomic write). ``xr.open_datatree`` reads the
consolidated metadata, i.e. the store as it was at the last flush, even when a kill landed in
the middle of an append (arrays of a group then differ in length on disk until ``--resume``
cuts them back, see :meth:`ZarrRecorder.reopen`). ``MemoryRecorder`` keeps everything in memory
for tests.
"""
from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any, Optional

import numpy as np

from colsim.analysis import schema as S

__all__ = ["Recorder", "ZarrRecorder", "MemoryRecorder", "NullRecorder", "sanitize"]


def sanitize(name: str) -> str:
    return name.replace("/", ".").replace(" ", "_")


class Recorder:
    """Interface: ``record(step, values)``, ``record_eval(group, ds_vars, static)``, ``set_attrs``, ``close(status)``."""

    def record(self, step: int, values: dict[str, float]) -> None:  # pragma: no cover - interface
        raise NotImplementedError

    def record_eval(self, group: str, data: dict[str, tuple], coords: dict[str, tuple],
                    static: Optional[dict[str, tuple]] = None) -> None:  # pragma: no cover
        raise NotImplementedError

    def set_attrs(self, **attrs: Any) -> None:  # pragma: no cover
        raise NotImplementedError

    def flush(self) -> None:
        pass

    def set_columns(self, names: list[str]) -> None:
        """Name the ``column`` dim of per-column metrics (a circuit's columns; called before the first record)."""

    def position(self) -> dict:
        """What is recorded so far (call after :meth:`flush`): ``{"rows": metric rows, "evals": {group: n}}``
        — stored in a checkpoint so a resumed run cuts the store back to it."""
        return {"rows": 0, "evals": {}}

    def close(self, status: str) -> None:  # pragma: no cover
        raise NotImplementedError


class NullRecorder(Recorder):
    """Drops everything (``record.enabled: false`` and the recording-overhead benchmark)."""

    def record(self, step, values):
        pass

    def record_eval(self, group, data, coords, static=None):
        pass

    def set_attrs(self, **attrs):
        pass

    def close(self, status):
        self.status = status


class MemoryRecorder(Recorder):
    def __init__(self):
        self.metrics: list[tuple[int, dict[str, float]]] = []
        self.evals: dict[str, list[dict]] = {}
        self.static: dict[str, dict] = {}
        self.attrs: dict[str, Any] = {}
        self.status: Optional[str] = None

    def record(self, step, values):
        self.metrics.append((int(step), {sanitize(k): _value(v) for k, v in values.items()}))

    def set_columns(self, names):
        self.columns = list(names)

    def record_eval(self, group, data, coords, static=None):
        self.evals.setdefault(group, []).append({"data": data, "coords": coords})
        if static and group not in self.static:
            self.static[group] = static

    def set_attrs(self, **attrs):
        self.attrs.update(attrs)

    def close(self, status):
        self.status = status
        self.attrs["status"] = status

    def position(self) -> dict:
        return {"rows": len(self.metrics), "evals": {g: len(v) for g, v in self.evals.items()}}

    def series(self, name: str) -> np.ndarray:
        """(steps,) or (steps, column) for per-column metrics."""
        return np.array([m.get(name, np.nan) for _, m in self.metrics])


class ZarrRecorder(Recorder):
    def __init__(self, path: str | Path, attrs: Optional[dict[str, Any]], flush_every: int = 200,
                 flush_seconds: Optional[float] = None):
        import zarr

        self.path = Path(path)
        self.flush_every = flush_every
        self.flush_seconds = flush_seconds  # also flush when this much wall time passed since the last flush
        self._last_flush = time.monotonic()
        self._buf: list[tuple[int, dict[str, float]]] = []
        self._n = 0  # rows written
        self._evals: dict[str, int] = {}  # group -> evaluations written
        self._columns: Optional[list[str]] = None
        if attrs is None:  # reopen (ZarrRecorder.reopen)
            return
        self.root = zarr.open_group(str(self.path), mode="w-", zarr_format=3)
        self.root.attrs.update({**_jsonable(attrs), "status": "interrupted"})  # until close() says otherwise
        self.metrics = self.root.create_group("metrics")
        self.metrics.create_array(S.STEP, shape=(0,), chunks=(8192,), dtype="int64", fill_value=-1,
                                  dimension_names=[S.STEP])
        self._consolidate()

    @classmethod
    def reopen(cls, path: str | Path, position: dict, flush_every: int = 200, flush_seconds: Optional[float] = None,
               **attrs: Any) -> "ZarrRecorder":
        """Continue an existing store from a checkpoint's ``position``: every ``metrics`` array is cut
        back to ``position["rows"]`` rows and every evaluation group to ``position["evals"][group]``
        evaluations (a group made after the checkpoint is removed), so the resumed run appends with
        no duplicate and no missing row. ``attrs`` are added to the root attributes; the status is
        ``interrupted`` again until :meth:`close`. Raises ValueError when the store holds less than
        the checkpoint says was written (it is not this run's store)."""
        import zarr

        self = cls(path, None, flush_every, flush_seconds)
        self.root = zarr.open_group(str(self.path), mode="r+", zarr_format=3, use_consolidated=False)
        self.metrics = self.root["metrics"]
        rows = int(position.get("rows", 0))
        evals = {str(g): int(n) for g, n in (position.get("evals") or {}).items()}
        for k, a in self.metrics.arrays():
            if (a.metadata.dimension_names or (S.STEP,))[0] != S.STEP:  # the column coordinate
                self._columns = [str(x) for x in a[:]]
                continue
            if a.shape[0] < rows:
                raise ValueError(f"{self.path}: metrics/{k} holds {a.shape[0]} rows, the checkpoint says {rows} were "
                                 "written; the store is not this checkpoint's")
            if a.shape[0] != rows:
                a.resize((rows, *a.shape[1:]))
        for g, _ in list(self.root.groups()):
            if g == "metrics":
                continue
            n = evals.get(g, 0)
            if n == 0:
                del self.root[g]
                continue
            for k, a in self.root[g].arrays():
                dims = a.metadata.dimension_names or ()
                if dims and dims[0] == S.EVAL:
                    if a.shape[0] < n:
                        raise ValueError(f"{self.path}: {g}/{k} holds {a.shape[0]} evaluations, the checkpoint says "
                                         f"{n}; the store is not this checkpoint's")
                    if a.shape[0] != n:
                        a.resize((n, *a.shape[1:]))
            self._evals[g] = n
        self._n = rows
        self.root.attrs.update({**_jsonable(attrs), "status": "interrupted"})
        self._consolidate()
        return self

    def position(self) -> dict:
        return {"rows": self._n + len(self._buf), "evals": dict(self._evals)}

    # -------------------------------------------------------------- metrics
    def record(self, step: int, values: dict[str, float]) -> None:
        self._buf.append((int(step), {sanitize(k): _value(v) for k, v in values.items()}))
        if len(self._buf) >= self.flush_every or (
                self.flush_seconds is not None and time.monotonic() - self._last_flush >= self.flush_seconds):
            self.flush()

    def set_columns(self, names: list[str]) -> None:
        if self._columns is not None or S.COLUMN in set(self.metrics.array_keys()):
            return
        self._columns = [str(n) for n in names]
        with _quiet():
            a = self.metrics.create_array(S.COLUMN, shape=(len(names),), dtype=f"<U{max(len(n) for n in names)}",
                                          dimension_names=[S.COLUMN])
            a[:] = np.array(self._columns)
        self._consolidate()

    def flush(self) -> None:
        if not self._buf:
            return
        keys = sorted(set().union(*(v.keys() for _, v in self._buf)))
        existing = set(self.metrics.array_keys()) - {S.COLUMN}
        width: dict[str, int] = {}  # per-column metrics: their number of columns
        for _, v in self._buf:
            width.update({k: x.shape[0] for k, x in v.items() if isinstance(x, np.ndarray)})
        for k in keys:
            if k not in existing:
                w = width.get(k)
                if w is not None and (self._columns is None or len(self._columns) != w):
                    raise ValueError(f"metric {k!r} has {w} columns; call set_columns with their names first")
                self.metrics.create_array(k, shape=(self._n,) if w is None else (self._n, w),
                                          chunks=(8192,) if w is None else (8192, w), dtype="float32",
                                          fill_value=float("nan"),
                                          dimension_names=list(S.metric_layout(circuit=w is not None)))
                existing.add(k)
        n0, n1 = self._n, self._n + len(self._buf)
        cols = {S.STEP: np.array([s for s, _ in self._buf], dtype=np.int64)}
        for k in sorted(existing - {S.STEP}):
            a = self.metrics[k]
            nan = np.nan if a.ndim == 1 else np.full(a.shape[1:], np.nan)
            cols[k] = np.array([v.get(k, nan) for _, v in self._buf], dtype=np.float32)
        for k, col in cols.items():  # rows n0:n1 of every array: a flush cut short and retried writes the same
            a = self.metrics[k]
            if a.shape[0] != n1:
                a.resize((n1, *a.shape[1:]))
            a[n0:n1] = col
        self._n = n1
        self._buf.clear()
        self._consolidate()
        self._last_flush = time.monotonic()

    def _consolidate(self) -> None:
        """Snapshot every array's metadata into the root zarr.json (one atomic write): readers see the
        store as it is now even if a later append is cut short by a kill."""
        import zarr

        with _quiet():
            zarr.consolidate_metadata(str(self.path), zarr_format=3)

    # -------------------------------------------------------------- evaluations
    def record_eval(self, group: str, data: dict[str, tuple], coords: dict[str, tuple],
                    static: Optional[dict[str, tuple]] = None) -> None:
        """Append one evaluation: ``data[name] = (dims, array)`` with a leading ``eval`` dim of length 1.

        ``coords`` are (dims, values) pairs (``eval``-indexed ones are appended too);
        ``static`` variables (no ``eval`` dim) are written once, with the first evaluation.
        """
        import xarray as xr

        eval_coord_names = [k for k, (d, _) in coords.items() if d and d[0] == S.EVAL]
        data_vars = {}
        for k, (dims, arr) in data.items():
            attrs = {"coordinates": " ".join(c for c in eval_coord_names if c != S.EVAL)} if eval_coord_names else {}
            data_vars[k] = xr.Variable(dims, arr, attrs=attrs)
        first = group not in self._evals
        if first and static:
            for k, (dims, arr) in static.items():
                data_vars[k] = xr.Variable(dims, arr)
        ds = xr.Dataset(data_vars, coords={k: xr.Variable(d, v) for k, (d, v) in coords.items()
                                           if first or (d and d[0] == S.EVAL)})
        with _quiet():
            if first:
                ds.to_zarr(str(self.path), group=group, mode="w", zarr_format=3, consolidated=False)
            else:
                ds.to_zarr(str(self.path), group=group, mode="a", append_dim=S.EVAL, zarr_format=3, consolidated=False)
        self._evals[group] = self._evals.get(group, 0) + 1
        self._consolidate()

    # -------------------------------------------------------------- attributes / close
    def set_attrs(self, **attrs: Any) -> None:
        self.root.attrs.update(_jsonable(attrs))
        self._consolidate()  # the update rewrote the root zarr.json without the consolidated metadata

    def close(self, status: str) -> None:
        self.flush()
        self.root.attrs["status"] = status
        self._consolidate()


def _quiet():
    """Silence zarr's notes that fixed-width strings / consolidated metadata are not in the v3 spec yet."""
    import warnings

    cm = warnings.catch_warnings()
    cm.__enter__()
    warnings.filterwarnings("ignore", message=".*does not have a Zarr V3 specification.*")
    warnings.filterwarnings("ignore", message=".*Consolidated metadata is currently not part.*")
    return _Exit(cm)


class _Exit:
    def __init__(self, cm):
        self.cm = cm

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.cm.__exit__(*exc)
        return False


def _value(v: Any) -> "float | np.ndarray":
    """A metric value: a float, or (N,) float64 for a per-column metric."""
    if isinstance(v, (np.ndarray, list, tuple)):
        return np.asarray(v, dtype=np.float64)
    return float(v)


def _jsonable(obj: Any) -> Any:
    """Attributes must be JSON: numpy scalars -> python, NaN/Inf -> None."""
    return json.loads(json.dumps(obj, default=_default), parse_constant=lambda _: None)


def _default(o):
    if isinstance(o, (np.integer,)):
        return int(o)
    if isinstance(o, (np.floating,)):
        f = float(o)
        return f if math.isfinite(f) else None
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    return str(o)
