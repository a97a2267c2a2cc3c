"""permuted_images — permuted digits / Fashion-MNIST: every task shows all classes under its own fixed pixel
permutation (van de Ven & Tolias 2019, "Three scenarios for continual learning", arXiv 1904.07734, permuted MNIST;
after Goodfellow et al. 2013 and Kirkpatrick et al. 2017).

Task k's permutation pi_k of the H x W pixels is fixed by (``permutation_seed``, k); with ``identity_first``
(default) pi_0 is the identity: the first task is the unpermuted data, as in van de Ven & Tolias's code at its
default seed 0 (GMvandeVen/continual-learning, main.py: ``exception=True if args.seed==0``; other seeds permute every
task, ``identity_first: false`` here). The paper has 10 permutations; the packaged protocols 5.
A phase picks its task with the world override ``task: k`` (``phases[k].world``); ``task`` unset mixes every
task, sample by sample; ``joint: true`` (protocols/_samples.py) does so in every phase's training stream while
each phase keeps its own task's probe set (the joint-training upper bound). The paper's permuted MNIST is Domain-IL (``scenario: domain``: no task id,
one 10-way head); ``task`` gives the task id and one 10-way head per task; ``class`` asks for
``task * 10 + class`` (one head of 10 x permutations outputs).

Data, pools, stream and probe sets: protocols/_samples.py (i.i.d. images, native size, held-out test pool).
"""
from __future__ import annotations

import functools
from typing import Literal, Optional

import torch
from pydantic import Field, model_validator
from torch import Tensor

from colsim.protocols._samples import SampleConfig, SampleWorld
from colsim.registry import register_world

__all__ = ["PermutedImagesConfig", "PermutedImages", "permuted_images", "permutations"]


class PermutedImagesConfig(SampleConfig):
    """Permuted world config; ``task`` is the per-phase override that picks the permutation."""

    name: Literal["permuted_images"] = "permuted_images"
    scenario: Literal["task", "domain", "class"] = "domain"
    permutations: int = Field(5, ge=1, description="number of tasks, each a fixed pixel permutation")
    permutation_seed: int = Field(0, ge=0)
    identity_first: bool = Field(True, description="task 0 shows the images unpermuted (van de Ven & Tolias's seed 0)")
    task: Optional[int] = Field(None, ge=0, description="per phase: the task (permutation) shown; unset: all, mixed")

    @model_validator(mode="after")
    def _task_in_range(self) -> "PermutedImagesConfig":
        if self.task is not None and self.task >= self.permutations:
            raise ValueError(f"task {self.task} is not one of the {self.permutations} permutations 0..{self.permutations - 1}")
        return self


@functools.lru_cache(maxsize=8)
def permutations(n_pixels: int, count: int, seed: int, identity_first: bool) -> Tensor:
    """(count, n_pixels) long: row k is task k's fixed pixel permutation (row 0 the identity with identity_first)."""
    g = torch.Generator().manual_seed(seed)
    rows = [torch.randperm(n_pixels, generator=g) for _ in range(count)]
    if identity_first:
        rows[0] = torch.arange(n_pixels)
    return torch.stack(rows)


class PermutedImages(SampleWorld):
    """Permuted digits / Fashion-MNIST, Domain-IL by default (module docstring)."""

    fixed = SampleWorld.fixed + ("permutations", "permutation_seed", "identity_first")

    def __init__(self, cfg: PermutedImagesConfig):
        self.num_classes = 10
        self.num_tasks = cfg.permutations
        self.num_targets = 10 * cfg.permutations if cfg.scenario == "class" else 10
        super().__init__(cfg)
        H, W = self.images.shape[-2:]
        self.perm = permutations(H * W, cfg.permutations, cfg.permutation_seed, cfg.identity_first)  # (T, H*W)

    def _tasks(self, cfg, classes: Tensor, u: Tensor) -> Tensor:
        if cfg.task is not None:
            return torch.full_like(classes, cfg.task)
        return (u * self.num_tasks).long().clamp_(max=self.num_tasks - 1)  # joint: a task per sample

    def _joint(self, cfg: PermutedImagesConfig) -> PermutedImagesConfig:
        return cfg.model_copy(update={"task": None})  # every permutation, sample by sample

    def _target(self, classes: Tensor, tasks: Tensor) -> Tensor:
        return tasks * 10 + classes if self.cfg.scenario == "class" else classes

    def _show(self, x: Tensor, tasks: Tensor) -> Tensor:
        flat = x.flatten(1)  # (n, H*W): one channel
        return torch.gather(flat, 1, self.perm[tasks]).view_as(x)  # pixel i of the view = pixel pi_k(i) of the image


@register_world("permuted_images", PermutedImagesConfig)
def permuted_images(cfg: PermutedImagesConfig) -> PermutedImages:
    """Permuted digits / Fashion-MNIST (a fixed pixel permutation per task), Domain-IL (van de Ven & Tolias 2019)."""
    return PermutedImages(cfg)
