"""In-run evaluation: embed every phase's probe set once and score the read-outs.

At each evaluation (before training, after every phase, and every ``evaluation.every`` steps)
the column embeds the fixed held-out episodes of every probe set in one pass
(``AbstractColumn.embed``); the arrays go to the store's ``probe`` group and these numbers to
``evaluation`` (docs/reference/metrics.md, "kinds of read-out"; every cell with its standard error):

* ``acc_agg[j]`` / ``acc_z[j]`` — the *task* probe: a logistic regression refitted at every
  evaluation on probe set j, class accuracy from z_AGG / from single-view z (all views).
* ``seen_acc[j]`` — the *seen-so-far* probe: one logistic regression over the classes of probe
  sets 0..j together (class-incremental, as many classes as have been met by the end of phase
  j), scored on set j's held-out images.
* ``frozen_acc[j]`` — the *frozen* read-out (Davari et al., CVPR 2022): the task probe fitted on
  set j right after phase j is kept and re-applied unchanged to later embeddings; it measures the
  drift of the representation itself (NaN before phase j ends).
* ``head_acc[j]`` — a supervised column's *own* read-out (models/classifier.py; ``embed``'s ``logits``
  (N, H, K)): the accuracy of its head on set j, the head picked by the episode's ``task`` label when the
  column has one head per task (Task-IL), scored against ``target`` (else ``class``). This is the accuracy of
  van de Ven & Tolias (2019, "Three scenarios for continual learning"); only columns with heads have it.
* ``probe_acc_agg`` / ``probe_acc_z`` — one probe on all probe sets pooled (all classes).
* ``prediction_loss[j]`` — the column's own objective on set j's episodes (objective-level,
  world-model forgetting): ``1 - cos`` of the prediction of the last view from the views
  before it under the action (``embed``'s ``loss_pred``), mean over episodes.
* ``block_pred_loss[j, l]`` — the local predictive term of every encoder block on set j:
  ``mean (h_l(v+1) - h_l(v))²`` over consecutive views of pooled block activity h_l (LPL's
  ``L_pred``, Halvagal & Zenke 2023), the per-block loss a layer-local rule drives down.
* ``layer_acc[k]`` — a column that reads its layers out (``embed``'s ``readout``: models/echospike.py, as EchoSpike
  reads its layers, Graf et al. 2024): a linear classifier (logistic regression on standardised features) per
  read-out layer k (the input first) on the layer's full spike-count vector (every neuron's spikes in the view),
  fitted on the fit side's views and scored on the other side's, pooled over probe sets; ``layer_acc_se`` its
  binomial standard error over the scored *images* (the views of an image are not independent, so n counts
  images, not views); ``layer_spikes[k]`` the mean spikes per unit and view.
* ``equivariance_r2`` — R² of a linear (ridge, CV penalty) probe predicting the relative action
  from ``(z_v, z_{v+1})``, pooled over probe sets; ``equivariance_r2_dim`` per action dimension;
  ``equivariance_r2_set`` / ``equivariance_r2_set_dim`` per probe set (bootstrap standard errors).

Probe hygiene: every fit/score split is by *source image* (``labels["image"]``, the dataset
index of the episode's digit; the episode when a world gives none). One seeded assignment of
image ids to the fit or the score side serves every probe and every probe set, so no image is on
both sides of any probe, the pooled and seen-so-far ones included. Accuracy standard errors are
binomial ``sqrt(p (1 - p) / n)`` over the scored views or episodes; loss standard errors are
``sd / sqrt(n)`` over episodes.

The probes are colsim.analysis's (numpy + scikit-learn), so ``colsim analyze`` reproduces them.
"""
from __future__ import annotations

import contextlib
from typing import NamedTuple, Optional

import numpy as np
import torch

from colsim.analysis import schema as S
from colsim.analysis.probes import (
    LinearReadout, binomial_se, equivariance_r2, fit_readout, group_sides, readout_accuracy,
)
from colsim.rule import PROBE_CONTEXT
from colsim.stream import ProbeSet

__all__ = ["Embeddings", "embed_probe_sets", "probe_scores", "image_groups", "spiking_probe_arrays", "head_accuracy",
           "layer_readout_scores"]


