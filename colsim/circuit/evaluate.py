"""In-run evaluation of a circuit (issue 14): the probes of :mod:`colsim.evaluate` per column and for the
vote, and the store layout with a ``column`` dim (names + ``"vote"``).

``Circuit.embed`` gives z (n, K, V, D), z_AGG (n, K, W) and the prediction loss (n, K) for the K = N + 1
entries (columns, then the vote); every read-out of :func:`colsim.evaluate.probe_scores` is scored on each
entry alone, with the same image split, so the vote's accuracy is directly comparable with each column's.
The summary's matrices are the vote's; ``summary["columns"]`` holds the pooled accuracies per entry.
"""
from __future__ import annotations

import numpy as np

from colsim.analysis import schema as S
from colsim.analysis.summary import COLUMN_SUMMARY_KEYS
from colsim.evaluate import Embeddings, probe_scores

__all__ = ["entry_embeddings", "circuit_scores", "circuit_eval_data", "circuit_probe_data", "COLUMN_SUMMARY_KEYS"]


def entry_embeddings(emb: Embeddings, k: int) -> Embeddings:
    """Entry k's embeddings in the single-column layout: z (P, n, V, D), z_agg (P, n, W), loss (P, n)."""
    return Embeddings(emb.z[:, :, k], emb.z_agg[:, :, k], emb.loss_pred[:, :, k], emb.block_pred)


def circuit_scores(emb: Embeddings, probe_sets, action_names, seed: int, frozen: dict) -> list[dict]:
    """``probe_scores`` of every entry k (``frozen[k]``: that entry's frozen read-outs) -> list of K dicts."""
    K = emb.z.shape[2]
    return [probe_scores(entry_embeddings(emb, k), probe_sets, action_names, seed=seed, frozen=frozen.get(k, {}))
            for k in range(K)]


def circuit_eval_data(per: list[dict], set_keys, scalar_keys) -> dict:
    """The ``evaluation`` group's variables with the ``column`` dim last: (eval, probe_set, column), (eval, column),
    (eval, action_dim, column), (eval, probe_set, action_dim, column); ``block_pred_loss`` (eval, probe_set,
    block) is the circuit's (every column's blocks together), without a column dim."""
    def st(key):
        return np.stack([np.asarray(p[key], dtype=np.float64) for p in per], axis=-1)[None]

    data = {n: (S.evaluation_layout("set", circuit=True), st(n)) for n in set_keys}
    data.update({n: (S.evaluation_layout("scalar", circuit=True), st(n)) for n in scalar_keys})
    for n in ("equivariance_r2_dim", "equivariance_r2_dim_se"):
        data[n] = (S.evaluation_layout("dim", circuit=True), st(n))
    for n in ("equivariance_r2_set_dim", "equivariance_r2_set_dim_se"):
        data[n] = (S.evaluation_layout("set_dim", circuit=True), st(n))
    data["block_pred_loss"] = (S.evaluation_layout("block", circuit=True), np.asarray(per[-1]["block_pred_loss"], np.float64)[None])
    return data


def circuit_probe_data(emb: Embeddings) -> dict:
    """The ``probe`` group's z (eval, probe_set, column, sample, view, unit) and z_agg (eval, probe_set, column,
    sample, unit_agg)."""
    return {"z": (S.z_layout(circuit=True),
                  emb.z.transpose(0, 2, 1, 3, 4)[None].astype(np.float32)),
            "z_agg": (S.z_agg_layout(circuit=True),
                      emb.z_agg.transpose(0, 2, 1, 3)[None].astype(np.float32))}
