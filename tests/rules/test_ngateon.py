"""n-GateON as its reference code defines it, the `metaplastic` preset's default (Barry, Gerstner & Bellec 2025;
GATEONMNIST pkg/nGateON.py, pkg/simulator.py): eps = 0, availability accumulated during a context and applied at
the switch (the phase end), the optimizer's state reset there, context gates on activity. Hand-computed cases."""
from __future__ import annotations

import torch

from colsim.config import resolve_run_config
from colsim.rule import optimizer_reset_requests
from colsim.rules.metaplastic import MetaplasticConfig, availability_step, context_gate, metaplastic
from colsim.simulate import phase_end


class _Lin(torch.nn.Module):
    """Two units h = w x + b, w = [1, 2], b = 0."""

    def __init__(self):
        super().__init__()
        self.lin = torch.nn.Linear(1, 2)
        with torch.no_grad():
            self.lin.weight.copy_(torch.tensor([[1.0], [2.0]]))
            self.lin.bias.zero_()

    def trainable(self):
        return dict(self.named_parameters())


def test_preset_default_is_the_reference_and_the_variant_is_named():
    cfg = resolve_run_config("permuted_digits", rule="backprop+metaplastic", overrides=[], seed=0)
    m = cfg.rule.wrap[0]
    assert (m.eps, m.eta_a, m.apply, m.switch, m.reset_optimizer, m.context_gates) == \
        (0.0, 0.01, "switch", "phase", True, "activity")
    old = resolve_run_config("permuted_digits", rule="backprop+metaplastic_step", overrides=[], seed=0).rule.wrap[0]
    assert (old.eps, old.apply, old.reset_optimizer, old.context_gates) == (1.0, "step", False, "off")


def test_eps_zero_availability_only_falls():
    """a = [1, 0.5, 0.5], I = [0, 1, 2] (mean 1, Ĩ = I), eta_a = 0.1.
    eps = 0: a - 0.1 a Ĩ = [1, 0.45, 0.4] — a unit of importance 0 keeps its availability, none rises.
    eps = 1 (the step variant): a - 0.1 a (Ĩ - 1) = [1.1 -> 1, 0.5, 0.45]... and a = 0.5 with Ĩ = 0 rises to 0.55:
    zero-sum around the layer mean, so protection fades."""
    a = torch.tensor([1.0, 0.5, 0.5])
    imp = torch.tensor([0.0, 1.0, 2.0])
    assert torch.allclose(availability_step(a, imp, 0.1, 0.0), torch.tensor([1.0, 0.45, 0.4]))
    assert torch.allclose(availability_step(a, imp, 0.1, 1.0), torch.tensor([1.0, 0.5, 0.45]))
    assert torch.allclose(availability_step(torch.tensor([0.5, 1.0]), torch.tensor([0.0, 2.0]), 0.1, 1.0),
                          torch.tensor([0.55, 0.9]))
    a = torch.ones(4)
    for t in range(50):  # any importance: never above the previous value
        new = availability_step(a, torch.rand(4, generator=torch.Generator().manual_seed(t)), 0.1, 0.0)
        assert bool((new <= a).all())
        a = new


def test_availability_accumulates_in_a_context_and_is_applied_at_the_switch(h):
    """L = sum_b (h_1 + h_2), x = [1, 1]: dL/dh = 1, per-sample h dL/dh = w x = [1, 2], I = [1, 4], Ĩ = [0.4, 1.6].
    eta_a = 0.1, eps = 0, weights fixed: the running copy â is multiplied by 1 - 0.1 Ĩ = [0.96, 0.84] per step,
    [0.96, 0.84] -> [0.9216, 0.7056] (the reference's tmp_availabilities, updated from themselves; summing the
    decrements of the applied a would give [0.92, 0.68]). The applied a stays 1 until the phase end, then = â."""
    col = _Lin()
    rule = metaplastic(MetaplasticConfig(eta_a=0.1), h.loss_rule(lambda p, tr: col.lin(tr["x"]).sum()), col)
    params = col.trainable()
    state = rule.init(params)
    x = torch.ones(2, 1)
    ones = {n: torch.ones_like(p) for n, p in params.items()}
    for expected in ([0.96, 0.84], [0.9216, 0.7056]):
        _, state, m = rule.update(params, state, {"x": x})
        assert torch.allclose(state["a_next"]["lin.weight"], torch.tensor(expected), atol=1e-6)
        assert torch.equal(state["a"]["lin.weight"], torch.ones(2))  # not applied within the context
        out, state = rule.post_step(params, state, ones)
        assert torch.equal(out["lin.weight"], torch.ones(2, 1))  # the update is not scaled yet
    assert abs(m["metaplastic.a_next.lin.mean"] - 0.8136) < 1e-6 and m["metaplastic.a.lin.mean"] == 1.0
    with optimizer_reset_requests() as reset:
        state = rule.boundary(params, state, "phase_end")
    assert reset  # the optimizer reset is requested at the switch
    assert torch.allclose(state["a"]["lin.weight"], torch.tensor([0.9216, 0.7056]))
    assert state["context"] == 1 and state["switches"] == 1
    out, state = rule.post_step(params, state, ones)
    assert torch.allclose(out["lin.weight"], torch.tensor([[0.9216], [0.7056]]))
    assert torch.allclose(out["lin.bias"], torch.tensor([0.9216, 0.7056]))