class Embeddings(NamedTuple):
    z: np.ndarray  # (P, N, V, D)
    z_agg: np.ndarray  # (P, N, Dagg)
    loss_pred: np.ndarray  # (P, N) the column's prediction loss per episode (NaN if the column has none)
    block_pred: np.ndarray  # (P, N, L) per-block local predictive term per episode (L = 0 without blocks)
    spike_count: tuple = ()  # spiking columns, per block l: (P, N, V, C_l) spikes per unit and view
    raster: tuple = ()  # spiking columns, per block l: (V, T, K_l) probe set 0's first episode
    raster_neuron: tuple = ()  # per block l: (K_l,) the raster's neurons (flat index into the block)
    logits: Optional[np.ndarray] = None  # (P, N, H, K) a supervised column's head scores (None: no heads)
    readout: tuple = ()  # per read-out layer k (input first): (P, N, V, F_k) full spike-count vectors
    readout_names: tuple = ()  # (K,) their names


@torch.no_grad()
def embed_probe_sets(column, probe_sets: list[ProbeSet], batch: int, device) -> Embeddings:
    """One column pass over every probe set (eval mode; batches of ``batch`` episodes); probe set j inside the
    context manager ``column.<PROBE_CONTEXT>(j)`` when a rule set one (colsim.rule.PROBE_CONTEXT)."""
    was_training = column.training
    column.eval()
    in_context = getattr(column, PROBE_CONTEXT, None)
    zs, aggs, losses, blocks, counts, logits, feats = [], [], [], [], [], [], []
    raster, raster_neuron, readout_names = (), (), ()
    try:
        for j, ps in enumerate(probe_sets):
            z_parts, a_parts, l_parts, b_parts, c_parts, h_parts, r_parts = [], [], [], [], [], [], []
            for i in range(0, ps.obs.shape[0], batch):
                with in_context(j) if in_context is not None else contextlib.nullcontext():
                    out = column.embed(ps.obs[i:i + batch].to(device, non_blocking=True),  # pinned for CUDA
                                       ps.actions[i:i + batch].to(device, non_blocking=True))
                if "spike_count" in out:
                    c_parts.append([c.float().cpu() for c in out["spike_count"]])
                    if not raster:  # the first episode of the first probe set
                        raster = tuple(r.to(torch.uint8).cpu().numpy() for r in out["raster"])
                        raster_neuron = tuple(n.cpu().numpy() for n in out["raster_neuron"])
                if "readout" in out:
                    r_parts.append([r.float().cpu() for r in out["readout"]])
                    readout_names = tuple(out["readout_names"])
                z = out["z"].float()
                z_parts.append(z.cpu())
                if "logits" in out:
                    h_parts.append(out["logits"].float().cpu())
                a_parts.append(out["z_agg"].float().cpu())
                lp = out.get("loss_pred")
                l_parts.append(lp.float().cpu() if lp is not None else torch.full((z.shape[0],), float("nan")))
                layers = out.get("layers") or []
                b_parts.append(torch.stack([(h[:, 1:] - h[:, :-1]).float().pow(2).mean(dim=(1, 2)) for h in layers], 1)
                               .cpu() if layers else torch.zeros(z.shape[0], 0))  # (n, L)
            zs.append(torch.cat(z_parts).numpy())
            aggs.append(torch.cat(a_parts).numpy())
            losses.append(torch.cat(l_parts).numpy())
            blocks.append(torch.cat(b_parts).numpy())
            if h_parts:
                logits.append(torch.cat(h_parts).numpy())  # (N, H, K)
            if c_parts:
                counts.append([torch.cat(c).numpy() for c in zip(*c_parts)])  # [(N, V, C_l)]
            if r_parts:
                feats.append([torch.cat(r).numpy() for r in zip(*r_parts)])  # [(N, V, F_k)]
    finally:
        column.train(was_training)
    spike_count = tuple(np.stack(c) for c in zip(*counts)) if counts else ()  # [(P, N, V, C_l)]
    readout = tuple(np.stack(f) for f in zip(*feats)) if feats else ()  # [(P, N, V, F_k)]
    return Embeddings(np.stack(zs), np.stack(aggs), np.stack(losses), np.stack(blocks), spike_count, raster,
                      raster_neuron, np.stack(logits) if logits else None, readout, readout_names)


