"""seq-JEPA column (Ghaemi et al. 2025, "seq-JEPA: Autoregressive Predictive Learning of
Invariant-Equivariant World Models", arXiv 2505.03176), run as a streaming column.

Per stream the column keeps a window of the last M views of the current episode (raw
observations and their actions; ``start`` resets it). At tick t, with context views
x_{t-c..t-1} (c <= M) and their actions a (a_i leads from view i to view i+1):

1. z_i = f(x_i) for the context views (encoder f, (B*c, C, H, W) -> (B*c, D));
2. tokens u_i = concat(z_i, e(a_i)) with e = Linear(A -> E) + BatchNorm(affine=False); the
   last context token's action embedding is zeroed (the action to the target goes to the
   predictor) — paper section 3;
3. z_AGG = g([AGG]; u) — transformer encoder (post-norm, no positional encoding, learnable
   zero-initialised [AGG] token; padded window slots masked);
4. z_hat = h(concat(z_AGG, e(a_{t-1}))) predicts the embedding of x_t;
5. target z~_t = f_EMA(x_t) (teacher ``ema``; momentum cosine 0.996 -> 1 over training), or
   sg(f(x_t)) (teacher ``stopgrad``); loss ``1 - cos(z_hat, sg(z~_t))`` where a context exists.

Offline paper-style training is the special case "episodes of length M+1, learn on the last
step". With ``action_conditioning=False`` (the paper's ablation) e(a) is dropped from the
tokens and the predictor.

``local=True`` (layer-local rules): every encoder block sees a detached input, context views
are encoded without a graph, and the aggregator / predictor see detached encoder outputs.
"""
from __future__ import annotations

import copy
import math
from typing import Literal, Optional

import torch
import torch.nn.functional as F
from pydantic import Field, model_validator
from torch import Tensor, nn

from colsim.column import AbstractColumn
from colsim.config import Strict
from colsim.registry import register_model
from colsim.types import Trace, WorldSpec
from colsim.models.encoders import build_encoder

__all__ = ["SeqJepaConfig", "SeqJepaColumn", "seqjepa", "TransformerAggregator", "MLPPredictor", "ActionEmbed"]


class EncoderConfig(Strict):
    kind: Literal["cnn", "mlp", "resnet18"] = "cnn"
    channels: list[int] = Field(default_factory=lambda: [32, 64, 128], min_length=1)
    hidden: list[int] = Field(default_factory=lambda: [512, 256], min_length=1)
    cifar_stem: bool = True


class AggregatorConfig(Strict):
    kind: Literal["transformer"] = "transformer"
    layers: int = Field(3, ge=1)
    heads: int = Field(4, ge=1)
    ff_mult: int = Field(4, ge=1)
    dropout: float = Field(0.1, ge=0, lt=1)


class PredictorConfig(Strict):
    kind: Literal["mlp"] = "mlp"
    hidden: int = Field(1024, ge=1)


class TeacherConfig(Strict):
    kind: Literal["ema", "stopgrad"] = "ema"
    momentum: float = Field(0.996, ge=0, le=1)
    momentum_end: float = Field(1.0, ge=0, le=1)


class SeqJepaConfig(Strict):
    name: Literal["seqjepa"] = "seqjepa"
    encoder: EncoderConfig = Field(default_factory=EncoderConfig)
    action_embed: int = Field(128, ge=1)
    aggregator: AggregatorConfig = Field(default_factory=AggregatorConfig)
    predictor: PredictorConfig = Field(default_factory=PredictorConfig)
    teacher: TeacherConfig = Field(default_factory=TeacherConfig)
    window: int = Field(3, ge=1)  # M: context views aggregated
    action_conditioning: bool = True

    @model_validator(mode="after")
    def _heads_divide(self):
        return self


class ActionEmbed(nn.Module):
    """e(a) = BatchNorm(Linear(a)) without affine; statistics over the valid entries only."""

    def __init__(self, action_dim: int, dim: int):
        super().__init__()
        self.linear = nn.Linear(action_dim, dim)
        self.norm = nn.BatchNorm1d(dim, affine=False)

    def forward(self, a: Tensor, mask: Optional[Tensor] = None) -> Tensor:
        """a (N, A), mask (N,) bool of entries that enter the batch statistics -> (N, E)."""
        h = self.linear(a)  # (N, E)
        if mask is None:
            return self.norm(h) if h.shape[0] > 1 or not self.training else h
        out = torch.zeros_like(h)
        if int(mask.sum()) > 1 or (not self.training and bool(mask.any())):
            out[mask] = self.norm(h[mask])
        return out


