"""Spiking seq-JEPA column: LIF blocks (snnTorch) that see each view for T time bins.

Neurons. Every encoder block is a bias-free synapse (``cnn``: Conv3x3, stride 2, padding 1;
``mlp``: Linear) followed by a layer of leaky integrate-and-fire neurons,
``snntorch.Leaky`` (Eshraghian et al. 2023, "Training spiking neural networks using lessons
from deep learning", Proc. IEEE 111:1016) with reset by subtraction and threshold theta = 1::

    U_t = beta U_{t-1} + W x_t - theta S_{t-1},      S_t = H(U_t - theta)         (docs/reference/rules.md, ESPP)

beta in (0, 1]; with ``beta_spread > 0`` each neuron draws its own beta from
U[beta - spread, beta + spread] (heterogeneous time constants; one beta per output channel in a
conv block, whose neurons at every position share their weights). The layout follows
EchoSpike (Graf, Su & Indiveri 2024, "EchoSpike Predictive Plasticity: An Online Local Learning
Rule for Spiking Neural Networks", arXiv 2405.13976): no biases, weights drawn from U(-k, k) with
k = weight_scale / sqrt(fan_in) (their factor 3: smaller weights leave layers silent, and a
silent layer cannot learn). Strided convolutions instead of pooling keep each neuron's drive
linear in its input, so a local rule's update is exact (rules/espp.py).

Time. One simulator tick is one view. The view x in [0, 1] (B, C, H, W) becomes T bins of input
spikes (T, B, C, H, W): ``coding: rate`` draws S_t,j ~ Bernoulli(x_j) independently per bin;
``coding: latency`` fires each pixel once at bin round((1 - x_j)(T - 1)) (bright pixels first;
x_j = 0 never fires). A block computes its input currents for all T bins in one synapse call
(bins folded into the batch) and then runs the LIF recurrence: one vectorised update per bin.
Neuron states start at 0 for every view. Rate coding draws from an explicit generator: its
seed is part of the column state (advanced once per tick, drawn from the global RNG at
``init_state``, which the run seeds); ``embed`` uses ``eval_seed``, so probe embeddings do not
depend on when they are computed.

The coding, the LIF blocks and the encoder live in models/_spiking_lif.py; this file holds the
column.

Read-out. ``layers`` [(B, C_l)] are each block's firing rates (spikes per bin) averaged over
positions; ``z`` (B, D) is the last block's spike count per view (``readout: count``) or rate
(``rate``), averaged over positions (D = the last block's channels / units).

seq-JEPA on top (Ghaemi et al. 2025, arXiv 2505.03176; models/seq_jepa.py): the window of the
last M views of an episode, tokens concat(z_i, e(a_i)) with the last token's action zeroed,
z_AGG from the aggregator, z_hat = h(z_AGG, e(a_{t-1})), loss ``1 - cos(z_hat, sg(z~_t))`` with
z~ from an EMA teacher (a copy of the spiking encoder fed the same input spikes) or sg(z_t).
The action embedding, aggregator and predictor are models/seq_jepa_parts.py's. Global rules
(backprop: surrogate-gradient BPTT over the T bins through snnTorch's arctan surrogate)
re-encode the context views with a graph; ``local=True`` uses the cached embeddings of the
window (each view's z as computed when it was the current view) and feeds every block a
detached input.

Trace, besides the seq-JEPA keys (colsim/types.py): per block l, no graph, batch first like every
per-stream key (so replay can concatenate live and replayed streams),
``spikes`` [(B, T, *shape_l)], ``mem`` [(B, T, *shape_l)] (U after each bin's update),
``block_in`` [(B, T, *in_l)] its input spikes, ``in_trace`` [(B, T, *in_l)] the input trace
``x~_t = beta x~_{t-1} + x_t`` (beta = the configured mean beta), ``echo`` [(B, N_l)] the
previous view's spike counts L1-normalised over the layer's N_l neurons (0 where the layer was
silent), and ``broadcast`` (B,) = +1 when the previous view belongs to the same episode, -1 across
an episode boundary (``start``), 0 when the stream has no previous view yet (first tick of a
phase). ``diagnostics()``: per block the firing rate, and the fractions of silent (no spike in
the view) and saturated (a spike in every bin) neurons of the last forward.
"""
from __future__ import annotations