def head_accuracy(logits: np.ndarray, labels: dict) -> "tuple[float, float]":
    """A supervised column's own accuracy on one probe set and its binomial standard error.

    logits (N, H, K): every head's scores; with H > 1 heads (Task-IL) episode n is read by head
    ``labels["task"][n]`` (van de Ven & Tolias 2019), else by the one head. The answer is scored against
    ``labels["target"]`` (the class within the head's outputs), or ``labels["class"]`` when a world gives no target.
    """
    N, H, _ = logits.shape
    if H > 1 and "task" not in labels:
        raise ValueError(f"{H} heads (one per task) need the probe set's task labels; the world gives none")
    head = np.asarray(labels["task"]).astype(np.int64) if H > 1 else np.zeros(N, np.int64)
    target = np.asarray(labels["target"] if "target" in labels else labels["class"]).astype(np.int64)
    pred = logits[np.arange(N), head].argmax(-1)  # (N,)
    p = float((pred == target).mean()) if N else float("nan")
    return p, float(np.sqrt(p * (1 - p) / N)) if N else float("nan")


def spiking_probe_arrays(emb: Embeddings) -> "tuple[dict, dict]":
    """The store's ``probe`` variables of a spiking column (``({}, {})`` for any other):

    * ``spike_count_l{l}`` (eval, probe_set, sample, view, unit_l{l}) float32 — spikes of each unit in
      each probe view (a conv block's unit is a channel, its neurons' counts averaged over positions);
    * ``raster_l{l}`` (eval, view, bin, neuron_l{l}) uint8 — the spikes of probe set 0's first episode,
      per time bin, for the neurons in the static ``raster_neuron_l{l}`` (neuron_l{l},) (flat indices).

    Returns (per-evaluation data, static data) for ``Recorder.record_eval``.
    """
    data, static = {}, {}
    for l, c in enumerate(emb.spike_count):
        data[f"spike_count_l{l}"] = ((S.EVAL, S.PROBE_SET, S.SAMPLE, S.VIEW, S.unit_l(l)), c[None].astype(np.float32))
    for l, (r, n) in enumerate(zip(emb.raster, emb.raster_neuron)):
        data[f"raster_l{l}"] = ((S.EVAL, S.VIEW, S.BIN, S.neuron_l(l)), r[None].astype(np.uint8))
        static[f"raster_neuron_l{l}"] = ((S.neuron_l(l),), n.astype(np.int64))
    return data, static


def layer_readout_scores(emb: Embeddings, labels: np.ndarray, fit: np.ndarray) -> dict:
    """The per-layer read-outs of the module docstring (``layer_acc``, ``layer_acc_se``, ``layer_spikes``, each
    (K,)) from ``emb.readout`` [(P, N, V, F_k)], class ``labels`` (P, N) and the fit side ``fit`` (P, N) bool."""
    K = len(emb.readout)
    out = {k: np.full(K, np.nan) for k in ("layer_acc", "layer_acc_se", "layer_spikes")}
    f, t = fit.reshape(-1), ~fit.reshape(-1)  # (P*N,)
    n_scored = int(t.sum())
    for k, x in enumerate(emb.readout):
        P, N, V, F = x.shape
        xv, yv = x.reshape(P * N * V, F), np.repeat(labels.reshape(-1), V)
        fv, tv = np.repeat(f, V), np.repeat(t, V)
        out["layer_spikes"][k] = float(x.mean()) if x.size else float("nan")
        if not n_scored or not fv.any() or not np.isfinite(xv).all():
            continue
        acc = readout_accuracy(fit_readout(xv[fv], yv[fv]), xv[tv], yv[tv])[0]
        out["layer_acc"][k], out["layer_acc_se"][k] = acc, binomial_se(acc, n_scored)
    return out