class TransformerAggregator(nn.Module):
    """g: [AGG] + tokens -> transformer encoder (post-norm, no positions) -> [AGG] output."""

    def __init__(self, dim: int, layers: int = 3, heads: int = 4, ff_mult: int = 4, dropout: float = 0.1):
        super().__init__()
        if dim % heads:
            raise ValueError(f"aggregator width {dim} is not divisible by heads={heads}; change model.aggregator.heads")
        layer = nn.TransformerEncoderLayer(dim, heads, ff_mult * dim, dropout, batch_first=True, norm_first=False)
        self.encoder = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.agg = nn.Parameter(torch.zeros(1, 1, dim))

    def forward(self, tokens: Tensor, pad_mask: Tensor) -> Tensor:
        """tokens (B, M, dim), pad_mask (B, M) True = empty slot -> z_AGG (B, dim)."""
        B = tokens.shape[0]
        x = torch.cat([self.agg.expand(B, -1, -1), tokens], dim=1)  # (B, 1+M, dim)
        mask = torch.cat([torch.zeros(B, 1, dtype=torch.bool, device=tokens.device), pad_mask], dim=1)
        return self.encoder(x, src_key_padding_mask=mask)[:, 0]


class MLPPredictor(nn.Module):
    """h: concat(z_AGG, e(a)) -> hidden -> D."""

    def __init__(self, d_in: int, d_out: int, hidden: int = 1024):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(d_in, hidden), nn.LayerNorm(hidden), nn.GELU(), nn.Linear(hidden, d_out))

    def forward(self, z_agg: Tensor, a_emb: Optional[Tensor]) -> Tensor:
        x = z_agg if a_emb is None else torch.cat([z_agg, a_emb], dim=-1)
        return self.net(x)


