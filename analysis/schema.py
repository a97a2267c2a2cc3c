"""The run store's dimension names and variable layouts: the one place they are spelled for the writers.

The recorder (``colsim.record``), the evaluator (``colsim.sim.evaluator``, ``colsim.circuit.evaluate``,
``colsim.evaluate``) and the probe-set labels (:func:`label_layout`) build every ``(dims, array)`` pair
from the names and layouts here; docs/reference/store.md describes the same store for readers. Readers select
by these names as keywords (``ds.sel(probe_set=...)``), the same names a user types in xarray.

Plain strings and tuples only (no numpy, no torch): both the torch side and :mod:`colsim.analysis` import it.
"""
from __future__ import annotations

__all__ = ["STEP", "EVAL", "PROBE_SET", "SAMPLE", "VIEW", "UNIT", "UNIT_AGG", "ACTION_DIM", "BLOCK", "COLUMN",
           "BIN", "READOUT_LAYER", "LABEL_TRAILING_DIMS", "unit_l", "neuron_l", "evaluation_layout",
           "z_layout", "z_agg_layout", "label_layout", "metric_layout", "CORE_DIMS"]

# metrics group: one row per training step (and a column per circuit entry)
STEP = "step"
# evaluation / probe groups
EVAL = "eval"              # one row per evaluation (coordinates step and phase ride on it)
PROBE_SET = "probe_set"    # one probe set per phase, named after it
SAMPLE = "sample"          # an episode of a probe set
VIEW = "view"              # a view (glimpse) of an episode
UNIT = "unit"              # a unit of z
UNIT_AGG = "unit_agg"      # a unit of z_AGG
ACTION_DIM = "action_dim"  # a dimension of the action vector
BLOCK = "block"            # an encoder block (LPL's per-block predictive loss)
COLUMN = "column"          # a circuit's entry: each column, then the vote
BIN = "bin"                # a time bin of a spiking raster
READOUT_LAYER = "readout_layer"  # a layer read out on its full spike-count vector (the input first; models/echospike.py)

CORE_DIMS = (STEP, EVAL, PROBE_SET, SAMPLE, VIEW, UNIT, UNIT_AGG, ACTION_DIM, BLOCK, COLUMN, BIN, READOUT_LAYER)

# trailing dimension names of per-view labels (N, V, ...) in the ``probe`` group
LABEL_TRAILING_DIMS = {"shift": ("xy",), "fixation": ("xy",), "orientation": ("quat",), "light": ("light_dim",)}


def unit_l(layer: int) -> str:
    """A spiking layer's unit dimension (spike counts per probe view)."""
    return f"unit_l{layer}"


def neuron_l(layer: int) -> str:
    """A spiking layer's rastered-neuron dimension."""
    return f"neuron_l{layer}"


def metric_layout(circuit: bool) -> tuple[str, ...]:
    """A metrics-group variable: (step,), or (step, column) in a circuit."""
    return (STEP, COLUMN) if circuit else (STEP,)


def evaluation_layout(kind: str, circuit: bool = False) -> tuple[str, ...]:
    """An ``evaluation``-group variable's dims by kind: ``set`` (one value per probe set), ``scalar``, ``dim``
    (per action dimension), ``set_dim`` (per probe set and action dimension), ``block`` (per probe set and encoder
    block; a circuit's blocks are concatenated, so no column), ``readout`` (per read-out layer of a column that
    reads its layers out, models/echospike.py). A circuit appends ``column`` (not to ``block``)."""
    base = {"set": (EVAL, PROBE_SET), "scalar": (EVAL,), "dim": (EVAL, ACTION_DIM),
            "set_dim": (EVAL, PROBE_SET, ACTION_DIM), "block": (EVAL, PROBE_SET, BLOCK), "readout": (EVAL, READOUT_LAYER)}
    if kind not in base:
        raise ValueError(f"unknown evaluation variable kind {kind!r}; one of {sorted(base)}")
    return base[kind] + ((COLUMN,) if circuit and kind != "block" else ())


def z_layout(circuit: bool = False) -> tuple[str, ...]:
    """``probe``-group z: (eval, probe_set, [column,] sample, view, unit)."""
    return (EVAL, PROBE_SET, *((COLUMN,) if circuit else ()), SAMPLE, VIEW, UNIT)


def z_agg_layout(circuit: bool = False) -> tuple[str, ...]:
    """``probe``-group z_AGG: (eval, probe_set, [column,] sample, unit_agg)."""
    return (EVAL, PROBE_SET, *((COLUMN,) if circuit else ()), SAMPLE, UNIT_AGG)


def label_layout(name: str, ndim: int) -> tuple[str, ...]:
    """Dimensions of probe-set label ``name`` with ``ndim`` dims after ``probe_set``: (N,) -> (sample,);
    (N, V, *rest) -> (sample, view, *LABEL_TRAILING_DIMS[name]) (``{name}_dim{i}`` for an unlisted name)."""
    if ndim == 1:
        return (SAMPLE,)
    rest = LABEL_TRAILING_DIMS.get(name, tuple(f"{name}_dim{i}" for i in range(ndim - 2)))
    if len(rest) != ndim - 2:
        raise ValueError(f"probe-set label {name!r} has {ndim} dims; its store dims are (sample, view, {rest})")
    return (SAMPLE, VIEW, *rest)
