"""Evaluation must not depend on state that training re-estimates from the data (issue 27).

A BatchNorm layer's running statistics follow each phase's data during training and are what
evaluation normalises with, so a column that has them "forgets" (and replay "protects" it) with
no weight changing, and no parameter-level rule can do anything about it. The packaged columns
therefore normalise per sample (``encoder.output_norm: layer``, ``action_norm: layer``). These
tests fail if any packaged protocol's column again carries such buffers, or if its evaluation
output changes after training-mode forward passes that update no parameter.
"""
from __future__ import annotations

import pytest
import torch

import colsim.models  # noqa: F401  (registers)
import colsim.protocols  # noqa: F401
import colsim.rules  # noqa: F401
from colsim import registry
from colsim.build import build_run
from colsim.column import running_stat_buffers
from colsim.config import resolve_run_config
from colsim.simulate import _seeded

PROTOCOLS = registry.preset_names("protocols")
WITH_BUFFERS = {"seqjepa_resnet18", "seqjepa_cnn_bn"}  # the paper's ResNet-18 (BN inside), the old default


def _eval_outputs(column, steps, batch):
    """z and z_AGG of an eval-mode pass over ``steps`` from a fresh window -> list of tensors."""
    column.eval()
    torch.manual_seed(0)  # a column whose state seeds its own noise (echospike's rate coding) draws it the same way
    cs = column.init_state(batch, "cpu")
    out = []
    with torch.no_grad():
        for i, st in enumerate(steps):
            cs, tr = column(cs, st.obs, st.action, st.start | (i == 0))
            out += [tr["z"].clone(), tr["z_agg"].clone()]
    return out


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_packaged_protocol_evaluation_is_unchanged_by_training_mode_passes(protocol):
    cfg = resolve_run_config(protocol, rule="frozen", overrides=["protocol.stream.batch=4"])
    world, column, *_ = build_run(cfg)
    assert running_stat_buffers(column) == [], protocol
    ph = cfg.protocol.phases
    batch = cfg.protocol.stream.batch
    streams = [world.stream(batch, cfg.protocol.stream.episode_length, p.classes, p.world) for p in (ph[0], ph[-1])]
    states = [s.init(_seeded(3, i)) for i, s in enumerate(streams)]
    probe = []
    for _ in range(3):
        states[0], st = streams[0].step(states[0])
        probe.append(st)
    before = _eval_outputs(column, probe, batch)
    params = {n: p.detach().clone() for n, p in column.named_parameters()}
    column.train(True)  # what the frozen arm does: training-mode passes over another phase's data, no update
    cs = column.init_state(batch, "cpu")
    with torch.no_grad():
        for i in range(6):
            states[1], st = streams[1].step(states[1])
            cs, _ = column(cs, st.obs * 3.0 + 1.0, st.action * 2.0, st.start | (i == 0))  # shifted statistics
    after = _eval_outputs(column, probe, batch)
    assert all(torch.equal(params[n], p) for n, p in column.named_parameters())
    for a, b in zip(before, after):
        assert torch.equal(a, b), protocol


@pytest.mark.parametrize("model", registry.preset_names("models"))
def test_only_the_named_presets_keep_running_statistics(model):
    cfg = resolve_run_config("stationary", model=model, rule="frozen")
    column = build_run(cfg)[1]
    bufs = running_stat_buffers(column)
    assert bool(bufs) == (model in WITH_BUFFERS), (model, bufs[:4])


def test_the_bn_column_does_drift_so_the_check_above_can_fail():
    """The same check on the old default (BatchNorm on z and in e(a)) sees the evaluation change."""
    cfg = resolve_run_config("action_shift", model="seqjepa_cnn_bn", rule="frozen", overrides=["protocol.stream.batch=4"])
    world, column, *_ = build_run(cfg)
    assert running_stat_buffers(column)[:2] == ["encoder.out_norm.running_mean", "encoder.out_norm.running_var"]
    s = world.stream(4, 8, None, cfg.protocol.phases[0].world)
    ss = s.init(_seeded(3, 0))
    steps = []
    for _ in range(3):
        ss, st = s.step(ss)
        steps.append(st)
    before = _eval_outputs(column, steps, 4)
    column.train(True)
    cs = column.init_state(4, "cpu")
    with torch.no_grad():
        for i in range(6):
            ss, st = s.step(ss)
            cs, _ = column(cs, st.obs * 3.0 + 1.0, st.action * 2.0, st.start | (i == 0))
    after = _eval_outputs(column, steps, 4)
    assert not all(torch.equal(a, b) for a, b in zip(before, after))
