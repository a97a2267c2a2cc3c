"""seq-JEPA column (Ghaemi et al. 2025, "seq-JEPA: Autoregressive Predictive Learning of
Invariant-Equivariant World Models", arXiv 2505.03176), run as a streaming column.

Per stream the column keeps a window of the last M views of the current episode (raw
observations and their actions; ``start`` resets it). At tick t, with context views
x_{t-c..t-1} (c <= M) and their actions a (a_i leads from view i to view i+1):

1. z_i = f(x_i) for the context views (encoder f, (B*c, C, H, W) -> (B*c, D));
2. tokens u_i = concat(z_i, e(a_i)) with e = Linear(A -> E) + a parameter-free norm; the
   last context token's action embedding is zeroed (the action to the target goes to the
   predictor) — paper section 3. The paper's norm is BatchNorm (``action_norm: batch``);
   colsim's default is LayerNorm (``action_norm: layer``), which keeps no running statistics, so
   evaluation does not depend on the actions of the phase last trained (docs/results/forgetting.md;
3. z_AGG = g([AGG]; u) — aggregator (``aggregator.kind``: transformer | crate | crate_alpha |
   tost, models/seq_jepa_parts.py; padded window slots masked);
4. z_hat = h(z_AGG, e(a_{t-1})) predicts the embedding of x_t (``predictor.kind``: mlp | crate);
5. target z~_t = f_EMA(x_t) (teacher ``ema``; momentum 0.996, constant by default, or a cosine
   0.996 -> 1 over ``teacher.horizon_steps`` steps as in the paper, whose horizon is its
   training length; here the horizon is a setting, not the run's length), or
   sg(f(x_t)) (``stopgrad`` and ``symmetric``); ``L_fwd = 1 - cos(z_hat, sg(z~_t))`` where a
   context exists;
6. teacher ``symmetric`` also predicts backwards in time (docs/reference/models.md: "predict
   view t from the reversed context"). In the streaming window the reversed context is the
   c views after the first context view, newest first: x_t, x_{t-1}, ..., x_{t-c+1}; it
   predicts the earliest view x_{t-c} (window slot 0) with target sg(f(x_{t-c})). Its tokens
   pair each view with the action linking it to the next view of the reversed sequence,
   i.e. the forward action a_{i-1} of that pair, shown as reversed (``reverse_actions``):
   ``flag`` (default) adds a learned direction vector r (E,) to e(a), so the networks learn
   the inverse map themselves — right for any action encoding; ``negate`` uses e(-a) =
   -e(a) (exact inverse only for actions that are additive, Lie-algebra coordinates; in
   affine_digits the cos(dtheta) and shift components are not). As forward, the last
   reversed token's action is zeroed and e(a_{t-c}) (+ r) goes to the predictor. The same c
   actions enter both directions, so e's batch statistics are shared. ``L_rev = 1 -
   cos(z_hat_rev, sg(f(x_{t-c})))``; the prediction loss is the mean of the two directions;
7. regularisers (``regularizers``: name, weight, on z_agg | z, options) add
   ``sign * weight * value`` to the loss (``on: z_agg``: the streams with a context;
   ``on: z``: f(x_t) of every stream, computed with a graph when such a term exists).

``loss = L_pred + loss_reg``: every loss-based rule trains on the regularisers too. The Trace
also holds ``loss_jepa`` (prediction part), ``loss_reg`` and ``reg`` (name.on -> term). When no
stream has a context (the first tick of a phase: every window was just reset) ``valid`` is all
False and ``loss_jepa`` is a 0 that carries no gradient to the prediction path, so autograd and
the divergence check stay finite; that 0 is not a measurement: the simulator records the loss
totals of such a tick as NaN (colsim/simulate.py), and diagnostics not computed on a tick
(``seqjepa.loss_fwd`` / ``loss_rev``, a skipped ``reg.<name>.<on>``) are NaN, never stale.
``diagnostics()`` returns the cached block statistics of the last forward (ISTA
non-zero fraction and per-head MSSA coding rate per CRATE layer, TSSA membership entropy per
ToST layer) and each regulariser's value ``reg.<name>.<on>``.

Batch 1 (``protocols/online.yaml``): one stream has no batch statistics. (The default column has no
BatchNorm layer: ``encoder.output_norm: layer`` and ``action_norm: layer`` normalise each sample alone;
this paragraph concerns ``batch`` norms and the ResNet-18 encoder.) A BatchNorm layer in
training would otherwise normalise across whatever stack of views it is given — the c context
views of the one episode (which subtracts the object they share) or a single view (the action
embedding then outputs 0) — while the current view used the running statistics. So a training
forward with B = 1 runs every BatchNorm layer (and the action embedding's) on its running
statistics, as evaluation does, and leaves them unchanged: the initial mean 0 / variance 1 of a
fresh column (the parameter-free norms are then the identity) or those of a checkpoint trained
with batches. Training and evaluation then normalise the same way.

Lateral context (circuits, issue 14; ``lateral: true``, set by a circuit's wiring): a column that
reads other columns gets ``context`` (B, D+E), the mean of their z_AGG at t-1 (``colsim.column.Circuit``),
projected by a learned linear map P (D+E -> D+E) into one extra aggregator token after the window
(padded out where the stream has no context: the first view of an episode, or nothing to read yet), so
z_AGG = g([AGG]; u_1..u_c, P context). Only the aggregator sees it: the encoder's z stays a function of
the column's own sensor. ``embed`` takes the same ``context`` per episode.

Offline paper-style training is the special case "episodes of length M+1, learn on the last
step". With ``action_conditioning=False`` (the paper's ablation) e(a) is dropped from the
tokens and the predictor.

``local=True`` (layer-local rules): every encoder block sees a detached input, context views
are encoded without a graph, and the aggregator / predictor see detached encoder outputs (a
regulariser ``on: z`` then reaches the last encoder block only). With ``local_context: cache``
(default) the context is not re-encoded at all: the state keeps each window view's embedding and
pooled block outputs from the tick it was the current view (``z_cache``, ``l_cache``), so the
aggregator sees embeddings up to M-1 steps old and ``layers_prev`` is the previous view's
activity as it was at t-1 (LPL's trace of the previous step). That removes an M-view encoder
pass per tick, the bulk of a local step. ``recompute`` re-encodes the window with the current
parameters, as the global path does; so does ``forward_inputs`` (replay has no cache).
"""
from __future__ import annotations

