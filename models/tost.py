"""ToST: Token Statistics Self-Attention (TSSA), linear in the number of tokens.

Source: Wu et al. 2024, "Token Statistics Transformer: Linear-Time Attention via
Variational Rate Reduction" (arXiv 2412.17810; ICLR 2025). TSSA is one unrolled gradient
step on a variational form of the MCR² compression term; no n x n matrix is formed.

For tokens X (n, d) of one sample, with ``W = LN(X) W_qkv + b_qkv`` (one d x d Linear; the
bias ``qkv_bias`` is on by default, as in the reference configuration: the authors' vision
model sets ``qkv_bias=True``, their language model biases every Linear) split into K heads
W_k (n, p):
    Ŵ_k       = W_k with each column L2-normalised over the n tokens
    s_jk      = temp_k sum_i Ŵ_k,ji²                      (temp learnable per head, init 1)
    pi_j      = softmax_k(s_j)                            (Eq. 10: over HEADS, not tokens)
    m_ki      = sum_j pi_jk W_k,ji² / (sum_j pi_jk + 1e-8)   (the token statistic)
    TSSA_k,ji = -pi_jk W_k,ji / (1 + m_ki)
heads are concatenated and projected by an output Linear with bias. Block (pre-norm):
``x + TSSA(LN x)``, ``x + MLP(LN x)`` with a 4x GELU MLP. Time O(n d), attention memory O(d).

Causal variant (for streaming windows; the form of the ToST authors' causal language-model
code): every sum over tokens becomes a prefix sum over tokens i <= j. Token i's membership
pi_i is computed once, from the column norms of tokens <= i, and then kept, so

    s_jk  = temp_k sum_i (W_k,ji² / sum_{j'<=j} W_k,j'i²  +  beta_kj)
    m_kij = sum_{j'<=j} pi_j'k W_k,j'i² / (sum_{j'<=j} pi_j'k + 1e-8)      (statistic seen by token j)

with beta (K, n_max) the learned per-head, per-position bias of the normalised squares (the
"denominator bias" of the authors' causal code; zero init, no weight decay). A prefix of j+1
tokens has column norms summed over j+1 tokens only, so the normalised squares of early tokens
are larger than late ones (token 0's are all 1); beta lets each position re-centre its scores.

costs O(n d) time. Token j's output depends only on tokens <= j; it equals non-causal TSSA
on the prefix X[:j+1] exactly when the memberships do not depend on the token set (e.g.
temp = 0) and always for j = 0. Exact prefix equality with set-dependent memberships would
need each earlier pi recomputed per query (O(n²)). Padded tokens are zeroed out of every
statistic, which equals dropping them (with beta = 0; beta is indexed by position in the
padded sequence).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .crate import _check_tokens

__all__ = ["tssa", "causal_tssa", "TSSA", "ToSTLayer", "ToSTAggregator"]

_NORM_EPS2 = 1e-24  # squared-norm floor of the column normalisation (F.normalize's 1e-12, squared)
_STAT_EPS = 1e-8  # denominator floor of the statistic m (as in the paper's code)


def _tssa_core(x: Tensor, w_qkv: Tensor, heads: int, temp: Tensor, w_out: Tensor,
               b_out: Tensor | None, pad_mask: Tensor | None, causal: bool, b_qkv: Tensor | None = None,
               denom_bias: Tensor | None = None) -> tuple[Tensor, Tensor]:
    B, N, d = x.shape
    if d % heads:
        raise ValueError(f"TSSA: width {d} must be divisible by heads={heads}")
    p = d // heads
    w = F.linear(x, w_qkv, b_qkv).view(B, N, heads, p)  # (B, N, K, p)
    valid = None if pad_mask is None else (~pad_mask).to(w.dtype)  # (B, N)
    if valid is not None:
        w = w * valid[:, :, None, None]  # padded tokens add nothing to any statistic
    w2 = w.square()  # (B, N, K, p)
    token_sum = (lambda t: t.cumsum(1)) if causal else (lambda t: t.sum(1, keepdim=True))
    col = token_sum(w2).clamp_min(_NORM_EPS2)  # (B, N|1, K, p): ||W_k[:, i]||² over tokens
    normed = (w2 / col).sum(-1)  # (B, N, K): sum_i of the normalised squares
    if denom_bias is not None:  # beta_kj added to each of the p normalised squares of head k at position j
        if denom_bias.shape[0] != heads or denom_bias.shape[1] < N:
            raise ValueError(f"TSSA: denom_bias must be (heads={heads}, >= {N} positions), got {tuple(denom_bias.shape)}")
        normed = normed + p * denom_bias[:, :N].T  # (N, K) broadcast over B
    s = temp * normed  # (B, N, K)
    pi = s.softmax(dim=-1)  # (B, N, K): memberships, softmax over heads
    pi_stat = pi if valid is None else pi * valid[:, :, None]
    m = token_sum(pi_stat[..., None] * w2) / (token_sum(pi_stat)[..., None] + _STAT_EPS)  # (B, N|1, K, p)
    out = -pi[..., None] * w / (1 + m)  # (B, N, K, p)
    return F.linear(out.reshape(B, N, d), w_out, b_out), pi


def tssa(x: Tensor, w_qkv: Tensor, heads: int, temp: Tensor, w_out: Tensor,
         b_out: Tensor | None = None, pad_mask: Tensor | None = None, b_qkv: Tensor | None = None
         ) -> tuple[Tensor, Tensor]:
    """Token statistics self-attention of layer-normalised tokens (ToST Eq. 10 and after).

    x: (B, N, d) = LN(X); w_qkv: (d, d); temp: (K,); w_out: (d, d); b_out: (d,) or None;
    pad_mask: (B, N) bool, True = padding (excluded from the column norms and from m);
    b_qkv: (d,) or None, the projection's bias.
    Returns ``(out (B, N, d), pi (B, N, K))``; pi sums to 1 over heads.
    """
    return _tssa_core(x, w_qkv, heads, temp, w_out, b_out, pad_mask, causal=False, b_qkv=b_qkv)


def causal_tssa(x: Tensor, w_qkv: Tensor, heads: int, temp: Tensor, w_out: Tensor,
                b_out: Tensor | None = None, pad_mask: Tensor | None = None, b_qkv: Tensor | None = None,
                denom_bias: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """Causal TSSA: token j only sees tokens <= j (prefix sums of the token statistics).

    Same arguments and shapes as ``tssa``, plus ``denom_bias`` (K, n_max) or None: beta of the
    module docstring (positions 0..N-1 are used). Token i's membership uses the column norms
    of tokens <= i; see the module docstring for when row j equals ``tssa`` on ``x[:, :j+1]``.
    """
    return _tssa_core(x, w_qkv, heads, temp, w_out, b_out, pad_mask, causal=True, b_qkv=b_qkv,
                      denom_bias=denom_bias)


class TSSA(nn.Module):
    """TSSA with its parameters: qkv (d x d, bias when ``qkv_bias``, the reference's default),
    per-head ``temp`` (init 1), output Linear; causal: ``denom_bias`` beta (K, max_tokens), zero init.

    ``temp`` and ``denom_bias`` are tagged ``_no_weight_decay = True`` so optimizer builders
    exclude them from decay (as the authors' optimizer groups do).
    """

    def __init__(self, dim: int, heads: int, causal: bool = False, qkv_bias: bool = True, max_tokens: int = 64):
        super().__init__()
        if dim % heads:
            raise ValueError(f"TSSA: dim={dim} must be divisible by heads={heads}; pick heads that divide dim")
        self.heads, self.causal = heads, causal
        self.qkv = nn.Linear(dim, dim, bias=qkv_bias)
        self.temp = nn.Parameter(torch.ones(heads))
        self.temp._no_weight_decay = True
        self.denom_bias = None
        if causal:
            self.denom_bias = nn.Parameter(torch.zeros(heads, max_tokens))
            self.denom_bias._no_weight_decay = True
        self.out = nn.Linear(dim, dim)

    def forward(self, x: Tensor, pad_mask: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """x: (B, N, d) -> (out (B, N, d), pi (B, N, K))."""
        if self.causal:
            return causal_tssa(x, self.qkv.weight, self.heads, self.temp, self.out.weight, self.out.bias, pad_mask,
                               self.qkv.bias, self.denom_bias)
        return tssa(x, self.qkv.weight, self.heads, self.temp, self.out.weight, self.out.bias, pad_mask, self.qkv.bias)


class ToSTLayer(nn.Module):
    """One ToST block: ``x + TSSA(LN1 x)``, then ``x + MLP(LN2 x)`` (4x GELU MLP)."""

    def __init__(self, dim: int, heads: int = 4, causal: bool = False, mlp_ratio: int = 4, qkv_bias: bool = True,
                 max_tokens: int = 64):
        super().__init__()
        self.ln1, self.ln2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.attn = TSSA(dim, heads, causal, qkv_bias, max_tokens)
        self.mlp = nn.Sequential(nn.Linear(dim, mlp_ratio * dim), nn.GELU(), nn.Linear(mlp_ratio * dim, dim))
        self.record_stats = True
        self.stats: dict[str, Tensor] = {}

    def forward(self, x: Tensor, pad_mask: Tensor | None = None) -> Tensor:
        """x: (B, N, d), pad_mask: (B, N) bool (True = padding) -> (B, N, d)."""
        attn, pi = self.attn(self.ln1(x), pad_mask)
        x = x + attn
        x = x + self.mlp(self.ln2(x))
        if self.record_stats:
            with torch.no_grad():
                pi = pi.detach()
                ent = -(pi * pi.clamp_min(1e-30).log()).sum(-1)  # (B, N), in [0, ln K]
                if pad_mask is not None:
                    valid = (~pad_mask).to(ent.dtype)
                    ent = (ent * valid).sum() / valid.sum().clamp_min(1)
                self.stats = {"membership_entropy": ent.mean()}
        return x


class ToSTAggregator(nn.Module):
    """seq-JEPA aggregator from ToST layers; same forward interface as ``CrateAggregator``.

    A learnable [AGG] token (zero init) joins the tokens (learned time-position embeddings,
    N(0, 0.02²) init): first when non-causal, LAST when ``causal`` so that it sees every
    token through the prefix sums. Padded tokens are zeroed out of the statistics, so their
    content never reaches the output. ``readout``:
      * ``"mean"`` (default): LN of the mean of the outputs at [AGG] and every unpadded token;
      * ``"agg"``: LN of the [AGG] output, as in CrateAggregator.
    Why "mean": a TSSA output row is its own projection rescaled per channel,
    ``-pi_j W_j / (1 + m)``, so [AGG] learns about the other tokens only through the
    second-moment statistic m, never their first moments. On a toy task (predict a linear
    map of the sum of 5 tokens, 2 layers, width 32, 300 Adam steps) the cosine loss reached
    0.15 with "mean" and 0.54 with "agg" (CRATE with [AGG]: 0.18).
    """

    def __init__(self, dim: int, layers: int = 2, heads: int = 4, max_tokens: int = 16, causal: bool = False,
                 readout: str = "mean", qkv_bias: bool = True):
        super().__init__()
        if dim % heads:
            raise ValueError(f"ToSTAggregator: dim={dim} must be divisible by heads={heads}")
        if readout not in ("mean", "agg"):
            raise ValueError(f"ToSTAggregator: readout={readout!r}; use 'mean' or 'agg'")
        self.dim, self.max_tokens, self.causal, self.readout = dim, max_tokens, causal, readout
        self.agg = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos = nn.Parameter(torch.randn(max_tokens, dim) * 0.02)
        # max_tokens + 1 positions: the window's tokens and [AGG]
        self.layers = nn.ModuleList(ToSTLayer(dim, heads, causal, qkv_bias=qkv_bias, max_tokens=max_tokens + 1)
                                    for _ in range(layers))
        self.norm = nn.LayerNorm(dim)

    def forward(self, tokens: Tensor, pad_mask: Tensor | None = None) -> Tensor:
        """tokens: (B, M, dim), pad_mask: (B, M) bool, True = padding -> z_AGG (B, dim)."""
        B, M, d = _check_tokens(tokens, pad_mask, self.dim, self.max_tokens, "ToSTAggregator")
        if pad_mask is None:
            pad_mask = torch.zeros(B, M, dtype=torch.bool, device=tokens.device)
        parts = [self.agg.expand(B, 1, d), tokens + self.pos[:M]]
        masks = [pad_mask.new_zeros(B, 1), pad_mask]
        if self.causal:
            parts.reverse()
            masks.reverse()
        z = torch.cat(parts, dim=1)  # (B, 1+M, d)
        mask = torch.cat(masks, dim=1)  # (B, 1+M)
        for layer in self.layers:
            z = layer(z, mask)
        if self.readout == "agg":
            return self.norm(z[:, -1] if self.causal else z[:, 0])  # (B, d)
        valid = (~mask).to(z.dtype)[..., None]  # (B, 1+M, 1)
        return self.norm((z * valid).sum(1) / valid.sum(1))  # (B, d)

    def diagnostics(self) -> dict[str, float]:
        """``tost/l{i}/membership_entropy`` (nats, max ln K) of the last forward."""
        return {f"tost/l{i}/membership_entropy": float(layer.stats["membership_entropy"])
                for i, layer in enumerate(self.layers) if layer.stats}
