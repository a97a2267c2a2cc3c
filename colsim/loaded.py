"""A trained column loaded to step from Python: ``load_column(RUN_DIR)`` -> :class:`LoadedColumn`.

A finished run (``colsim run``'s folder: ``config.yaml``, ``store.zarr``, ``checkpoints/``) holds a
trained column. :func:`load_column` rebuilds it from the resolved ``config.yaml`` with the run's own
build (:func:`colsim.build.build_run`), loads the parameters of the run's final checkpoint
(:func:`colsim.checkpoint.latest_checkpoint`: the last phase's ``phaseNN-name.pt``) and fits a
linear class read-out, so another simulator can drive it one observation and action at a time::

    col = colsim.load_column("runs/stationary-backprop")
    col.reset()                                   # a new episode (object)
    r = col.step(obs, action)                     # obs (C, H, W); action (A,) from this view to the next
    r.z, r.z_agg, r.prediction, r.hypotheses      # (D,), (D+E,), (D,), (K,) numpy arrays

Each step is the column's evaluation forward (``AbstractColumn.embed``, eval mode, no gradient) on
the episode's last M views (M = the model's ``window``; the current one last):

* ``z`` = f(x_t), the embedding of this observation;
* ``z_agg`` = z_AGG of the window x_{t-c+1..t} (c = min(M, views so far)) — what the column knows
  of the object after this view (seq-JEPA, Ghaemi et al. 2025, arXiv 2505.03176, section 3);
* ``prediction`` = h(z_AGG, e(a_t)), the predicted embedding of the *next* observation after the
  action a_t given with this observation (``embed``'s ``z_hat_next``);
* ``hypotheses`` = class probabilities of a multinomial logistic regression (scikit-learn,
  standardised inputs) on ``z_agg``.

The read-out is fitted when the column is loaded, on the store's ``probe`` group at its last
evaluation (the one after the last phase, at the final checkpoint's step): ``z_agg`` of every
probe set pooled, all their episodes, labels ``label_class`` — every class of the protocol. Those
z_AGG aggregate ``evaluation.views`` views (at most M), so the hypotheses are calibrated for
episodes of that length; the held-out accuracy of the same kind of read-out is the store's
``evaluation.probe_acc_agg`` at that evaluation (``LoadedColumn.probe_accuracy``).

The column runs in float32 on its device (no autocast). A spiking column (``models/spiking.py``) steps
too, but its rate coding draws spikes from a generator seeded afresh at every ``embed`` call, so its
stepped z are other draws than a batch embedding of the same episode (the same distribution).

Loading does not touch the caller's global RNG (the build seeds torch; it runs under
``torch.random.fork_rng``) nor process-wide settings (``colsim run``'s deterministic algorithms and
malloc tuning are not applied). Circuit runs (several columns) are refused with a one-line error.
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Any, NamedTuple, Optional

import numpy as np
import torch

from colsim import registry
from colsim.config import ConfigError
from colsim.device import check_device

__all__ = ["load_column", "LoadedColumn", "StepResult", "LoadError"]


class LoadError(ConfigError):
    """A folder that cannot be loaded as a trained column (one line: the path and the fix)."""


class StepResult(NamedTuple):
    z: np.ndarray  # (D,) embedding of this observation
    z_agg: np.ndarray  # (D+E,) z_AGG of the episode's last min(M, views) views, this one included
    prediction: np.ndarray  # (D,) predicted embedding of the next observation after this step's action
    hypotheses: np.ndarray  # (K,) class probabilities (sum 1), in the order of LoadedColumn.classes


class LoadedColumn:
    """A trained column stepped from Python; made by :func:`load_column` (see the module docstring).

    ``step(observation, action)``: ``observation`` (C, H, W) float (numpy or torch), ``action`` (A,)
    the action from this observation to the next one (None: zeros, e.g. the last view); returns a
    :class:`StepResult`. ``reset()`` starts a new episode. The parameters are never changed.
    """

    def __init__(self, column, readout, *, window: int, obs_shape: tuple, action_dim: int, action_names: tuple,
                 device: str, run_dir: Path, checkpoint: Path, trained_steps: int, probe_eval: dict, config=None):
        self.column = column.eval()
        self.config = config  # the run's RunConfig (colsim.build.build_world(config) makes its world)
        self._readout = readout  # sklearn Pipeline(StandardScaler, LogisticRegression)
        self.classes: np.ndarray = np.asarray(readout.classes_)  # (K,) class labels of ``hypotheses``
        self.window = int(window)
        self.obs_shape = tuple(obs_shape)
        self.action_dim = int(action_dim)
        self.action_names = tuple(action_names)
        self.device = device
        self.run_dir, self.checkpoint, self.trained_steps = run_dir, checkpoint, trained_steps
        self.probe_eval = probe_eval  # {"eval", "step", "phase", "probe_sets", "samples"}
        self.probe_accuracy: float = probe_eval.get("probe_acc_agg", float("nan"))
        self._obs: list[torch.Tensor] = []  # the episode's last M views, (C, H, W) each
        self._act: list[torch.Tensor] = []  # their actions, (A,) each

    @property
    def views(self) -> int:
        """Views in the current window (0 after ``reset``, at most ``window``)."""
        return len(self._obs)

    def reset(self) -> None:
        """Start a new episode: forget the views so far."""
        self._obs, self._act = [], []

    def _tensor(self, x: Any, shape: tuple, name: str) -> torch.Tensor:
        t = torch.as_tensor(np.asarray(x, dtype=np.float32) if not isinstance(x, torch.Tensor) else x)
        if tuple(t.shape) != shape:
            what = "(C, H, W)" if name == "observation" else "(A,): " + ", ".join(self.action_names)
            raise ValueError(f"{name}: shape {tuple(t.shape)}, expected {shape}; give one {name} of the column's "
                             f"world ({what})")
        return t.detach().to(self.device, torch.float32)

    @torch.no_grad()
    def step(self, observation: Any, action: Any = None) -> StepResult:
        """Embed ``observation`` in the current episode; see the class docstring."""
        obs = self._tensor(observation, self.obs_shape, "observation")
        act = (torch.zeros(self.action_dim, device=self.device) if action is None
               else self._tensor(action, (self.action_dim,), "action"))
        self._obs = (self._obs + [obs])[-self.window:]
        self._act = (self._act + [act])[-self.window:]
        # one episode of the window's c views: (1, c, C, H, W), (1, c, A)
        out = self.column.embed(torch.stack(self._obs)[None], torch.stack(self._act)[None])
        z = out["z"][0, -1].float().cpu().numpy()  # (D,)
        z_agg = out["z_agg"][0].float().cpu().numpy()  # (D+E,)
        prediction = out["z_hat_next"][0].float().cpu().numpy()  # (D,)
        hyp = self._readout.predict_proba(z_agg[None].astype(np.float64))[0]  # (K,)
        return StepResult(z, z_agg, prediction, hyp)

    def predict_class(self, z_agg: np.ndarray) -> np.ndarray:
        """The read-out's class for z_AGG rows (N, D+E) (the argmax of ``hypotheses``)."""
        return self._readout.predict(np.asarray(z_agg, np.float64).reshape(-1, len(self._readout[0].mean_)))

    def __repr__(self) -> str:
        return (f"LoadedColumn({self.run_dir}, {type(self.column).__name__}, window={self.window}, "
                f"classes={self.classes.tolist()}, trained_steps={self.trained_steps})")