import contextlib
import os
from typing import Literal, Optional

import torch
import torch.nn.functional as F
from pydantic import Field, model_validator
from torch import Tensor, nn

from colsim.column import AbstractColumn
from colsim.config import Strict
from colsim.models.encoders import build_encoder
from colsim.models.regularizers import regularizer_loss
from colsim.models.seq_jepa_parts import (
    ActionEmbed, AggregatorConfig, EncoderConfig, MLPPredictor, PredictorConfig, RegularizerConfig, TeacherConfig,
    TransformerAggregator, build_aggregator, build_predictor, ema_momentum, ema_teacher, ema_update, encoder_width,
)
from colsim.registry import register_model
from colsim.types import Trace, WorldSpec

__all__ = ["SeqJepaConfig", "SeqJepaColumn", "seqjepa", "TransformerAggregator", "MLPPredictor", "ActionEmbed"]


def _divisors(n: int) -> list[int]:
    return [k for k in range(1, min(n, 16) + 1) if n % k == 0]


class SeqJepaConfig(Strict):
    name: Literal["seqjepa"] = "seqjepa"
    encoder: EncoderConfig = Field(default_factory=EncoderConfig)
    action_embed: int = Field(128, ge=1)
    # e(a)'s normalisation: layer (LayerNorm, no buffers; default) or batch (seq-JEPA's BatchNorm, whose running
    # statistics follow each phase's actions and confound forgetting: docs/results/forgetting.md
    action_norm: Literal["layer", "batch"] = "layer"
    aggregator: AggregatorConfig = Field(default_factory=AggregatorConfig)
    predictor: PredictorConfig = Field(default_factory=PredictorConfig)
    teacher: TeacherConfig = Field(default_factory=TeacherConfig)
    regularizers: list[RegularizerConfig] = Field(default_factory=list)
    window: int = Field(3, ge=1)  # M: context views aggregated
    action_conditioning: bool = True
    # NHWC memory format for conv encoders (faster convolutions on CPU / GPU); unset: true on CUDA for the
    # cnn / resnet18 encoders, false on CPU (colsim.device, device_defaults below)
    channels_last: Optional[bool] = None
    # mixed precision of forward + rule update (colsim.device); unset: bf16 on CUDA, none on CPU
    autocast: Optional[Literal["bf16", "fp16", "none"]] = None
    local_context: Literal["cache", "recompute"] = "cache"  # local=True: reuse window embeddings (see docstring)
    # torch.compile (inductor, static shapes) on the online and target encoders: ~5 % faster ResNet-18
    # steps on CPU after a one-off compilation (benchmarks/bench_step.py --compile); needs a C++ compiler
    compile: bool = False
    # lateral input (circuits, issue 14): other columns' z_AGG of the previous tick enters the aggregator as one
    # more token through a learned projection (module docstring, "Lateral context"); set by a circuit's wiring
    lateral: bool = False

    def device_defaults(self, device: str) -> dict:
        """The values of the device-dependent fields when left unset (filled by colsim.device)."""
        cuda = str(device).startswith("cuda")
        return {"autocast": "bf16" if cuda else "none",
                "channels_last": cuda and self.encoder.kind in ("cnn", "resnet18")}

    @model_validator(mode="after")
    def _widths(self):
        D = encoder_width(self.encoder)
        W = D + (self.action_embed if self.action_conditioning else 0)
        if W % self.aggregator.heads:
            raise ValueError(f"aggregator.heads={self.aggregator.heads} does not divide the aggregator width {W} "
                             f"(encoder width {D} + action_embed {W - D}); use one of {_divisors(W)}")
        if self.predictor.kind == "crate" and D % self.predictor.heads:
            raise ValueError(f"predictor.heads={self.predictor.heads} does not divide the encoder width {D}; "
                             f"use one of {_divisors(D)}")
        seen = set()
        for i, r in enumerate(self.regularizers):
            if (r.name, r.on) in seen:
                raise ValueError(f"regularizers[{i}]: {r.name} on {r.on} is listed twice (its metric "
                                 f"reg.{r.name}.{r.on} would be ambiguous); keep one entry")
            seen.add((r.name, r.on))
        return self


