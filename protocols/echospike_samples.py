"""echospike_samples — EchoSpike's sample stream: same-class (predictive) and different-class (contrastive)
successors in a fixed ratio, 1:1 alternating by default (Graf, Su & Indiveri 2024, "EchoSpike Predictive
Plasticity", arXiv 2405.13976; largraf/EchoSpike, ``utils.train`` and ``data.classwise_loader``).

Each of the B streams shows one labelled image per tick, at its native size, with no affine transform. Tick 0
draws every stream's class uniformly over the phase's classes. At tick k >= 1 one successor kind holds for the
whole batch, as in the reference (its broadcast factor is one number per batch):

* contrastive at tick k iff ``floor(k r) > floor((k - 1) r)`` with r = ``contrastive_ratio``: each stream moves
  to a class drawn uniformly among the phase's *other* classes (the reference's ``next_item(contrastive=True)``);
* predictive otherwise: each stream keeps its class.

so r = 0.5 (the default) gives the reference's order predictive, contrastive, predictive, ... (its first
successor, after the b = 0 sample, is predictive), r = 1 only contrastive successors, r = 0 only predictive
ones; over any K ticks the count of contrastive ones is within 1 of K r. The image is drawn uniformly among the
train pool's images of the class (the reference walks a shuffled list of each class's images instead; a
same-class successor repeats the very image with probability 1 / (images of the class)).

How the column learns which successor came: a contrastive successor starts an episode (``start`` True) and a
predictive one continues it (False), which the spiking columns turn into the broadcast b = -1 / +1
(models/echospike.py, models/spiking.py). The episodes are therefore runs of one class, set by
``contrastive_ratio``; the protocol's ``episode_length`` is not used.

Data, pools and probe sets: protocols/_samples.py (sklearn digits or Fashion-MNIST IDX files, stratified pools,
balanced probe sets of single images). Labels: ``class``, ``target`` (= class) and ``image``.
"""
from __future__ import annotations

import math
from typing import Any, ClassVar, Literal, Optional

import torch
from pydantic import Field
from torch import Tensor

from colsim.config import ConfigError
from colsim.protocols._pools import class_picker
from colsim.protocols._samples import SampleConfig, SampleWorld
from colsim.registry import register_world
from colsim.stream import Stream, generator_from_state, rng_state
from colsim.types import Step

__all__ = ["EchoSpikeSamplesConfig", "EchoSpikeSamples", "echospike_samples", "contrastive_at"]


class EchoSpikeSamplesConfig(SampleConfig):
    """EchoSpike's stream over digits or Fashion-MNIST (module docstring)."""

    LABELS: ClassVar[tuple[str, ...]] = ("class", "target", "image")
    ACTION_ENCODING: ClassVar[str] = "none: labelled images, one view each (a constant-zero action)"

    name: Literal["echospike_samples"] = "echospike_samples"
    contrastive_ratio: float = Field(0.5, ge=0, le=1, description="share of successors from a different class "
                                                                  "(EchoSpike: 0.5, alternating 1:1)")


def contrastive_at(k: int, ratio: float) -> bool:
    """Whether tick k >= 1 brings a contrastive successor: ``floor(k r) > floor((k - 1) r)`` (module docstring)."""
    return math.floor(k * ratio + 1e-9) > math.floor((k - 1) * ratio + 1e-9)


class EchoSpikeSamples(SampleWorld):
    """Labelled images in EchoSpike's predictive / contrastive succession (module docstring)."""

    fixed = SampleWorld.fixed + ("contrastive_ratio",)

    def __init__(self, cfg: EchoSpikeSamplesConfig):
        self.num_classes, self.num_tasks, self.num_targets = 10, 1, 10
        super().__init__(cfg)

    def _tasks(self, cfg, classes: Tensor, u: Tensor) -> Tensor:
        return torch.zeros_like(classes)

    def _target(self, classes: Tensor, tasks: Tensor) -> Tensor:
        return classes

    def _show(self, x: Tensor, tasks: Tensor) -> Tensor:
        return x

    def stream(self, batch: int, episode_length: int, classes: Optional[list[int]] = None,
               overrides: Optional[dict[str, Any]] = None) -> Stream:
        """B streams, one image each per tick, in the successor order of ``contrastive_ratio``."""
        cfg, cls = self._stream_phase(batch, classes, overrides)
        r = cfg.contrastive_ratio
        if r > 0 and len(cls) < 2:
            raise ConfigError(f"protocol.world.contrastive_ratio: {r} asks for different-class successors, and the "
                              f"phase has the one class {cls}; give it two classes or set 0")
        rows = self.rows["train"]
        pick = class_picker(self.labels[rows], cls)  # u (B, 2) -> train-pool indices (B,)
        B, K = batch, len(cls)

        def init(generator: torch.Generator) -> dict[str, Tensor]:
            return {"rng": rng_state(generator), "tick": torch.zeros((), dtype=torch.long),
                    "k": torch.zeros(B, dtype=torch.long)}  # (B,) each stream's class, as an index into cls

        def step(state: dict[str, Tensor]) -> "tuple[dict[str, Tensor], Step]":
            g = generator_from_state(state["rng"].cpu())
            t = int(state["tick"])
            u = torch.rand(B, 2, generator=g)  # (B, 2): class, item
            if t == 0:
                k, start = (u[:, 0] * K).long().clamp_(max=K - 1), torch.ones(B, dtype=torch.bool)
            elif contrastive_at(t, r):  # a different class, uniform over the K - 1 others
                k = (state["k"] + 1 + (u[:, 0] * (K - 1)).long().clamp_(max=K - 2)) % K
                start = torch.ones(B, dtype=torch.bool)
            else:
                k, start = state["k"], torch.zeros(B, dtype=torch.bool)
            obs, labels = self._sample(rows[pick(u, k=k)], cfg, u[:, 0])
            new = {"rng": rng_state(g), "tick": state["tick"] + 1, "k": k}
            return new, Step(obs=obs, action=torch.zeros(B, 1), start=start, labels=labels)

        return Stream(init=init, step=step)


@register_world("echospike_samples", EchoSpikeSamplesConfig)
def echospike_samples(cfg: EchoSpikeSamplesConfig) -> EchoSpikeSamples:
    """EchoSpike's stream: same-class and different-class successors, 1:1 by default (Graf et al. 2024)."""
    return EchoSpikeSamples(cfg)