def test_the_optimizer_state_is_reset_at_the_switch(h):
    """Adam after the phase end moves as on its first step: m̂ / sqrt(v̂) = sign(g), so Δθ = -lr sign(g) (the gate of
    a = 1 unit, eta_a = 0); without the reset (the step variant) the second step's moments differ and Δθ != -lr."""
    for reset_optimizer, first_step_again in ((True, True), (False, False)):
        col = _Lin()
        cfg = MetaplasticConfig(eta_a=0.0, reset_optimizer=reset_optimizer, context_gates="off")
        rule = metaplastic(cfg, h.fake_rule(lambda p, tr: {"lin.weight": tr["g"], "lin.bias": torch.zeros(2)}), col)
        params = col.trainable()
        opt = torch.optim.Adam(params.values(), lr=0.1)
        state = rule.init(params)
        state, _, _ = h.step(rule, params, state, {"g": torch.tensor([[1.0], [-3.0]])}, opt)
        assert len(opt.state) == 2
        state = phase_end(params, rule, state, opt)
        assert (len(opt.state) == 0) == reset_optimizer
        before = params["lin.weight"].detach().clone()
        state, _, _ = h.step(rule, params, state, {"g": torch.tensor([[0.5], [1.0]])}, opt)
        step = params["lin.weight"].detach() - before
        assert torch.allclose(step, torch.tensor([[-0.1], [-0.1]]), atol=1e-6) == first_step_again


def test_context_gates_act_on_activity_by_default_and_switch_at_the_phase_end():
    """The default preset on the supervised column: the encoder's Linear outputs are multiplied by g = tanh([U c]+)²
    of the current context. After the phase end, training forwards use context 1; evaluation forwards still
    context 0 (the one trained last) until the next update."""
    from colsim.build import build_run

    cfg = resolve_run_config("permuted_digits", rule="backprop+metaplastic", overrides=[], seed=0)
    world, column, rule, local, opt = build_run(cfg)
    params = column.trainable()
    state = rule.init(params)
    lin = next(m for n, m in column.named_modules() if n.startswith("encoder") and isinstance(m, torch.nn.Linear))
    w = next(n for n, p in params.items() if p is lin.weight)
    x = torch.randn(3, lin.in_features, generator=torch.Generator().manual_seed(0))
    plain = torch.nn.functional.linear(x, lin.weight, lin.bias).detach()
    U = state["U"][w]
    g0, g1 = context_gate(U, 0), context_gate(U, 1)
    assert 0 < int((g0 == 0).sum()) < g0.numel()  # a subnetwork: some units silent, others not
    column.train()
    assert torch.allclose(lin(x), plain * g0)
    state = phase_end(params, rule, state, opt)
    assert torch.allclose(lin(x), plain * g1)  # training: the new context
    column.eval()
    assert torch.allclose(lin(x), plain * g0)  # probes: the context trained last
    column.train()


def test_units_the_context_silences_keep_their_availability():
    """A unit with gate 0 in the current context has h dL/dh = 0 on every sample, so importance 0: its running
    availability stays exactly 1 (eps = 0), free for the next context; the active ones fall (those not silenced
by their ReLU on this batch)."""
    from colsim.build import build_run

    cfg = resolve_run_config("permuted_digits", rule="backprop+metaplastic", overrides=[], seed=0)
    world, column, rule, local, opt = build_run(cfg)
    params = column.trainable()
    state = rule.init(params)
    column.train()
    gen = torch.Generator().manual_seed(0)
    obs = torch.rand(16, *world.spec.obs_shape, generator=gen)
    trace = column.forward_inputs({"obs": obs, "target": torch.randint(0, 10, (16,), generator=gen)})
    _, state, m = rule.update(params, state, trace)
    assert m["metaplastic.per_sample"] == 1.0
    for w, g in ((w, context_gate(U, 0)) for w, U in state["U"].items() if w.startswith("encoder")):
        a = state["a_next"][w]
        assert int((g == 0).sum()) > 0 and torch.equal(a[g == 0], torch.ones(int((g == 0).sum())))
        assert float(a[g > 0].min()) < 0.99 and float(a[g > 0].mean()) < 1


def test_own_context_evaluation_runs_each_probe_set_in_its_phase_context(tmp_path):
    """``probe_context: own`` (the reference's evaluation): training is unchanged, so every diagonal cell of the head
    matrix (task j right after phase j, when its context is the last one trained) equals the default's; the cells of
    old tasks differ, because they are read through their own context's gates instead of the newest one's."""
    import json

    import pytest
    from typer.testing import CliRunner

    from colsim.cli import app

    m = {}
    for mode in ("last", "own"):
        res = CliRunner().invoke(app, [
            "run", "permuted_digits", "--rule", "backprop+metaplastic", "--steps", "60", "--out", str(tmp_path / mode),
            "--quiet", "--set", "protocol.evaluation.readouts=heads", "--set", "protocol.evaluation.probe_samples=60",
            "--set", f"rule.wrap[0].probe_context={mode}"])
        assert res.exit_code == 0, res.output
        m[mode] = json.loads((tmp_path / mode / "summary.json").read_text())["head_matrix"]
    # rows: at start, then after each phase
    assert [m["own"][j + 1][j] for j in range(5)] == pytest.approx([m["last"][j + 1][j] for j in range(5)])
    assert m["own"][5][:4] != m["last"][5][:4]
    with pytest.raises(ValueError, match="probe_context: own"):
        MetaplasticConfig(probe_context="own", context_gates="off")
