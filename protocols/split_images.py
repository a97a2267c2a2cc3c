"""split_images — split digits / Fashion-MNIST: tasks of a few classes each, in the three scenarios of
van de Ven & Tolias (2019, "Three scenarios for continual learning", arXiv 1904.07734, split MNIST).

The ``tasks`` x ``classes_per_task`` first classes are cut into tasks in class order: task k holds classes
``k * classes_per_task .. (k + 1) * classes_per_task - 1`` (the defaults: {0,1}, {2,3}, {4,5}, {6,7}, {8,9}). A
protocol shows one task per phase (``phases[k].classes``); a sample's task follows from its class. ``joint: true``
(protocols/_samples.py) trains every phase on every task's images, the joint-training upper bound. The scenario (``scenario``) sets what the learner is told and asked:

=========  ===============================  ==================================  ===========================
scenario   task id (``labels["task"]``)     answer (``labels["target"]``)       read-out (models/classifier)
=========  ===============================  ==================================  ===========================
task       given: class // classes_per_task  class % classes_per_task           one head per task, 2-way
domain     not given                         class % classes_per_task           one 2-way head
class      not given                         class                              one 10-way head
=========  ===============================  ==================================  ===========================

Data, pools, stream and probe sets: protocols/_samples.py (i.i.d. images, native size, held-out test pool).
"""
from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field
from torch import Tensor

from colsim.config import ConfigError
from colsim.protocols._samples import SampleConfig, SampleWorld
from colsim.registry import register_world

__all__ = ["SplitImagesConfig", "SplitImages", "split_images"]


class SplitImagesConfig(SampleConfig):
    """Split world config: how many tasks of how many classes, and the shared data / pool / scenario fields."""

    name: Literal["split_images"] = "split_images"
    tasks: int = Field(5, ge=1, description="number of tasks")
    classes_per_task: int = Field(2, ge=1, description="classes per task (task k: the next classes_per_task classes)")


class SplitImages(SampleWorld):
    """Split digits / Fashion-MNIST as Task-IL, Domain-IL or Class-IL (module docstring)."""

    fixed = SampleWorld.fixed + ("tasks", "classes_per_task")

    def __init__(self, cfg: SplitImagesConfig):
        self.num_classes = cfg.tasks * cfg.classes_per_task
        self.num_tasks = cfg.tasks
        self.num_targets = cfg.classes_per_task if cfg.scenario in ("task", "domain") else self.num_classes
        super().__init__(cfg)
        have = int(self.labels.max()) + 1
        if self.num_classes > have:
            raise ConfigError(f"protocol.world.tasks: {cfg.tasks} tasks x {cfg.classes_per_task} classes need "
                              f"{self.num_classes} classes and {cfg.data} has {have}; lower tasks or classes_per_task")

    def _tasks(self, cfg, classes: Tensor, u: Tensor) -> Tensor:
        return torch.div(classes, self.cfg.classes_per_task, rounding_mode="floor")

    def _target(self, classes: Tensor, tasks: Tensor) -> Tensor:
        return classes % self.cfg.classes_per_task if self.cfg.scenario != "class" else classes

    def _show(self, x: Tensor, tasks: Tensor) -> Tensor:
        return x


@register_world("split_images", SplitImagesConfig)
def split_images(cfg: SplitImagesConfig) -> SplitImages:
    """Split digits / Fashion-MNIST (tasks of 2 classes) as Task-IL, Domain-IL or Class-IL (van de Ven & Tolias 2019)."""
    return SplitImages(cfg)
