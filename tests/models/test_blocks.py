"""Contracts and science invariants of the CRATE / CRATE-alpha / ToST blocks."""
import math

import pytest
import torch
from torch.autograd import gradcheck
from torch.func import functional_call

from colsim.models.crate import (
    ETA, LAMBDA, CrateAggregator, CrateAlphaLayer, CrateLayer, CratePredictor, MSSA, ista_step, mssa,
    overcomplete_ista,
)
from colsim.models.tost import TSSA, ToSTAggregator, ToSTLayer, causal_tssa, tssa

D64 = torch.float64


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _lasso(a: torch.Tensor, x: torch.Tensor, D: torch.Tensor, lam: float = LAMBDA) -> torch.Tensor:
    """Non-negative LASSO objective per row: lam ||A||_1 + 1/2 ||x - D A||² (A >= 0 assumed)."""
    return lam * a.abs().sum(-1) + 0.5 * (x - a @ D.T).square().sum(-1)


# --------------------------------------------------------------------------- ISTA invariants


@pytest.mark.parametrize("seed", range(8))
def test_ista_step_never_increases_nonnegative_lasso(seed):
    """Precondition of the descent lemma: feasible start (x >= 0) and eta <= 1/||D||₂²."""
    g = _gen(seed)
    d = 32
    D = torch.nn.init.kaiming_uniform_(torch.empty(d, d, dtype=D64), generator=g)  # CRATE's init
    assert ETA <= 1.0 / torch.linalg.matrix_norm(D, ord=2) ** 2
    x = torch.randn(256, d, generator=g, dtype=D64).abs()  # (tokens, d), feasible start A = x
    a = ista_step(x, D)
    assert (a >= 0).all()
    assert (_lasso(a, x, D) <= _lasso(x, x, D) + 1e-10).all()


@pytest.mark.parametrize("seed", range(4))
def test_overcomplete_ista_steps_descend(seed):
    g = _gen(seed)
    d = 16
    D = torch.nn.init.kaiming_uniform_(torch.empty(d, 4 * d, dtype=D64), generator=g)
    assert ETA <= 1.0 / torch.linalg.matrix_norm(D, ord=2) ** 2
    z = torch.randn(128, d, generator=g, dtype=D64)
    a1 = torch.relu(ETA * z @ D - ETA * LAMBDA)  # first step from A0 = 0
    a2 = overcomplete_ista(z, D)
    zero = torch.zeros_like(a1)
    assert (_lasso(a1, z, D) <= _lasso(zero, z, D) + 1e-10).all()
    assert (_lasso(a2, z, D) <= _lasso(a1, z, D) + 1e-10).all()


# --------------------------------------------------------------------------- MSSA formula


def _mssa_naive(x, u, heads, w_out, b_out, pad_mask=None):
    B, N, d = x.shape
    p = u.shape[0] // heads
    out = torch.zeros(B, N, heads * p, dtype=x.dtype)
    for b in range(B):
        keep = torch.ones(N, dtype=torch.bool) if pad_mask is None else ~pad_mask[b]
        for k in range(heads):
            U_k = u[k * p:(k + 1) * p].T  # (d, p)
            W = x[b] @ U_k  # (N, p)
            Wk = W[keep]
            A = torch.softmax(W @ Wk.T / math.sqrt(p), dim=-1)  # (N, n_keep)
            out[b, :, k * p:(k + 1) * p] = A @ Wk
    return out @ w_out.T + b_out