def image_groups(probe_sets: list[ProbeSet]) -> np.ndarray:
    """(P, N) group id of every probe episode: its source image id when the world labels one
    (``labels["image"]``: the same id in every set), else a per-set episode id."""
    if all("image" in ps.labels for ps in probe_sets):
        return np.stack([ps.labels["image"].numpy().astype(np.int64) for ps in probe_sets])
    P, N = len(probe_sets), probe_sets[0].obs.shape[0]
    return np.arange(P * N, dtype=np.int64).reshape(P, N)


def _probe(x_fit, y_fit, x_test, y_test) -> "tuple[float, float, Optional[LinearReadout]]":
    if len(x_test) == 0 or not (np.isfinite(x_fit).all() and np.isfinite(x_test).all()):
        return float("nan"), float("nan"), None
    r = fit_readout(x_fit, y_fit)
    acc, se = readout_accuracy(r, x_test, y_test)
    return acc, se, r


def _mean_se(v: np.ndarray) -> "tuple[float, float]":
    v = np.asarray(v, np.float64)
    v = v[np.isfinite(v)]
    if len(v) == 0:
        return float("nan"), float("nan")
    return float(v.mean()), float(v.std(ddof=1) / np.sqrt(len(v))) if len(v) > 1 else float("nan")


def probe_scores(emb: Embeddings, probe_sets: list[ProbeSet], action_names: list[str], seed: int = 0,
                 frozen: Optional[dict[int, LinearReadout]] = None, heads_only: bool = False) -> dict:
    """Score every read-out of the module docstring on embeddings ``emb``.

    ``frozen``: probe set index -> the read-out kept since that phase ended (re-applied as is).
    Returns arrays over probe sets (P,) / scalars, each value ``x`` with ``x_se``, and
    ``readouts`` (P,): this evaluation's task read-outs (the simulator freezes set p's at the end
    of phase p). ``heads_only`` (``evaluation.readouts: heads``): score only a supervised column's own heads and
    the prediction losses; every probe and equivariance read-out is NaN and no read-out is fitted.

    BLAS runs on one thread here: the probes are small problems, and in a training process
    torch's OpenMP workers still spin after each step, so a multi-threaded BLAS fights them
    (measured on the 2-core reference machine under load: 162 s -> 7 s for one evaluation).
    """
    from threadpoolctl import threadpool_limits

    with threadpool_limits(limits=1):
        return _probe_scores(emb, probe_sets, action_names, seed, frozen, heads_only)


def _no_probe(*_args) -> "tuple[float, float, None]":
    return float("nan"), float("nan"), None