class SeqJepaColumn(AbstractColumn):
    provides = frozenset({"z", "z_agg", "z_hat", "z_target", "valid", "loss_pred", "layers", "layers_prev",
                          "local", "loss", "inputs"})

    def __init__(self, cfg: SeqJepaConfig, spec: WorldSpec):
        super().__init__()
        self.cfg = cfg
        self.spec = spec
        e = cfg.encoder
        self.encoder = build_encoder(e.kind, spec.obs_shape, e.channels, e.hidden, e.cifar_stem)
        D = self.encoder.width
        E = cfg.action_embed if cfg.action_conditioning else 0
        self.dim, self.action_dim = D, E
        self.action_embed = ActionEmbed(spec.action_dim, E) if cfg.action_conditioning else None
        a = cfg.aggregator
        self.aggregator = TransformerAggregator(D + E, a.layers, a.heads, a.ff_mult, a.dropout)
        self.predictor = MLPPredictor(D + 2 * E, D, cfg.predictor.hidden)
        self.window = cfg.window
        if cfg.teacher.kind == "ema":
            self.target_encoder = copy.deepcopy(self.encoder)
            for p in self.target_encoder.parameters():
                p.requires_grad_(False)
        else:
            self.target_encoder = None

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
        out[torch.arange(buf.shape[0], device=buf.device), pos] = item
        return out

    # ------------------------------------------------------------------ pieces
    def _tokens(self, z_ctx: Tensor, act_ctx: Tensor, count: Tensor) -> "tuple[Tensor, Tensor, Optional[Tensor]]":
        """z_ctx (B, M, D), act_ctx (B, M, A), count (B,) -> tokens (B, M, D+E), pad (B, M), e(a_last) (B, E)."""
        B, M, _ = z_ctx.shape
        pos = torch.arange(M, device=z_ctx.device).unsqueeze(0)  # (1, M)
        pad = pos >= count.unsqueeze(1)  # (B, M)
        if self.action_embed is None:
            return z_ctx, pad, None
        valid = ~pad
        emb = self.action_embed(act_ctx.reshape(B * M, -1), valid.reshape(-1)).view(B, M, -1)  # (B, M, E)
        last = pos == (count - 1).clamp(min=0).unsqueeze(1)  # (B, M) the last context view
        a_last = (emb * last.unsqueeze(-1)).sum(1)  # (B, E) e(a_{t-1})
        emb = emb * (~last).unsqueeze(-1)  # zero the last token's action
        return torch.cat([z_ctx, emb], dim=-1), pad, a_last

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

    # ------------------------------------------------------------------ forward
    def forward(self, state: dict, obs: Tensor, action: Tensor, start: Tensor, local: bool = False):
        """See the module docstring. obs (B, C, H, W), action (B, A), start (B,) -> (state, Trace)."""
        count = torch.where(start, torch.zeros_like(state["count"]), state["count"])  # (B,)
        valid = count > 0  # (B,) a prediction of obs exists
        B = obs.shape[0]

        # context (views before t)
        z_ctx, l_ctx = self._encode_ctx(state["obs"], count, grad=not local)
        tokens, pad, a_last = self._tokens(z_ctx.detach() if local else z_ctx, state["act"], count)
        z_agg = self.aggregator(tokens, pad)  # (B, D+E)
        z_hat = self.predictor(z_agg, a_last)  # (B, D)

        # current view
        if local:
            z, layers = self.encoder(obs, detach_blocks=True)  # block-local graphs only
        else:
            with torch.no_grad():
                z, layers = self.encoder(obs)
        with torch.no_grad():
            if self.target_encoder is not None:
                z_target, _ = self.target_encoder(obs)
            else:
                z_target = z.detach()
        loss_pred = 1.0 - F.cosine_similarity(z_hat, z_target.detach(), dim=-1)  # (B,)
        n_valid = valid.sum().clamp(min=1)
        loss = (loss_pred * valid).sum() / n_valid

        # previous view's pooled block outputs (for layer-local temporal terms), no graph
        idx = (count - 1).clamp(min=0)
        ar = torch.arange(B, device=obs.device)
        layers_prev = [l[ar, idx].detach() for l in l_ctx] if l_ctx else [torch.zeros_like(l) for l in layers]

        new_state = {
            "obs": self._push(state["obs"], count, obs),
            "act": self._push(state["act"], count, action),
            "count": (count + 1).clamp(max=self.window),
        }
        trace = Trace(z=z, z_agg=z_agg, z_hat=z_hat, z_target=z_target, valid=valid, loss_pred=loss_pred,
                      loss=loss, layers=layers, layers_prev=layers_prev, local=torch.tensor(local),
                      inputs={"obs_ctx": state["obs"], "act_ctx": state["act"], "count": count, "obs": obs,
                              "action": action})
        return new_state, trace

    def forward_inputs(self, inputs: dict, local: bool = False):
        """Re-run a forward from recorded ``trace["inputs"]`` (replay): returns the Trace."""
        state = {"obs": inputs["obs_ctx"], "act": inputs["act_ctx"], "count": inputs["count"]}
        start = torch.zeros_like(inputs["count"], dtype=torch.bool)
        _, trace = self(state, inputs["obs"], inputs["action"], start, local=local)
        return trace

    # ------------------------------------------------------------------ evaluation
    @torch.no_grad()
    def embed(self, obs: Tensor, actions: Tensor) -> dict[str, Tensor]:
        """obs (N, V, C, H, W), actions (N, V, A) -> z (N, V, D), z_agg (N, D+E) of the first min(M, V) views."""
        N, V = obs.shape[:2]
        z, _ = self.encoder(obs.reshape(N * V, *obs.shape[2:]))
        z = z.view(N, V, -1)
        c = min(self.window, V)
        count = torch.full((N,), c, dtype=torch.long, device=obs.device)
        tokens, pad, _ = self._tokens(z[:, :c], actions[:, :c], count)
        z_agg = self.aggregator(tokens, pad)
        return {"z": z, "z_agg": z_agg}

    # ------------------------------------------------------------------ teacher
    @torch.no_grad()
    def update_target(self, progress: float) -> None:
        if self.target_encoder is None:
            return
        t = self.cfg.teacher
        m = t.momentum_end - (t.momentum_end - t.momentum) * (math.cos(math.pi * min(max(progress, 0.0), 1.0)) + 1) / 2
        for p_t, p in zip(self.target_encoder.parameters(), self.encoder.parameters()):
            p_t.lerp_(p.detach(), 1.0 - m)
        for b_t, b in zip(self.target_encoder.buffers(), self.encoder.buffers()):
            b_t.copy_(b)

    def trainable(self) -> dict[str, nn.Parameter]:
        return {n: p for n, p in self.named_parameters() if p.requires_grad and not n.startswith("target_encoder.")}


@register_model("seqjepa", SeqJepaConfig)
def seqjepa(cfg: SeqJepaConfig, spec: WorldSpec) -> SeqJepaColumn:
    """seq-JEPA column: encoder, action-conditioned transformer aggregator, predictor, EMA teacher."""
    return SeqJepaColumn(cfg, spec)
