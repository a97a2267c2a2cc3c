"""CRATE and CRATE-alpha white-box transformer blocks, and a seq-JEPA aggregator/predictor.

Sources
- Yu et al. 2023, "White-Box Transformers via Sparse Rate Reduction" (NeurIPS 2023;
  arXiv 2306.01129), Sec. 2: one CRATE layer is an alternating minimisation step on the
  sparse rate reduction objective.
  * MSSA (compression step, "multi-head subspace self-attention"): per head k one
    bias-free projection ``W_k = LN(Z) U_k`` (U_k: (d, p)) serves as query, key and value,
        SSA_k = softmax(W_k W_kᵀ / sqrt(p)) W_k,     MSSA(Z) = [SSA_1 ... SSA_K] W_o + b_o
    Layer: ``Z½ = Z + MSSA(LN1 Z)``.
  * ISTA (sparsification step): one proximal-gradient step of the non-negative LASSO
    ``min_{A>=0} lambda ||A||_1 + 1/2 ||x - D A||²`` against a square dictionary D (d, d),
    started at ``A = x = LN2(Z½)``:
        Z' = ReLU(x + eta Dᵀ(x - D x) - eta lambda),   eta = 0.1, lambda = 0.1,
    with no residual (outputs are >= 0).
- Yang et al. 2024, "Scaling White-Box Transformers for Vision" (CRATE-alpha, NeurIPS 2024):
  overcomplete dictionary D (d, 4d), two ISTA steps from A0 = 0,
        A1 = ReLU(eta Dᵀ z - eta lambda),
        A2 = ReLU(A1 - eta Dᵀ(D A1 - z) - eta lambda),
  decoded by a separate learned D̂ (d, 4d) with a residual: ``Z + D̂ A2(LN Z)``; the MSSA
  output projection has no bias; LayerNorm eps 1e-6 (the reference code's pre-norm).
- docs/reference/models.md, integrations A (aggregator = CRATE layers over
  [AGG] + tokens with learned time-position embeddings) and B (predictor = a small CRATE
  block over the two tokens (z_AGG, e(a_M)); output token 0 is z_hat).

Row-vector convention throughout: a token is a row x (.., d), so ``D x`` is ``x @ D.T``
and ``Dᵀ r`` is ``r @ D``.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = [
    "mssa",
    "ista_step",
    "overcomplete_ista",
    "MSSA",
    "ISTA",
    "OvercompleteISTA",
    "CrateLayer",
    "CrateAlphaLayer",
    "CrateAggregator",
    "CratePredictor",
]

ETA = 0.1  # ISTA step size (CRATE default)
LAMBDA = 0.1  # LASSO sparsity weight (CRATE default)
DIAG_EPS2 = 0.5  # eps² of the coding rate reported by .diagnostics()
CRATE_LN_EPS = 1e-5  # LayerNorm eps of CRATE (its code uses nn.LayerNorm's default)
ALPHA_LN_EPS = 1e-6  # LayerNorm eps of CRATE-alpha (its pre-norms use eps=1e-6)


# --------------------------------------------------------------------------- functional


def mssa(x: Tensor, u: Tensor, heads: int, w_out: Tensor, b_out: Tensor | None = None,
         pad_mask: Tensor | None = None, u_bias: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """Multi-head subspace self-attention of already layer-normalised tokens.

    x: (B, N, d) = LN1(Z); u: (K p, d), the K bases ``U_k`` stacked as a Linear weight
    (``W = x @ u.T (+ u_bias)``); w_out: (d, K p), b_out: (d,) or None; pad_mask: (B, N) bool,
    True = padding: padded tokens are removed as keys (every row needs one unpadded key);
    u_bias: (K p,) or None (CRATE's projection has none; ``qkv_bias`` option).
    Returns ``(out (B, N, d), W (B, K, N, p))``; W is returned for diagnostics.
    """
    B, N, _ = x.shape
    w = F.linear(x, u, u_bias)  # (B, N, K p)
    p = w.shape[-1] // heads
    w = w.view(B, N, heads, p).transpose(1, 2)  # (B, K, N, p)
    logits = w @ w.transpose(-1, -2) / math.sqrt(p)  # (B, K, N, N)
    if pad_mask is not None:
        logits = logits.masked_fill(pad_mask[:, None, None, :], float("-inf"))
    ssa = logits.softmax(dim=-1) @ w  # (B, K, N, p)
    ssa = ssa.transpose(1, 2).reshape(B, N, heads * p)  # (B, N, K p) = [SSA_1 ... SSA_K]
    return F.linear(ssa, w_out, b_out), w


def ista_step(x: Tensor, D: Tensor, eta: float = ETA, lam: float = LAMBDA) -> Tensor:
    """One proximal-gradient step of the non-negative LASSO, started at A = x (CRATE ISTA).

    ``Z' = ReLU(x + eta Dᵀ(x - D x) - eta lambda)``; x: (..., d), D: (d, d) -> (..., d).
    It minimises ``F(A) = lambda ||A||_1 + 1/2 ||x - D A||²`` over A >= 0 and never
    increases F when the start is feasible (x >= 0) and eta <= 1 / ||D||₂² (the usual
    proximal-gradient descent lemma; CRATE's kaiming-uniform D has ||D||₂ ≈ 2.8 < 1/sqrt(0.1)).
    """
    residual = x - x @ D.T  # (..., d) = x - D x
    return F.relu(x + eta * (residual @ D) - eta * lam)


def overcomplete_ista(z: Tensor, D: Tensor, eta: float = ETA, lam: float = LAMBDA) -> Tensor:
    """Two non-negative ISTA steps from A0 = 0 against an overcomplete D (CRATE-alpha).

    z: (..., d), D: (d, m) with m = 4d -> A2: (..., m), where
    ``A1 = ReLU(eta Dᵀ z - eta lambda)``, ``A2 = ReLU(A1 - eta Dᵀ(D A1 - z) - eta lambda)``.
    """
    a1 = F.relu(eta * (z @ D) - eta * lam)  # (..., m)
    return F.relu(a1 - eta * ((a1 @ D.T - z) @ D) - eta * lam)  # (..., m)


def _coding_rate_per_head(w: Tensor, valid: Tensor | None, eps2: float = DIAG_EPS2) -> Tensor:
    """Mean over the batch of ``1/2 logdet(I_p + p/(n eps²) W_kᵀ W_k)`` per head -> (K,).

    w: (B, K, N, p); valid: (B, N) bool or None. Uses the n x n form
    ``logdet(I_n + c W Wᵀ)`` (equal by Sylvester) because windows are short (n <= 17).
    """
    B, K, N, p = w.shape
    w = w.float() if w.dtype in (torch.float16, torch.bfloat16) else w  # cholesky needs fp32+
    if valid is not None:
        w = w * valid[:, None, :, None]
        n = valid.sum(-1).clamp_min(1).to(w.dtype)  # (B,)
    else:
        n = torch.full((B,), float(N), dtype=w.dtype, device=w.device)
    c = (p / (n * eps2))[:, None, None, None]  # (B, 1, 1, 1)
    if N <= p:
        gram = c * (w @ w.transpose(-1, -2))  # (B, K, N, N)
    else:
        gram = c * (w.transpose(-1, -2) @ w)  # (B, K, p, p)
    eye = torch.eye(gram.shape[-1], dtype=w.dtype, device=w.device)
    chol = torch.linalg.cholesky(eye + gram)
    return chol.diagonal(dim1=-2, dim2=-1).log().sum(-1).mean(0)  # (K,)


# --------------------------------------------------------------------------- modules


class MSSA(nn.Module):
    """MSSA with learned bases U (one Linear) and output projection (bias optional).

    ``qkv_bias``: a bias on the shared q/k/v projection U; off by default, as in CRATE and
    CRATE-alpha (Yu et al. 2023 / Yang et al. 2024: ``W_k = LN(Z) U_k`` is bias-free).
    """

    def __init__(self, dim: int, heads: int, bias: bool = True, qkv_bias: bool = False):
        super().__init__()
        if dim % heads:
            raise ValueError(f"MSSA: dim={dim} must be divisible by heads={heads}; pick heads that divide dim")
        self.heads = heads
        self.u = nn.Linear(dim, dim, bias=qkv_bias)  # weight (K p, d): the stacked U_kᵀ
        self.out = nn.Linear(dim, dim, bias=bias)

    def forward(self, x: Tensor, pad_mask: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """x: (B, N, d) -> (out (B, N, d), W (B, K, N, p))."""
        return mssa(x, self.u.weight, self.heads, self.out.weight, self.out.bias, pad_mask, self.u.bias)


class ISTA(nn.Module):
    """CRATE's sparsification block: ``ista_step`` with a learned square dictionary D (d, d)."""

    def __init__(self, dim: int, eta: float = ETA, lam: float = LAMBDA):
        super().__init__()
        self.eta, self.lam = eta, lam
        self.D = nn.Parameter(torch.empty(dim, dim))
        nn.init.kaiming_uniform_(self.D)

    def forward(self, x: Tensor) -> Tensor:
        """x: (..., d) -> (..., d), non-negative."""
        return ista_step(x, self.D, self.eta, self.lam)


class OvercompleteISTA(nn.Module):
    """CRATE-alpha's sparse coding block: encode with D (d, r d), decode with D̂ (d, r d)."""

    def __init__(self, dim: int, ratio: int = 4, eta: float = ETA, lam: float = LAMBDA):
        super().__init__()
        self.eta, self.lam = eta, lam
        self.D = nn.Parameter(torch.empty(dim, ratio * dim))
        self.D_hat = nn.Parameter(torch.empty(dim, ratio * dim))
        nn.init.kaiming_uniform_(self.D)
        nn.init.kaiming_uniform_(self.D_hat)

    def forward(self, z: Tensor) -> tuple[Tensor, Tensor]:
        """z: (..., d) -> (D̂ A2 (..., d), A2 (..., r d))."""
        a2 = overcomplete_ista(z, self.D, self.eta, self.lam)
        return a2 @ self.D_hat.T, a2


class _CrateBase(nn.Module):
    """Shared stats bookkeeping: each forward stores detached diagnostics in ``self.stats``."""

    record_stats: bool = True

    def _record(self, w: Tensor, code: Tensor, pad_mask: Tensor | None) -> None:
        if not self.record_stats:
            return
        with torch.no_grad():
            valid = None if pad_mask is None else ~pad_mask  # (B, N)
            nz = (code.detach() > 0).to(code.dtype)  # (B, N, m)
            if valid is None:
                frac = nz.mean()
            else:
                frac = (nz.mean(-1) * valid).sum() / valid.sum().clamp_min(1)
            self.stats = {"ista_nonzero": frac,
                          "coding_rate": _coding_rate_per_head(w.detach(), valid)}


class CrateLayer(_CrateBase):
    """One CRATE layer: ``Z½ = Z + MSSA(LN1 Z)``, ``Z' = ISTA(LN2 Z½)`` (no residual)."""

    def __init__(self, dim: int, heads: int = 4, eta: float = ETA, lam: float = LAMBDA, ln_eps: float = CRATE_LN_EPS,
                 qkv_bias: bool = False):
        super().__init__()
        self.ln1, self.ln2 = nn.LayerNorm(dim, eps=ln_eps), nn.LayerNorm(dim, eps=ln_eps)
        self.mssa = MSSA(dim, heads, bias=True, qkv_bias=qkv_bias)
        self.ista = ISTA(dim, eta, lam)
        self.stats: dict[str, Tensor] = {}

    def forward(self, z: Tensor, pad_mask: Tensor | None = None) -> Tensor:
        """z: (B, N, d), pad_mask: (B, N) bool (True = padding) -> (B, N, d), >= 0."""
        attn, w = self.mssa(self.ln1(z), pad_mask)
        z_half = z + attn  # (B, N, d)
        out = self.ista(self.ln2(z_half))  # (B, N, d)
        self._record(w, out, pad_mask)
        return out


class CrateAlphaLayer(_CrateBase):
    """One CRATE-alpha layer: ``Z½ = Z + MSSA(LN1 Z)`` (no output bias), ``Z½ + D̂ A2(LN2 Z½)``.

    LayerNorm eps defaults to CRATE-alpha's 1e-6 (``ALPHA_LN_EPS``; PyTorch's default is 1e-5).
    """

    def __init__(self, dim: int, heads: int = 4, ratio: int = 4, eta: float = ETA, lam: float = LAMBDA,
                 ln_eps: float = ALPHA_LN_EPS, qkv_bias: bool = False):
        super().__init__()
        self.ln1, self.ln2 = nn.LayerNorm(dim, eps=ln_eps), nn.LayerNorm(dim, eps=ln_eps)
        self.mssa = MSSA(dim, heads, bias=False, qkv_bias=qkv_bias)
        self.ista = OvercompleteISTA(dim, ratio, eta, lam)
        self.stats: dict[str, Tensor] = {}

    def forward(self, z: Tensor, pad_mask: Tensor | None = None) -> Tensor:
        """z: (B, N, d), pad_mask: (B, N) bool (True = padding) -> (B, N, d)."""
        attn, w = self.mssa(self.ln1(z), pad_mask)
        z_half = z + attn  # (B, N, d)
        decoded, a2 = self.ista(self.ln2(z_half))  # (B, N, d), (B, N, 4d)
        self._record(w, a2, pad_mask)
        return z_half + decoded


def _layer_diagnostics(layers: nn.ModuleList, prefix: str) -> dict[str, float]:
    out: dict[str, float] = {}
    for i, layer in enumerate(layers):
        if not layer.stats:
            continue
        out[f"{prefix}/l{i}/ista_nonzero"] = float(layer.stats["ista_nonzero"])
        for k, r in enumerate(layer.stats["coding_rate"].tolist()):
            out[f"{prefix}/l{i}/h{k}/coding_rate"] = r
    return out


# --------------------------------------------------------------------------- seq-JEPA parts


class CrateAggregator(nn.Module):
    """seq-JEPA aggregator g from CRATE layers (docs/reference/models.md, integration A).

    ``[AGG] + tokens`` (the [AGG] token is learnable, zero init; tokens get learned
    time-position embeddings, N(0, 0.02²) init) pass through ``layers`` CrateLayer (or
    CrateAlphaLayer when ``alpha``); padded tokens are masked out as attention keys, so
    their content never reaches [AGG]. Returns LN([AGG] output). ``ln_eps`` (every LayerNorm,
    the final one included): None = the block's reference value, 1e-5 for CRATE and 1e-6 for
    CRATE-alpha; ``qkv_bias``: a bias on MSSA's projection U (off in both references).
    """

    def __init__(self, dim: int, layers: int = 2, heads: int = 4, max_tokens: int = 16, alpha: bool = False,
                 ln_eps: float | None = None, qkv_bias: bool = False):
        super().__init__()
        if dim % heads:
            raise ValueError(f"CrateAggregator: dim={dim} must be divisible by heads={heads}")
        self.dim, self.max_tokens = dim, max_tokens
        self.agg = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos = nn.Parameter(torch.randn(max_tokens, dim) * 0.02)
        layer = CrateAlphaLayer if alpha else CrateLayer
        eps = ln_eps if ln_eps is not None else (ALPHA_LN_EPS if alpha else CRATE_LN_EPS)
        self.layers = nn.ModuleList(layer(dim, heads, ln_eps=eps, qkv_bias=qkv_bias) for _ in range(layers))
        self.norm = nn.LayerNorm(dim, eps=eps)

    def forward(self, tokens: Tensor, pad_mask: Tensor | None = None) -> Tensor:
        """tokens: (B, M, dim), pad_mask: (B, M) bool, True = padding -> z_AGG (B, dim)."""
        B, M, d = _check_tokens(tokens, pad_mask, self.dim, self.max_tokens, "CrateAggregator")
        z = torch.cat([self.agg.expand(B, 1, d), tokens + self.pos[:M]], dim=1)  # (B, 1+M, d)
        mask = None
        if pad_mask is not None:
            mask = torch.cat([pad_mask.new_zeros(B, 1), pad_mask], dim=1)  # (B, 1+M)
        for layer in self.layers:
            z = layer(z, mask)
        return self.norm(z[:, 0])  # (B, d)

    def diagnostics(self) -> dict[str, float]:
        """``crate/l{i}/ista_nonzero`` and ``crate/l{i}/h{k}/coding_rate`` of the last forward."""
        return _layer_diagnostics(self.layers, "crate")


class CratePredictor(nn.Module):
    """seq-JEPA predictor h as a small CRATE block (docs/reference/models.md, integration B).

    The two tokens (z_AGG, e(a_M)) plus a learned token-type embedding pass through
    ``layers`` CrateLayer; output token 0, read out by LN + Linear (CRATE's head), is z_hat.
    The linear readout is needed because ISTA outputs are >= 0.
    """

    def __init__(self, dim: int, layers: int = 1, heads: int = 4):
        super().__init__()
        if dim % heads:
            raise ValueError(f"CratePredictor: dim={dim} must be divisible by heads={heads}")
        self.dim = dim
        self.type_emb = nn.Parameter(torch.randn(2, dim) * 0.02)
        self.layers = nn.ModuleList(CrateLayer(dim, heads) for _ in range(layers))
        self.head = nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, dim))

    def forward(self, z_agg: Tensor, a_emb: Tensor) -> Tensor:
        """z_agg: (B, dim), a_emb: (B, dim) -> z_hat (B, dim)."""
        if z_agg.shape != a_emb.shape or z_agg.shape[-1] != self.dim:
            raise ValueError(f"CratePredictor: expected z_agg and a_emb of shape (B, {self.dim}), "
                             f"got {tuple(z_agg.shape)} and {tuple(a_emb.shape)}")
        z = torch.stack([z_agg, a_emb], dim=1) + self.type_emb  # (B, 2, d)
        for layer in self.layers:
            z = layer(z)
        return self.head(z[:, 0])  # (B, d)

    def diagnostics(self) -> dict[str, float]:
        return _layer_diagnostics(self.layers, "crate_pred")


def _check_tokens(tokens: Tensor, pad_mask: Tensor | None, dim: int, max_tokens: int, who: str):
    if tokens.dim() != 3 or tokens.shape[-1] != dim:
        raise ValueError(f"{who}: tokens must be (B, M, {dim}), got {tuple(tokens.shape)}")
    B, M, d = tokens.shape
    if M > max_tokens:
        raise ValueError(f"{who}: {M} tokens but max_tokens={max_tokens}; raise max_tokens")
    if pad_mask is not None and (pad_mask.shape != (B, M) or pad_mask.dtype != torch.bool):
        raise ValueError(f"{who}: pad_mask must be a bool tensor of shape ({B}, {M}), "
                         f"got {pad_mask.dtype} {tuple(pad_mask.shape)}")
    return B, M, d
