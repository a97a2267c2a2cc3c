"""A second, independent spiking backend for cross-checks: the LIF layers of models/spiking.py and
the ESPP update of rules/espp.py written again in BrainPy (Wang et al. 2023, "BrainPy, a flexible,
integrative, efficient, and extensible framework for general-purpose brain dynamics programming",
eLife 12:e86365) on JAX, in float64. docs/architecture.md: it lives beside the torch backend and is
never in the hot path; tests/models/test_spiking_brainpy.py feeds both the same weights and input
spike trains and compares spikes and weights. Needs the ``brainpy`` extra (brainpy, jax).

Per layer (docs/reference/rules.md, ESPP; theta = 1, reset by subtraction), for a sample of T bins::

    U_t = beta U_{t-1} + W x_t - theta S_{t-1},   S_t = [U_t > theta],   U_0 = S_0 = 0
    x~_t = beta_x x~_{t-1} + x_t                  (beta_x: the layer's mean beta)
    e = s̄_prev / sum s̄_prev (0 if silent)        b = +1 same episode, -1 after a start, 0 no previous sample
    offline: gate_b = [-b sum_t <S_t, e> + c_b T N > 0]
    online:  gate_tb = [-b <S_t, e> + c_b mean_j x_t,j > 0] [mean_j x_t,j > input_threshold]
    ΔW = sum_{t, b} b gate e ⊙ psi(U_t - theta) ⊗ x~_t,   psi(u) = 1 / (pi (1 + (pi u)²))
    W <- W + lr ΔW                                 (SGD on -ΔW)

The neurons are a ``brainpy.DynamicalSystem`` whose membrane and spikes are ``brainpy.math.Variable``
state, stepped through the bins with ``brainpy.math.for_loop``; the rule is plain ``jax.numpy``.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

__all__ = ["LIFLayerBP", "run_layers_bp", "espp_dw_bp", "train_espp_bp"]

THETA = 1.0


def _bp():
    import brainpy as bp
    import brainpy.math as bm

    bm.enable_x64()
    return bp, bm


def _make_layer_class():
    bp, bm = _bp()
    import jax.numpy as jnp

    class LIFLayerBP(bp.DynamicalSystem):
        """W (N, J) bias-free synapses onto N LIF neurons with decay beta (N,); one ``update`` per bin."""

        def __init__(self, W, beta, batch: int):
            super().__init__()
            self.W = jnp.asarray(W, dtype=jnp.float64)
            self.beta = jnp.broadcast_to(jnp.asarray(beta, dtype=jnp.float64), (self.W.shape[0],))
            self.V = bm.Variable(jnp.zeros((batch, self.W.shape[0]), dtype=jnp.float64))
            self.S = bm.Variable(jnp.zeros((batch, self.W.shape[0]), dtype=jnp.float64))

        def update(self, x):
            """x (B, J) input spikes of one bin -> S, V (B, N)."""
            self.V.value = self.beta * self.V.value + x @ self.W.T - THETA * self.S.value
            self.S.value = (self.V.value > THETA).astype(jnp.float64)
            return self.S.value, self.V.value

    return LIFLayerBP


def LIFLayerBP(W, beta, batch: int):  # noqa: N802 - a factory for the lazily defined class
    return _make_layer_class()(W, beta, batch)


def run_layers_bp(Ws: Sequence, betas: Sequence, x) -> "list[tuple[np.ndarray, np.ndarray, np.ndarray]]":
    """x (T, B, J) input spikes -> per layer (input (T, B, J_l), spikes S, membrane V (T, B, N_l)), numpy."""
    _, bm = _bp()
    import jax.numpy as jnp

    h = jnp.asarray(x, dtype=jnp.float64)
    out = []
    for W, beta in zip(Ws, betas):
        layer = LIFLayerBP(W, beta, h.shape[1])
        S, V = bm.for_loop(layer.update, h)
        out.append((np.asarray(h), np.asarray(S), np.asarray(V)))
        h = S
    return out


def espp_dw_bp(x, S, V, e, b, beta_x: float, c_pos: float, c_neg: float, online: bool = False,
               input_threshold: float = 0.05) -> np.ndarray:
    """One layer's ΔW (N, J) from its input x (T, B, J), spikes S and membrane V (T, B, N), echo e
    (B, N) and broadcast b (B,)."""
    _bp()
    import jax
    import jax.numpy as jnp

    x, S, V, e, b = (jnp.asarray(a, dtype=jnp.float64) for a in (x, S, V, e, b))
    T, _, N = S.shape

    def trace_step(acc, xt):
        acc = beta_x * acc + xt
        return acc, acc

    _, xtr = jax.lax.scan(trace_step, jnp.zeros_like(x[0]), x)  # (T, B, J)
    c = jnp.where(b > 0, c_pos, c_neg)  # (B,)
    overlap = jnp.einsum("tbn,bn->tb", S, e)
    if online:
        act = x.mean(-1)  # (T, B)
        gate = (-b * overlap + c * act > 0) & (act > input_threshold) & (b != 0)
    else:
        gate = jnp.broadcast_to((-b * overlap.sum(0) + c * T * N > 0) & (b != 0), overlap.shape)
    surr = 1.0 / (jnp.pi * (1.0 + (jnp.pi * (V - THETA)) ** 2))
    post = (b * gate)[..., None] * e[None] * surr  # (T, B, N)
    return np.asarray(jnp.einsum("tbn,tbj->nj", post, xtr))


def train_espp_bp(Ws: Sequence, betas: Sequence, beta_x: float, xs, starts, lr: float, c_pos: float, c_neg: float,
                  online: bool = False, input_threshold: float = 0.05):
    """K samples xs (K, T, B, J) presented in turn with episode starts (K, B) bool; the echo of sample k
    is the L1-normalised spike counts of sample k-1 (none for k = 0). -> (weights after each update
    [[W_l]], spikes of each sample [[S_l (T, B, N_l)]])."""
    Ws = [np.asarray(W, dtype=np.float64).copy() for W in Ws]
    prev = None
    hist_W, hist_S = [], []
    for k in range(len(xs)):
        recs = run_layers_bp(Ws, betas, xs[k])
        B = recs[0][1].shape[1]
        if prev is None:
            b = np.zeros(B)
        else:
            b = np.where(np.asarray(starts[k]), -1.0, 1.0)
        for l, (x, S, V) in enumerate(recs):
            if prev is None:
                e = np.zeros((B, S.shape[-1]))
            else:
                n = prev[l].sum(1, keepdims=True)
                e = np.where(n > 0, prev[l] / np.where(n > 0, n, 1.0), 0.0)
            Ws[l] = Ws[l] + lr * espp_dw_bp(x, S, V, e, b, beta_x, c_pos, c_neg, online, input_threshold)
        prev = [S.sum(0) for _, S, _ in recs]  # (B, N_l) counts
        hist_W.append([W.copy() for W in Ws])
        hist_S.append([S for _, S, _ in recs])
    return hist_W, hist_S