from typing import Literal, Optional

import torch
import torch.nn.functional as F
from pydantic import Field, model_validator
from torch import Tensor, nn

from colsim.column import AbstractColumn
from colsim.config import Strict
from colsim.models._spiking_lif import (
    THETA, LIFBlock, SpikingEncoder, echo as echo_of, input_trace, latency_code, raster_neurons, rate_code, spike_stats,
)
from colsim.models.seq_jepa import SeqJepaColumn
from colsim.models.seq_jepa_parts import (
    ActionEmbed, AggregatorConfig, PredictorConfig, TeacherConfig, build_aggregator, build_predictor, ema_momentum,
    ema_teacher, ema_update,
)
from colsim.registry import register_model
from colsim.types import Trace, WorldSpec

__all__ = ["SpikingEncoderConfig", "SpikingConfig", "SpikingEncoder", "LIFBlock", "SpikingColumn", "spiking",
           "rate_code", "latency_code", "input_trace", "THETA"]


class SpikingEncoderConfig(Strict):
    kind: Literal["cnn", "mlp"] = "cnn"
    channels: list[int] = Field(default_factory=lambda: [16, 32, 64], min_length=1)  # cnn
    hidden: list[int] = Field(default_factory=lambda: [256, 128], min_length=1)  # mlp
    weight_scale: float = Field(3.0, gt=0)  # init U(-k, k), k = weight_scale / sqrt(fan_in)


class SpikingConfig(Strict):
    name: Literal["spiking"] = "spiking"
    encoder: SpikingEncoderConfig = Field(default_factory=SpikingEncoderConfig)
    T: int = Field(10, gt=0)  # time bins per view
    beta: float = Field(0.9, gt=0, le=1)  # membrane decay (mean, when heterogeneous)
    beta_spread: float = Field(0.0, ge=0)  # > 0: per-neuron beta ~ U[beta - spread, beta + spread]
    coding: Literal["rate", "latency"] = "rate"
    readout: Literal["rate", "count"] = "rate"  # z: last block's spikes per bin or per view
    action_embed: int = Field(32, ge=1)
    # e(a)'s normalisation: layer (LayerNorm, no buffers; default) or batch (seq-JEPA's BatchNorm, whose running
    # statistics follow each phase's actions and confound forgetting: docs/results/forgetting.md
    action_norm: Literal["layer", "batch"] = "layer"
    aggregator: AggregatorConfig = Field(default_factory=AggregatorConfig)
    predictor: PredictorConfig = Field(default_factory=lambda: PredictorConfig(hidden=256))
    teacher: TeacherConfig = Field(default_factory=TeacherConfig)
    window: int = Field(3, ge=1)
    action_conditioning: bool = True
    eval_seed: int = Field(0, ge=0)  # rate-coding generator seed of ``embed``

    @model_validator(mode="after")
    def _check(self):
        if self.beta_spread and not (self.beta - self.beta_spread > 0 and self.beta + self.beta_spread <= 1):
            raise ValueError(f"beta_spread={self.beta_spread}: beta +- beta_spread must stay in (0, 1] "
                             f"(beta={self.beta}); use beta_spread < {min(self.beta, 1 - self.beta):g}")
        if self.teacher.kind == "symmetric":
            raise ValueError("teacher.kind: the spiking column supports ema and stopgrad, not symmetric")
        e = self.encoder
        D = e.channels[-1] if e.kind == "cnn" else e.hidden[-1]
        W = D + (self.action_embed if self.action_conditioning else 0)
        if W % self.aggregator.heads:
            raise ValueError(f"aggregator.heads={self.aggregator.heads} does not divide the aggregator width {W} "
                             f"(encoder width {D} + action_embed {W - D})")
        return self


