"""EchoSpike's plain spiking MLP: LIF layers and nothing else (no aggregator, no predictor, no teacher).

Graf, Su & Indiveri 2024, "EchoSpike Predictive Plasticity: An Online Local Learning Rule for Spiking Neural
Networks" (arXiv 2405.13976; code: largraf/EchoSpike, ``model.py``): a stack of fully connected, bias-free LIF
layers (784 -> 200 -> 200 -> 200 on MNIST-sized input, T = 10 bins per sample, beta = 0.9, weights
U(-k, k) with k = 3 / sqrt(fan_in)) trained layer by layer by ESPP (rules/espp.py). Each view is one sample: it
is rate coded, S_t ~ Bernoulli(rate_scale x) per bin (the paper's rate-coded MNIST uses rate_scale 0.8), and
run through the layers for T bins; neuron states start at 0 for every sample. The neurons, the coding and the
input trace are the spiking column's (models/_spiking_lif.py): reset by subtraction, theta = 1::

    U_t = beta U_{t-1} + W x_t - theta S_{t-1},      S_t = H(U_t - theta)

Broadcast and echo. ``b`` = +1 when the sample continues the previous sample's episode (the stream shows the
same class: predictive), -1 after an episode start (a different class: contrastive), 0 for a stream's first
sample; the echo is the previous sample's spike counts, L1-normalised per layer. The stream decides which
successor comes (protocols/echospike_samples.py: EchoSpike's 1:1 alternation).

Trace (batch first, no graph): ``spikes``, ``mem`` [(B, T, N_l)], ``block_in``, ``in_trace`` [(B, T, J_l)],
``echo`` [(B, N_l)], ``broadcast`` (B,) (the keys ESPP reads, as models/spiking.py's; ``in_trace`` is computed
when a rule first reads a layer's), ``z`` = ``z_agg`` (B, D)
the last layer's spike counts, ``layers`` [(B, N_l)] firing rates (spikes per bin), ``loss`` the EchoSpike
objective of the sample, recorded only: the mean over layers and over streams with b != 0 of
``-b sum_t <S_t, e> / T`` (the reference's ``sample_loss`` per bin; lower = predictive overlap high and
contrastive overlap low); it carries no gradient.

Read-out (``embed``), as the paper reads its layers: a linear classifier per layer on the full spike-count
vector (every neuron's spikes in the sample, summed over the T bins), and one on the input's spike counts as
the baseline. ``readout`` [(N, V, F_k)] holds those vectors for ``readout_layers`` (0 = the input, l = LIF
layer l, 1-based as the paper's "layer 1..3"; default all), ``readout_names`` their names;
colsim.evaluate fits and scores the classifiers (``layer_readout_accuracy`` in summary.json).
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Annotated, Literal, Optional

import torch
from pydantic import Field, ValidationInfo, field_validator
from torch import Tensor

from colsim.column import AbstractColumn
from colsim.config import Strict
from colsim.models._spiking_lif import SpikingEncoder, echo, input_trace, raster_neurons, spike_stats
from colsim.models.spiking import SpikingEncoderConfig
from colsim.registry import register_model
from colsim.types import Trace, WorldSpec

__all__ = ["EchoSpikeConfig", "EchoSpikeColumn", "InputTraces", "echospike", "readout_names"]


class EchoSpikeConfig(Strict):
    name: Literal["echospike"] = "echospike"
    hidden: list[Annotated[int, Field(ge=1)]] = Field(default_factory=lambda: [200, 200, 200], min_length=1,
                                                      description="LIF layer widths")
    T: int = Field(10, gt=0, description="time bins per sample")
    beta: float = Field(0.9, gt=0, le=1, description="membrane decay (mean, when heterogeneous)")
    beta_spread: float = Field(0.0, ge=0, description="> 0: per-neuron beta ~ U[beta - spread, beta + spread]")
    weight_scale: float = Field(3.0, gt=0, description="init U(-k, k), k = weight_scale / sqrt(fan_in)")
    coding: Literal["rate", "latency"] = "rate"
    rate_scale: float = Field(0.8, gt=0, le=1, description="rate coding: S_t ~ Bernoulli(rate_scale x)")
    readout_layers: Optional[list[int]] = Field(None, description="read-outs: 0 = the input, l = LIF layer l; "
                                                                  "default all")
    eval_seed: int = Field(0, ge=0, description="rate-coding generator seed of ``embed``")

    @field_validator("readout_layers")
    @classmethod
    def _layers_exist(cls, v, info: ValidationInfo):
        hidden = info.data.get("hidden")
        if v is None or hidden is None:
            return v
        bad = [k for k in v if not 0 <= k <= len(hidden)]
        if bad:
            raise ValueError(f"layer {bad[0]} does not exist: 0 is the input and 1..{len(hidden)} the LIF layers")
        if len(set(v)) != len(v):
            raise ValueError(f"each layer at most once, got {v}")
        return v

    @field_validator("beta_spread")
    @classmethod
    def _spread(cls, v, info: ValidationInfo):
        beta = info.data.get("beta")
        if v and beta is not None and not (beta - v > 0 and beta + v <= 1):
            raise ValueError(f"beta +- beta_spread must stay in (0, 1] (beta={beta}); use beta_spread < "
                             f"{min(beta, 1 - beta):g}")
        return v

    # what models/_spiking_lif.SpikingEncoder reads
    @property
    def encoder(self) -> SpikingEncoderConfig:
        return SpikingEncoderConfig(kind="mlp", hidden=list(self.hidden), weight_scale=self.weight_scale)

    @property
    def readout(self) -> str:
        return "count"


def readout_names(layers: "list[int]") -> "list[str]":
    """Read-out layer indices -> names: 0 -> ``input``, l -> ``layer<l>``."""
    return ["input" if k == 0 else f"layer{k}" for k in layers]


class InputTraces(Sequence):
    """The Trace's ``in_trace`` [(B, T, J_l)]: each layer's input trace x~_t = beta x~_{t-1} + x_t, computed on first
    access (a rule reads it only for layers and ticks where some gate is open: with the paper's c, about half the
    ticks of a 1:1 stream need none)."""

    def __init__(self, inputs: "list[Tensor]", beta: float):
        self._x, self._beta = inputs, beta  # [(T, B, J_l)] input spikes
        self._cache: dict[int, Tensor] = {}

    def __len__(self) -> int:
        return len(self._x)

    def __getitem__(self, l):
        if isinstance(l, slice):
            return [self[i] for i in range(len(self))[l]]
        l = range(len(self))[l]  # negative indices, IndexError past the end
        if l not in self._cache:
            self._cache[l] = input_trace(self._x[l], self._beta).transpose(0, 1)  # (B, T, J_l)
        return self._cache[l]


class EchoSpikeColumn(AbstractColumn):
    """LIF layers trained by a local spiking rule; the module docstring lists the Trace and the read-out."""

    provides = frozenset({"z", "z_agg", "layers", "loss", "valid", "local", "spikes", "mem", "block_in", "in_trace",
                          "echo", "broadcast"})
    differentiable = False  # no autograd graph: global rules (backprop) are refused before step 0 (colsim.build)

    def __init__(self, cfg: EchoSpikeConfig, spec: WorldSpec):
        super().__init__()
        self.cfg, self.spec, self.T = cfg, spec, cfg.T
        self.encoder = SpikingEncoder(cfg, spec.obs_shape)
        self.block_shapes = [(h,) for h in cfg.hidden]
        self.dim = cfg.hidden[-1]
        self.readout_layers = list(range(len(cfg.hidden) + 1)) if cfg.readout_layers is None \
            else list(cfg.readout_layers)
        self._last_spikes: "list[Tensor]" = []

    def init_state(self, batch: int, device) -> dict:
        dt = self.encoder.blocks[0].synapse.weight.dtype
        return {"counts_prev": [torch.zeros(batch, h, device=device, dtype=dt) for h in self.cfg.hidden],  # [(B, N_l)]
                "has_prev": torch.zeros(batch, dtype=torch.bool, device=device),  # (B,)
                "seed": torch.randint(0, 2 ** 62, (), dtype=torch.long)}  # rate-coding generator seed (CPU)

    def forward(self, state: dict, obs: Tensor, action: Tensor, start: Tensor, local: bool = False,
                encoder_graph: bool = True):
        """obs (B, C, H, W), start (B,) -> (state, Trace). No autograd graph: the column has no differentiable
        objective (``differentiable = False``: rules needing end-to-end gradients are refused before step 0)."""
        return self._forward(state, obs, start, local)

    @torch.no_grad()
    def _forward(self, state: dict, obs: Tensor, start: Tensor, local: bool):
        gen = torch.Generator(device=obs.device).manual_seed(int(state["seed"]))
        spikes_in = self.encoder.code(obs, gen)  # (T, B, C, H, W)
        recs = self.encoder.run(spikes_in)  # [(x (T, B, J_l), S, U (T, B, N_l))]
        spikes = [s.detach() for _, s, _ in recs]
        counts = [s.sum(0) for s in spikes]  # [(B, N_l)] spike counts of this sample
        e = echo(state["counts_prev"])  # [(B, N_l)]
        has_prev = state["has_prev"]
        b = torch.where(has_prev, torch.where(start, -1.0, 1.0), 0.0).to(obs.dtype)  # (B,) broadcast
        self._last_spikes = spikes  # diagnostics() summarises them when a metrics row is recorded
        active = b != 0
        per_layer = [-(b * torch.einsum("tbn,bn->b", s, el)) / self.T for s, el in zip(spikes, e)]  # [(B,)]
        loss = torch.stack(per_layer).mean(0)[active].mean() if bool(active.any()) else obs.new_zeros(())
        z = counts[-1]  # (B, D) last layer's counts
        beta = self.cfg.beta
        trace = Trace(z=z, z_agg=z, layers=[s.mean(0) for s in spikes], loss=loss,
                      valid=torch.ones_like(has_prev), local=torch.tensor(local),
                      spikes=[s.transpose(0, 1) for s in spikes], mem=[u.transpose(0, 1) for _, _, u in recs],
                      block_in=[x.transpose(0, 1) for x, _, _ in recs],
                      in_trace=InputTraces([x for x, _, _ in recs], beta), echo=e,
                      broadcast=b)
        new_state = {"counts_prev": counts, "has_prev": torch.ones_like(has_prev), "seed": state["seed"] + 1}
        return new_state, trace

    def diagnostics(self) -> dict[str, float]:
        """Per layer l (0-based): ``spiking.l{l}.rate``, ``.silent``, ``.saturated`` of the last training forward."""
        return spike_stats(self._last_spikes)

    def raster_neurons(self, k: int = 128) -> "list[Tensor]":
        return raster_neurons(self.block_shapes, k)

    @torch.no_grad()
    def embed(self, obs: Tensor, actions: Tensor) -> dict[str, Tensor]:
        """obs (N, V, C, H, W) -> ``z`` (N, V, D) last layer's spike counts, ``z_agg`` (N, D) their mean over
        views, ``layers`` [(N, V, N_l)] rates, ``spike_count`` [(N, V, N_l)], ``raster`` [(V, T, K_l)] of the
        first episode (``raster_neuron`` [(K_l,)]), ``readout`` [(N, V, F_k)] the spike-count vectors of
        ``readout_layers`` (input first) and ``readout_names``. Rate coding draws from ``eval_seed``."""
        N, V = obs.shape[:2]
        gen = torch.Generator(device=obs.device).manual_seed(self.cfg.eval_seed)
        spikes_in = self.encoder.code(obs.reshape(N * V, *obs.shape[2:]), gen)  # (T, N*V, C, H, W)
        recs = self.encoder.run(spikes_in)
        counts = [s.sum(0).view(N, V, -1) for _, s, _ in recs]  # [(N, V, N_l)]
        feats = [spikes_in.sum(0).reshape(N, V, -1)] + counts  # input first
        out = {"z": counts[-1], "z_agg": counts[-1].mean(1), "layers": [c / self.T for c in counts],
               "spike_count": counts, "raster": [], "raster_neuron": [],
               "readout": [feats[k] for k in self.readout_layers], "readout_names": readout_names(self.readout_layers)}
        for (_, s, _), idx in zip(recs, self.raster_neurons()):  # as models/spiking.py's embed
            s0 = s.view(self.T, N, V, -1)[:, 0]  # (T, V, N_l) the first episode
            out["raster"].append(s0[:, :, idx.to(s.device)].permute(1, 0, 2))  # (V, T, K_l)
            out["raster_neuron"].append(idx)
        return out


@register_model("echospike", EchoSpikeConfig)
def echospike(cfg: EchoSpikeConfig, spec: WorldSpec) -> EchoSpikeColumn:
    """EchoSpike's spiking MLP (Graf et al. 2024): LIF layers only, a linear read-out per layer."""
    return EchoSpikeColumn(cfg, spec)
