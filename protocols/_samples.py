"""Labelled i.i.d. samples for supervised continual learning: the data, pools, stream and probe sets shared by the
``split_images`` and ``permuted_images`` worlds (van de Ven & Tolias 2019, "Three scenarios for continual
learning", arXiv 1904.07734; the scenarios themselves are in those worlds' files).

Data (``data``; read once, never downloaded)
    ``digits``   scikit-learn's bundled UCI digits (Alpaydin & Kaynak 1998): 1797 grey 8x8 images, 10 classes,
                 pixels / 16. A fixed stratified permutation (``split_seed``, protocols/_pools.py) splits them into
                 *probe* (the reported test set, ``probe_fraction`` of each class), *validation*
                 (``validation_fraction``; for choosing hyper-parameters, never reported) and *train* (the rest).
    ``fashion``  Fashion-MNIST (Xiao, Rasul & Vollgraf 2017) from the IDX folder ``path``, read by
                 ``image_files``'s reader: 28x28, pixels / 255. *probe* is the IDX test part (t10k, 10,000
                 images); the train part is split, stratified by ``split_seed``, into *validation*
                 (``validation_fraction``) and *train*; ``probe_fraction`` is not used.
    Images keep their native size (no canvas, no affine views). The ``image`` label is an image's row in the data.

Stream (``World.stream``)
    Every tick shows B new training images drawn i.i.d. (uniform over the phase's classes, then over that class's
    train images): each is an episode of one view, so ``start`` is True everywhere and ``episode_length`` is not
    used. The action is one constant-zero dimension (``none``): nothing moves. Labels: ``class``, ``target`` (the
    answer the scenario asks for), ``image``, and ``task`` where the scenario gives the task id (Task-IL).

Probe sets (``World.probe_set``)
    n held-out images of the phase's classes (balanced, each class cycling through its pool images before any
    repeats: ``_pools.balanced_items``) from the probe or the validation pool, each repeated over the ``views``
    an evaluation asks for (identical views, zero actions), with the labels above per episode.
"""
from __future__ import annotations

import abc
import functools
from typing import Any, ClassVar, Literal, Optional

import numpy as np
import torch
from pydantic import Field
from torch import Tensor

from colsim.config import ConfigError
from colsim.protocols._pools import PoolConfig, balanced_items, check_classes, class_picker, missing_class, resolve, split
from colsim.stream import ProbeSet, Stream, World, generator_from_state, rng_state
from colsim.types import Step, WorldSpec

__all__ = ["SampleConfig", "SampleWorld", "load_data", "ACTION_NAMES"]

ACTION_NAMES = ("none",)  # one constant-zero action dimension: i.i.d. samples have no movement


class SampleConfig(PoolConfig):
    """Fields every labelled-sample world shares (data, pools, scenario); a world's config subclasses it."""

    LABELS: ClassVar[tuple[str, ...]] = ("class", "target", "task (Task-IL only)", "image")
    ACTION_ENCODING: ClassVar[str] = "none: i.i.d. labelled images, one view each (a constant-zero action)"

    data: Literal["digits", "fashion"] = Field("digits", description="sklearn digits (8x8) or Fashion-MNIST (28x28)")
    path: str = Field("/usr/share/datasets/fashion-mnist", min_length=1, description="data fashion: the IDX folder")
    scenario: Literal["task", "domain", "class"] = Field(
        "class", description="van de Ven & Tolias 2019: task (task id given, a head per task), domain (no task id, "
                             "the answer within the task), class (no task id, the class among all tasks')")
    joint: bool = Field(False, description="joint training, the upper bound: every phase's training stream shows "
                                           "every task's images, mixed; the probe sets stay one task per phase")


