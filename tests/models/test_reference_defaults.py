"""Defaults that follow the papers / reference code (issue 11, items 4 and 7): no output norm on z
by default (seq-JEPA has none), an EMA horizon in steps rather than the run's length, CRATE-alpha's
LayerNorm eps, ToST's qkv bias and the causal TSSA's per-head, per-position denominator bias."""
from __future__ import annotations

import math

import pytest
import torch

from colsim import registry
from colsim.models.crate import CrateAggregator, CrateAlphaLayer, CrateLayer
from colsim.models.seq_jepa_parts import AggregatorConfig, EncoderConfig, TeacherConfig, build_aggregator, ema_momentum
from colsim.models.tost import TSSA, ToSTAggregator, causal_tssa, tssa
from _tiny import TINY

D64 = torch.float64
PRESETS = ["seqjepa_cnn", "seqjepa_cnn_cr", "seqjepa_crate", "seqjepa_crate_alpha", "seqjepa_tost", "seqjepa_resnet18"]


def build(model: str = "seqjepa_cnn", extra=()):
    """The TINY-sized run of ``model`` under backprop: (cfg, world, column, rule, local, optimizer)."""
    from colsim.build import build_run
    from colsim.config import resolve_run_config

    cfg = resolve_run_config("stationary", rule="backprop", model=model, overrides=list(TINY) + list(extra), seed=0)
    return (cfg, *build_run(cfg))


# --------------------------------------------------------------------------- output norm

def test_output_norm_is_off_by_default_and_every_preset_states_it():
    """Off in the encoder config and in the paper's column (seqjepa_resnet18); the CPU-sized presets normalise
    z per sample (LayerNorm, no running statistics: issue 27) and the old BatchNorm column stays a preset."""
    import colsim.models  # noqa: F401

    assert EncoderConfig().output_norm == "none"
    assert EncoderConfig(output_norm=True).output_norm == "batch"  # the former boolean still reads
    want = {"seqjepa_resnet18": "none", "seqjepa_cnn": "layer", "seqjepa_cnn_cr": "layer",
            "seqjepa_crate": "layer", "seqjepa_crate_alpha": "layer", "seqjepa_tost": "layer"}
    assert set(want) == set(PRESETS)
    for name, kind in want.items():
        cfg = registry.MODELS["seqjepa"].config.model_validate(registry.preset("models", name))
        assert cfg.encoder.output_norm == kind, name
    _, _, column, *_ = build("seqjepa_cnn", extra=["model.encoder.output_norm=false"])
    assert column.encoder._modules.get("out_norm") is None
    assert column.target_encoder._modules.get("out_norm") is None


def test_output_norm_layer_standardises_each_z_over_its_units():
    _, _, column, *_ = build("seqjepa_cnn")
    column.train()
    x = torch.rand(8, *column.spec.obs_shape, generator=torch.Generator().manual_seed(0))
    z, layers = column.encoder(x)
    raw = layers[-1]  # (B, D) the pooled last block, before the norm
    want = (raw - raw.mean(1, keepdim=True)) / torch.sqrt(raw.var(1, unbiased=False, keepdim=True) + 1e-5)
    torch.testing.assert_close(z, want, atol=1e-5, rtol=1e-4)
    column.eval()
    torch.testing.assert_close(column.encoder(x)[0], z)  # no running statistics: the same in evaluation
    torch.testing.assert_close(column.encoder(x[:1])[0], z[:1])  # and for any batch


def test_output_norm_batch_stays_an_option_and_standardises_z_over_the_batch():
    _, _, column, *_ = build("seqjepa_cnn", extra=["model.encoder.output_norm=batch"])
    assert column.encoder._modules.get("out_norm") is not None
    column.train()
    x = torch.rand(8, *column.spec.obs_shape, generator=torch.Generator().manual_seed(0))
    z, layers = column.encoder(x)
    raw = layers[-1]  # (B, D) the pooled last block, before the norm
    want = (raw - raw.mean(0)) / torch.sqrt(raw.var(0, unbiased=False) + 1e-5)  # BatchNorm1d(affine=False)
    torch.testing.assert_close(z, want, atol=1e-5, rtol=1e-4)