def _circuit_names(raw: dict) -> Optional[list]:
    for where in (raw, raw.get("protocol") or {}, raw.get("model") or {}):
        if isinstance(where, dict) and where.get("circuit"):
            c = where["circuit"]
            cols = c.get("columns") if isinstance(c, dict) else None
            if isinstance(cols, dict):
                return [str(k) for k in cols]
            if isinstance(cols, list):  # each column's name only, not its whole config
                return [str(c.get("name", i)) if isinstance(c, dict) else str(c) for i, c in enumerate(cols)]
            return ["?"]
    return None


def load_column(run_dir: "str | Path", *, device: str = "cpu", column: Optional[str] = None) -> LoadedColumn:
    """Load the trained column of the finished run ``run_dir`` (see the module docstring).

    ``device``: where the column runs (``cpu`` default, or ``cuda``). ``column``: the column of a
    circuit run — circuits are not loadable yet, so any value is refused with a one-line error.
    Raises :class:`LoadError` (a :class:`colsim.config.ConfigError`) naming the path and the fix.
    """
    from colsim.checkpoint import CheckpointError, latest_checkpoint, load_checkpoint
    from colsim.config import build_run_config, load_yaml_text

    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise LoadError(f"{run_dir}: no such run folder; give the folder `colsim run --out` wrote")
    try:
        raw = load_yaml_text((run_dir / "config.yaml").read_text(), str(run_dir / "config.yaml"))
    except OSError:
        raise LoadError(f"{run_dir}: no config.yaml, not a colsim run folder (a run folder holds config.yaml, "
                        "store.zarr, checkpoints/)") from None
    circuit = _circuit_names(raw) if isinstance(raw, dict) else None
    if circuit is not None:
        raise LoadError(f"{run_dir}: is a circuit run (columns {circuit}); load_column loads single-column runs "
                        "only (circuits are not loadable yet)")
    if column is not None:
        raise LoadError(f"{run_dir}: is a single-column run; drop column={column!r}")
    store = run_dir / "store.zarr"
    try:
        import xarray as xr

        tree = xr.open_datatree(store, engine="zarr")
    except Exception as exc:  # noqa: BLE001 — missing or corrupt store alike
        raise LoadError(f"{store}: cannot be opened ({type(exc).__name__}); not a finished colsim run") from None
    status = tree.attrs.get("status")
    if status != "completed":
        fix = (f"finish it with `colsim run --resume {run_dir}`" if status in ("running", "interrupted") else
               "a diverged run has no trained column to load; rerun it" if status == "diverged" else "rerun it")
        raise LoadError(f"{run_dir}: the run is {status or 'of unknown status'}, not completed; {fix}")
    if "probe" in tree.children and "column" in tree["probe"].dims:
        raise LoadError(f"{run_dir}: is a circuit run (the probe group has a column dimension); load_column loads "
                        "single-column runs only")
    registry.load_plugins()  # register the run's parts (the core imports none)
    if not isinstance(device, str) or not re.fullmatch(r"cpu|cuda(:\d+)?", device):
        raise LoadError(f"device={device!r}: must be 'cpu', 'cuda' or 'cuda:N'")
    cfg = build_run_config(raw).model_copy(update={"device": device})
    check_device(device, f"device={device!r}", fix="use device='cpu'", error=LoadError)
    path = latest_checkpoint(run_dir / "checkpoints", cfg.protocol.phase_end_steps)
    if path is None:
        raise LoadError(f"{run_dir}: no checkpoint in checkpoints/ (every run writes one per phase end); rerun it "
                        "or restore its checkpoints/ folder")
    try:
        ckpt = load_checkpoint(path)
    except CheckpointError as exc:
        raise LoadError(str(exc)) from None
    from colsim.build import build_run

    with torch.random.fork_rng(devices=[]):  # build_run seeds torch: leave the caller's RNG as it was
        built = build_run(cfg)  # the rule too: it may own parameters (layerwise's predictors) the checkpoint holds
    try:
        built.column.load_state_dict(ckpt["model"])
    except RuntimeError as exc:
        raise LoadError(f"{path}: does not fit the run's model ({str(exc).splitlines()[0]})") from None
    col = built.column
    if not hasattr(col, "window"):
        raise LoadError(f"{run_dir}: model {type(col).__name__} has no context window; load_column steps seq-JEPA "
                        "style columns (seqjepa, spiking)")
    readout, probe_eval = _fit_probe(tree, run_dir, int(ckpt["step"]))
    spec = built.world.spec
    return LoadedColumn(col, readout, window=col.window, obs_shape=spec.obs_shape, action_dim=spec.action_dim,
                          action_names=spec.action_names, device=device, run_dir=run_dir, checkpoint=path,
                          trained_steps=int(ckpt["step"]), probe_eval=probe_eval, config=cfg)


