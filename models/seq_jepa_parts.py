"""Parts of the seq-JEPA column (models/seq_jepa.py): the config schema, the action
embedding, the aggregators g and predictors h, and their builders.

Aggregator g (``aggregator.kind``), tokens (B, M, W) + pad mask (B, M) -> z_AGG (B, W):
  * ``transformer`` — seq-JEPA's (Ghaemi et al. 2025, arXiv 2505.03176): post-norm
    transformer encoder, learnable zero-initialised [AGG] token, no positional encoding;
  * ``crate`` / ``crate_alpha`` — integration A (docs/reference/models.md): CRATE layers
    (Yu et al. 2023) / CRATE-alpha layers (Yang et al. 2024) over [AGG] + tokens with learned
    time-position embeddings (models/crate.py ``CrateAggregator``);
  * ``tost`` — ToST layers (Wu et al. 2024; TSSA, linear in the tokens), optionally causal
    (models/tost.py ``ToSTAggregator``).
Predictor h (``predictor.kind``), (z_AGG (B, W), e(a) (B, E) or None) -> z_hat (B, D):
  * ``mlp`` — seq-JEPA's: concat(z_AGG, e(a)) -> hidden -> D;
  * ``crate`` — integration B: a small CRATE block over the two tokens (z_AGG, e(a)), each
    first mapped to the encoder width D by a Linear (the tokens must share one width); with
    action conditioning off the action token is zero (only its type embedding remains).
Regularisers (``regularizers``, models/regularizers.py): a list of
``{name, weight, on: z_agg | z, ...options}``; the term ``sign * weight * value`` is added to
the column's loss (sign -1 for rates that are maximised).
"""
from __future__ import annotations

import contextlib
import copy
import math
from typing import Annotated, Literal, Optional, Union

import torch
from pydantic import Field, field_validator, model_validator
from torch import Tensor, nn
from torch.nn.attention import SDPBackend, sdpa_kernel

from colsim.config import Strict
from colsim.models.crate import CrateAggregator, CratePredictor
from colsim.models.regularizers import REGULARIZERS
from colsim.models.tost import ToSTAggregator

__all__ = ["EncoderConfig", "AggregatorConfig", "PredictorConfig", "TeacherConfig", "ema_momentum", "RegularizerConfig",
           "ActionEmbed", "TransformerAggregator", "MLPPredictor", "CrateTokenPredictor", "build_aggregator",
           "build_predictor", "encoder_width"]


# --------------------------------------------------------------------------- config schema

class EncoderConfig(Strict):
    kind: Literal["cnn", "mlp", "resnet18"] = "cnn"
    channels: list[int] = Field(default_factory=lambda: [32, 64, 128], min_length=1)  # cnn
    hidden: list[int] = Field(default_factory=lambda: [512, 256], min_length=1)  # mlp
    cifar_stem: bool = True  # resnet18
    # parameter-free normalisation of z = f(x) (not in seq-JEPA, off by default):
    #   layer (LayerNorm without affine): each sample's z centred and scaled over its units; no buffers, so
    #     training and evaluation normalise alike and nothing drifts with the data (the CPU presets' choice);
    #   batch / true (BatchNorm without affine): each unit centred and scaled over the batch, an anti-collapse
    #     device of its own; evaluation uses running statistics re-estimated from each phase's data, a
    #     forgetting no parameter-level rule can prevent (docs/results/forgetting.md, models/README.md)
    output_norm: Union[bool, Literal["none", "layer", "batch"]] = "none"

    @field_validator("output_norm")
    @classmethod
    def _norm_kind(cls, v):
        return ("batch" if v else "none") if isinstance(v, bool) else v


def encoder_width(e: EncoderConfig) -> int:
    """D, the width of z = f(x), from the encoder config alone (no world needed)."""
    return {"cnn": e.channels[-1], "mlp": e.hidden[-1], "resnet18": 512}[e.kind]


def _only_for(cfg: Strict, kinds: dict[str, tuple[str, ...]], where: str) -> None:
    """Reject a kind-specific field set to a non-default value for a kind that ignores it."""
    for field, valid in kinds.items():
        if cfg.kind not in valid and getattr(cfg, field) != type(cfg).model_fields[field].default:
            raise ValueError(f"{where}.{field} applies to kind {' / '.join(valid)} only, not {cfg.kind!r}; "
                             f"remove it")