def test_action_embedding_is_a_per_sample_layernorm_of_a_linear_map():
    """e(a) = LN(W a + b) without affine (action_norm: layer, the default); masked-out entries are 0."""
    from colsim.models.seq_jepa_parts import ActionEmbed

    torch.manual_seed(0)
    emb = ActionEmbed(4, 8)
    a = torch.randn(5, 4)
    h = a @ emb.linear.weight.T + emb.linear.bias
    want = (h - h.mean(1, keepdim=True)) / torch.sqrt(h.var(1, unbiased=False, keepdim=True) + 1e-5)
    mask = torch.tensor([True, False, True, True, False])
    out = emb(a, mask)
    torch.testing.assert_close(out[mask], want[mask], atol=1e-6, rtol=1e-5)
    assert torch.equal(out[~mask], torch.zeros(2, 8))
    emb.eval()
    torch.testing.assert_close(emb(a, mask), out)
    assert list(emb.buffers()) == []
    bn = ActionEmbed(4, 8, "batch")
    assert [n for n, _ in bn.named_buffers()] == ["norm.running_mean", "norm.running_var", "norm.num_batches_tracked"]


def test_default_column_carries_the_coding_rate_term_on_z():
    """The anti-collapse role of the former BatchNorm on z is the coding-rate term on z
    (``reg.coding_rate.z`` = logdet(I + 256 C) of the batch of z); seqjepa_cnn_cr is now an alias, and
    seqjepa_cnn_bn the former default (BatchNorms, no term)."""
    from colsim.config import load_protocol
    from colsim.models.regularizers import coding_rate

    base, cr = registry.preset("models", "seqjepa_cnn"), registry.preset("models", "seqjepa_cnn_cr")
    assert cr == base and len(base["regularizers"]) == 1  # (YAML reads the key `on` as True; the config maps it back)
    assert load_protocol("stationary")["model"] == "seqjepa_cnn_cr"
    bn = registry.preset("models", "seqjepa_cnn_bn")
    assert (bn["encoder"]["output_norm"], bn["action_norm"], bn["regularizers"]) == ("batch", "batch", [])

    _, _, column, *_ = build("seqjepa_cnn")
    (term,) = column.regularizers
    assert (term.name, term.on, term.weight, term.options()) == ("coding_rate", "z", 0.003,
                                                                      {"kind": "cov", "eps2": 0.5, "alpha": None})
    z = torch.randn(8, 128, generator=torch.Generator().manual_seed(0), dtype=D64)
    zc = z - z.mean(0)
    want = torch.logdet(torch.eye(128, dtype=D64) + 256.0 / 7 * zc.T @ zc)  # alpha d/eps2 = 128/0.5, C over m-1
    torch.testing.assert_close(coding_rate(z, **term.options()), want)


# --------------------------------------------------------------------------- EMA horizon

def test_ema_momentum_is_constant_by_default():
    t = TeacherConfig()
    assert t.horizon_steps == 0
    assert [ema_momentum(t, k) for k in (0, 1, 1000, 10 ** 6)] == [0.996] * 4


def test_ema_momentum_cosine_over_the_horizon_then_flat():
    t = TeacherConfig(momentum=0.996, momentum_end=1.0, horizon_steps=100)
    # m(k) = 1 - 0.004 (cos(pi k / 100) + 1) / 2
    assert ema_momentum(t, 0) == pytest.approx(0.996)
    assert ema_momentum(t, 50) == pytest.approx(0.998)
    assert ema_momentum(t, 25) == pytest.approx(1 - 0.004 * (math.cos(math.pi / 4) + 1) / 2)
    assert ema_momentum(t, 100) == pytest.approx(1.0)
    assert ema_momentum(t, 5000) == pytest.approx(1.0)


