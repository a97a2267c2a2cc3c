"""StepAhead: the simulator computes the stream's next Step on a second thread while the column works.

It rests on ``Stream.step`` being pure (the RNG travels in the state): every packaged world's step
leaves its input state untouched, the Steps computed ahead equal those computed in place, and a run
with look-ahead is bit-identical to one without (checkpoint resume: tests/test_fault_tolerance.py,
which runs with it on)."""
from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import pytest
import torch

from _tiny import TINY
from colsim.build import build_run, build_world
from colsim.config import resolve_run_config
from colsim.record import MemoryRecorder
from colsim.simulate import _seeded, run
from colsim.protocols import image_files as imf
from colsim.stream import StepAhead

HAVE_FASHION = (Path(imf.FASHION_MNIST) / "train-images-idx3-ubyte.gz").is_file()

WORLDS = {
    "stationary": ["protocol.world.image_size=16"],
    "objects3d": ["protocol.world.image_size=32"],
    "saccades": [],
    "fashion_nonstationary": ["protocol.world.image_size=16"],
}


def _same(a, b) -> bool:
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, tuple):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    return torch.equal(a, b)


@pytest.mark.parametrize("protocol", sorted(WORLDS))
def test_every_world_step_is_pure_and_the_steps_ahead_are_the_steps(protocol):
    if protocol == "fashion_nonstationary" and not HAVE_FASHION:
        pytest.skip("Fashion-MNIST is not installed (apt-get install dataset-fashion-mnist; .ci/run installs it)")
    cfg = resolve_run_config(protocol, overrides=WORLDS[protocol])
    world = build_world(cfg)
    ph = cfg.protocol.phases[0]
    stream = world.stream(4, 3, ph.classes, ph.world)
    state = stream.init(_seeded(0, 11, 0))
    in_place, ahead_steps = [], []
    s = state
    for _ in range(7):  # two episodes and a bit: the boundary's fresh draws included
        s, st = stream.step(s)
        in_place.append((s, st))
    s = state
    snapshot = {k: v.clone() for k, v in state.items()}
    ahead = StepAhead(stream.step)
    try:
        for t in range(7):
            s, st = ahead.step(s)
            if t + 1 < 7:
                ahead.ahead(s)
            ahead_steps.append((s, st))
    finally:
        ahead.close()
    assert _same(snapshot, state)  # the initial state, stepped twice over, is unchanged: step is pure
    for (s1, st1), (s2, st2) in zip(in_place, ahead_steps):
        assert _same(s1, s2)
        assert _same((st1.obs, st1.action, st1.start), (st2.obs, st2.action, st2.start))
        assert _same(st1.labels, st2.labels)
    assert not torch.equal(in_place[0][1].obs, in_place[1][1].obs)  # the steps do move on


def test_step_ahead_runs_on_another_thread_and_recomputes_for_another_state():
    where: list[str] = []

    def step(state):
        where.append(threading.current_thread().name)
        return {"n": state["n"] + 1}, int(state["n"])

    ahead = StepAhead(step)
    s0 = {"n": torch.tensor(0)}
    s1, out = ahead.step(s0)  # nothing ahead: computed here
    assert out == 0 and where == [threading.current_thread().name]
    ahead.ahead(s1)
    s2, out = ahead.step(s1)  # the one computed ahead
    assert out == 1 and where[1].startswith("colsim-stream")
    ahead.ahead(s2)
    s3, out = ahead.step({"n": torch.tensor(10)})  # a restored state: the look-ahead for s2 is dropped
    assert out == 10 and int(s3["n"]) == 11
    ahead.close()
    off = StepAhead(step, enabled=False)
    off.ahead(s3)  # no thread: nothing is computed ahead
    assert off.step(s3)[1] == 11 and where[-1] == threading.current_thread().name
    # the dropped look-ahead for s2 may or may not have started before the restore: 4 or 5 calls, 3 of them here
    assert where.count(threading.current_thread().name) == 3 and len(where) in (4, 5)


def test_an_error_in_the_step_computed_ahead_surfaces_from_step():
    def step(state):
        if state == 1:
            raise ValueError("protocol.world.path: no such file")
        return state + 1, state

    ahead = StepAhead(step)
    s, _ = ahead.step(0)
    ahead.ahead(s)
    with pytest.raises(ValueError, match="protocol.world.path"):
        ahead.step(s)
    ahead.close()


def _run(step_ahead: bool):
    cfg = resolve_run_config("nonstationary", rule="backprop", steps=6,
                             overrides=TINY + ["protocol.evaluation.probe_samples=10"])
    torch.manual_seed(0)
    world, column, rule, local, opt = build_run(cfg)
    rec = MemoryRecorder()
    res = run(column, rule, cfg.protocol, rec, world=world, optimizer=opt, local=local, seed=0,
              step_ahead=step_ahead)
    return res, rec, column.state_dict()


def test_a_run_with_the_look_ahead_is_bit_identical_to_one_without():
    (ra, reca, pa), (rb, recb, pb) = _run(True), _run(False)
    assert ra.status == rb.status == "completed" and ra.steps == rb.steps == 6
    assert pa.keys() == pb.keys() and all(torch.equal(pa[k], pb[k]) for k in pa)
    keys = sorted(k for k in reca.metrics[0][1] if k != "steps_per_s")  # the rate is wall-clock
    ma = np.array([[r[k] for k in keys] for _, r in reca.metrics])
    mb = np.array([[r[k] for k in keys] for _, r in recb.metrics])
    assert ma.shape == (6, len(keys)) and "loss" in keys and np.array_equal(ma, mb, equal_nan=True)
    assert ra.summary["probe_acc_agg"] == rb.summary["probe_acc_agg"]


@pytest.mark.parametrize("env,on", [(None, False), ("1", True), ("0", False)])
def test_off_by_default_and_colsim_step_ahead_1_turns_it_on(monkeypatch, env, on):
    if env is None:
        monkeypatch.delenv("COLSIM_STEP_AHEAD", raising=False)
    else:
        monkeypatch.setenv("COLSIM_STEP_AHEAD", env)
    cfg = resolve_run_config("stationary", rule="backprop", steps=4,
                             overrides=TINY + ["protocol.evaluation.at_start=false", "protocol.evaluation.probe_samples=10"])
    world, column, rule, local, opt = build_run(cfg)
    threads: list[str] = []
    make = world.stream

    def stream(*a, **kw):
        s = make(*a, **kw)

        def step(state):
            threads.append(threading.current_thread().name)
            return s.step(state)
        return s._replace(step=step)

    world.stream = stream
    assert run(column, rule, cfg.protocol, MemoryRecorder(), world=world, optimizer=opt, local=local).status == "completed"
    main = threading.current_thread().name
    assert len(threads) == 4 and threads[0] == main  # the first Step of a phase: nothing was computed ahead
    assert all(n.startswith("colsim-stream") for n in threads[1:]) if on else all(n == main for n in threads)
