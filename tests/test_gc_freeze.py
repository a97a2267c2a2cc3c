"""simulate.run moves the objects alive at its start to Python's permanent GC generation for the run
(full collections then skip them) and gives them back at its end; COLSIM_GC_FREEZE=0 opts out."""
from __future__ import annotations

import gc

import pytest

from _tiny import TINY
from colsim.build import build_run
from colsim.config import resolve_run_config
from colsim.record import MemoryRecorder
from colsim.simulate import run


@pytest.mark.parametrize("env,frozen", [("1", True), ("0", False)])
def test_run_freezes_the_heap_for_its_duration(monkeypatch, env, frozen):
    monkeypatch.setenv("COLSIM_GC_FREEZE", env)
    cfg = resolve_run_config("stationary", rule="backprop", steps=2,
                             overrides=TINY + ["protocol.evaluation.at_start=false",
                                               "protocol.evaluation.probe_samples=10"])
    world, column, rule, local, opt = build_run(cfg)
    before = gc.get_freeze_count()
    during: list[int] = []
    res = run(column, rule, cfg.protocol, MemoryRecorder(), world=world, optimizer=opt, local=local,
              on_step=lambda info: during.append(gc.get_freeze_count()))
    assert res.status == "completed" and len(during) == 2
    if frozen:
        assert all(n > 1000 for n in during)  # the modules, parameters and libraries alive at the start
    else:
        assert all(n == before for n in during)
    assert gc.get_freeze_count() == before  # given back at the end