def _teacher_after(column, step: int) -> float:
    """Set target = 0, online = 1 everywhere, apply one update_target(step); return the target's value."""
    with torch.no_grad():
        for p in column.target_encoder.parameters():
            p.zero_()
        for p in column.encoder.parameters():
            p.fill_(1.0)
    column.update_target(step)
    vals = torch.cat([p.flatten() for p in column.target_encoder.parameters()])
    assert torch.allclose(vals, vals[0].expand_as(vals))
    return float(vals[0])


def test_update_target_takes_the_integer_step_not_a_fraction_of_the_run():
    _, _, column, *_ = build("seqjepa_cnn")
    # constant momentum 0.996: target <- 0.996 * 0 + 0.004 * 1 after any step
    assert _teacher_after(column, 1) == pytest.approx(0.004, abs=1e-7)
    assert _teacher_after(column, 10_000) == pytest.approx(0.004, abs=1e-7)
    _, _, column, *_ = build("seqjepa_cnn", extra=["model.teacher.horizon_steps=10"])
    assert _teacher_after(column, 5) == pytest.approx(0.002, abs=1e-7)  # m = 0.998 halfway
    assert _teacher_after(column, 10) == pytest.approx(0.0, abs=1e-7)  # m = 1 from the horizon on


def test_update_target_equals_one_lerp_per_tensor_and_copies_buffers_after_to():
    """The fused EMA (seq_jepa_parts.ema_update) gives the values of one ``lerp_`` per parameter, bit for bit,
    copies every buffer, and still reaches the column's tensors after ``.to()`` replaced them (on the
    BatchNorm column, the one with buffers)."""
    _, _, column, *_ = build("seqjepa_cnn_bn")
    column.double()  # replaces every buffer and every parameter's data: the EMA must follow
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in list(column.encoder.parameters()) + list(column.target_encoder.parameters()):
            p.copy_(torch.randn(p.shape, generator=g, dtype=p.dtype))
        for b in column.encoder.buffers():
            b.copy_(torch.randint(1, 9, b.shape, generator=g).to(b.dtype))
    want = [t.detach().clone().lerp_(s.detach(), 1 - 0.996)
            for t, s in zip(column.target_encoder.parameters(), column.encoder.parameters())]
    column.update_target(1)  # constant momentum 0.996
    got = list(column.target_encoder.parameters())
    assert got[0].dtype == torch.float64 and len(got) == len(want) == 4  # TINY: two conv layers
    assert all(torch.equal(a, b) for a, b in zip(got, want))
    bufs = list(zip(column.target_encoder.buffers(), column.encoder.buffers()))
    assert len(bufs) == 3 and all(torch.equal(a, b) for a, b in bufs)  # BatchNorm mean, var, count


@pytest.mark.parametrize("bad, msg", [
    (["model.teacher.momentum_end=0.999"], "horizon_steps"),
    (["model.teacher.kind=stopgrad", "model.teacher.horizon_steps=100"], "teacher.horizon_steps"),
    (["model.aggregator.qkv_bias=true"], "aggregator.qkv_bias"),  # transformer: no such option
    (["model.aggregator.kind=tost", "model.aggregator.ln_eps=1e-6"], "aggregator.ln_eps"),
])
def test_teacher_and_block_options_are_validated(bad, msg):
    from colsim.config import ConfigError

    with pytest.raises((ConfigError, ValueError), match=msg):
        build("seqjepa_cnn", extra=bad)


# --------------------------------------------------------------------------- CRATE / CRATE-alpha LayerNorm eps

