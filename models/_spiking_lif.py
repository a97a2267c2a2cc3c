"""LIF encoder of the spiking column (models/spiking.py): input coding, snnTorch LIF blocks, the
input trace. See models/spiking.py for the neuron model, the coding and the read-out, with
citations (Eshraghian et al. 2023, snnTorch; Graf, Su & Indiveri 2024, arXiv 2405.13976).
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor, nn

__all__ = ["THETA", "rate_code", "latency_code", "input_trace", "lif_no_grad", "LIFBlock", "SpikingEncoder", "echo",
           "spike_stats", "raster_neurons"]

THETA = 1.0  # firing threshold


def _leaky():
    try:
        import snntorch
    except ImportError:  # pragma: no cover - the extra is part of `make setup`
        from colsim.config import ConfigError
        raise ConfigError("model: spiking needs snntorch; install the extra: pip install -e '.[spiking]'") from None
    return snntorch


# --------------------------------------------------------------------------- coding

def rate_code(x: Tensor, T: int, gen: Optional[torch.Generator] = None, scale: float = 1.0) -> Tensor:
    """x (B, ...) in [0, 1] -> (T, B, ...) spikes, S_t ~ Bernoulli(scale x) independently per bin (EchoSpike's
    rate-coded MNIST uses scale 0.8: ``snntorch.spikegen.rate(x * 0.8, T)``)."""
    u = torch.rand((T, *x.shape), generator=gen, device=x.device, dtype=x.dtype)
    p = x.clamp(0, 1) if scale == 1.0 else x.clamp(0, 1) * scale
    return (u < p).to(x.dtype)


def latency_code(x: Tensor, T: int) -> Tensor:
    """x (B, ...) in [0, 1] -> (T, B, ...) spikes: one spike at bin round((1 - x)(T - 1)) where x > 0."""
    x = x.clamp(0, 1)
    t_spike = torch.round((1.0 - x) * (T - 1))  # (B, ...)
    bins = torch.arange(T, device=x.device, dtype=x.dtype).view(T, *([1] * x.dim()))
    return ((bins == t_spike) & (x > 0)).to(x.dtype)


def input_trace(x: Tensor, beta: float) -> Tensor:
    """x (T, B, ...) -> x~ (T, B, ...), x~_t = beta x~_{t-1} + x_t, x~_0 = x_0."""
    if x.requires_grad and torch.is_grad_enabled():  # differentiable: out of place
        acc, outs = torch.zeros_like(x[0]), []
        for t in range(x.shape[0]):
            acc = beta * acc + x[t]
            outs.append(acc)
        return torch.stack(outs)
    out = torch.empty_like(x)
    out[0].copy_(x[0])
    for t in range(1, x.shape[0]):
        torch.mul(out[t - 1], beta, out=out[t])
        out[t].add_(x[t])  # (beta x~_{t-1}) + x_t, in place
    return out


# --------------------------------------------------------------------------- neurons

def lif_no_grad(cur: Tensor, beta: Tensor) -> "tuple[Tensor, Tensor]":
    """The LIF recurrence of ``snntorch.Leaky`` (subtract reset, theta = 1) without autograd: cur (T, B, *out) input
    currents -> S, U (T, B, *out). ``U_t = (beta U_{t-1} + I_t) - theta S_{t-1}``, ``S_t = [U_t > theta]``, with
    snnTorch's order of operations, so the values are bit-identical to the Leaky module's; five in-place ops per
    bin instead of the module's dozen (the hot path of local rules, which build no graph)."""
    b = beta.clamp(0, 1).to(cur.dtype)  # as snntorch: beta.clamp(0, 1) * mem
    U, S = torch.empty_like(cur), torch.empty_like(cur)
    above = torch.empty(cur.shape[1:], dtype=torch.bool, device=cur.device)
    for t in range(cur.shape[0]):
        u = U[t]
        if t == 0:
            u.copy_(cur[0])  # U_0 = beta * 0 + I_0
        else:
            torch.mul(U[t - 1], b, out=u)
            u.add_(cur[t]).sub_(S[t - 1], alpha=THETA)
        torch.gt(u, THETA, out=above)
        S[t].copy_(above)
    return S, U


# --------------------------------------------------------------------------- encoder

class LIFBlock(nn.Module):
    """Bias-free synapse + snntorch.Leaky (subtract reset, theta = 1): (T, B, *in) -> S, U (T, B, *out)."""

    def __init__(self, synapse: nn.Module, beta: Tensor):
        super().__init__()
        snn = _leaky()
        self.synapse = synapse
        self.lif = snn.Leaky(beta=beta, threshold=THETA, reset_mechanism="subtract")
        insts = snn.SpikingNeuron.instances  # snntorch keeps every neuron module alive in a class list
        if insts and insts[-1] is self.lif:
            insts.pop()

    def forward(self, x: Tensor) -> "tuple[Tensor, Tensor]":
        T, B = x.shape[:2]
        cur = self.synapse(x.reshape(T * B, *x.shape[2:]))  # one call for all bins
        cur = cur.view(T, B, *cur.shape[1:])  # (T, B, *out)
        if not cur.requires_grad:  # no surrogate gradient to build: the same recurrence in place
            return lif_no_grad(cur, self.lif.beta)
        mem = torch.zeros_like(cur[0])
        spikes, mems = [], []
        for t in range(T):  # one vectorised LIF update per bin
            s, mem = self.lif(cur[t], mem)
            spikes.append(s.to(cur.dtype))
            mems.append(mem)
        self.lif.mem = torch.zeros(0, device=cur.device)  # drop snntorch's reference to the last state
        return torch.stack(spikes), torch.stack(mems)


