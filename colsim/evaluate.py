"""In-run evaluation: embed every phase's probe set and compute quick probes.

At each evaluation (before training and after every phase) the column embeds the fixed
held-out episodes of every probe set (``AbstractColumn.embed``); the recorded arrays go to
the store's ``probe`` group and these numbers to ``evaluation``:

* ``acc_agg[j]`` / ``acc_z[j]`` — linear-probe (logistic regression) class accuracy on probe
  set j from z_AGG / from single-view z (held-out half of the episodes).
* ``probe_acc_agg`` / ``probe_acc_z`` — the same on all probe sets pooled (all classes seen
  in the protocol): the headline invariance number.
* ``equivariance_r2`` — R² of a linear probe predicting the relative action between
  consecutive views from ``(z_v, z_{v+1})``, pooled over probe sets, constant action
  dimensions dropped (REFERENCE.md section 5).

The probes are colsim.analysis's (numpy + scikit-learn), so ``colsim analyze`` reproduces them.
"""
from __future__ import annotations

from typing import NamedTuple

import numpy as np
import torch

from colsim.analysis.probes import equivariance_r2, linear_probe_accuracy
from colsim.stream import ProbeSet

__all__ = ["Embeddings", "embed_probe_sets", "probe_scores"]


class Embeddings(NamedTuple):
    z: np.ndarray  # (P, N, V, D)
    z_agg: np.ndarray  # (P, N, Dagg)


@torch.no_grad()
def embed_probe_sets(column, probe_sets: list[ProbeSet], batch: int, device) -> Embeddings:
    was_training = column.training
    column.eval()
    zs, aggs = [], []
    try:
        for ps in probe_sets:
            z_parts, a_parts = [], []
            for i in range(0, ps.obs.shape[0], batch):
                out = column.embed(ps.obs[i:i + batch].to(device), ps.actions[i:i + batch].to(device))
                z_parts.append(out["z"].float().cpu())
                a_parts.append(out["z_agg"].float().cpu())
            zs.append(torch.cat(z_parts).numpy())
            aggs.append(torch.cat(a_parts).numpy())
    finally:
        column.train(was_training)
    return Embeddings(np.stack(zs), np.stack(aggs))


def probe_scores(emb: Embeddings, probe_sets: list[ProbeSet], action_names: list[str], seed: int = 0) -> dict:
    P, N, V, D = emb.z.shape
    labels = [ps.labels["class"].numpy() for ps in probe_sets]
    acc_agg = np.array([linear_probe_accuracy(emb.z_agg[j], labels[j], seed=seed) for j in range(P)])
    acc_z = np.array([
        linear_probe_accuracy(emb.z[j].reshape(N * V, D), np.repeat(labels[j], V), seed=seed,
                              groups=np.repeat(np.arange(N), V))
        for j in range(P)
    ])
    y_all = np.concatenate(labels)
    pooled_agg = linear_probe_accuracy(emb.z_agg.reshape(P * N, -1), y_all, seed=seed)
    pooled_z = linear_probe_accuracy(emb.z.reshape(P * N * V, D), np.repeat(y_all, V), seed=seed,
                                     groups=np.repeat(np.arange(P * N), V))
    # equivariance: consecutive views (v, v+1) of every episode, pooled over probe sets
    acts = np.stack([ps.actions.numpy() for ps in probe_sets])  # (P, N, V, A)
    za = emb.z[:, :, :-1].reshape(-1, D)
    zb = emb.z[:, :, 1:].reshape(-1, D)
    aa = acts[:, :, :-1].reshape(-1, acts.shape[-1])
    groups = np.repeat(np.arange(P * N), V - 1)
    eq = equivariance_r2(za, zb, aa, probe="linear", seed=seed, groups=groups, names=action_names)
    r2_dim = np.array([eq["per_dim"].get(n, np.nan) for n in action_names])
    return {"acc_agg": acc_agg, "acc_z": acc_z, "probe_acc_agg": pooled_agg, "probe_acc_z": pooled_z,
            "equivariance_r2": eq["r2"], "equivariance_r2_dim": r2_dim, "equivariance_probe": eq["probe"]}
