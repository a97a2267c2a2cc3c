"""Core data types shared by worlds, columns, rules and the simulator (docs/architecture.md).

Everything that evolves in time is explicit state passed in and returned; these are the
containers that cross the interfaces.
"""
from __future__ import annotations

from typing import Any, NamedTuple

import torch
from torch import Tensor

__all__ = ["Step", "Trace", "Params", "Grads", "Metrics", "WorldSpec", "PyTree"]

Params = dict[str, Tensor]  # name -> trainable parameter (``module.named_parameters()``)
Grads = dict[str, Tensor]  # name -> descent direction (``.grad`` convention); missing = no update
Metrics = dict[str, float]  # scalar diagnostics for the store's ``metrics`` group
PyTree = Any  # nested dict / list / tuple of tensors and python scalars (``torch.save``-able)


class Step(NamedTuple):
    """One tick of B parallel streams.

    obs:    (B, C, H, W) float32 observation at this tick.
    action: (B, A) the action that leads from this obs to the *next* obs of the stream
            (zeros on the last view of an episode: no next view of the same object).
    start:  (B,) bool, True where a new episode (new object) begins at this obs.
    labels: name -> (B, ...) tensors: ``class`` (B,), ``angle`` (B,), ``shift`` (B, 2),
            ``scale`` (B,), ``phase`` (B,), ``episode`` (B,), ``image`` (B,) the dataset index of
            the episode's source object ...
    """

    obs: Tensor
    action: Tensor
    start: Tensor
    labels: dict[str, Tensor]


class Trace(dict):
    """What a column exposes to rules after one forward: name -> tensor (or list of tensors).

    Keys a seq-JEPA column provides (shapes for batch B, width D, window M):
      ``z`` (B, D) online embedding of the current obs; ``z_agg`` (B, D) aggregate of the
      context window that predicts the current obs; ``z_hat`` (B, D) that prediction (made
      from context up to t-1 and action a_{t-1}); ``z_target`` (B, D) target embedding of
      the current obs (no grad); ``valid`` (B,) bool, True where a prediction exists
      (the stream has at least one earlier view of the same episode); ``loss_pred`` (B,)
      per-stream prediction loss ``1 - cos(z_hat, sg(z_target))``; ``layers`` list of
      (B, C_l) globally pooled encoder block outputs for the current obs; ``layers_prev``
      the same for the previous obs (no grad); ``local`` bool tensor, True when the forward
      ran with detached block inputs; ``inputs`` the column inputs of this tick (context
      window ``obs_ctx`` (B, M, C, H, W), ``act_ctx`` (B, M, A), ``count`` (B,), ``obs``,
      ``action``) so a rule can store and replay them (``column.forward_inputs``).
      A rule's ``needs`` names the keys it reads.
    """


class WorldSpec(NamedTuple):
    """What a column must know about the world it will see (validated before step 0)."""

    obs_shape: tuple[int, int, int]  # (C, H, W)
    action_dim: int
    action_names: tuple[str, ...]
    num_classes: int
    channel_names: tuple[str, ...] = ()  # names of the obs channels where a world gives them (a sensor may pick one)
    # supervised columns (models/classifier.py; van de Ven & Tolias 2019's scenarios, protocols/_samples.py):
    num_tasks: int = 0  # task ids the world gives in labels["task"] (0..num_tasks-1; Task-IL); 0: none
    num_targets: int = 0  # outputs of one read-out head, labels["target"] in 0..num_targets-1; 0: labels["class"]


def tree_map(fn, tree: PyTree) -> PyTree:
    """Apply ``fn`` to every tensor leaf of a nested dict/list/tuple (NamedTuples kept)."""
    if isinstance(tree, Tensor):
        return fn(tree)
    if isinstance(tree, dict):
        return type(tree)((k, tree_map(fn, v)) for k, v in tree.items()) if type(tree) is not dict else {
            k: tree_map(fn, v) for k, v in tree.items()
        }
    if isinstance(tree, tuple) and hasattr(tree, "_fields"):
        return type(tree)(*(tree_map(fn, v) for v in tree))
    if isinstance(tree, (list, tuple)):
        return type(tree)(tree_map(fn, v) for v in tree)
    return tree


def to_device(tree: PyTree, device: torch.device | str) -> PyTree:
    return tree_map(lambda t: t.to(device), tree)