def _probe_scores(emb, probe_sets, action_names, seed, frozen, heads_only=False) -> dict:
    if heads_only and emb.logits is None:
        raise ValueError("heads_only needs a supervised column's logits (models/classifier.py)")
    probe = _no_probe if heads_only else _probe
    P, N, V, D = emb.z.shape
    frozen = frozen or {}
    labels = np.stack([ps.labels["class"].numpy() for ps in probe_sets])  # (P, N)
    fit = group_sides(image_groups(probe_sets), seed)  # (P, N)
    out: dict = {k: np.full(P, np.nan) for k in (
        "acc_agg", "acc_agg_se", "acc_z", "acc_z_se", "seen_acc", "seen_acc_se", "frozen_acc", "frozen_acc_se",
        "prediction_loss", "prediction_loss_se", "equivariance_r2_set", "equivariance_r2_set_se")}
    readouts: list[Optional[LinearReadout]] = []
    zv = emb.z.reshape(P, N * V, D)  # views of an episode share its side
    for j in range(P):
        f, t = fit[j], ~fit[j]
        out["acc_agg"][j], out["acc_agg_se"][j], r = probe(emb.z_agg[j][f], labels[j][f], emb.z_agg[j][t],
                                                             labels[j][t])
        readouts.append(r)
        fv, tv = np.repeat(f, V), np.repeat(t, V)
        yv = np.repeat(labels[j], V)
        out["acc_z"][j], out["acc_z_se"][j], _ = probe(zv[j][fv], yv[fv], zv[j][tv], yv[tv])
        # seen so far: one probe over sets 0..j, scored on set j's held-out images
        fs = fit[: j + 1].reshape(-1)
        xs, ys = emb.z_agg[: j + 1].reshape((j + 1) * N, -1), labels[: j + 1].reshape(-1)
        out["seen_acc"][j], out["seen_acc_se"][j], _ = probe(xs[fs], ys[fs], emb.z_agg[j][t], labels[j][t])
        if j in frozen and frozen[j] is not None and np.isfinite(emb.z_agg[j]).all():
            out["frozen_acc"][j], out["frozen_acc_se"][j] = readout_accuracy(frozen[j], emb.z_agg[j][t], labels[j][t])
        out["prediction_loss"][j], out["prediction_loss_se"][j] = _mean_se(emb.loss_pred[j])
    L = emb.block_pred.shape[-1]
    out["block_pred_loss"] = emb.block_pred.mean(1) if N else np.full((P, L), np.nan)  # (P, L)
    if emb.logits is not None:  # the column's own heads (supervised columns only)
        acc = [head_accuracy(emb.logits[j], {k: v.numpy() for k, v in ps.labels.items()})
               for j, ps in enumerate(probe_sets)]
        out["head_acc"], out["head_acc_se"] = np.array([a for a, _ in acc]), np.array([s for _, s in acc])
    out["readouts"] = readouts
    if emb.readout and not heads_only:  # a column that reads its layers out (models/echospike.py)
        out.update(layer_readout_scores(emb, labels, fit))
        out["layer_names"] = list(emb.readout_names)

    # pooled over probe sets (every class of the protocol)
    fa = fit.reshape(-1)
    xa, ya = emb.z_agg.reshape(P * N, -1), labels.reshape(-1)
    out["probe_acc_agg"], out["probe_acc_agg_se"], _ = probe(xa[fa], ya[fa], xa[~fa], ya[~fa])
    fav, yav = np.repeat(fa, V), np.repeat(ya, V)
    xz = emb.z.reshape(P * N * V, D)
    out["probe_acc_z"], out["probe_acc_z_se"], _ = probe(xz[fav], yav[fav], xz[~fav], yav[~fav])

    # equivariance: consecutive views (v, v+1) of every episode, pooled over probe sets and per set
    acts = np.stack([ps.actions.numpy() for ps in probe_sets])  # (P, N, V, A)
    A = acts.shape[-1]
    groups = np.repeat(image_groups(probe_sets).reshape(-1), V - 1)  # (P*N*(V-1),) pairs of an image together
    za, zb = emb.z[:, :, :-1].reshape(-1, D), emb.z[:, :, 1:].reshape(-1, D)
    aa = acts[:, :, :-1].reshape(-1, A)
    if heads_only:
        out.update(equivariance_r2=float("nan"), equivariance_r2_se=float("nan"), equivariance_probe="none",
                   equivariance_r2_dim=np.full(A, np.nan), equivariance_r2_dim_se=np.full(A, np.nan),
                   equivariance_r2_set_dim=np.full((P, A), np.nan), equivariance_r2_set_dim_se=np.full((P, A), np.nan))
        return out
    eq = equivariance_r2(za, zb, aa, probe="linear", seed=seed, groups=groups, names=action_names)
    out["equivariance_r2"], out["equivariance_r2_se"] = eq["r2"], eq.get("r2_se", float("nan"))
    out["equivariance_r2_dim"] = np.array([eq["per_dim"].get(n, np.nan) for n in action_names])
    out["equivariance_r2_dim_se"] = np.array([eq.get("per_dim_se", {}).get(n, np.nan) for n in action_names])
    out["equivariance_probe"] = eq["probe"]
    out["equivariance_r2_set_dim"] = np.full((P, A), np.nan)
    out["equivariance_r2_set_dim_se"] = np.full((P, A), np.nan)
    per = N * (V - 1)
    for j in range(P):
        sl = slice(j * per, (j + 1) * per)
        e = equivariance_r2(za[sl], zb[sl], aa[sl], probe="linear", seed=seed, groups=groups[sl], names=action_names)
        out["equivariance_r2_set"][j], out["equivariance_r2_set_se"][j] = e["r2"], e.get("r2_se", float("nan"))
        out["equivariance_r2_set_dim"][j] = [e["per_dim"].get(n, np.nan) for n in action_names]
        out["equivariance_r2_set_dim_se"][j] = [e.get("per_dim_se", {}).get(n, np.nan) for n in action_names]
    return out
