"""A supervised column: an encoder (MLP or small CNN) and linear read-out heads trained by cross-entropy on the
labels the world provides — the positive control of van de Ven & Tolias (2019, "Three scenarios for continual
learning", arXiv 1904.07734), whose split / permuted MNIST learners are exactly this.

Network (x (B, C, H, W) -> features z (B, D) -> logits (B, H, K))::

    z = f(x)                          f: build_encoder's MLP (Flatten, [Linear, ReLU]...) or CNN ([Conv3x3, ReLU,
                                      MaxPool2]..., global average pool) (models/encoders.py); no normalisation
                                      with running statistics, so evaluation depends on the weights alone
    logits_h = W_h z + b_h            H heads of K outputs, one nn.Linear(D, H*K)

Heads (``heads``): ``auto`` = one per task when the world gives task ids (Task-IL: ``WorldSpec.num_tasks`` > 0;
the head of a sample is picked by its ``labels["task"]``), else one (Domain-IL, Class-IL). K = the world's
``num_targets`` (the answer ``labels["target"]``), else its ``num_classes`` (``labels["class"]``): a classifier runs
on any world. A number of heads is checked against the world before step 0.

Objective: ``loss = CE(logits_head(x), target)``, the batch mean, over the head's *active* outputs
(``active_outputs``): ``seen`` (default) = the outputs of the targets met in training so far, as van de Ven & Tolias's
code does (GMvandeVen/continual-learning, train.py ``active_classes``: in Class-IL the classes of the tasks so far;
Task-IL and Domain-IL meet every output of a head in its first task, so nothing changes there); ``all`` = every
output from the start. The seen set is a buffer (``seen`` (K,) bool, in checkpoints) that training-mode forwards
with labels fill; evaluation scores the active outputs only (all of them before any training) (the simulator passes the tick's world labels,
``reads_labels``). Every sample is its own episode: ``valid`` is all True and there is no context window.

Trace (``provides``): ``z`` and ``z_agg`` (B, D) = the features, ``logits`` (B, K) of the selected head (without
labels, as in a forward outside a run, (B, H, K) of every head and a NaN loss),
``loss``, ``valid``, ``inputs`` (``obs``, ``target``, ``task``: what replay stores and EWC re-runs through
``forward_inputs``), ``local`` (always False; not in ``provides``, so layer-local rules are refused, as are the
seq-JEPA rules' ``layers``, ``z_hat``, ``spikes`` ...). Rules that run on it unchanged: backprop, frozen, and the
modifiers si, ewc, replay, metaplastic.

Evaluation (``embed``): ``z`` (N, V, D) per view, ``z_agg`` (N, D) their mean, ``logits`` (N, H, K) the per-view
logits' mean — colsim.evaluate scores the column's own heads (``head_acc``) beside the linear probes on z.
"""
from __future__ import annotations

from typing import Literal, Optional, Union

import torch
import torch.nn.functional as F
from pydantic import Field, field_validator
from torch import Tensor, nn

from colsim.column import AbstractColumn
from colsim.config import ConfigError, Strict
from colsim.models.encoders import build_encoder
from colsim.models.seq_jepa_parts import EncoderConfig
from colsim.registry import register_model
from colsim.types import Trace, WorldSpec

__all__ = ["ClassifierConfig", "ClassifierColumn", "classifier"]


class ClassifierConfig(Strict):
    name: Literal["classifier"] = "classifier"
    encoder: EncoderConfig = Field(default_factory=lambda: EncoderConfig(kind="mlp", hidden=[400, 400]))
    heads: Union[Literal["auto"], int] = Field("auto", description="auto: one per task with task ids, else one")
    active_outputs: Literal["seen", "all"] = Field("seen", description="seen: only the targets met in training so far "
                                                                       "(van de Ven & Tolias's code); all: every output")
    autocast: Optional[Literal["bf16", "fp16", "none"]] = None  # mixed precision (colsim.device); unset: per device
    channels_last: Optional[bool] = None  # NHWC for the cnn encoder (colsim.device); unset: per device

    @field_validator("heads")
    @classmethod
    def _heads(cls, v):
        if v != "auto" and v < 1:
            raise ValueError(f"must be auto or a number of heads >= 1, got {v}")
        return v

    def device_defaults(self, device: str) -> dict:
        """The values of the device-dependent fields when left unset (filled by colsim.device)."""
        cuda = str(device).startswith("cuda")
        return {"autocast": "bf16" if cuda else "none", "channels_last": cuda and self.encoder.kind == "cnn"}


def _num_heads(heads: "str | int", spec: WorldSpec) -> int:
    """The heads for ``heads`` on a world; ConfigError (naming model.heads) when they cannot be told apart."""
    tasks = spec.num_tasks
    if heads == "auto":
        return tasks if tasks > 0 else 1
    if heads > 1 and tasks == 0:
        raise ConfigError(f"model.heads: {heads} heads (one per task, Task-IL) need task ids from the world, and this "
                          f"world gives none (scenario domain / class, or a world without tasks); use a *_task "
                          f"protocol (protocol.world.scenario: task) or model.heads: auto")
    if tasks > 0 and heads != tasks:
        raise ConfigError(f"model.heads: {heads} head(s) for a world of {tasks} tasks with task ids; Task-IL reads "
                          f"one head per task: set model.heads: {tasks} (or auto)")
    return heads