def _fit_probe(tree, run_dir: Path, step: int):
    """Fit the class read-out on the store's last evaluation: z_AGG of every probe set pooled."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler
    from threadpoolctl import threadpool_limits

    if "probe" not in tree.children or "z_agg" not in tree["probe"].data_vars:
        raise LoadError(f"{run_dir}: store.zarr has no probe embeddings (protocol.record.probe was false); rerun "
                        "with --set protocol.record.probe=true to get class hypotheses")
    probe = tree["probe"].to_dataset()
    last = probe.isel(eval=-1)
    if int(last["step"]) != step:
        raise LoadError(f"{run_dir}: the store's last evaluation is at step {int(last['step'])}, the final "
                        f"checkpoint at step {step}; the folder mixes two runs, rerun it")
    x = last["z_agg"].values.reshape(-1, last.sizes["unit_agg"]).astype(np.float64)  # (P*N, D+E)
    y = probe["label_class"].values.reshape(-1)  # (P*N,)
    if not np.isfinite(x).all():
        raise LoadError(f"{run_dir}: the last evaluation's z_agg is not finite; the column cannot be read out")
    if len(np.unique(y)) < 2:
        raise LoadError(f"{run_dir}: the probe sets hold one class only; class hypotheses need two or more")
    with threadpool_limits(limits=1):  # a small problem: one BLAS thread (colsim.evaluate.probe_scores)
        readout = make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000)).fit(x, y)
    info = {"eval": int(last["eval"]), "step": step, "phase": str(last["phase"].values),
            "probe_sets": [str(s) for s in probe["probe_set"].values], "samples": int(len(y))}
    if "evaluation" in tree.children and "probe_acc_agg" in tree["evaluation"].data_vars:
        info["probe_acc_agg"] = float(tree["evaluation"]["probe_acc_agg"].values[-1])
    return readout, info