class SpikingEncoder(nn.Module):
    """LIF blocks. ``forward(x, detach_blocks=False, gen=None) -> (z, layers)`` like models/encoders.py;
    ``run(spikes_in, detach_blocks) -> [(x_l, S_l, U_l)]`` exposes every block's bins."""

    def __init__(self, cfg, obs_shape: tuple[int, int, int]):
        """cfg: a models.spiking.SpikingConfig (encoder, T, beta, beta_spread, coding, readout)."""
        super().__init__()
        e = cfg.encoder
        self.T, self.coding, self.readout, self.kind = cfg.T, cfg.coding, cfg.readout, e.kind
        self.rate_scale = float(getattr(cfg, "rate_scale", 1.0))  # Bernoulli(rate_scale x) per bin
        C, H, W = obs_shape
        blocks = []
        if e.kind == "cnn":
            c_in = C
            for c in e.channels:
                syn = nn.Conv2d(c_in, c, 3, stride=2, padding=1, bias=False)
                self._init(syn.weight, c_in * 9, e.weight_scale)
                blocks.append(LIFBlock(syn, self._betas(cfg, (c, 1, 1))))
                c_in = c
            self.width = c_in
        else:
            d_in = C * H * W
            for h in e.hidden:
                syn = nn.Linear(d_in, h, bias=False)
                self._init(syn.weight, d_in, e.weight_scale)
                blocks.append(LIFBlock(syn, self._betas(cfg, (h,))))
                d_in = h
            self.width = d_in
        self.blocks = nn.ModuleList(blocks)

    @staticmethod
    @torch.no_grad()
    def _init(w: Tensor, fan_in: int, scale: float) -> None:
        k = scale / fan_in ** 0.5
        w.uniform_(-k, k)

    @staticmethod
    def _betas(cfg, shape: tuple) -> Tensor:
        if not cfg.beta_spread:
            return torch.tensor(cfg.beta)
        return cfg.beta + cfg.beta_spread * (2 * torch.rand(shape) - 1)  # the run's seeded global RNG

    def code(self, x: Tensor, gen: Optional[torch.Generator] = None) -> Tensor:
        """x (B, C, H, W) -> input spikes (T, B, C, H, W)."""
        return rate_code(x, self.T, gen, self.rate_scale) if self.coding == "rate" else latency_code(x, self.T)

    def run(self, spikes_in: Tensor, detach_blocks: bool = False) -> "list[tuple[Tensor, Tensor, Tensor]]":
        """spikes_in (T, B, C, H, W) -> per block (input x (T, B, *in), spikes S, membrane U (T, B, *out))."""
        h = spikes_in if self.kind == "cnn" else spikes_in.flatten(2)  # mlp: (T, B, C*H*W)
        out = []
        for block in self.blocks:
            x = h.detach() if detach_blocks else h
            s, u = block(x)
            out.append((x, s, u))
            h = s
        return out

    @staticmethod
    def pooled_rate(s: Tensor) -> Tensor:
        """S (T, B, C[, H, W]) -> spikes per bin averaged over positions (B, C)."""
        r = s.mean(0)
        return r.mean(dim=(2, 3)) if r.dim() == 4 else r

    def pool(self, recs) -> "tuple[Tensor, list[Tensor]]":
        layers = [self.pooled_rate(s) for _, s, _ in recs]  # [(B, C_l)]
        z = layers[-1] * (self.T if self.readout == "count" else 1.0)  # (B, D)
        return z, layers

    def forward(self, x: Tensor, detach_blocks: bool = False, gen: Optional[torch.Generator] = None
                ) -> "tuple[Tensor, list[Tensor]]":
        """x (B, C, H, W) -> z (B, D), layers [(B, C_l)]."""
        return self.pool(self.run(self.code(x, gen), detach_blocks))


# --------------------------------------------------------------------------- shared by the spiking columns

def echo(counts: "list[Tensor]") -> "list[Tensor]":
    """Spike counts [(B, N_l)] -> the echo e = s / ||s||_1 per layer (0 where a layer was silent)."""
    out = []
    for c in counts:
        n = c.sum(1, keepdim=True)  # (B, 1)
        out.append(c / torch.where(n > 0, n, torch.ones_like(n)))
    return out


@torch.no_grad()
def spike_stats(spikes: "list[Tensor]") -> "dict[str, float]":
    """spikes [(T, B, *shape_l)] -> per block ``spiking.l{l}.rate`` (spikes per neuron and bin), ``.silent`` /
    ``.saturated`` (fraction of neurons with no spike / a spike in every bin of the view)."""
    out = {}
    for l, s in enumerate(spikes):
        n = s.sum(0)  # (B, *shape) spikes per neuron in the view
        out[f"spiking.l{l}.rate"] = float(s.mean())
        out[f"spiking.l{l}.silent"] = float((n == 0).float().mean())
        out[f"spiking.l{l}.saturated"] = float((n == s.shape[0]).float().mean())
    return out


def raster_neurons(block_shapes: "list[tuple]", k: int = 128) -> "list[Tensor]":
    """Per block, the flat indices (into the block's (C, H, W) / (N,) neurons) of at most ``k`` neurons shown in a
    raster: a conv block's neuron at the centre position of (evenly spaced) channels, an MLP block's evenly spaced
    neurons."""
    out = []
    for shape in block_shapes:
        C = shape[0]
        ch = torch.linspace(0, C - 1, min(k, C)).round().long().unique()  # (K,)
        if len(shape) == 3:
            _, Hl, Wl = shape
            out.append(ch * Hl * Wl + (Hl // 2) * Wl + Wl // 2)
        else:
            out.append(ch)
    return out
