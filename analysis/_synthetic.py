"""Synthetic run stores with the layout ``colsim run`` writes (docs/reference/store.md).

For tests, the benchmark and dashboard demos: no torch, no simulator. The activity has a
known structure so the metrics have known answers:

* ``z`` of sample s, view v = ``strength[e, j] * class_emb[class]`` (class signal, learned
  during phase j and forgotten afterwards) + ``obj_sigma * object_noise[s]`` (constant over
  the views of an episode) + ``radius[e] * (cos angle, sin angle)`` in a fixed 2-D plane
  (rotation lives exactly in two dimensions) + ``scale_gain * log scale`` along one more
  direction + ``0.3 * shift`` along two more (translation lives in a plane too) + isotropic
  noise ``noise_sigma``.
* ``z_agg`` = mean of ``z`` over the context views (all but the last).

Large stores are written chunk by chunk (dask ``map_blocks`` -> ``to_zarr``), so writing a
10 GB store needs about ``threads x chunk`` bytes of memory.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from colsim.analysis.store import quiet_zarr

__all__ = ["write_synthetic_run", "ACTION_DIMS"]

ACTION_DIMS = ["sin_drot", "cos_drot", "dtx", "dty", "dlogscale"]


def _labels(rng, n_phases, n_samples, n_views, classes_per_phase, factor_mode):
    P, S, V = n_phases, n_samples, n_views
    cls = np.stack([j * classes_per_phase + rng.integers(0, classes_per_phase, S) for j in range(P)])  # (P, S)
    d_ang = rng.uniform(-np.pi / 2, np.pi / 2, (P, S, V - 1))
    d_ls = rng.uniform(-0.3, 0.3, (P, S, V - 1))
    d_sh = rng.uniform(-2, 2, (P, S, V - 1, 2))
    if factor_mode == "isolated":  # each view pair changes one factor: 0 rotation, 1 translation, 2 scale
        which = rng.choice(3, size=(P, S, V - 1), p=[0.5, 0.25, 0.25])
        d_ang, d_ls, d_sh = d_ang * (which == 0), d_ls * (which == 2), d_sh * (which == 1)[..., None]
    elif factor_mode != "mixed":
        raise ValueError(f"factor_mode must be 'isolated' or 'mixed', got {factor_mode!r}")
    angle = np.concatenate([rng.uniform(-np.pi, np.pi, (P, S, 1)), d_ang], -1).cumsum(-1)  # (P, S, V)
    angle = (angle + np.pi) % (2 * np.pi) - np.pi
    logscale = np.concatenate([rng.uniform(-0.3, 0.3, (P, S, 1)), d_ls], -1).cumsum(-1)
    shift = np.concatenate([rng.uniform(-3, 3, (P, S, 1, 2)), d_sh], 2).cumsum(2)
    act = np.zeros((P, S, V, 5))
    da = np.diff(np.unwrap(angle, axis=-1), axis=-1)
    act[:, :, :-1, 0] = np.sin(da)
    act[:, :, :-1, 1] = np.cos(da)
    act[:, :, :-1, 2:4] = np.diff(shift, axis=2)
    act[:, :, :-1, 4] = np.diff(logscale, axis=-1)
    return cls, angle, logscale, shift, act


def write_synthetic_run(path, *, rule: str = "lpl", model: str = "seqjepa-tiny", protocol: str = "nonstationary",
                        seed: int = 0, n_phases: int = 3, steps_per_phase: int = 300, n_samples: int = 256,
                        n_views: int = 4, n_units: int = 32, classes_per_phase: int = 2, n_evals: int | None = None,
                        status: str = "completed", diverge_at: int | None = None, rising_component: bool = False,
                        grad_spike_at: int | None = None, rank_collapse_at: int | None = None,
                        noise_sigma: float = 0.05, obj_sigma: float = 1.0, learn_strength: float = 1.0,
                        forget: float = 0.4, factor_mode: str = "isolated", sample_chunk: int | None = None,
                        with_evaluation: bool = True, with_probe: bool = True, with_layers: bool = False,
                        consolidate: bool = True, metric_jitter: float = 0.02, agg_dim: str = "unit",
                        agg_units: int | None = None) -> Path:
    """Write a run folder ``path`` (config.yaml, store.zarr, summary.json, checkpoints/) and return it.

    ``n_evals`` (default ``n_phases + 1``: init + one after each phase) may be smaller to mimic
    an interrupted / diverged run (``0`` writes no probe / evaluation groups). ``diverge_at``
    stops the metrics there with a NaN loss; the loss totals are NaN on each phase's first step too
    (nothing was predicted there, as in a simulated run). Alarm triggers: ``rising_component`` (``lpl.l0.dec``
    climbs 0.35 -> 1.10 over the last 40 % while the total falls), ``grad_spike_at`` (a 50x
    ``grad_norm`` spike), ``rank_collapse_at`` (``z_eff_rank`` drops to 1). ``factor_mode``:
    "isolated" (each view pair changes one factor) or "mixed" (all factors change together).
    ``with_layers`` adds a ``layers`` group (ReLU activity of 3 layers); ``agg_dim`` /
    ``agg_units`` name and size z_AGG's feature dimension (the simulator writes ``unit_agg``).
    """
    import xarray as xr

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    (path / "checkpoints").mkdir(exist_ok=True)
    store = path / "store.zarr"
    rng = np.random.default_rng(seed)
    P, S, V, U = n_phases, n_samples, n_views, n_units
    E = P + 1 if n_evals is None else n_evals
    phase_names = [f"phase{j}" for j in range(P)]
    total = P * steps_per_phase
    steps_done = total if diverge_at is None else int(diverge_at)
    config = {"protocol": {"name": protocol, "phases": [{"name": n, "steps": steps_per_phase} for n in phase_names]},
              "model": {"name": model}, "rule": {"name": rule}, "seed": seed, "device": "cpu"}
    attrs = {"config": config, "rule": rule, "model": model, "protocol": protocol, "seed": int(seed),
             "status": status, "colsim_version": "0.1.0", "torch_version": "none", "git_revision": "synthetic",
             "device": "cpu", "steps_done": int(steps_done)}

    # ------------------------------------------------------------------ metrics (step,)
    step = np.arange(steps_done, dtype=np.int64)
    t = step / max(total, 1)
    jit = lambda: 1 + metric_jitter * rng.standard_normal(len(step))  # noqa: E731
    m = {"loss.pred": 1.0 * np.exp(-3 * t) * jit() + 0.1,
         "lpl.l0.pred": 0.8 * np.exp(-3 * t) * jit() + 0.05,
         "lpl.l0.hebb": -0.5 * (1 - np.exp(-2 * t)) * jit(),
         "lpl.l0.dec": 0.35 * np.ones_like(t) * jit()}
    if rising_component:
        ramp = np.clip((t - 0.6) / 0.4, 0, 1)
        m["lpl.l0.dec"] = (0.35 + 0.75 * ramp) * jit()
        m["loss.pred"] = 2.0 * np.exp(-4 * t) * jit() + 0.05
    m["loss"] = m["loss.pred"] + np.abs(m["lpl.l0.hebb"]) * 0.1 + 0.1 * m["lpl.l0.dec"]
    if rising_component:  # the total keeps falling although lpl.l0.dec rises
        m["loss"] = m["loss.pred"] + 0.05 * m["lpl.l0.dec"]
    gn = np.exp(0.1 * rng.standard_normal(len(step))) * (1 + np.exp(-5 * t))
    if grad_spike_at is not None and grad_spike_at < len(step):
        gn[grad_spike_at:grad_spike_at + 3] *= 50
    m["grad_norm"] = gn
    m["lr"] = np.full(len(step), 1e-3)
    rank = 0.6 * U * (1 - 0.5 * np.exp(-4 * t)) * jit()
    if rank_collapse_at is not None:
        rank = np.where(step >= rank_collapse_at, 1.0 + 0.05 * np.abs(rng.standard_normal(len(step))), rank)
    m["z_eff_rank"] = rank
    m["zagg_eff_rank"] = 0.8 * rank
    m["z_std_min"] = 0.1 * jit()
    m["z_std_mean"] = 0.5 * jit()
    m["z_mean_cos"] = 0.1 * jit()
    m["steps_per_s"] = 500 * jit()
    m["crate.l0.ista_nonzero"] = 0.3 + 0.2 * np.exp(-3 * t)
    m["crate.l1.ista_nonzero"] = 0.2 + 0.2 * np.exp(-3 * t)
    m["crate.l0.h0.coding_rate"] = 2.0 + 0.5 * np.exp(-2 * t)
    for part in rule.split("+"):
        if part == "metaplastic":
            m["metaplastic.availability_mean.encoder.blocks.0"] = np.exp(-2 * t)
            m["metaplastic.availability_mean.encoder.blocks.1"] = np.exp(-1 * t)
        if part == "si":
            m["si.importance_norm"] = np.cumsum(np.abs(rng.standard_normal(len(step)))) / 100
        if part == "replay":
            for k in range(4):
                m[f"replay.hist.{k}"] = np.clip(np.floor(t * P) - k + 1, 0, 1) * 32.0
    # as the simulator records: a phase's first tick predicted nothing (every window was just reset), so
    # its loss totals are missing (NaN), as is z_AGG's rank (no stream had a context)
    first = step % max(steps_per_phase, 1) == 0
    for k in ("loss", "loss.pred", "zagg_eff_rank"):
        m[k] = np.where(first, np.nan, m[k])
    if diverge_at is not None and len(step):
        m["loss"][-1] = np.nan
        m["grad_norm"][-1] = np.inf
    phase = np.minimum(step // max(steps_per_phase, 1), P - 1)
    metrics = xr.Dataset({k: ("step", np.asarray(v, np.float32)) for k, v in m.items()}, coords={"step": step})
    metrics["phase"] = ("step", phase.astype(np.int64))
    metrics["crate.l1.ista_nonzero"][: len(step) // 4] = np.nan  # a metric that appears later

    root = xr.Dataset(attrs=attrs)
    with quiet_zarr():
        xr.DataTree.from_dict({"/": root, "metrics": metrics}).to_zarr(str(store), mode="w", consolidated=False)
        if E > 0 and (with_probe or with_evaluation):
            _write_evals(store, rng, seed, P, S, V, U, E, phase_names, steps_per_phase, classes_per_phase,
                         noise_sigma, obj_sigma, learn_strength, forget, sample_chunk, with_probe, with_evaluation,
                         factor_mode, agg_dim, agg_units)
        if with_layers and E > 0:  # per-layer ReLU activity, sparser in deeper layers
            L, n = 3, min(S, 64)
            g = np.random.default_rng([seed, 99])
            act = np.maximum(g.standard_normal((E, P, n, L, U)) - np.array([0.0, 0.5, 1.0])[:, None], 0)
            xr.Dataset({"activity": (("eval", "probe_set", "sample", "layer", "unit"), act.astype(np.float32))},
                       coords={"eval": np.arange(E), "layer": np.arange(L)}).to_zarr(
                str(store), group="layers", mode="w", consolidated=False)
        if consolidate:
            import zarr

            zarr.consolidate_metadata(str(store))
    (path / "config.yaml").write_text(json.dumps(config, indent=1))  # JSON is valid YAML
    (path / "summary.json").write_text(json.dumps({"status": status, "steps_done": int(steps_done)}))
    return path


def _strength(E, P, learn, forget):
    """(E, P) class-signal strength: eval 0 is init; eval r+1 follows phase r."""
    s = np.full((E, P), 0.15)
    for e in range(1, E):
        r = e - 1
        for j in range(P):
            if j <= r:
                s[e, j] = learn * forget ** (r - j)
    return s


def _write_evals(store, rng, seed, P, S, V, U, E, phase_names, steps_per_phase, cpp, noise_sigma, obj_sigma, learn,
                 forget, sample_chunk, with_probe, with_evaluation, factor_mode, agg_dim, agg_units):
    import dask.array as da
    import xarray as xr

    n_cls = P * cpp
    basis = np.linalg.qr(rng.standard_normal((U, U)))[0]  # orthonormal directions
    plane, scale_dir = basis[:, :2].T.copy(), basis[:, 2].copy()  # (2, U), (U,)
    shift_dirs = basis[:, 3:5].T.copy()  # (2, U)
    cdirs = basis[:, 5:5 + max(1, min(n_cls, U - 5))]
    class_emb = (rng.standard_normal((n_cls, cdirs.shape[1])) @ cdirs.T) * 1.5  # (n_cls, U) orthogonal to plane
    cls, angle, logscale, shift, act = _labels(rng, P, S, V, cpp, factor_mode)
    strength = _strength(E, P, learn, forget)
    radius = np.linspace(0.3, 1.5, E)
    sc = sample_chunk or S
    eval_steps = np.array([0] + [(r + 1) * steps_per_phase for r in range(E - 1)], np.int64)[:E]
    eval_phase = (["init"] + phase_names)[:E]

    def z_block(e, p, s0, s1):  # -> (s, V, U) float32
        g = np.random.default_rng([seed, e, p, s0])
        n = s1 - s0
        obj = obj_sigma * np.random.default_rng([seed, 7, p, s0]).standard_normal((n, 1, U))
        z = noise_sigma * g.standard_normal((n, V, U)) + obj
        z += strength[e, p] * class_emb[cls[p, s0:s1]][:, None, :]
        a = angle[p, s0:s1]
        z += radius[e] * (np.cos(a)[..., None] * plane[0] + np.sin(a)[..., None] * plane[1])
        z += 0.5 * logscale[p, s0:s1][..., None] * scale_dir
        z += 0.3 * shift[p, s0:s1] @ shift_dirs
        return z.astype(np.float32)

    def gen_z(block_info=None):
        (e0, _), (p0, _), (s0, s1), _, _ = block_info[None]["array-location"]
        return z_block(e0, p0, s0, s1)[None, None]

    UA = agg_units or U

    def gen_zagg(block_info=None):
        (e0, _), (p0, _), (s0, s1), _ = block_info[None]["array-location"]
        za = z_block(e0, p0, s0, s1)[:, : max(V - 1, 1)].mean(1)  # (s, U)
        if UA != U:  # a wider aggregate: the mean, then small noise units (or truncated)
            extra = 0.01 * np.random.default_rng([seed, 5, e0, p0, s0]).standard_normal((s1 - s0, max(UA - U, 0)))
            za = np.concatenate([za, extra.astype(np.float32)], 1)[:, :UA]
        return za[None, None]

    chunks_z = ((1,) * E, (1,) * P, _split(S, sc), (V,), (U,))
    z = da.map_blocks(gen_z, chunks=chunks_z, dtype=np.float32, meta=np.empty((0,) * 5, np.float32))
    zagg = da.map_blocks(gen_zagg, chunks=chunks_z[:3] + ((UA,),), dtype=np.float32,
                         meta=np.empty((0,) * 4, np.float32))
    coords = {"eval": np.arange(E), "step": ("eval", eval_steps), "phase": ("eval", np.array(eval_phase)),
              "probe_set": np.array(phase_names), "action_dim": np.array(ACTION_DIMS)}
    if with_probe:
        probe = xr.Dataset({"z": (("eval", "probe_set", "sample", "view", "unit"), z),
                            "z_agg": (("eval", "probe_set", "sample", agg_dim), zagg),
                            "actions": (("probe_set", "sample", "view", "action_dim"), act.astype(np.float32)),
                            "label_class": (("probe_set", "sample"), cls.astype(np.int64)),
                            "label_angle": (("probe_set", "sample", "view"), angle.astype(np.float32)),
                            "label_scale": (("probe_set", "sample", "view"), np.exp(logscale).astype(np.float32)),
                            "label_shift": (("probe_set", "sample", "view", "xy"), shift.astype(np.float32))},
                           coords=coords)
        enc = {"z": {"chunks": (1, 1, min(sc, S), V, U)}, "z_agg": {"chunks": (1, 1, min(sc, S), UA)}}
        import dask

        with dask.config.set(scheduler="threads", num_workers=4):
            probe.to_zarr(str(store), group="probe", mode="w", consolidated=False, encoding=enc)
    if with_evaluation:
        acc = np.clip(1 / cpp + (1 - 1 / cpp) * np.tanh(strength / 1.5), 0, 1)  # (E, P) plausible accuracies
        r2dim = np.tile(np.array([0.8, 0.7, 0.0, 0.0, 0.1]), (E, 1)) * radius[:, None] / radius.max()
        ev = xr.Dataset({"acc_agg": (("eval", "probe_set"), acc.astype(np.float32)),
                         "acc_z": (("eval", "probe_set"), (0.8 * acc).astype(np.float32)),
                         "probe_acc_agg": ("eval", acc.mean(1).astype(np.float32)),
                         "probe_acc_z": ("eval", (0.8 * acc).mean(1).astype(np.float32)),
                         "equivariance_r2": ("eval", r2dim.mean(1).astype(np.float32)),
                         "equivariance_r2_dim": (("eval", "action_dim"), r2dim.astype(np.float32))},
                        coords=coords)
        ev.to_zarr(str(store), group="evaluation", mode="w", consolidated=False)


def _split(n, c):
    out = [c] * (n // c)
    if n % c:
        out.append(n % c)
    return tuple(out)