def _ln_of_tiny_vector(ln: torch.nn.LayerNorm) -> float:
    """LN([1e-3, -1e-3, ...]) = ±1e-3 / sqrt(1e-6 + eps) (unit gain, zero bias at init):
    0.7071 for eps 1e-6, 0.3015 for eps 1e-5."""
    d = ln.normalized_shape[0]
    x = torch.tensor([1e-3, -1e-3] * (d // 2))[None]
    with torch.no_grad():
        return float(ln(x)[0, 0])


def test_crate_alpha_layernorm_eps_is_the_references():
    layer = CrateAlphaLayer(2, heads=1)
    assert layer.ln1.eps == layer.ln2.eps == 1e-6
    assert _ln_of_tiny_vector(layer.ln1) == pytest.approx(1 / math.sqrt(2), rel=1e-4)
    assert CrateLayer(2, heads=1).ln1.eps == 1e-5  # vanilla CRATE keeps nn.LayerNorm's default
    agg = CrateAggregator(8, 1, 2, alpha=True)
    assert {m.eps for m in agg.modules() if isinstance(m, torch.nn.LayerNorm)} == {1e-6}
    assert _ln_of_tiny_vector(agg.norm) == pytest.approx(1 / math.sqrt(2), rel=1e-4)
    agg = CrateAggregator(8, 1, 2, alpha=True, ln_eps=1e-5)
    assert _ln_of_tiny_vector(agg.layers[0].ln1) == pytest.approx(1e-3 / math.sqrt(1.1e-5), rel=1e-4)
    agg = build_aggregator(AggregatorConfig(kind="crate_alpha", layers=1, heads=2), 8, 3)
    assert agg.layers[0].ln1.eps == 1e-6


# --------------------------------------------------------------------------- qkv bias

def test_qkv_bias_defaults_follow_the_reference_configs():
    tost = build_aggregator(AggregatorConfig(kind="tost", layers=1, heads=2), 8, 3)
    assert tost.layers[0].attn.qkv.bias is not None  # ToST: qkv_bias=True
    crate = build_aggregator(AggregatorConfig(kind="crate", layers=1, heads=2), 8, 3)
    assert crate.layers[0].mssa.u.bias is None  # CRATE: U is bias-free
    off = build_aggregator(AggregatorConfig(kind="tost", layers=1, heads=2, qkv_bias=False), 8, 3)
    assert off.layers[0].attn.qkv.bias is None
    on = build_aggregator(AggregatorConfig(kind="crate_alpha", layers=1, heads=2, qkv_bias=True), 8, 3)
    assert on.layers[0].mssa.u.bias is not None


def test_tssa_uses_the_qkv_bias():
    """w_qkv = 0, b_qkv = b: every token's W is b. Column norms² = N b², normalised squares 1/N,
    equal scores -> pi = 1/K; m_c = b_c²; out = -(1/K) b_c / (1 + b_c²) (w_out = I, b_out = 0)."""
    N, d, K = 3, 4, 2
    b = torch.tensor([0.5, -1.0, 2.0, 0.25], dtype=D64)
    x = torch.randn(1, N, d, dtype=D64)
    args = (x, torch.zeros(d, d, dtype=D64), K, torch.ones(K, dtype=D64), torch.eye(d, dtype=D64), None)
    want = (-(1 / K) * b / (1 + b ** 2)).expand(1, N, d)
    for fn in (tssa, causal_tssa):
        out, pi = fn(*args, b_qkv=b)
        torch.testing.assert_close(pi, torch.full((1, N, K), 0.5, dtype=D64))
        torch.testing.assert_close(out, want)
    module = TSSA(d, K)
    with torch.no_grad():
        module.qkv.weight.zero_()
        module.qkv.bias.copy_(b.float())
        module.out.weight.copy_(torch.eye(d))
        module.out.bias.zero_()
    torch.testing.assert_close(module(x.float())[0], want.float())


# --------------------------------------------------------------------------- causal TSSA denominator bias

def test_causal_denominator_bias_one_token_by_hand():
    """One token: every normalised square is 1, so s_k = temp_k (p + p beta_k0). p = 2, beta_0 = 0.5,
    beta_1 = 0 -> s = (3, 2) -> pi = (e/(e+1), 1/(e+1)); without beta pi = (1/2, 1/2)."""
    x = torch.tensor([[[0.3, -0.7, 1.1, 0.2]]], dtype=D64)
    eye = torch.eye(4, dtype=D64)
    beta = torch.tensor([[0.5, 9.0], [0.0, 9.0]], dtype=D64)  # (K, n_max); position 1 is unused
    _, pi = causal_tssa(x, eye, 2, torch.ones(2, dtype=D64), eye, None, denom_bias=beta)
    e = math.e
    torch.testing.assert_close(pi[0, 0], torch.tensor([e / (e + 1), 1 / (e + 1)], dtype=D64))
    _, pi0 = causal_tssa(x, eye, 2, torch.ones(2, dtype=D64), eye, None)
    torch.testing.assert_close(pi0[0, 0], torch.tensor([0.5, 0.5], dtype=D64))


def _causal_naive(x, w_qkv, heads, temp, beta):
    """Loops: s_jk = temp_k sum_i (W_ji² / sum_{j'<=j} W_j'i² + beta_kj); pi_j = softmax_k;
    out_jc = -pi_jk W_jc / (1 + sum_{j'<=j} pi_j'k W_j'c² / (sum_{j'<=j} pi_j'k + 1e-8))."""
    B, N, d = x.shape
    p = d // heads
    out = torch.zeros(B, N, d, dtype=x.dtype)
    pis = torch.zeros(B, N, heads, dtype=x.dtype)
    for b in range(B):
        W = x[b] @ w_qkv.T
        for j in range(N):
            s = torch.zeros(heads, dtype=x.dtype)
            for k in range(heads):
                for c in range(k * p, (k + 1) * p):
                    s[k] += temp[k] * (W[j, c] ** 2 / (W[:j + 1, c] ** 2).sum() + beta[k, j])
            pis[b, j] = s.softmax(0)
        for j in range(N):
            for k in range(heads):
                for c in range(k * p, (k + 1) * p):
                    m = (pis[b, :j + 1, k] * W[:j + 1, c] ** 2).sum() / (pis[b, :j + 1, k].sum() + 1e-8)
                    out[b, j, c] = -pis[b, j, k] * W[j, c] / (1 + m)
    return out, pis


def test_causal_tssa_with_denominator_bias_matches_loops_and_stays_causal():
    g = torch.Generator().manual_seed(3)
    B, N, d, K = 2, 5, 6, 3
    x = torch.randn(B, N, d, generator=g, dtype=D64)
    w_qkv = torch.randn(d, d, generator=g, dtype=D64)
    temp = torch.rand(K, generator=g, dtype=D64) + 0.5
    beta = torch.randn(K, N + 2, generator=g, dtype=D64)
    eye = torch.eye(d, dtype=D64)
    got, pi = causal_tssa(x, w_qkv, K, temp, eye, None, denom_bias=beta)
    want, pi_want = _causal_naive(x, w_qkv, K, temp, beta)
    torch.testing.assert_close(pi, pi_want)
    torch.testing.assert_close(got, want)
    future = x.clone()
    future[:, 3:] = torch.randn(B, 2, d, generator=g, dtype=D64)
    torch.testing.assert_close(causal_tssa(future, w_qkv, K, temp, eye, None, denom_bias=beta)[0][:, :3], got[:, :3])


def test_causal_tost_owns_a_learned_denominator_bias():
    agg = ToSTAggregator(16, 2, 4, max_tokens=3, causal=True)
    nd = {n: p for n, p in agg.named_parameters() if getattr(p, "_no_weight_decay", False)}
    assert sorted(nd) == ["layers.0.attn.denom_bias", "layers.0.attn.temp", "layers.1.attn.denom_bias",
                          "layers.1.attn.temp"]
    beta = agg.layers[0].attn.denom_bias
    assert beta.shape == (4, 4) and not beta.any()  # (heads, window + [AGG]), zero init
    agg(torch.randn(2, 3, 16), torch.tensor([[False, False, True], [False, False, False]])).square().sum().backward()
    assert beta.grad is not None and bool(beta.grad.abs().sum() > 0)
    assert "layers.0.attn.denom_bias" not in dict(ToSTAggregator(16, 2, 4).named_parameters())  # non-causal: none