class AggregatorConfig(Strict):
    kind: Literal["transformer", "crate", "crate_alpha", "tost"] = "transformer"
    layers: int = Field(3, ge=1)
    heads: int = Field(4, ge=1)
    ff_mult: int = Field(4, ge=1)  # transformer: feed-forward width multiple
    dropout: float = Field(0.1, ge=0, lt=1)  # transformer
    causal: bool = False  # tost: prefix statistics, [AGG] last
    readout: Literal["mean", "agg"] = "mean"  # tost: mean of all outputs or the [AGG] output
    # crate / crate_alpha / tost: bias on the q/k/v projection; None = the reference's choice
    # (ToST: on; CRATE and CRATE-alpha: off, MSSA's U is bias-free)
    qkv_bias: Optional[bool] = None
    # crate / crate_alpha: LayerNorm eps; None = the reference's value (CRATE 1e-5, CRATE-alpha 1e-6)
    ln_eps: Optional[float] = Field(None, gt=0)

    @model_validator(mode="after")
    def _kind_fields(self):
        _only_for(self, {"ff_mult": ("transformer",), "dropout": ("transformer",), "causal": ("tost",),
                         "readout": ("tost",), "qkv_bias": ("crate", "crate_alpha", "tost"),
                         "ln_eps": ("crate", "crate_alpha")}, "aggregator")
        return self


class PredictorConfig(Strict):
    kind: Literal["mlp", "crate"] = "mlp"
    hidden: int = Field(1024, ge=1)  # mlp
    layers: int = Field(1, ge=1)  # crate
    heads: int = Field(4, ge=1)  # crate

    @model_validator(mode="after")
    def _kind_fields(self):
        _only_for(self, {"hidden": ("mlp",), "layers": ("crate",), "heads": ("crate",)}, "predictor")
        return self


class TeacherConfig(Strict):
    """``ema``: target = EMA copy of the encoder; ``stopgrad``: target = sg(online encoder);
    ``symmetric``: stop-gradient targets and a second, time-reversed prediction (see the
    column docstring); ``reverse_actions`` says how the reversed context sees its actions.

    EMA momentum once k optimizer steps are done — :func:`ema_momentum`: with
    ``horizon_steps = N > 0`` a cosine from ``momentum`` (k = 0) to ``momentum_end`` (k = N), then
    ``momentum_end``; with ``horizon_steps = 0`` (default) the constant ``momentum``.
    The horizon is a number of steps, never the run's length, so a phase's teacher does not
    depend on how many phases follow it.
    """

    kind: Literal["ema", "stopgrad", "symmetric"] = "ema"
    momentum: float = Field(0.996, ge=0, le=1)  # ema: the momentum (start of the cosine when horizon_steps > 0)
    momentum_end: float = Field(1.0, ge=0, le=1)  # ema: end of the cosine (horizon_steps > 0 only)
    horizon_steps: int = Field(0, ge=0)  # ema: length of the cosine in steps; 0 = constant momentum
    reverse_actions: Literal["flag", "negate"] = "flag"  # symmetric

    @model_validator(mode="after")
    def _kind_fields(self):
        _only_for(self, {"reverse_actions": ("symmetric",), "momentum": ("ema",), "momentum_end": ("ema",),
                         "horizon_steps": ("ema",)}, "teacher")
        if self.horizon_steps == 0 and self.momentum_end != type(self).model_fields["momentum_end"].default:
            raise ValueError("teacher.momentum_end is used only with teacher.horizon_steps > 0 (a cosine from "
                             "momentum to momentum_end over that many steps); set horizon_steps or remove momentum_end")
        return self


def ema_momentum(t: TeacherConfig, step: int) -> float:
    """EMA momentum once ``step`` optimizer steps are done (integer k >= 0): see :class:`TeacherConfig`.

    ``m(k) = end - (end - start) (cos(pi min(k / N, 1)) + 1) / 2`` for ``N = horizon_steps > 0``
    (the cosine of BYOL, Grill et al. 2020, section 3.2, which seq-JEPA uses with N = its training
    length), else ``start``.
    """
    if t.horizon_steps == 0:
        return float(t.momentum)
    frac = min(max(step, 0) / t.horizon_steps, 1.0)
    return t.momentum_end - (t.momentum_end - t.momentum) * (math.cos(math.pi * frac) + 1) / 2


def ema_teacher(online: nn.Module) -> tuple[nn.Module, list[tuple[nn.Module, nn.Module]]]:
    """The EMA teacher of ``online``: a frozen deep copy, and the (teacher, student) sub-module pairs
    :func:`ema_update` walks, built once per column: modules are never replaced, while ``.to()`` may
    replace the tensors inside them, which ``ema_update`` reads at every call."""
    target = copy.deepcopy(online)
    for p in target.parameters():
        p.requires_grad_(False)
    return target, list(zip(target.modules(), online.modules()))