class ClassifierColumn(AbstractColumn):
    """Encoder + linear heads trained by cross-entropy (module docstring)."""

    reads_labels = True
    provides = frozenset({"z", "z_agg", "logits", "loss", "valid", "inputs"})

    def __init__(self, cfg: ClassifierConfig, spec: WorldSpec):
        super().__init__()
        self.cfg, self.spec = cfg, spec
        e = cfg.encoder
        if e.output_norm == "batch":
            raise ConfigError("model.encoder.output_norm: batch keeps running statistics that drift with each task's "
                              "data and that no rule consolidates; use none or layer")
        self.encoder = build_encoder(e.kind, spec.obs_shape, e.channels, e.hidden, e.cifar_stem, e.output_norm)
        if e.kind == "resnet18":
            raise ConfigError("model.encoder.kind: the classifier takes mlp or cnn (resnet18 has BatchNorm statistics)")
        self.num_heads = _num_heads(cfg.heads, spec)
        self.num_outputs = spec.num_targets or spec.num_classes
        self.head = nn.Linear(self.encoder.width, self.num_heads * self.num_outputs)  # H heads of K, side by side
        self.register_buffer("seen", torch.zeros(self.num_outputs, dtype=torch.bool))  # targets met in training
        if cfg.channels_last:
            self.encoder.to(memory_format=torch.channels_last)
            self.encoder.channels_last = True

    def init_state(self, batch: int, device) -> dict:
        return {}  # no context window: every sample is its own episode

    def _logits(self, z: Tensor, active: Optional[Tensor] = None) -> Tensor:
        """Features (..., D) -> every head's logits (..., H, K), outputs outside ``active`` (K,) bool (default: the
        seen ones) at -inf with ``active_outputs: seen``; none masked while nothing is active."""
        logits = self.head(z).view(*z.shape[:-1], self.num_heads, self.num_outputs)  # (..., H, K)
        active = self.seen if active is None else active
        if self.cfg.active_outputs == "seen" and bool(active.any()) and not bool(active.all()):
            logits = logits.masked_fill(~active, float("-inf"))
        return logits

    def _select(self, logits: Tensor, task: Optional[Tensor]) -> Tensor:
        """Every sample's head: logits (B, H, K), task (B,) -> (B, K)."""
        if self.num_heads == 1:
            return logits[:, 0]
        if task is None:  # no labels (a forward outside a run's tick): every head, and no objective
            return logits
        return logits[torch.arange(logits.shape[0], device=logits.device), task.long()]

    def _trace(self, obs: Tensor, target: Optional[Tensor], task: Optional[Tensor]) -> Trace:
        z, _ = self.encoder(obs)  # (B, D)
        active = self.seen.clone()
        if target is not None:
            active[target.long()] = True  # this batch's targets are active in its own loss
            if self.training:
                self.seen.copy_(active)  # the outputs met in training so far
        logits = self._select(self._logits(z, active), task)  # (B, K)
        loss = F.cross_entropy(logits.float(), target.long()) if target is not None and logits.dim() == 2 \
            else logits.new_tensor(float("nan"))
        B = obs.shape[0]
        inputs = {"obs": obs}
        if target is not None:
            inputs["target"] = target
        if task is not None:
            inputs["task"] = task
        return Trace(z=z, z_agg=z, logits=logits, loss=loss, valid=torch.ones(B, dtype=torch.bool, device=obs.device),
                     local=torch.tensor(False), inputs=inputs)

    def forward(self, state: dict, obs: Tensor, action: Tensor, start: Tensor, local: bool = False,
                encoder_graph: bool = True, labels: Optional[dict] = None) -> "tuple[dict, Trace]":
        """obs (B, C, H, W) -> (state, Trace); ``labels`` the tick's world labels (without them the loss is NaN)."""
        labels = labels or {}
        target = labels.get("target", labels.get("class"))
        task = labels.get("task") if self.num_heads > 1 else None
        return state, self._trace(obs, target, task)

    def forward_inputs(self, inputs: dict, local: bool = False) -> Trace:
        """Re-run stored ``trace["inputs"]`` (replay, EWC's per-sample Fisher) with the current weights."""
        return self._trace(inputs["obs"], inputs.get("target"), inputs.get("task"))

    @torch.no_grad()
    def embed(self, obs: Tensor, actions: Tensor) -> dict[str, Tensor]:
        """obs (N, V, C, H, W) -> ``z`` (N, V, D), ``z_agg`` (N, D) the views' mean, ``logits`` (N, H, K) their mean."""
        N, V = obs.shape[:2]
        z, _ = self.encoder(obs.reshape(N * V, *obs.shape[2:]))
        z = z.view(N, V, -1)
        return {"z": z, "z_agg": z.mean(1), "logits": self._logits(z).mean(1)}


@register_model("classifier", ClassifierConfig)
def classifier(cfg: ClassifierConfig, spec: WorldSpec) -> ClassifierColumn:
    """Supervised column: MLP / CNN encoder and linear heads (one per task in Task-IL) trained by cross-entropy."""
    return ClassifierColumn(cfg, spec)
