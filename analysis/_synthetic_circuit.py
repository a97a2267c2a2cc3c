"""Synthetic circuit run stores in the layout of a ``circuit:`` run (issue 14), for tests and demos.

No torch, no simulator; planted structure with known answers. Every column c sees the same
episodes (class y of the episode's source image):

    x_c[s, v] = strength[e] * mu[y_s] + sigma_c * (rho * shared[s, v] + sqrt(1 - rho²) * own_c[s, v])
    z_c[s, v] = scale_c * R_c x_c[s, v]        z_agg_c[s] = mean over the views of z_c[s, v]

``mu`` (K, U): class prototypes ``signal`` apart along orthonormal directions; ``R_c``: a random
rotation per column when ``rotate`` (else the identity: aligned columns, as with shared weights);
``strength`` grows linearly from ``strength0`` at eval 0 to 1 at the last. The noise is fresh at
every evaluation, i.i.d. over views and (for ``rho < 1``) over columns, so:

* aligned columns with independent noise: the mean vote averages the noise down, its z_AGG reads the
  class better than any column's; evidence summed over views and columns recognises sooner;
* ``rho = 1`` with equal ``column_noise``: the columns are rotations and isotropic rescalings of one representation — linear CKA
  between any two columns is exactly 1.

The ``"vote"`` entry of ``column`` holds the mean of the columns' z and z_AGG. ``metrics`` has a
per-column ``loss`` (step, column) and circuit-wide ``grad_norm`` / ``lr`` (step,); ``evaluation``
has ``acc_agg`` (eval, probe_set, column) and ``probe_acc_agg`` (eval, column); the root attribute
``circuit`` is the JSON of the circuit section.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from colsim.analysis.store import quiet_zarr

__all__ = ["circuit_activity", "write_synthetic_circuit_run"]


def circuit_activity(seed: int = 0, *, n_columns: int = 3, n_probe_sets: int = 1, n_samples: int = 120,
                     n_views: int = 4, n_units: int = 8, n_classes: int = 4, n_evals: int = 3, signal: float = 1.0,
                     strength0: float = 0.2, column_noise=None, column_scale=None, rho: float = 0.0,
                     rotate: bool = False) -> dict:
    """The planted arrays: ``z`` (E, P, C+1, S, V, U), ``z_agg`` (E, P, C+1, S, U) (entry C is the
    vote, the mean of the columns), ``label_class`` and ``label_image`` (P, S), ``rotation`` (C, U, U).
    ``column_noise`` / ``column_scale``: sigma_c / scale_c per column (default 1.0 + 0.2 c / 1.0)."""
    rng = np.random.default_rng(seed)
    E, P, C, S, V, U, K = n_evals, n_probe_sets, n_columns, n_samples, n_views, n_units, n_classes
    if K > U:
        raise ValueError(f"n_classes={K} needs n_units >= n_classes (got {U})")
    sig = np.asarray(column_noise if column_noise is not None else 1.0 + 0.2 * np.arange(C), np.float64)
    scl = np.asarray(column_scale if column_scale is not None else np.ones(C), np.float64)
    if len(sig) != C or len(scl) != C:
        raise ValueError(f"column_noise and column_scale need one value per column ({C})")
    basis = np.linalg.qr(rng.standard_normal((U, U)))[0]
    mu = signal / np.sqrt(2) * basis[:K]  # (K, U) prototypes, pairwise distance ``signal``
    R = np.stack([np.linalg.qr(rng.standard_normal((U, U)))[0] if rotate else np.eye(U) for _ in range(C)])
    image = np.tile(np.arange(S) // 2, (P, 1)) + np.arange(P)[:, None] * S  # (P, S) two episodes an image
    img_cls = rng.integers(0, K, image.max() + 1)
    y = img_cls[image]  # (P, S)
    strength = np.linspace(strength0, 1.0, E) if E > 1 else np.ones(E)
    z = np.zeros((E, P, C + 1, S, V, U))
    for e in range(E):
        g = np.random.default_rng([seed, 1, e])
        shared = g.standard_normal((P, S, V, U))
        own = g.standard_normal((C, P, S, V, U))
        for c in range(C):
            x = strength[e] * mu[y][:, :, None, :] + sig[c] * (rho * shared + np.sqrt(1 - rho ** 2) * own[c])
            z[e, :, c] = scl[c] * x @ R[c].T  # (P, S, V, U)
    z[:, :, C] = z[:, :, :C].mean(2)  # the vote
    return {"z": z, "z_agg": z.mean(4), "label_class": y, "label_image": image, "rotation": R, "strength": strength}


def write_synthetic_circuit_run(path, *, seed: int = 0, steps: int = 300, vote: str = "mean",
                                with_actions: bool = True, **activity) -> Path:
    """Write a circuit run folder ``path`` (config.yaml, store.zarr, summary.json, checkpoints/) and
    return it; ``activity``: :func:`circuit_activity`'s keyword arguments."""
    import xarray as xr
    import zarr

    path = Path(path)
    (path / "checkpoints").mkdir(parents=True, exist_ok=True)
    store = path / "store.zarr"
    act = circuit_activity(seed, **activity)
    E, P, C1, S, V, U = act["z"].shape
    cols = [f"c{i}" for i in range(C1 - 1)]
    circuit = {"columns": cols, "sensors": {c: {"patch": [0, 0, 8, 8]} for c in cols}, "shared": True,
               "wiring": {c: [] for c in cols}, "vote": vote}
    config = {"protocol": {"name": "columns", "phases": [{"name": "train", "steps": steps}]},
              "model": {"name": "seqjepa-tiny"}, "rule": {"name": "backprop"}, "seed": seed, "device": "cpu",
              "circuit": circuit}
    attrs = {"config": config, "rule": "backprop", "model": "seqjepa-tiny", "protocol": "columns", "seed": int(seed),
             "status": "completed", "colsim_version": "0.1.0", "torch_version": "none", "git_revision": "synthetic",
             "device": "cpu", "steps_done": int(steps), "circuit": json.dumps(circuit)}
    rng = np.random.default_rng([seed, 2])
    step = np.arange(steps, dtype=np.int64)
    loss = np.exp(-3 * step / steps)[:, None] * (1 + 0.1 * np.arange(len(cols))) + 0.02 * rng.random((steps, len(cols)))
    metrics = xr.Dataset({"loss": (("step", "column"), loss.astype(np.float32)),
                          "grad_norm": ("step", (1 + 0.1 * rng.random(steps)).astype(np.float32)),
                          "lr": ("step", np.full(steps, 1e-3, np.float32))},
                         coords={"step": step, "column": np.array(cols)})
    names = np.array(cols + ["vote"])
    probe_sets = np.array([f"set{j}" for j in range(P)]) if P > 1 else np.array(["train"])
    ev_steps = np.linspace(0, steps, E).astype(np.int64)
    coords = {"eval": np.arange(E), "step": ("eval", ev_steps),
              "phase": ("eval", np.array(["init"] + ["train"] * (E - 1))[:E]), "probe_set": probe_sets,
              "column": names}
    probe = {"z": (("eval", "probe_set", "column", "sample", "view", "unit"), act["z"].astype(np.float32)),
             "z_agg": (("eval", "probe_set", "column", "sample", "unit_agg"), act["z_agg"].astype(np.float32)),
             "label_class": (("probe_set", "sample"), act["label_class"].astype(np.int64)),
             "label_image": (("probe_set", "sample"), act["label_image"].astype(np.int64))}
    if with_actions:
        a = rng.uniform(-1, 1, (P, S, V, 2)).astype(np.float32)
        a[:, :, -1] = 0
        probe["actions"] = (("probe_set", "sample", "view", "action_dim"), a)
        coords["action_dim"] = np.array(["dtx", "dty"])
    acc = np.clip(0.25 + 0.6 * act["strength"], 0, 1)[:, None, None] * np.ones((1, P, C1))
    evaluation = xr.Dataset({"acc_agg": (("eval", "probe_set", "column"), acc),
                             "probe_acc_agg": (("eval", "column"), acc.mean(1))},
                            coords={k: v for k, v in coords.items() if k != "action_dim"})
    with quiet_zarr():
        xr.DataTree.from_dict({"/": xr.Dataset(attrs=attrs), "metrics": metrics, "probe": xr.Dataset(probe, coords),
                               "evaluation": evaluation}).to_zarr(str(store), mode="w", consolidated=False)
        zarr.consolidate_metadata(str(store))
    (path / "config.yaml").write_text(json.dumps(config, indent=1))
    (path / "summary.json").write_text(json.dumps({"status": "completed", "steps_done": int(steps)}))
    return path
