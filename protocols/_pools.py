"""Data pools shared by every world that serves fixed source images (``affine_digits``, ``image_files``,
``saccades``): the stratified train / validation / probe split, per-phase config overrides, class
checks, and how streams and probe sets pick items of the allowed classes.

Pools
    A fixed permutation (``split_seed``), stratified by class, splits a world's source images once
    into three disjoint pools that together cover the data: *probe* (the first ``probe_fraction`` of
    each class's permutation; the reported probe sets), *validation* (the next
    ``validation_fraction``; probe sets for choosing hyper-parameters, never reported) and *train*
    (the rest; streams). The probe pool depends only on (``probe_fraction``, ``split_seed``).

Picking items (an *item* is whatever a world shows in one episode: an image, a scene)
    Streams: uniform over the allowed classes, then uniform over that class's items
    (``class_picker``). Probe sets of n episodes: classes balanced (n // K or n // K + 1 each) and
    shuffled; each class's episodes take its items in a random order and cycle through all of them
    before any repeats (``balanced_items``).
"""
from __future__ import annotations

from typing import Any, Callable, Optional

import torch
from pydantic import Field, model_validator
from torch import Tensor

from colsim.config import ConfigError, Strict

__all__ = ["PoolConfig", "POOL_FIXED", "POOLS", "split", "resolve", "check_classes", "missing_class",
           "class_picker", "balanced_items"]

POOLS = ("probe", "validation")  # pools probe sets are drawn from (streams use the train pool)
POOL_FIXED = ("name", "probe_fraction", "validation_fraction", "split_seed")  # cannot change per phase


class PoolConfig(Strict):
    """Pool fields every world with source images shares; a world's config subclasses it and sets
    ``name`` (a Literal)."""

    name: str
    probe_fraction: float = Field(0.3, gt=0, lt=1, description="share of each class held out for probes")
    validation_fraction: float = Field(0.15, ge=0, lt=1, description="share of each class held out for validation")
    split_seed: int = Field(0, ge=0)

    @model_validator(mode="after")
    def _check_pools(self) -> "PoolConfig":
        if self.probe_fraction + self.validation_fraction >= 1:
            raise ValueError(f"probe_fraction + validation_fraction must be < 1 (the rest trains), got "
                             f"{self.probe_fraction} + {self.validation_fraction}")
        return self


def split(labels: Tensor, num_classes: int, probe_fraction: float, validation_fraction: float,
          seed: int) -> tuple[Tensor, Tensor, Tensor]:
    """Stratified, deterministic (train, validation, probe) dataset indices, each sorted (n,) long.

    Per class (n images, permuted once): probe = the first k = round(probe_fraction n) (>= 1),
    validation = the next round(validation_fraction n) (>= 1 when the fraction is > 0), train = the
    rest (>= 1). The probe pool is the same for any validation_fraction.
    """
    g = torch.Generator().manual_seed(seed)
    train, val, probe = [], [], []
    for c in range(num_classes):
        idx = torch.nonzero(labels == c).flatten()
        idx = idx[torch.randperm(len(idx), generator=g)]
        n = len(idx)
        k = min(max(1, round(probe_fraction * n)), n - 1)
        kv = min(max(1, round(validation_fraction * n)) if validation_fraction > 0 else 0, n - k - 1)
        probe.append(idx[:k])
        val.append(idx[k:k + kv])
        train.append(idx[k + kv:])
    return tuple(torch.cat(x).sort().values for x in (train, val, probe))  # type: ignore[return-value]


def resolve(cfg: Strict, overrides: Optional[dict[str, Any]], fixed: tuple[str, ...], where: str = "world"):
    """``cfg`` with a phase's ``overrides`` applied and validated; a ConfigError naming ``{where}.<key>``
    when an override touches a ``fixed`` field."""
    if not overrides:
        return cfg
    bad = [k for k in fixed if k in overrides and overrides[k] != getattr(cfg, k)]
    if bad:
        raise ConfigError(f"{where}.{bad[0]}: cannot change per phase (set it in the protocol's world section)")
    return type(cfg).model_validate({**cfg.model_dump(), **overrides})


def check_classes(classes: Optional[list[int]], num_classes: int, where: str = "classes") -> list[int]:
    """The sorted distinct classes of a phase (None: all); ConfigError unless a non-empty subset of 0..K-1."""
    if classes is None:
        return list(range(num_classes))
    out = sorted({int(c) for c in classes})
    if not out or out[0] < 0 or out[-1] >= num_classes:
        raise ConfigError(f"{where}: must be a non-empty subset of the world's classes 0..{num_classes - 1}, "
                          f"got {list(classes)}")
    return out


def missing_class(labels: Tensor, classes: list[int]) -> Optional[int]:
    """The first of ``classes`` with no item in ``labels`` (n,), or None."""
    return next((c for c in classes if not bool((labels == c).any())), None)


def class_picker(labels: Tensor, classes: list[int]) -> Callable[..., Tensor]:
    """Stream sampler over a pool's items with classes ``labels`` (n,): uniforms u (B, 2) -> item
    indices (B,), uniform over ``classes`` (u[:, 0]), then over that class's items (u[:, 1]).
    ``pick(u, like=items)`` keeps the class of ``items`` (B,) and draws only the item (u[:, 1]);
    ``pick(u, k=k)`` draws an item of class ``classes[k]`` for k (B,) long."""
    members = [torch.nonzero(labels == c).flatten() for c in classes]
    counts = torch.tensor([len(m) for m in members])  # (K,)
    table = torch.zeros(len(classes), int(counts.max()), dtype=torch.long)  # (K, max n): item indices
    for k, m in enumerate(members):
        table[k, : len(m)] = m
    position = torch.full((max(int(labels.max()), *classes) + 1,), -1, dtype=torch.long)  # class -> its k
    position[torch.tensor(classes)] = torch.arange(len(classes))

    def pick(u: Tensor, like: Optional[Tensor] = None, k: Optional[Tensor] = None) -> Tensor:  # u (B, 2) -> (B,)
        if k is None and like is None:
            k = (u[:, 0] * len(classes)).long().clamp_(max=len(classes) - 1)
        elif k is None:
            k = position[labels[like]]
        j = torch.minimum((u[:, 1] * counts[k]).long(), counts[k] - 1)
        return table[k, j]

    return pick


def balanced_items(labels: Tensor, classes: list[int], n: int, generator: torch.Generator) -> Tensor:
    """Items (n,) for n probe episodes from a pool with classes ``labels``: classes balanced and
    shuffled, each class cycling through all its items (in a random order) before any repeats."""
    order = torch.tensor(classes)[torch.arange(n) % len(classes)]
    order = order[torch.randperm(n, generator=generator)]  # (n,) balanced classes, shuffled
    items = torch.empty(n, dtype=torch.long)
    for c in classes:
        slots = torch.nonzero(order == c).flatten()
        members = torch.nonzero(labels == c).flatten()
        members = members[torch.randperm(len(members), generator=generator)]
        items[slots] = members[torch.arange(len(slots)) % len(members)]
    return items