@functools.lru_cache(maxsize=4)
def load_data(data: str, path: str, probe_fraction: float, validation_fraction: float, split_seed: int
              ) -> tuple[Tensor, Tensor, tuple[Tensor, Tensor, Tensor]]:
    """(images (N, 1, H, W) uint8 or float32, classes (N,) long, (train, validation, probe) rows): module docstring."""
    if data == "digits":
        from sklearn.datasets import load_digits

        d = load_digits()
        x = torch.tensor(d.images, dtype=torch.float32)[:, None] / 16.0  # (N, 1, 8, 8) in [0, 1]
        y = torch.tensor(d.target, dtype=torch.long)
        return x, y, split(y, 10, probe_fraction, validation_fraction, split_seed)
    from colsim.protocols.image_files import idx_part_rows, read_images

    imgs, y_np, _ = read_images(path, "idx", 1)
    parts = idx_part_rows(path)
    if "train" not in parts or len(parts) < 2:
        raise ConfigError(f"protocol.world.path: {path} needs a train and a test IDX part (Fashion-MNIST's train-* "
                          f"and t10k-*), has {sorted(parts)}")
    x = torch.from_numpy(np.ascontiguousarray(imgs[0])).permute(0, 3, 1, 2)  # (N, 1, 28, 28) uint8
    y = torch.from_numpy(y_np)
    train_rows = torch.arange(parts["train"].start, parts["train"].stop)
    test = torch.tensor([r for p, rg in parts.items() if p != "train" for r in rg], dtype=torch.long)
    # the train part: stratified into train and validation (split's "probe" share is our validation here)
    tr, _, val = split(y[train_rows], int(y.max()) + 1, validation_fraction, 0.0, split_seed) \
        if validation_fraction > 0 else (torch.arange(len(train_rows)), None, torch.zeros(0, dtype=torch.long))
    return x, y, (train_rows[tr], train_rows[val], test.sort().values)