# --------------------------------------------------------------------------- column

class SpikingColumn(AbstractColumn):
    provides = frozenset({"z", "z_agg", "z_hat", "z_target", "valid", "loss_pred", "layers", "layers_prev", "local",
                          "loss", "loss_jepa", "loss_reg", "reg", "inputs", "spikes", "mem", "block_in", "in_trace",
                          "echo", "broadcast"})

    def __init__(self, cfg: SpikingConfig, spec: WorldSpec):
        super().__init__()
        self.cfg, self.spec = cfg, spec
        self.encoder = SpikingEncoder(cfg, spec.obs_shape)
        D = self.encoder.width
        E = cfg.action_embed if cfg.action_conditioning else 0
        self.dim, self.window, self.T = D, cfg.window, cfg.T
        self.action_embed = ActionEmbed(spec.action_dim, E, cfg.action_norm) if cfg.action_conditioning else None
        self.aggregator = build_aggregator(cfg.aggregator, D + E, cfg.window)
        self.predictor = build_predictor(cfg.predictor, D + E, E, D)
        if cfg.teacher.kind == "ema":
            self.target_encoder, self._ema = ema_teacher(self.encoder)
        else:
            self.target_encoder = None
        with torch.no_grad():  # neurons per block (flattened) and pooled widths, from a dry run
            recs = self.encoder.run(torch.zeros(1, 1, *spec.obs_shape))
        self.block_shapes = [tuple(s.shape[2:]) for _, s, _ in recs]
        self._stats: dict[str, float] = {}

    # ------------------------------------------------------------------ state
    def init_state(self, batch: int, device) -> dict:
        C, H, W = self.spec.obs_shape
        M = self.window
        f = {"device": device, "dtype": self.encoder.blocks[0].synapse.weight.dtype}  # the column's float type
        return {
            "obs": torch.zeros(batch, M, C, H, W, **f),  # (B, M, C, H, W)
            "act": torch.zeros(batch, M, self.spec.action_dim, **f),  # (B, M, A)
            "count": torch.zeros(batch, dtype=torch.long, device=device),  # (B,) views in the window
            "z_cache": torch.zeros(batch, M, self.dim, **f),  # (B, M, D) window embeddings
            "l_cache": [torch.zeros(batch, M, s[0], **f) for s in self.block_shapes],  # [(B, M, C_l)]
            "counts_prev": [torch.zeros(batch, _numel(s), **f) for s in self.block_shapes],  # [(B, N_l)]
            "has_prev": torch.zeros(batch, dtype=torch.bool, device=device),  # (B,)
            "seed": torch.randint(0, 2 ** 62, (), dtype=torch.long),  # rate-coding generator seed (CPU)
        }

    def _gen(self, seed: int, device) -> torch.Generator:
        return torch.Generator(device=device).manual_seed(int(seed))

    def _emb(self, act: Tensor, count: Tensor) -> Optional[Tensor]:
        """act (B, M, A), count (B,) -> e(a) (B, M, E) (empty slots 0) or None."""
        if self.action_embed is None:
            return None
        B, M, _ = act.shape
        valid = torch.arange(M, device=act.device).unsqueeze(0) < count.unsqueeze(1)  # (B, M)
        return self.action_embed(act.reshape(B * M, -1), valid.reshape(-1)).view(B, M, -1)

    def _encode_ctx(self, obs_ctx: Tensor, count: Tensor, gen: torch.Generator) -> Tensor:
        """Re-encode the valid window slots with a graph: (B, M, C, H, W) -> z (B, M, D)."""
        B, M = obs_ctx.shape[:2]
        valid = torch.arange(M, device=obs_ctx.device).unsqueeze(0) < count.unsqueeze(1)  # (B, M)
        flat = obs_ctx[valid]  # (K, C, H, W)
        if not flat.shape[0]:
            return obs_ctx.new_zeros(B, M, self.dim)
        z, _ = self.encoder(flat, gen=gen)
        return z.new_zeros(B, M, self.dim).index_put((valid,), z)

    # ------------------------------------------------------------------ forward
    def forward(self, state: dict, obs: Tensor, action: Tensor, start: Tensor, local: bool = False,
                encoder_graph: bool = True):
        """obs (B, C, H, W), action (B, A), start (B,) -> (state, Trace); see the module docstring.
        ``local`` with ``encoder_graph=False`` (ESPP): the current view's T-bin encoder pass builds no
        autograd graph (nothing reads the block-local graphs; the Trace's values are the same).

        Batch 1 (protocols/online.yaml): as SeqJepaColumn, an action embedding with ``action_norm: batch`` runs
        on its running statistics (one stream has no batch statistics; a lone action would embed to 0)."""
        emb = self.action_embed
        if self.training and obs.shape[0] == 1 and emb is not None and emb.batch_stats:
            emb.train(False)  # BatchNorm on running statistics, left unchanged
            try:
                return self._forward(state, obs, action, start, local, encoder_graph)
            finally:
                emb.train(True)
        return self._forward(state, obs, action, start, local, encoder_graph)

    def _forward(self, state: dict, obs: Tensor, action: Tensor, start: Tensor, local: bool = False,
                 encoder_graph: bool = True):
        count = torch.where(start, torch.zeros_like(state["count"]), state["count"])  # (B,)
        valid = count > 0
        B, M = obs.shape[0], self.window
        gen = self._gen(state["seed"], obs.device)
        spikes_in = self.encoder.code(obs, gen)  # (T, B, C, H, W)

        keep = (torch.arange(M, device=obs.device).unsqueeze(0) < count.unsqueeze(1)).unsqueeze(-1)  # (B, M, 1)
        if local:
            z_ctx = state["z_cache"] * keep  # (B, M, D) embeddings from when each view was current
        else:
            z_ctx = self._encode_ctx(state["obs"], count, gen)  # surrogate-gradient graph over the T bins
        tokens, pad, a_last = SeqJepaColumn._tokens(z_ctx, self._emb(state["act"], count), count)
        z_agg = self.aggregator(tokens, pad)  # (B, D+E)
        z_hat = self.predictor(z_agg, a_last)  # (B, D)

        # block-local graphs for local rules that differentiate them (LPL, layerwise), none for ESPP
        with torch.set_grad_enabled(local and encoder_graph and torch.is_grad_enabled()):
            recs = self.encoder.run(spikes_in, detach_blocks=local)
            z, layers = self.encoder.pool(recs)
        with torch.no_grad():
            z_target = self.encoder.pool(self.target_encoder.run(spikes_in))[0] if self.target_encoder is not None \
                else z.detach()
        loss_pred = 1.0 - F.cosine_similarity(z_hat, z_target, dim=-1)  # (B,)
        loss_jepa = (loss_pred * valid).sum() / valid.sum().clamp(min=1)

        ar = torch.arange(B, device=obs.device)
        idx = (count - 1).clamp(min=0)
        layers_prev = [lc[ar, idx] * valid.unsqueeze(1) for lc in state["l_cache"]]  # [(B, C_l)] as at t-1
        spikes = [s.detach() for _, s, _ in recs]
        counts = [s.sum(0).flatten(1) for s in spikes]  # [(B, N_l)] spike counts of this view
        echo = echo_of(state["counts_prev"])  # [(B, N_l)] L1-normalised
        has_prev = state["has_prev"]
        broadcast = torch.where(has_prev, torch.where(start, -1.0, 1.0), 0.0).to(obs.dtype)  # (B,) b
        self._record_stats(spikes)

        new_state = {
            "obs": SeqJepaColumn._push(state["obs"], count, obs),
            "act": SeqJepaColumn._push(state["act"], count, action),
            "count": (count + 1).clamp(max=M),
            "z_cache": SeqJepaColumn._push(state["z_cache"] * keep, count, z.detach()),
            "l_cache": [SeqJepaColumn._push(lc * keep, count, l.detach()) for lc, l in zip(state["l_cache"], layers)],
            "counts_prev": counts,
            "has_prev": torch.ones_like(has_prev),
            "seed": state["seed"] + 1,
        }
        beta = self.cfg.beta
        trace = Trace(z=z, z_agg=z_agg, z_hat=z_hat, z_target=z_target, valid=valid, loss_pred=loss_pred,
                      loss=loss_jepa, loss_jepa=loss_jepa, loss_reg=loss_jepa.new_zeros(()), reg={}, layers=layers,
                      layers_prev=layers_prev, local=torch.tensor(local),
                      spikes=[s.transpose(0, 1) for s in spikes], mem=[u.detach().transpose(0, 1) for _, _, u in recs],
                      block_in=[x.detach().transpose(0, 1) for x, _, _ in recs],
                      in_trace=[input_trace(x.detach(), beta).transpose(0, 1) for x, _, _ in recs], echo=echo,
                      broadcast=broadcast,
                      inputs={"obs_ctx": state["obs"], "act_ctx": state["act"], "count": count, "obs": obs,
                              "action": action, "seed": state["seed"].expand(B).clone()})  # seed per stream (replay)
        return new_state, trace

    def forward_inputs(self, inputs: dict, local: bool = False):
        """Re-run a forward from recorded ``trace["inputs"]`` (replay): returns the Trace (no echo: broadcast 0)."""
        B = inputs["count"].shape[0]
        state = self.init_state(B, inputs["obs"].device)
        seed = inputs["seed"].reshape(-1)[0].cpu()  # the first item's tick seed
        state.update(obs=inputs["obs_ctx"], act=inputs["act_ctx"], count=inputs["count"], seed=seed)
        if local:  # no cache of these views: encode the window once without a graph
            with torch.no_grad():
                state["z_cache"] = self._encode_ctx(inputs["obs_ctx"], inputs["count"],
                                                    self._gen(seed + 2 ** 61, inputs["obs"].device))
        start = torch.zeros_like(inputs["count"], dtype=torch.bool)
        stats = dict(self._stats)
        _, trace = self(state, inputs["obs"], inputs["action"], start, local=local)
        self._stats = stats  # the metrics describe the live view, not a replayed one
        return trace

    def _record_stats(self, spikes: "list[Tensor]") -> None:
        """spikes [(T, B, *shape_l)] -> per block rate, silent and saturated fractions (``diagnostics``)."""
        self._stats.update(spike_stats(spikes))

    def diagnostics(self) -> dict[str, float]:
        """Per block l: ``spiking.l{l}.rate`` (spikes per neuron and bin), ``.silent`` / ``.saturated``
        (fraction of neurons with no spike / a spike in every bin) over the B streams' views of the last
        forward (training, or learning off; not ``embed``, not a replayed forward). The simulator puts
        them in the store's ``metrics`` (step 7)."""
        return dict(self._stats)

    # ------------------------------------------------------------------ evaluation
    @torch.no_grad()
    def embed(self, obs: Tensor, actions: Tensor) -> dict[str, Tensor]:
        """obs (N, V, C, H, W), actions (N, V, A) -> ``z`` (N, V, D), ``z_agg`` (N, D+E) of the first
        c = min(M, V) views, ``z_hat_next`` (N, D) the prediction of the view after them under a_{c-1},
        ``loss_pred`` (N,) (view c' = min(M, V-1) predicted from the c' views before
        it; NaN when V < 2), ``layers`` [(N, V, C_l)] — as SeqJepaColumn.embed; rate coding draws from
        a generator seeded with ``eval_seed``. Spiking extras, per block l: ``spike_count`` [(N, V, C_l)]
        each unit's spikes in the view's T bins (a conv block's unit is a channel: its neurons' counts
        averaged over positions; = ``layers`` x T), and ``raster`` [(V, T, K_l)] the first episode's
        spikes of the neurons ``raster_neuron`` [(K_l,)] (:meth:`raster_neurons`)."""
        N, V = obs.shape[:2]
        gen = self._gen(self.cfg.eval_seed, obs.device)
        spikes_in = self.encoder.code(obs.reshape(N * V, *obs.shape[2:]), gen)  # (T, N*V, C, H, W)
        recs = self.encoder.run(spikes_in)
        z, layers = self.encoder.pool(recs)
        z = z.view(N, V, -1)
        out = {"z": z, "layers": [l.view(N, V, -1) for l in layers],
               "spike_count": [l.view(N, V, -1) * self.T for l in layers]}  # [(N, V, C_l)] spikes per view
        out["raster"], out["raster_neuron"] = [], []
        for (_, s, _), idx in zip(recs, self.raster_neurons()):
            s0 = s.view(self.T, N, V, -1)[:, 0]  # (T, V, N_l) the first episode
            out["raster"].append(s0[:, :, idx.to(s.device)].permute(1, 0, 2))  # (V, T, K_l)
            out["raster_neuron"].append(idx)
        c = min(self.window, V)

        def agg(k: int):
            cnt = torch.full((N,), k, dtype=torch.long, device=obs.device)
            tokens, pad, a_last = SeqJepaColumn._tokens(z[:, :k], self._emb(actions[:, :k], cnt), cnt)
            return self.aggregator(tokens, pad), a_last

        out["z_agg"], a_c = agg(c)
        out["z_hat_next"] = self.predictor(out["z_agg"], a_c)  # (N, D) the view after the c views, under a_{c-1}
        cp = min(self.window, V - 1)
        if cp < 1:
            out["loss_pred"] = torch.full((N,), float("nan"), device=obs.device)
            return out
        z_agg_p, a_last = agg(cp)
        z_hat = self.predictor(z_agg_p, a_last)  # (N, D)
        if self.target_encoder is not None:
            tgt = self.encoder.pool(self.target_encoder.run(spikes_in.view(self.T, N, V, *obs.shape[2:])[:, :, cp]))[0]
        else:
            tgt = z[:, cp]
        out["loss_pred"] = 1.0 - F.cosine_similarity(z_hat, tgt, dim=-1)  # (N,)
        return out

    def raster_neurons(self, k: int = 128) -> "list[Tensor]":
        """Per block, the flat indices of at most ``k`` neurons shown in a raster (_spiking_lif.raster_neurons)."""
        return raster_neurons(self.block_shapes, k)

    # ------------------------------------------------------------------ teacher
    @torch.no_grad()
    def update_target(self, step: int) -> None:
        """EMA teacher update once ``step`` optimizer steps are done (seq_jepa_parts.ema_momentum)."""
        if self.target_encoder is None:
            return
        ema_update(self._ema, ema_momentum(self.cfg.teacher, int(step)), buffers=False)  # parameters only

    def trainable(self) -> dict[str, nn.Parameter]:
        return {n: p for n, p in self.named_parameters() if p.requires_grad and not n.startswith("target_encoder.")}


def _numel(shape: tuple) -> int:
    n = 1
    for s in shape:
        n *= s
    return n


@register_model("spiking", SpikingConfig)
def spiking(cfg: SpikingConfig, spec: WorldSpec) -> SpikingColumn:
    """Spiking seq-JEPA column: snnTorch LIF blocks run for T bins per view, aggregator, predictor, teacher."""
    return SpikingColumn(cfg, spec)