@pytest.mark.parametrize("padded", [False, True])
def test_mssa_matches_naive_formula(padded):
    g = _gen(0)
    B, N, d, K = 2, 5, 12, 3
    x = torch.randn(B, N, d, generator=g, dtype=D64)
    u, w_out = torch.randn(d, d, generator=g, dtype=D64), torch.randn(d, d, generator=g, dtype=D64)
    b_out = torch.randn(d, generator=g, dtype=D64)
    pad = torch.tensor([[False, False, True, False, True], [False] * 5]) if padded else None
    got, w = mssa(x, u, K, w_out, b_out, pad)
    assert w.shape == (B, K, N, d // K)
    torch.testing.assert_close(got, _mssa_naive(x, u, K, w_out, b_out, pad))


# --------------------------------------------------------------------------- TSSA formula


def _tssa_naive(x, w_qkv, heads, temp, w_out, b_out):
    """Straight loops over the docs/reference/models.md formulas (one sample at a time)."""
    B, N, d = x.shape
    p = d // heads
    out = torch.zeros(B, N, d, dtype=x.dtype)
    pis = torch.zeros(B, N, heads, dtype=x.dtype)
    for b in range(B):
        W = x[b] @ w_qkv.T  # (N, d)
        for j in range(N):
            s = torch.zeros(heads, dtype=x.dtype)
            for k in range(heads):
                for i in range(p):
                    col = W[:, k * p + i]
                    s[k] += temp[k] * (W[j, k * p + i] / col.norm()) ** 2
            pis[b, j] = torch.exp(s) / torch.exp(s).sum()
        for k in range(heads):
            for i in range(p):
                c = k * p + i
                m = sum(pis[b, j, k] * W[j, c] ** 2 for j in range(N)) / (pis[b, :, k].sum() + 1e-8)
                for j in range(N):
                    out[b, j, c] = -pis[b, j, k] * W[j, c] / (1 + m)
    return out @ w_out.T + b_out, pis


def _tssa_args(seed=0, B=2, N=4, d=6):
    g = _gen(seed)
    x = torch.randn(B, N, d, generator=g, dtype=D64)
    w_qkv, w_out = torch.randn(d, d, generator=g, dtype=D64), torch.randn(d, d, generator=g, dtype=D64)
    temp = torch.rand(3, generator=g, dtype=D64) + 0.5
    b_out = torch.randn(d, generator=g, dtype=D64)
    return x, w_qkv, 3, temp, w_out, b_out


def test_tssa_matches_loops_and_memberships_sum_to_one_over_heads():
    args = _tssa_args()
    got, pi = tssa(*args)
    want, pi_want = _tssa_naive(*args)
    torch.testing.assert_close(got, want)
    torch.testing.assert_close(pi, pi_want)
    torch.testing.assert_close(pi.sum(-1), torch.ones(pi.shape[:-1], dtype=D64))


def _causal_tssa_naive(x, w_qkv, heads, temp, w_out, b_out):
    """Causal definition with loops: token i's membership uses the statistics of tokens <= i
    (frozen when it arrives); token j's statistic m averages over tokens i <= j."""
    B, N, d = x.shape
    p = d // heads
    pis = torch.stack([_tssa_naive(x[:, :i + 1], w_qkv, heads, temp, w_out, b_out)[1][:, i] for i in range(N)], 1)
    out = torch.zeros(B, N, d, dtype=x.dtype)
    for b in range(B):
        W = x[b] @ w_qkv.T  # (N, d)
        for j in range(N):
            for k in range(heads):
                for c in range(k * p, (k + 1) * p):
                    m = (pis[b, :j + 1, k] * W[:j + 1, c] ** 2).sum() / (pis[b, :j + 1, k].sum() + 1e-8)
                    out[b, j, c] = -pis[b, j, k] * W[j, c] / (1 + m)
    return out @ w_out.T + b_out, pis


def test_causal_tssa_matches_loops_and_is_causal():
    x, *rest = _tssa_args(N=6)
    got, pi = causal_tssa(x, *rest)
    want, pi_want = _causal_tssa_naive(x, *rest)
    torch.testing.assert_close(got, want)
    torch.testing.assert_close(pi, pi_want)
    future = x.clone()
    future[:, 3:] = torch.randn(2, 3, 6, dtype=D64)
    torch.testing.assert_close(causal_tssa(future, *rest)[0][:, :3], got[:, :3])


def test_causal_tssa_prefix_sums_equal_tssa_on_prefixes():
    """With memberships that do not depend on the token set (temp = 0: pi = 1/K), the prefix-sum
    statistic makes token j's output equal TSSA on the prefix, and the last token equal TSSA on the
    full sequence. With temp != 0 only j = 0 is guaranteed: earlier tokens keep the memberships they
    got from their own prefix (what makes the causal form streamable, as in the ToST authors' code)."""
    x, w_qkv, heads, temp, w_out, b_out = _tssa_args(N=6)
    flat = torch.zeros_like(temp)
    causal, _ = causal_tssa(x, w_qkv, heads, flat, w_out, b_out)
    torch.testing.assert_close(causal[:, -1], tssa(x, w_qkv, heads, flat, w_out, b_out)[0][:, -1])
    for j in range(x.shape[1]):
        torch.testing.assert_close(causal[:, j], tssa(x[:, :j + 1], w_qkv, heads, flat, w_out, b_out)[0][:, j])
    causal, _ = causal_tssa(x, w_qkv, heads, temp, w_out, b_out)
    torch.testing.assert_close(causal[:, 0], tssa(x[:, :1], w_qkv, heads, temp, w_out, b_out)[0][:, 0])


@pytest.mark.parametrize("fn", [tssa, causal_tssa])
def test_tssa_padding_equals_dropping_the_padded_tokens(fn):
    x, *rest = _tssa_args(B=1, N=6)
    pad = torch.tensor([[False, True, False, False, True, False]])
    got, _ = fn(x, *rest, pad_mask=pad)
    want, _ = fn(x[:, ~pad[0]], *rest)
    torch.testing.assert_close(got[:, ~pad[0]], want)


# --------------------------------------------------------------------------- gradcheck


def _gradcheck_module(module, inputs, **kwargs):
    """gradcheck in float64 w.r.t. the inputs and every parameter (via functional_call).

    fast_mode (Jacobian checked along random projections) keeps this to ~0.1 s per module;
    the functional blocks are checked entry by entry in test_gradcheck_functional_blocks."""
    module = module.double()
    names = [n for n, _ in module.named_parameters()]
    params = [p.detach().clone().requires_grad_() for _, p in module.named_parameters()]
    inputs = [t.detach().clone().requires_grad_(t.is_floating_point()) for t in inputs]
    n_in = len(inputs)

    def f(*args):
        return functional_call(module, dict(zip(names, args[n_in:])), tuple(args[:n_in]), kwargs)

    assert gradcheck(f, (*inputs, *params), eps=1e-6, atol=1e-5, fast_mode=True)


def _x(B=2, N=3, d=8, seed=0):
    return torch.randn(B, N, d, generator=_gen(seed), dtype=D64)


def test_gradcheck_functional_blocks():
    g = _gen(1)
    x = torch.randn(2, 3, 4, generator=g, dtype=D64, requires_grad=True)
    u, w_out, b_out = (torch.randn(*s, generator=g, dtype=D64, requires_grad=True) for s in [(4, 4), (4, 4), (4,)])
    pad = torch.tensor([[False, True, False], [False] * 3])
    assert gradcheck(lambda *a: mssa(*a[:1], a[1], 2, a[2], a[3], pad)[0], (x, u, w_out, b_out))
    D = (0.3 * torch.randn(4, 4, generator=g, dtype=D64)).requires_grad_()
    assert gradcheck(ista_step, (x, D))
    temp = torch.ones(2, dtype=D64, requires_grad=True)
    for fn in (tssa, causal_tssa):
        assert gradcheck(lambda *a: fn(a[0], a[1], 2, a[2], a[3], a[4], pad)[0], (x, u, temp, w_out, b_out))


@pytest.mark.parametrize("make", [lambda: MSSA(8, 2), lambda: CrateLayer(8, 2), lambda: CrateAlphaLayer(8, 2),
                                  lambda: TSSA(8, 2), lambda: TSSA(8, 2, causal=True), lambda: ToSTLayer(8, 2)],
                         ids=["MSSA", "CrateLayer", "CrateAlphaLayer", "TSSA", "causalTSSA", "ToSTLayer"])
def test_gradcheck_layers(make):
    torch.manual_seed(0)
    _gradcheck_module(make(), [_x()], pad_mask=torch.tensor([[False, False, True], [False] * 3]))


@pytest.mark.parametrize("make", [lambda: CrateAggregator(8, 2, 2, max_tokens=4),
                                  lambda: CrateAggregator(8, 1, 2, max_tokens=4, alpha=True),
                                  lambda: ToSTAggregator(8, 2, 2, max_tokens=4),
                                  lambda: ToSTAggregator(8, 1, 2, max_tokens=4, causal=True),
                                  lambda: ToSTAggregator(8, 1, 2, max_tokens=4, causal=True, readout="agg")],
                         ids=["crate", "crate-alpha", "tost", "tost-causal", "tost-causal-agg"])
def test_gradcheck_aggregators(make):
    torch.manual_seed(0)
    _gradcheck_module(make(), [_x(), torch.tensor([[False, True, False], [False] * 3])])


def test_gradcheck_predictor():
    torch.manual_seed(0)
    g = _gen(3)
    _gradcheck_module(CratePredictor(8, 1, 2), [torch.randn(2, 8, generator=g, dtype=D64),
                                                 torch.randn(2, 8, generator=g, dtype=D64)])


# --------------------------------------------------------------------------- aggregator contracts

AGGREGATORS = {
    "crate": lambda: CrateAggregator(16, 2, 4, max_tokens=6),
    "crate-alpha": lambda: CrateAggregator(16, 2, 4, max_tokens=6, alpha=True),
    "tost": lambda: ToSTAggregator(16, 2, 4, max_tokens=6),
    "tost-causal": lambda: ToSTAggregator(16, 2, 4, max_tokens=6, causal=True),
    "tost-agg": lambda: ToSTAggregator(16, 2, 4, max_tokens=6, readout="agg"),
    "tost-causal-agg": lambda: ToSTAggregator(16, 2, 4, max_tokens=6, causal=True, readout="agg"),
}


@pytest.mark.parametrize("name", AGGREGATORS)
def test_aggregator_ignores_padded_token_content(name):
    torch.manual_seed(0)
    agg = AGGREGATORS[name]()
    tokens = torch.randn(3, 5, 16)
    pad = torch.zeros(3, 5, dtype=torch.bool)
    pad[0, 4] = pad[1, 0] = pad[1, 2] = True
    out = agg(tokens, pad)
    assert out.shape == (3, 16)
    changed = torch.where(pad[..., None], 100 * torch.randn(3, 5, 16), tokens)
    torch.testing.assert_close(agg(changed, pad), out)
    # and a non-padded token does matter
    poked = tokens.clone()
    poked[0, 1] += torch.randn(16)
    assert not torch.allclose(agg(poked, pad)[0], out[0])


@pytest.mark.parametrize("name", AGGREGATORS)
def test_aggregator_diagnostics(name):
    torch.manual_seed(0)
    agg = AGGREGATORS[name]()
    assert agg.diagnostics() == {}
    agg(torch.randn(4, 3, 16), torch.zeros(4, 3, dtype=torch.bool))
    diag = agg.diagnostics()
    assert all(isinstance(v, float) and math.isfinite(v) for v in diag.values())
    if name.startswith("crate"):
        assert set(diag) == {f"crate/l{i}/ista_nonzero" for i in range(2)} | {
            f"crate/l{i}/h{k}/coding_rate" for i in range(2) for k in range(4)}
        assert all(0 <= diag[f"crate/l{i}/ista_nonzero"] <= 1 for i in range(2))
        assert all(v > 0 for k, v in diag.items() if k.endswith("coding_rate"))
    else:
        assert set(diag) == {"tost/l0/membership_entropy", "tost/l1/membership_entropy"}
        assert all(0 <= v <= math.log(4) + 1e-6 for v in diag.values())


def test_predictor_shape_and_validation():
    pred = CratePredictor(16, layers=1, heads=4)
    assert pred(torch.randn(5, 16), torch.randn(5, 16)).shape == (5, 16)
    with pytest.raises(ValueError, match="z_agg and a_emb"):
        pred(torch.randn(5, 16), torch.randn(5, 8))


def test_construction_and_input_validation():
    with pytest.raises(ValueError, match="divisible"):
        CrateAggregator(10, heads=4)
    with pytest.raises(ValueError, match="divisible"):
        ToSTAggregator(10, heads=4)
    with pytest.raises(ValueError, match="max_tokens"):
        CrateAggregator(8, 1, 2, max_tokens=2)(torch.randn(1, 3, 8))
    with pytest.raises(ValueError, match="pad_mask"):
        ToSTAggregator(8, 1, 2)(torch.randn(1, 3, 8), torch.zeros(1, 3))
    with pytest.raises(ValueError, match="readout"):
        ToSTAggregator(8, 1, 2, readout="cls")


def test_tost_temperatures_are_tagged_no_weight_decay():
    agg = ToSTAggregator(16, 2, 4)
    temps = {n: p for n, p in agg.named_parameters() if getattr(p, "_no_weight_decay", False)}
    assert sorted(temps) == ["layers.0.attn.temp", "layers.1.attn.temp"]
    assert all(torch.equal(p, torch.ones(4)) for p in temps.values())