class SampleWorld(World):
    """Abstract: labelled i.i.d. images under a continual-learning scenario (module docstring).

    A final subclass sets ``num_tasks`` / ``num_targets`` / ``task_ids`` and implements ``_labels`` (which task,
    target a sample of a phase has) and ``_show`` (the image as the task presents it)."""

    fixed: tuple[str, ...] = ("name", "data", "path", "probe_fraction", "validation_fraction", "split_seed", "scenario",
                              "joint")
    num_classes: int  # classes a phase may name
    num_tasks: int  # tasks of the protocol
    num_targets: int  # outputs of one head

    def __init__(self, cfg: SampleConfig):
        self.cfg = cfg
        self.images, self.labels, (train, val, probe) = load_data(cfg.data, cfg.path, cfg.probe_fraction,
                                                                  cfg.validation_fraction, cfg.split_seed)
        self.rows = {"train": train, "validation": val, "probe": probe}
        self.task_ids = cfg.scenario == "task"
        self.spec = WorldSpec(obs_shape=tuple(self.images.shape[1:]), action_dim=1, action_names=ACTION_NAMES,
                              num_classes=self.num_classes, num_tasks=self.num_tasks if self.task_ids else 0,
                              num_targets=self.num_targets)

    # ---- what a subclass defines
    @abc.abstractmethod
    def _tasks(self, cfg: SampleConfig, classes: Tensor, u: Tensor) -> Tensor:
        """The task (n,) long of samples of ``classes`` (n,) in a phase with config ``cfg``; u (n,) uniforms."""

    @abc.abstractmethod
    def _target(self, classes: Tensor, tasks: Tensor) -> Tensor:
        """The answer (n,) the scenario asks for."""

    @abc.abstractmethod
    def _show(self, x: Tensor, tasks: Tensor) -> Tensor:
        """Images x (n, 1, H, W) float in [0, 1] as task ``tasks`` (n,) presents them."""

    def _joint(self, cfg: SampleConfig) -> SampleConfig:
        """The phase config of a joint-training stream (``joint``): a world whose phases pick a task by a world
        field resets it here to "every task"."""
        return cfg

    # ---- helpers
    def _resolve(self, overrides: Optional[dict[str, Any]], where: str = "world") -> SampleConfig:
        return resolve(self.cfg, overrides, self.fixed, where)

    def _float(self, rows: Tensor) -> Tensor:
        x = self.images[rows]
        return x.float() / 255.0 if x.dtype == torch.uint8 else x

    def _sample(self, rows: Tensor, cfg: SampleConfig, u: Tensor) -> "tuple[Tensor, dict[str, Tensor]]":
        """Dataset rows (n,) -> (obs (n, 1, H, W), labels)."""
        cls = self.labels[rows]
        task = self._tasks(cfg, cls, u)
        labels = {"class": cls, "target": self._target(cls, task), "image": rows}
        if self.task_ids:
            labels["task"] = task
        return self._show(self._float(rows), task), labels

    def check_phase(self, classes: Optional[list[int]], overrides: Optional[dict[str, Any]] = None, *,
                    pool: str = "probe", where: Optional[str] = None) -> list[int]:
        pre = f"{where}." if where else ""
        self._resolve(overrides, f"{pre}world" if where else "world")
        cls = check_classes(classes, self.num_classes, f"{pre}classes")
        for p in ("train", pool):
            empty = missing_class(self.labels[self.rows[p]], cls)
            if empty is not None:
                raise ConfigError(f"{pre}classes: the world's {p} pool has no image of class {empty}; change "
                                  f"world.validation_fraction / probe_fraction")
        return cls

    # ---- streams
    def _stream_phase(self, batch: int, classes: Optional[list[int]], overrides: Optional[dict[str, Any]]
                      ) -> "tuple[SampleConfig, list[int]]":
        """A stream's checked batch, phase config and classes (ConfigError naming the field otherwise)."""
        if batch < 1:
            raise ConfigError(f"stream: batch must be >= 1, got {batch}")
        return self._resolve(overrides), self.check_phase(classes, overrides)

    def stream(self, batch: int, episode_length: int, classes: Optional[list[int]] = None,
               overrides: Optional[dict[str, Any]] = None) -> Stream:
        """B i.i.d. training images per tick (each its own episode; ``episode_length`` is not used)."""
        cfg, cls = self._stream_phase(batch, classes, overrides)
        if cfg.joint:  # every task's images in every phase (the phase still picks its probe set)
            cls, cfg = list(range(self.num_classes)), self._joint(cfg)
        rows = self.rows["train"]
        pick = class_picker(self.labels[rows], cls)  # u (B, 2) -> train-pool indices (B,)
        B = batch

        def init(generator: torch.Generator) -> dict[str, Tensor]:
            return {"rng": rng_state(generator)}

        def step(state: dict[str, Tensor]) -> "tuple[dict[str, Tensor], Step]":
            g = generator_from_state(state["rng"].cpu())
            u = torch.rand(B, 3, generator=g)  # (B, 3): class, item, task
            obs, labels = self._sample(rows[pick(u[:, :2])], cfg, u[:, 2])
            return {"rng": rng_state(g)}, Step(obs=obs, action=torch.zeros(B, 1), start=torch.ones(B, dtype=torch.bool),
                                               labels=labels)

        return Stream(init=init, step=step)

    # ---- probe sets
    def probe_set(self, classes: Optional[list[int]], n: int, views: int, generator: torch.Generator,
                  overrides: Optional[dict[str, Any]] = None, *, pool: str = "probe",
                  where: Optional[str] = None) -> ProbeSet:
        """n held-out images of the phase from ``pool``, each shown ``views`` times (identical views, zero actions)."""
        if n < 1 or views < 1:
            raise ConfigError(f"probe_set: n and views must be >= 1, got {n}, {views}")
        if pool not in ("probe", "validation"):
            raise ConfigError(f"probe_set: pool must be probe or validation, got {pool!r}")
        cls = self.check_phase(classes, overrides, pool=pool, where=where)
        cfg = self._resolve(overrides)
        rows = self.rows[pool]
        rows = rows[balanced_items(self.labels[rows], cls, n, generator)]  # (n,) dataset rows
        obs, labels = self._sample(rows, cfg, torch.rand(n, generator=generator))
        obs = obs[:, None].expand(n, views, *obs.shape[1:]).contiguous()  # (n, V, 1, H, W)
        return ProbeSet(obs=obs, actions=torch.zeros(n, views, 1), labels=labels)