class SeqJepaColumn(AbstractColumn):
    accepts_context = True  # with cfg.lateral (circuits' lateral wiring)
    provides = frozenset({"z", "z_agg", "z_hat", "z_target", "valid", "loss_pred", "layers", "layers_prev",
                          "local", "loss", "loss_jepa", "loss_reg", "reg", "inputs"})

    def __init__(self, cfg: SeqJepaConfig, spec: WorldSpec):
        super().__init__()
        self.cfg = cfg
        self.spec = spec
        e = cfg.encoder
        self.encoder = build_encoder(e.kind, spec.obs_shape, e.channels, e.hidden, e.cifar_stem, e.output_norm)
        D = self.encoder.width
        E = cfg.action_embed if cfg.action_conditioning else 0
        self.dim, self.action_dim = D, E
        self.window = cfg.window
        self.action_embed = ActionEmbed(spec.action_dim, E, cfg.action_norm) if cfg.action_conditioning else None
        self.aggregator = build_aggregator(cfg.aggregator, D + E, cfg.window + (1 if cfg.lateral else 0))
        self.predictor = build_predictor(cfg.predictor, D + E, E, D)
        self.symmetric = cfg.teacher.kind == "symmetric"
        self.reverse_flag = None
        if self.symmetric and E and cfg.teacher.reverse_actions == "flag":
            self.reverse_flag = nn.Parameter(torch.zeros(E))  # r: marks an action seen backwards in time
        if self.symmetric:
            self.provides = self.provides | {"z_hat_rev", "z_target_rev", "loss_pred_rev"}
        self.regularizers = list(cfg.regularizers)
        self._grad_now = self.symmetric or any(r.on == "z" for r in self.regularizers)
        if cfg.channels_last:
            self.encoder.to(memory_format=torch.channels_last)
            self.encoder.channels_last = True
        if cfg.teacher.kind == "ema":
            self.target_encoder, self._ema = ema_teacher(self.encoder)
        else:
            self.target_encoder = None
        if cfg.compile:  # Module.compile keeps parameter names, so checkpoints and the EMA update are unchanged
            self.encoder.compile(dynamic=False)
            if self.target_encoder is not None:
                self.target_encoder.compile(dynamic=False)
        self._stat_modules = [m for m in self.modules() if hasattr(m, "record_stats")]
        self._last: dict[str, Tensor] = {}  # detached scalars of the last training forward (diagnostics)
        self._predicted: Optional[Tensor] = None  # () bool: some stream had a context in the last forward
        self._norm_modules: Optional[list[nn.Module]] = None  # BatchNorm layers + action embedding (batch 1)
        # made last, so a column without lateral input draws the same initial parameters as before circuits
        self.lateral = nn.Linear(D + E, D + E) if cfg.lateral else None  # P: context (B, D+E) -> token (B, D+E)

    # ------------------------------------------------------------------ state
    def init_state(self, batch: int, device) -> dict:
        C, H, W = self.spec.obs_shape
        return {
            "obs": torch.zeros(batch, self.window, C, H, W, device=device),  # (B, M, C, H, W)
            "act": torch.zeros(batch, self.window, self.spec.action_dim, device=device),  # (B, M, A)
            "count": torch.zeros(batch, dtype=torch.long, device=device),  # (B,) valid views in window
        }

    @staticmethod
    def _push(buf: Tensor, count: Tensor, item: Tensor) -> Tensor:
        """Append item (B, ...) to the window buf (B, M, ...) at slot count (roll when full)."""
        M = buf.shape[1]
        full = (count >= M).view(-1, *([1] * (buf.dim() - 1)))
        rolled = torch.where(full, torch.roll(buf, -1, dims=1), buf)
        pos = count.clamp(max=M - 1)
        out = rolled.clone()
        out[torch.arange(buf.shape[0], device=buf.device), pos] = item.to(out.dtype)  # a bf16 z under autocast
        return out

    # ------------------------------------------------------------------ pieces
    def _action_emb(self, act_ctx: Tensor, count: Tensor) -> Optional[Tensor]:
        """act_ctx (B, M, A), count (B,) -> e(a) (B, M, E) (empty slots 0), or None without actions."""
        if self.action_embed is None:
            return None
        B, M, _ = act_ctx.shape
        valid = torch.arange(M, device=act_ctx.device).unsqueeze(0) < count.unsqueeze(1)  # (B, M)
        return self.action_embed(act_ctx.reshape(B * M, -1), valid.reshape(-1)).view(B, M, -1)

    @staticmethod
    def _tokens(z_ctx: Tensor, emb: Optional[Tensor], count: Tensor) -> "tuple[Tensor, Tensor, Optional[Tensor]]":
        """z_ctx (B, M, D), e(a) (B, M, E) or None, count (B,) -> tokens (B, M, D+E), pad (B, M), e(a_last) (B, E)."""
        M = z_ctx.shape[1]
        pos = torch.arange(M, device=z_ctx.device).unsqueeze(0)  # (1, M)
        pad = pos >= count.unsqueeze(1)  # (B, M)
        if emb is None:
            return z_ctx, pad, None
        last = pos == (count - 1).clamp(min=0).unsqueeze(1)  # (B, M) the last context view
        a_last = (emb * last.unsqueeze(-1)).sum(1)  # (B, E) e(a_{t-1})
        emb = emb * (~last).unsqueeze(-1)  # zero the last token's action
        return torch.cat([z_ctx, emb], dim=-1), pad, a_last

    def _tokens_reversed(self, z_ctx: Tensor, z_now: Tensor, emb: Optional[Tensor], count: Tensor
                         ) -> "tuple[Tensor, Optional[Tensor]]":
        """Reversed context (module docstring, step 6): z_ctx (B, M, D), z_now (B, D) = f(x_t),
        e(a) (B, M, E) or None, count (B,) -> tokens (B, M, D+E) (same pad mask), e(a) to the predictor (B, E).

        Reversed token k (k < c) is view x_{t-k}: k = 0 the current view, k >= 1 window slot
        c - k; its action links it to x_{t-k-1}, the forward action of window slot c - 1 - k.
        """
        B, M, D = z_ctx.shape
        k = torch.arange(M, device=z_ctx.device).unsqueeze(0)  # (1, M)
        c = count.unsqueeze(1)  # (B, 1)
        pad = k >= c  # (B, M)
        seq = torch.cat([z_ctx, z_ctx.new_zeros(B, 1, D)], dim=1)  # (B, M+1, D): slots, then room for x_t
        at_now = (torch.arange(M + 1, device=z_ctx.device).unsqueeze(0) == c).unsqueeze(-1)  # (B, M+1, 1)
        seq = torch.where(at_now, z_now.unsqueeze(1), seq)  # x_t at slot c
        src = (c - k).clamp(min=0)  # (B, M) token k <- slot c - k
        z_rev = seq.gather(1, src.unsqueeze(-1).expand(B, M, D)) * (~pad).unsqueeze(-1)  # (B, M, D)
        if emb is None:
            return z_rev, None
        E = emb.shape[-1]
        e_rev = emb.gather(1, (c - 1 - k).clamp(min=0).unsqueeze(-1).expand(B, M, E))  # (B, M, E)
        e_rev = -e_rev if self.reverse_flag is None else e_rev + self.reverse_flag
        last = k == (c - 1).clamp(min=0)  # (B, M) the last reversed token (the view after x_{t-c})
        a_first = (e_rev * last.unsqueeze(-1)).sum(1)  # (B, E) e(a_{t-c}) shown reversed
        e_rev = e_rev * (~(last | pad)).unsqueeze(-1)
        return torch.cat([z_rev, e_rev], dim=-1), a_first

    def _encode_ctx(self, obs_ctx: Tensor, count: Tensor, grad: bool) -> "tuple[Tensor, list[Tensor]]":
        """Encode the valid window slots: obs_ctx (B, M, C, H, W) -> z (B, M, D), layers [(B, M, C_l)]."""
        B, M = obs_ctx.shape[:2]
        valid = torch.arange(M, device=obs_ctx.device).unsqueeze(0) < count.unsqueeze(1)  # (B, M)
        flat = obs_ctx[valid]  # (K, C, H, W)
        with torch.set_grad_enabled(grad and torch.is_grad_enabled()):
            if flat.shape[0]:
                z, layers = self.encoder(flat)
            else:
                z = obs_ctx.new_zeros(0, self.dim)
                layers = [obs_ctx.new_zeros(0, 1)]
        z_full = z.new_zeros(B, M, z.shape[-1]).index_put((valid,), z) if flat.shape[0] else obs_ctx.new_zeros(B, M, self.dim)
        l_full = [l.new_zeros(B, M, l.shape[-1]).index_put((valid,), l) for l in layers] if flat.shape[0] else []
        return z_full, l_full

    @contextlib.contextmanager
    def _quiet(self):
        """Blocks keep the statistics of the forward prediction: none recorded inside."""
        old = [m.record_stats for m in self._stat_modules]
        for m in self._stat_modules:
            m.record_stats = False
        try:
            yield
        finally:
            for m, o in zip(self._stat_modules, old):
                m.record_stats = o

    def _regularize(self, z_agg: Tensor, z: Tensor, valid: Tensor) -> "tuple[Tensor, dict[str, Tensor]]":
        """Sum of the regulariser terms and name.on -> term; z_agg (B, W) of valid streams, z (B, D)."""
        total = z_agg.new_zeros(())
        terms: dict[str, Tensor] = {}
        for r in self.regularizers:
            src = z_agg[valid] if r.on == "z_agg" else z  # (m, W) / (B, D)
            if src.shape[0] < 2:  # not computed this tick: the diagnostic is missing, not last tick's value
                self._last[f"reg.{r.name}.{r.on}"] = torch.tensor(float("nan"))
                continue
            term, value = regularizer_loss(r.name, src, r.weight, **r.options())
            terms[f"{r.name}.{r.on}"] = term
            self._last[f"reg.{r.name}.{r.on}"] = value
            total = total + term
        return total, terms

    @contextlib.contextmanager
    def _running_stats(self):
        """BatchNorm layers and the action embedding normalise with their running statistics (batch 1)."""
        if self._norm_modules is None:  # found once: walking the module tree costs ~1 ms per tick
            kinds = (nn.modules.batchnorm._BatchNorm, ActionEmbed)
            self._norm_modules = [m for m in self.modules() if isinstance(m, kinds)]
        mods = self._norm_modules
        old = [m.training for m in mods]
        for m in mods:
            m.training = False
        try:
            yield
        finally:
            for m, o in zip(mods, old):
                m.training = o

    # ------------------------------------------------------------------ forward
    def forward(self, state: dict, obs: Tensor, action: Tensor, start: Tensor, local: bool = False,
                encoder_graph: bool = True, context: Optional[Tensor] = None,
                context_valid: Optional[Tensor] = None):
        """See the module docstring. obs (B, C, H, W), action (B, A), start (B,) -> (state, Trace).
        ``local`` with ``encoder_graph=False`` (sparse coding): the current view's encoder pass builds no
        autograd graph, unless a regulariser on ``z`` reaches the encoder through it.
        ``context`` (B, D+E), ``context_valid`` (B,) bool: lateral input (needs ``cfg.lateral``)."""
        if self.training and obs.shape[0] == 1:  # batch 1: no batch statistics (module docstring)
            with self._running_stats():
                return self._forward(state, obs, action, start, local, encoder_graph, context, context_valid)
        return self._forward(state, obs, action, start, local, encoder_graph, context, context_valid)

    def _lateral_token(self, context: Optional[Tensor], context_valid: Optional[Tensor], B: int, like: Tensor
                       ) -> "Optional[tuple[Tensor, Tensor]]":
        """(token (B, D+E), pad (B,) True = no context) for the aggregator, or None without lateral input."""
        if self.lateral is None:
            if context is not None:
                raise ValueError("this column was built without lateral input (model.lateral: false); a circuit's "
                                 "wiring sets it")
            return None
        if context is None:  # nothing to read (yet): an empty, masked slot
            return like.new_zeros(B, self.lateral.out_features), torch.ones(B, dtype=torch.bool, device=like.device)
        ok = torch.ones(B, dtype=torch.bool, device=like.device) if context_valid is None else context_valid
        return self.lateral(context), ~ok

    def _aggregate(self, tokens: Tensor, pad: Tensor, lat: "Optional[tuple[Tensor, Tensor]]") -> Tensor:
        """tokens (B, M, D+E), pad (B, M) [+ the lateral token and its pad] -> z_AGG (B, D+E)."""
        if lat is not None:
            tokens = torch.cat([tokens, lat[0].unsqueeze(1)], dim=1)  # (B, M+1, D+E)
            pad = torch.cat([pad, lat[1].unsqueeze(1)], dim=1)  # (B, M+1)
        return self.aggregator(tokens, pad)

    def _forward(self, state: dict, obs: Tensor, action: Tensor, start: Tensor, local: bool = False,
                 encoder_graph: bool = True, context: Optional[Tensor] = None,
                 context_valid: Optional[Tensor] = None):
        count = torch.where(start, torch.zeros_like(state["count"]), state["count"])  # (B,)
        valid = count > 0  # (B,) a prediction of obs exists
        B = obs.shape[0]

        # context (views before t) -> forward prediction
        cached = local and self.cfg.local_context == "cache" and "z_cache" in state
        if cached:  # embeddings stored when each window view was the current one (no encoder pass)
            keep = (torch.arange(self.window, device=obs.device).unsqueeze(0) < count.unsqueeze(1)).unsqueeze(-1)
            z_ctx = state["z_cache"] * keep  # (B, M, D), empty slots 0 as _encode_ctx gives
            l_ctx = [l * keep for l in state["l_cache"]]  # [(B, M, C_l)]
        else:
            z_ctx, l_ctx = self._encode_ctx(state["obs"], count, grad=not local)
        z_in = z_ctx.detach() if local else z_ctx  # (B, M, D) what the aggregator sees
        emb = self._action_emb(state["act"], count)  # (B, M, E) or None
        tokens, pad, a_last = self._tokens(z_in, emb, count)
        lat = self._lateral_token(context, context_valid, B, z_in)
        z_agg = self._aggregate(tokens, pad, lat)  # (B, D+E)
        z_hat = self.predictor(z_agg, a_last)  # (B, D)

        # current view
        if local:
            # block-local graphs only; none when no rule reads them and no regulariser on z needs them
            graph = encoder_graph or any(r.on != "z_agg" for r in self.regularizers)
            with torch.set_grad_enabled(graph and torch.is_grad_enabled()):
                z, layers = self.encoder(obs, detach_blocks=True)
        else:
            with torch.set_grad_enabled(self._grad_now and torch.is_grad_enabled()):
                z, layers = self.encoder(obs)
        with torch.no_grad():
            if self.target_encoder is not None:
                z_target, _ = self.target_encoder(obs)
            else:
                z_target = z.detach()
        loss_pred = 1.0 - F.cosine_similarity(z_hat, z_target, dim=-1)  # (B,)
        n_valid = valid.sum().clamp(min=1)
        extra = {}
        per_stream = loss_pred
        if self.symmetric:  # backward in time: x_t .. x_{t-c+1} predict x_{t-c}
            with self._quiet():
                tokens_r, a_first = self._tokens_reversed(z_in, z.detach() if local else z, emb, count)
                z_hat_r = self.predictor(self._aggregate(tokens_r, pad, lat), a_first)  # (B, D)
            z_target_r = z_ctx[:, 0].detach()  # (B, D) sg(f(x_{t-c}))
            loss_pred_r = 1.0 - F.cosine_similarity(z_hat_r, z_target_r, dim=-1)  # (B,)
            per_stream = 0.5 * (loss_pred + loss_pred_r)
            extra = {"z_hat_rev": z_hat_r, "z_target_rev": z_target_r, "loss_pred_rev": loss_pred_r}
            none = torch.tensor(float("nan"))  # no stream had a context: nothing was predicted
            self._last["seqjepa.loss_fwd"] = ((loss_pred * valid).sum() / n_valid).detach() if valid.any() else none
            self._last["seqjepa.loss_rev"] = ((loss_pred_r * valid).sum() / n_valid).detach() if valid.any() else none
        loss_jepa = (per_stream * valid).sum() / n_valid
        self._predicted = valid.any().detach()
        loss_reg, reg_terms = self._regularize(z_agg, z, valid)
        loss = loss_jepa + loss_reg

        # previous view's pooled block outputs (for layer-local temporal terms), no graph
        idx = (count - 1).clamp(min=0)
        ar = torch.arange(B, device=obs.device)
        layers_prev = [l[ar, idx].detach() for l in l_ctx] if l_ctx else [torch.zeros_like(l) for l in layers]

        new_state = {
            "obs": self._push(state["obs"], count, obs),
            "act": self._push(state["act"], count, action),
            "count": (count + 1).clamp(max=self.window),
        }
        if local and self.cfg.local_context == "cache":  # keep the window's embeddings for the next local forward
            M = self.window
            z_base = state["z_cache"] if "z_cache" in state else z_ctx.detach()
            l_base = state["l_cache"] if "l_cache" in state else (
                [l.detach() for l in l_ctx] if l_ctx else [l.new_zeros(B, M, l.shape[-1]) for l in layers])
            new_state["z_cache"] = self._push(z_base, count, z.detach())
            new_state["l_cache"] = [self._push(lb, count, l.detach()) for lb, l in zip(l_base, layers)]
        inputs = {"obs_ctx": state["obs"], "act_ctx": state["act"], "count": count, "obs": obs, "action": action}
        if context is not None:
            inputs.update(context=context, context_valid=context_valid)
        trace = Trace(z=z, z_agg=z_agg, z_hat=z_hat, z_target=z_target, valid=valid, loss_pred=loss_pred,
                      loss=loss, loss_jepa=loss_jepa, loss_reg=loss_reg, reg=reg_terms, layers=layers,
                      layers_prev=layers_prev, local=torch.tensor(local), **extra, inputs=inputs)
        return new_state, trace

    def forward_inputs(self, inputs: dict, local: bool = False):
        """Re-run a forward from recorded ``trace["inputs"]`` (replay): returns the Trace."""
        state = {"obs": inputs["obs_ctx"], "act": inputs["act_ctx"], "count": inputs["count"]}
        start = torch.zeros_like(inputs["count"], dtype=torch.bool)
        _, trace = self(state, inputs["obs"], inputs["action"], start, local=local, context=inputs.get("context"),
                        context_valid=inputs.get("context_valid"))
        return trace

    # ------------------------------------------------------------------ evaluation
    @torch.no_grad()
    def embed(self, obs: Tensor, actions: Tensor, context: Optional[Tensor] = None,
              context_valid: Optional[Tensor] = None) -> dict[str, Tensor]:
        """obs (N, V, C, H, W), actions (N, V, A) -> one encoder pass over all views, then

        * ``z`` (N, V, D) and ``z_agg`` (N, D+E) of the first c = min(M, V) views;
        * ``z_hat_next`` (N, D): the prediction h(z_AGG, e(a_{c-1})) of the embedding of the view after
          those c views, under the last one's action (``colsim.load_column``'s ``prediction``);
        * ``loss_pred`` (N,): the column's own objective on held-out episodes — the last view x_c'
          (c' = min(M, V-1)) predicted from the c' views before it and the action a_{c'-1},
          ``1 - cos(z_hat, sg(z~))`` with the training target (EMA teacher, else the encoder);
          the prediction part only (no regulariser), NaN when V < 2;
        * ``layers`` [(N, V, C_l)]: pooled block outputs of every view (for per-block local losses).

        ``context`` (N, D+E), ``context_valid`` (N,): lateral input of every episode (a circuit's wiring;
        needs ``cfg.lateral``).
        """
        N, V = obs.shape[:2]
        flat = obs.reshape(N * V, *obs.shape[2:])
        z, layers = self.encoder(flat)
        z = z.view(N, V, -1)
        c = min(self.window, V)
        count = torch.full((N,), c, dtype=torch.long, device=obs.device)
        tokens, pad, a_last = self._tokens(z[:, :c], self._action_emb(actions[:, :c], count), count)
        lat = self._lateral_token(context, context_valid, N, z)
        with self._quiet():
            z_agg = self._aggregate(tokens, pad, lat)
            z_hat_next = self.predictor(z_agg, a_last)  # (N, D) prediction of view c under a_{c-1}
        out = {"z": z, "z_agg": z_agg, "z_hat_next": z_hat_next, "layers": [l.view(N, V, -1) for l in layers]}
        cp = min(self.window, V - 1)
        if cp < 1:
            out["loss_pred"] = torch.full((N,), float("nan"), device=obs.device)
            return out
        z_agg_p = z_agg
        if cp != c:  # V <= M: the prediction's context is one view shorter than z_AGG's
            count_p = torch.full((N,), cp, dtype=torch.long, device=obs.device)
            tokens_p, pad_p, a_last = self._tokens(z[:, :cp], self._action_emb(actions[:, :cp], count_p), count_p)
            with self._quiet():
                z_agg_p = self._aggregate(tokens_p, pad_p, lat)
        with self._quiet():
            z_hat = self.predictor(z_agg_p, a_last)  # (N, D) prediction of view cp
        if self.target_encoder is not None:
            z_target, _ = self.target_encoder(obs[:, cp])
        else:
            z_target = z[:, cp]
        out["loss_pred"] = 1.0 - F.cosine_similarity(z_hat, z_target, dim=-1)  # (N,)
        return out

    def diagnostics(self) -> dict[str, float]:
        """Block statistics and regulariser values of the last forward (cached; ``embed`` does not count).

        ``crate.l{i}.ista_nonzero`` in [0, 1], ``crate.l{i}.h{k}.coding_rate`` >= 0 (aggregator;
        ``crate_pred.*`` for a CRATE predictor), ``tost.l{i}.membership_entropy`` in [0, ln K],
        ``reg.<name>.<on>`` (the raw value), ``seqjepa.loss_fwd`` / ``loss_rev`` (symmetric).
        The aggregator / predictor statistics are NaN after a forward where no stream had a context
        (the blocks then saw only the [AGG] token: nothing was aggregated or predicted).
        """
        out: dict[str, float] = {}
        none = self._predicted is not None and not bool(self._predicted)
        for part in (self.aggregator, self.predictor):
            out.update({k.replace("/", "."): (float("nan") if none else v) for k, v in part.diagnostics().items()})
        out.update({k: float(v) for k, v in self._last.items()})
        return out

    # ------------------------------------------------------------------ teacher
    @torch.no_grad()
    def update_target(self, step: int) -> None:
        """EMA teacher update once ``step`` optimizer steps are done (an integer: 1 after the first
        step; the simulator passes its step counter + 1). Momentum from :func:`ema_momentum`:
        constant, or a cosine over ``teacher.horizon_steps`` steps — never over the run's length.
        Buffers (e.g. BatchNorm statistics) are copied."""
        if self.target_encoder is None:
            return
        ema_update(self._ema, ema_momentum(self.cfg.teacher, int(step)))

    def trainable(self) -> dict[str, nn.Parameter]:
        return {n: p for n, p in self.named_parameters() if p.requires_grad and not n.startswith("target_encoder.")}

    # ------------------------------------------------------------------ seed ensembles (colsim/sim/ensemble.py)
    seed_shared_state = ("count",)  # the window's fill follows the episode starts, the same for every seed

    @property
    def seed_loop(self) -> tuple:
        """The conv encoders run seed by seed in an ensemble: vmap's grouped convolutions measured slower on CPU
        (benchmarks/bench_ensemble.py)."""
        if os.environ.get("COLSIM_ENSEMBLE_VMAP_CONV") == "1" or self.cfg.encoder.kind != "cnn":
            return ()
        return ("encoder",) + (("target_encoder",) if self.target_encoder is not None else ())

    def ensemble_refusal(self) -> Optional[str]:
        """The settings a vmapped forward cannot run, or has not been checked against separate runs: batch
        statistics (BatchNorm), data-dependent branches (the symmetric teacher), module state written by
        blocks (CRATE / ToST statistics), compiled or lateral columns, regularisers other than coding_rate."""
        c = self.cfg
        checks = [(c.encoder.kind not in ("cnn", "mlp"), f"model.encoder.kind={c.encoder.kind} (BatchNorm)"),
                  (c.encoder.output_norm == "batch", "model.encoder.output_norm=batch"),
                  (c.action_norm == "batch", "model.action_norm=batch"),
                  (c.aggregator.kind != "transformer", f"model.aggregator.kind={c.aggregator.kind}"),
                  (c.predictor.kind != "mlp", f"model.predictor.kind={c.predictor.kind}"),
                  (c.teacher.kind == "symmetric", "model.teacher.kind=symmetric"),
                  (bool(c.compile), "model.compile=true"), (bool(c.lateral), "model.lateral=true"),
                  (bool(c.channels_last), "model.channels_last=true")]
        checks += [(r.name != "coding_rate", f"model.regularizers: {r.name}") for r in self.regularizers]
        bad = [why for no, why in checks if no]
        return f"{bad[0]} cannot run as a seed ensemble" if bad else None

    def forward_side_state(self) -> dict:
        return {"last": dict(self._last), "predicted": self._predicted}

    def load_forward_side_state(self, side: dict) -> None:
        self._last, self._predicted = dict(side["last"]), side["predicted"]


@register_model("seqjepa", SeqJepaConfig)
def seqjepa(cfg: SeqJepaConfig, spec: WorldSpec) -> SeqJepaColumn:
    """seq-JEPA column: encoder, action embedding, aggregator, predictor, teacher, regularisers."""
    return SeqJepaColumn(cfg, spec)