@torch.no_grad()
def ema_update(pairs: list[tuple[nn.Module, nn.Module]], momentum: float, buffers: bool = True) -> None:
    """Teacher <- momentum * teacher + (1 - momentum) * student for every parameter, and (``buffers``)
    every buffer copied (e.g. BatchNorm statistics): one fused ``torch._foreach_lerp_`` and one
    ``torch._foreach_copy_``, the same values as one ``lerp_`` / ``copy_`` per tensor. The walk of
    ``Module.parameters()`` and one ``lerp_`` per tensor it replaces cost 0.24 ms per tick in a batch-1 run
    of seqjepa_cnn (benchmarks/bench_online.py; 0.13 ms now), 0.08 ms in isolation (0.03 now)."""
    tp, sp, tb, sb = [], [], [], []
    for t, s in pairs:
        for a, b in zip(t._parameters.values(), s._parameters.values()):
            if a is not None:
                tp.append(a)
                sp.append(b)
        if buffers:
            for a, b in zip(t._buffers.values(), s._buffers.values()):
                if a is not None:
                    tb.append(a)
                    sb.append(b)
    if tp:
        torch._foreach_lerp_(tp, sp, 1.0 - momentum)
    if tb:
        torch._foreach_copy_(tb, sb)


class _Reg(Strict):
    weight: float = Field(ge=0, allow_inf_nan=False)  # loss term = sign * weight * value
    on: Literal["z_agg", "z"] = "z_agg"  # z_AGG of the streams with context, or z = f(x_t) of every stream

    @model_validator(mode="before")
    @classmethod
    def _yaml_on(cls, data):
        """YAML 1.1 (PyYAML) reads the bare key ``on`` as the boolean true: take it back."""
        if isinstance(data, dict) and any(k is True for k in data):
            data = {("on" if k is True else k): v for k, v in data.items()}
        return data

    def options(self) -> dict:
        return self.model_dump(exclude={"name", "weight", "on"})


class CodingRateReg(_Reg):
    name: Literal["coding_rate"]
    kind: Literal["mcr2", "cov"] = "mcr2"
    eps2: float = Field(0.5, gt=0)
    alpha: Optional[float] = Field(None, gt=0)  # cov only (default d / eps2)

    @model_validator(mode="after")
    def _alpha(self):
        if self.alpha is not None and self.kind != "cov":
            raise ValueError("alpha is used by kind 'cov' only; mcr2 scales by d/(m eps2) — remove alpha or set kind: cov")
        return self


class SimDinoReg(_Reg):
    name: Literal["simdino"]
    eps: float = Field(0.05, gt=0)


class SigRegReg(_Reg):
    name: Literal["sigreg"]
    num_slices: int = Field(256, ge=1)
    num_points: int = Field(17, ge=2)
    t_max: float = Field(3.0, gt=0)


class VicregVarianceReg(_Reg):
    name: Literal["vicreg_variance"]
    gamma: float = Field(1.0, gt=0)
    eps: float = Field(1e-4, gt=0)


class VicregCovarianceReg(_Reg):
    name: Literal["vicreg_covariance"]


RegularizerConfig = Annotated[Union[CodingRateReg, SimDinoReg, SigRegReg, VicregVarianceReg, VicregCovarianceReg],
                              Field(discriminator="name")]
_REG_CLASSES = (CodingRateReg, SimDinoReg, SigRegReg, VicregVarianceReg, VicregCovarianceReg)
assert {c.model_fields["name"].annotation.__args__[0] for c in _REG_CLASSES} == set(REGULARIZERS), \
    "every regulariser in models/regularizers.py needs a config class here"


# --------------------------------------------------------------------------- modules

class ActionEmbed(nn.Module):
    """e(a) = Norm(Linear(a)) without affine.

    ``norm="layer"`` (default): LayerNorm over the E embedding units of each action — no buffers, the
    same in training and evaluation, any batch size. ``norm="batch"``: seq-JEPA's BatchNorm
    (Ghaemi et al. 2025), statistics over the valid entries only; its running statistics follow each
    phase's action distribution and evaluation uses them (docs/results/forgetting.md."""

    def __init__(self, action_dim: int, dim: int, norm: str = "layer"):
        super().__init__()
        if norm not in ("layer", "batch"):
            raise ValueError(f"action_norm must be 'layer' or 'batch', got {norm!r}")
        self.linear = nn.Linear(action_dim, dim)
        self.norm = nn.LayerNorm(dim, elementwise_affine=False) if norm == "layer" else nn.BatchNorm1d(dim, affine=False)
        self.batch_stats = norm == "batch"

    def forward(self, a: Tensor, mask: Optional[Tensor] = None) -> Tensor:
        """a (N, A), mask (N,) bool of the valid entries (those that enter BatchNorm's statistics) -> (N, E);
        masked-out rows are 0."""
        h = self.linear(a)  # (N, E)
        if not self.batch_stats:  # per-sample: no batch, no running statistics
            e = self.norm(h)
            return e if mask is None else e * mask.unsqueeze(-1).to(e.dtype)
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
        # CUDA's fused attention kernels (cuDNN, memory-efficient) have non-deterministic backwards; under
        # deterministic algorithms the math kernel (plain matrix products and a softmax; at 1 + M <= ~10 tokens
        # its cost should be small, not measured separately) runs instead
        exact = tokens.is_cuda and torch.are_deterministic_algorithms_enabled()
        with sdpa_kernel(SDPBackend.MATH) if exact else contextlib.nullcontext():
            return self.encoder(x, src_key_padding_mask=mask)[:, 0]

    def diagnostics(self) -> dict[str, float]:
        return {}


class MLPPredictor(nn.Module):
    """h: concat(z_AGG, e(a)) -> hidden -> D."""

    def __init__(self, d_in: int, d_out: int, hidden: int = 1024):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(d_in, hidden), nn.LayerNorm(hidden), nn.GELU(), nn.Linear(hidden, d_out))

    def forward(self, z_agg: Tensor, a_emb: Optional[Tensor]) -> Tensor:
        """z_agg (B, W), a_emb (B, E) or None -> (B, D)."""
        x = z_agg if a_emb is None else torch.cat([z_agg, a_emb], dim=-1)
        return self.net(x)

    def diagnostics(self) -> dict[str, float]:
        return {}


class CrateTokenPredictor(nn.Module):
    """Integration B: z_AGG (B, W) and e(a) (B, E) -> Linear to width D each -> CratePredictor -> z_hat (B, D).

    Without action conditioning (``action_dim == 0``) the action token is zero, so the output
    depends on z_AGG alone.
    """

    def __init__(self, d_agg: int, d_action: int, d_out: int, layers: int = 1, heads: int = 4):
        super().__init__()
        if d_out % heads:
            raise ValueError(f"crate predictor width {d_out} (the encoder width) is not divisible by heads={heads}; "
                             f"change model.predictor.heads")
        self.d_out = d_out
        self.z_in = nn.Identity() if d_agg == d_out else nn.Linear(d_agg, d_out)
        self.a_in = nn.Linear(d_action, d_out) if d_action else None
        self.crate = CratePredictor(d_out, layers, heads)

    def forward(self, z_agg: Tensor, a_emb: Optional[Tensor]) -> Tensor:
        """z_agg (B, W), a_emb (B, E) or None -> (B, D)."""
        z = self.z_in(z_agg)  # (B, D)
        a = z.new_zeros(z.shape) if self.a_in is None or a_emb is None else self.a_in(a_emb)  # (B, D)
        return self.crate(z, a)

    def diagnostics(self) -> dict[str, float]:
        return self.crate.diagnostics()


def build_aggregator(cfg: AggregatorConfig, dim: int, window: int) -> nn.Module:
    """The aggregator for tokens of width ``dim`` (= D + E) and windows of up to ``window`` views."""
    if cfg.kind == "transformer":
        return TransformerAggregator(dim, cfg.layers, cfg.heads, cfg.ff_mult, cfg.dropout)
    if cfg.kind in ("crate", "crate_alpha"):
        return CrateAggregator(dim, cfg.layers, cfg.heads, max_tokens=window, alpha=cfg.kind == "crate_alpha",
                               ln_eps=cfg.ln_eps, qkv_bias=bool(cfg.qkv_bias))
    if cfg.kind == "tost":
        return ToSTAggregator(dim, cfg.layers, cfg.heads, max_tokens=window, causal=cfg.causal, readout=cfg.readout,
                              qkv_bias=True if cfg.qkv_bias is None else cfg.qkv_bias)
    raise ValueError(f"unknown aggregator kind {cfg.kind!r}")


def build_predictor(cfg: PredictorConfig, d_agg: int, d_action: int, d_out: int) -> nn.Module:
    """The predictor from z_AGG (width d_agg) and e(a) (width d_action, 0 = none) to z_hat (d_out)."""
    if cfg.kind == "mlp":
        return MLPPredictor(d_agg + d_action, d_out, cfg.hidden)
    if cfg.kind == "crate":
        return CrateTokenPredictor(d_agg, d_action, d_out, cfg.layers, cfg.heads)
    raise ValueError(f"unknown predictor kind {cfg.kind!r}")
