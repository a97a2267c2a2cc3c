"""The Simulator: one documented step schedule, integer time, explicit RNG.

``run(column, rule, protocol, recorder, ...)`` executes, before step 0:

0. check the rule against the column (done by :mod:`colsim.build`), draw one fixed probe
   set per phase from the world's probe pool (generator seeded from the run seed), and
   evaluate once (``phase = "init"``) when ``evaluation.at_start``.

then for every phase p (a fresh stream of that phase's distribution, column windows reset)
and every step t of it:

1. take the Step from the stream (``stream.step``: obs, action, start, labels; the simulator
   adds the ``phase`` label); with ``step_ahead``, start the next one on a second thread (the world
   works while the column does; ``Stream.step`` is pure, so the run is the same bit for bit);
2. column forward (``local`` when the rule is layer-local; ``encoder_graph=False`` when the rule reads no
   graph of the encoder's pass, ``Rule.encoder_graph``) -> (column state, Trace);
3. rule update -> (grads, rule state, metrics)          [skipped when the phase has learn: false]
   (2-3 and the evaluations' embedding run under ``autocast`` — ``model.autocast``, :mod:`colsim.device`:
   bf16 by default on CUDA, nothing on CPU; the grads are cast to their parameters' float32);
4. stop with status ``diverged`` if the loss, a rule's loss or a gradient is NaN / Inf (one fused norm
   over the gradients); the root attribute and summary entry ``diverged`` name the step, phase and
   terms (``loss``, ``loss.<rule term>``, ``grads``; ``grad:<parameter>`` when only gradients are);
5. optimizer step on the grads (learning-rate warm-up and schedule applied) — the only place where
   parameters change; the rule's ``post_step`` may rescale the applied update there;
6. teacher update (``column.update_target(step)``, e.g. EMA momentum schedule);
7. record metrics every ``record.metrics_every`` steps;
8. evaluate every ``evaluation.every`` steps when set;

9. checkpoint every ``protocol.checkpoint.every`` steps and after ``every_seconds`` of wall time
   (``checkpoints/stepNNNNNNNN.pt``, the last ``keep`` kept; not at a phase's last step, which step 13 covers);
10. stop at this step boundary if SIGINT / SIGTERM arrived: flush, checkpoint, status
    ``interrupted`` (``RunResult.signal`` says which; ``colsim run`` exits 130 / 143);

and at the end of every phase:

11. the rule's ``boundary(..., "phase_end")`` (EWC Fisher, SI Omega; the optimizer's state cleared when the
    rule requests it, n-GateON's switch: :func:`phase_end`);
12. evaluate on every probe set (this fills row p of the accuracy matrix);
13. checkpoint (``checkpoints/phaseNN-name.pt``).

The recorder's metrics are flushed at every evaluation and before every checkpoint, so the store
on disk always holds everything a checkpoint covers; a hard kill loses at most the metric rows
since the last flush (``record.flush_every`` rows or ``record.flush_seconds`` of wall time at most), and
``--resume`` re-runs them.

Resuming (``resume=`` a checkpoint, :mod:`colsim.checkpoint`) is this same schedule started from
the checkpoint's position: phase ``phase``, its step ``t``, with the stream and column states, the
rule and optimizer states, the global RNGs and the evaluations so far restored — a resumed run
gives the uninterrupted run's numbers bit for bit on CPU (``tests/test_fault_tolerance.py``).

:func:`run` is this schedule and nothing else: each step is delegated to a part in :mod:`colsim.sim` (the tick,
the finite-check guard, the evaluator that owns the store schema, the checkpointer, the host guards, the
progress object that also times every part), and the loop carries its state in one :class:`RunState`.
"""
from __future__ import annotations

import contextlib
import os
import time
from dataclasses import dataclass
from typing import Any, Callable, NamedTuple, Optional

import torch

from colsim.analysis.summary import READOUTS, make_summary  # noqa: F401 (READOUTS re-exported)
from colsim.build import lr_at
from colsim.column import Circuit, running_stat_buffers
from colsim.config import ProtocolConfig
from colsim.device import autocast_context
from colsim.record import Recorder
from colsim.rule import Rule, optimizer_reset_requests
from colsim.sim.checkpointer import Checkpointer, phase_states, resume_position
from colsim.sim.diagnostics import CollapseMonitor, circuit_metrics, collapse_diagnostics
from colsim.sim.evaluator import EVAL_SCALAR_KEYS, EVAL_SET_KEYS, Evaluator  # noqa: F401 (re-exported)
from colsim.sim.guard import grad_norm  # noqa: F401 (re-exported)
from colsim.sim.host import HostGuards, keep_freed_memory
from colsim.sim.host import seeded as _seeded  # noqa: F401 (tests and benchmarks seed worlds with it)
from colsim.sim.progress import Progress
from colsim.sim.tick import TickContext, mask_missing_losses, tick
from colsim.stream import StepAhead

__all__ = ["run", "RunResult", "RunState", "apply_update", "collapse_diagnostics", "keep_freed_memory", "grad_norm",
           "make_summary"]


class RunResult(NamedTuple):
    status: str  # completed | diverged | interrupted
    steps: int
    wall_s: float
    summary: dict
    signal: Optional[int] = None  # the signal (SIGINT / SIGTERM) that stopped the run
    checkpoint: Optional[str] = None  # the last checkpoint written
    timings: Optional[dict] = None  # seconds per part of the schedule (colsim.sim.progress)


@dataclass
class RunState:
    """The loop's carry: where the run is, the states that evolve, and how it stands."""
    step: int  # optimizer steps done (the global step)
    phase: int  # index of the phase running
    rstate: Any  # the rule's state
    sstate: Any = None  # the stream's state (per phase)
    cstate: Any = None  # the column's state: context windows (per phase)
    status: str = "completed"  # completed | diverged | interrupted
    diverged: Optional[dict] = None  # {"step", "phase", "terms"}: what went non-finite where


def apply_update(params: dict, grads: dict, optimizer: torch.optim.Optimizer, rule: Rule, rstate: Any) -> Any:
    """Step 5 of the schedule: the optimizer applies the rule's ``grads``; a rule with ``post_step``
    then rescales the applied update ``delta`` (parameters end at ``before + delta``). Returns the
    rule state (``post_step`` may update it). Gradients are cleared afterwards."""
    for n, p in params.items():
        p.grad = grads.get(n)
    if rule.post_step is not None:
        before = {n: p.detach().clone() for n, p in params.items()}
        optimizer.step()
        with torch.no_grad():
            delta = {n: p.detach() - before[n] for n, p in params.items()}
            delta, rstate = rule.post_step(params, rstate, delta)
            for n, p in params.items():
                p.copy_(before[n] + delta[n])
    else:
        optimizer.step()
    for p in params.values():
        p.grad = None
    return rstate


def phase_end(params: dict, rule: Rule, rstate: Any, optimizer: torch.optim.Optimizer) -> Any:
    """Step 11 of the schedule: the rule's ``boundary(..., "phase_end")``; when the rule requests it
    (:func:`colsim.rule.request_optimizer_reset`, n-GateON), the optimizer's state is then cleared: Adam
    restarts with zero moments and step count, as a freshly built optimizer would (learning rates kept)."""
    with optimizer_reset_requests() as reset:
        rstate = rule.boundary(params, rstate, "phase_end")
    if reset:
        for opt in getattr(optimizer, "optimizers", [optimizer]):  # a MultiOptimizer's, or the one
            opt.state.clear()
    return rstate


def run(column, rule: Rule, protocol: ProtocolConfig, recorder: Recorder, *, world, optimizer: torch.optim.Optimizer,
        seed: int = 0, device: str = "cpu", local: bool = False, ckpt_dir=None, config_yaml: str = "",
        on_step: Optional[Callable[[dict], None]] = None, resume: Optional[dict] = None,
        autocast: Optional[str] = None, step_ahead: Optional[bool] = None, profile: bool = False) -> RunResult:
    """Run ``protocol`` (see the module docstring for the step schedule). Returns a RunResult.

    ``resume``: a checkpoint dict (:func:`colsim.checkpoint.load_checkpoint`) whose model
    parameters are already loaded into ``column``; the run continues from the checkpoint's
    position (phase ``phase``, its step ``t``), restoring optimizer, rule state, stream and column
    states, the global RNGs and the evaluations so far. The recorder is expected to be cut back to
    the checkpoint's position already (:meth:`colsim.record.ZarrRecorder.reopen`).

    SIGINT / SIGTERM (when called from the main thread) stop the run at the next step boundary with
    a checkpoint (``ckpt_dir`` given) and status ``interrupted``; a second signal stops at once.

    ``autocast``: ``bf16`` | ``fp16`` | ``none`` / None (the run config's ``model.autocast``,
    :mod:`colsim.device`); stream batches go to a CUDA ``device`` through pinned memory.

    ``step_ahead``: compute the stream's next Step on a second thread while the column works on this
    one (:class:`colsim.stream.StepAhead`); the run is bit-identical either way. None: off unless the
    environment sets ``COLSIM_STEP_AHEAD=1``. Off by default: on the 2-core CPU host it measured no
    faster (docs/reference/protocols.md, the `online` protocol's step-ahead paragraph); it is meant for hosts with a
    spare core, e.g. a GPU run's.

    ``profile``: also keep every tick's per-part timings in ``RunResult.timings["per_tick"]`` (the totals are
    always there).
    """
    t0 = time.perf_counter()
    params = column.trainable()
    rstate, first_phase, step, first_t = resume_position(resume, optimizer, rule.init(params), device)
    s = RunState(step=step, phase=first_phase, rstate=rstate)
    amp = autocast_context(device, autocast)  # a null context without autocast: float32 as ever
    circ = column if isinstance(column, Circuit) else None  # several columns (issue 14)
    evaluate = Evaluator(column, protocol, world, recorder, seed=seed, device=device, amp=amp, resume=resume)
    monitor = CollapseMonitor(protocol.record.collapse_window)  # B = 1: diagnostics over recent ticks
    if resume is not None:
        monitor.load_state_dict(resume.get("collapse_window"), device)
    ckpt = Checkpointer(ckpt_dir, column=column, optimizer=optimizer, recorder=recorder, evaluator=evaluate,
                        monitor=monitor,
                        config_yaml=config_yaml, keep=protocol.checkpoint.keep, every=protocol.checkpoint.every,
                        every_seconds=protocol.checkpoint.every_seconds)
    prog = Progress(protocol.total_steps, on_step, profile)
    ctx = TickContext(column, rule, params, device, local,
                      # a rule that reads no graph of the encoder's pass (ESPP, sparse coding): none is built
                      {} if rule.encoder_graph or not local else {"encoder_graph": False},
                      amp, amp is not contextlib.nullcontext, circ)
    ev, rec = protocol.evaluation, protocol.record
    ahead: Optional[StepAhead] = None
    with HostGuards() as host:
        try:
            if ev.at_start and resume is None:
                _timed(prog, "evaluate", evaluate, "init", s.step)  # 0. before step 0
            for s.phase in range(first_phase, len(protocol.phases)):
                ph = protocol.phases[s.phase]
                stream = world.stream(protocol.stream.batch, protocol.stream.episode_length, ph.classes, ph.world)
                if ahead is not None:
                    ahead.close()
                ahead = StepAhead(stream.step, os.environ.get("COLSIM_STEP_AHEAD", "0") == "1" if step_ahead is None
                                  else step_ahead)
                resumed = resume is not None and s.phase == first_phase
                t_begin = first_t if resumed else 0
                s.sstate, s.cstate = phase_states(stream, column, s.phase, t_begin, seed=seed, device=device,
                                                  batch=protocol.stream.batch, resume=resume, resumed_phase=resumed)
                learn = ph.learn and protocol.learn
                column.train(learn)
                for t in range(t_begin, ph.steps):
                    ts = prog.start()
                    # 1-4. the Step, the column forward, the rule update, the finite check
                    out = tick(ctx, ahead, s.sstate, s.cstate, s.rstate, p_idx=s.phase, first=t == 0,
                               last=t + 1 == ph.steps, learn=learn, progress=prog)
                    s.sstate, s.cstate, s.rstate, metrics = out.sstate, out.cstate, out.rstate, out.metrics
                    if out.diverged is not None:
                        s.status, s.diverged = "diverged", {"step": s.step, "phase": ph.name, "terms": out.diverged}
                        recorder.record(s.step, circuit_metrics(circ, out.trace, metrics) if circ is not None
                                        else dict(metrics))
                        break
                    if learn:
                        # 5. optimizer step (the single mutation point)
                        for g in optimizer.param_groups:
                            g["lr"] = lr_at(g, s.step, protocol.total_steps)
                        s.rstate = apply_update(params, out.grads, optimizer, rule, s.rstate)
                        prog.lap("update")
                        # 6. teacher
                        column.update_target(s.step + 1)  # optimizer steps done: an integer, not a fraction of the run
                        prog.lap("teacher")
                        metrics["grad_norm"], metrics["lr"] = out.grad_norm, optimizer.param_groups[0]["lr"]
                    mask_missing_losses(metrics, out.trace)
                    # 7. record
                    if rec.enabled and s.step % rec.metrics_every == 0:
                        _record(recorder, s.step, metrics, out.trace, column, circ, prog, ts, monitor)
                    elif not rec.enabled:
                        prog.tick_rate(ts)
                    prog.lap("record")
                    s.step += 1
                    prog.tick_done(ts, {"phase": ph.name, "phase_index": s.phase, "step": s.step,
                                        "loss": metrics.get("loss", float("nan"))})
                    # 8. scheduled evaluation
                    if ev.every and s.step % ev.every == 0 and t != ph.steps - 1:
                        _timed(prog, "evaluate", evaluate, ph.name, s.step)
                    # 9. scheduled checkpoint (the phase's last step has its phase-end checkpoint); 10. a signal
                    if t != ph.steps - 1 and (ckpt.due(s.step) or host.stop.signum is not None):
                        _timed(prog, "checkpoint", ckpt.at_step, step=s.step, phase=s.phase, t=t + 1,
                               rstate=s.rstate, sstate=s.sstate, cstate=s.cstate)
                        if host.stop.signum is not None:
                            s.status = "interrupted"
                            break
                if s.status != "completed":
                    break
                # 11. rule boundary
                if rule.boundary is not None and learn:
                    s.rstate = phase_end(params, rule, s.rstate, optimizer)
                # 12. evaluate
                _timed(prog, "evaluate", evaluate, ph.name, s.step, phase_end=s.phase)
                # 13. checkpoint
                _timed(prog, "checkpoint", ckpt.at_phase_end, s.phase, ph.name, step=s.step, rstate=s.rstate,
                       sstate=s.sstate, cstate=s.cstate)
                if host.stop.signum is not None and s.phase + 1 < len(protocol.phases):
                    s.status = "interrupted"
                    break
        except KeyboardInterrupt:  # a second signal, or Ctrl-C outside the main thread's handlers
            s.status = "interrupted"
        finally:
            if ahead is not None:
                ahead.close()
    return _finish(s, evaluate, recorder, column, protocol, time.perf_counter() - t0, host.stop.signum, ckpt.last,
                   prog)


def _timed(prog: Progress, part: str, fn, *args, **kw) -> None:
    prog.start()
    fn(*args, **kw)
    prog.lap(part)


def _record(recorder, step: int, metrics: dict, trace: dict, column, circ, prog: Progress, ts: float,
            monitor: CollapseMonitor) -> None:
    """Step 7: the tick's metric row with its collapse diagnostics and the step rate, to the recorder."""
    if circ is None:
        zd = monitor(trace["z"], "z")
        metrics.update(zd)
        if trace["z_agg"] is trace["z"] and ("valid" not in trace or bool(trace["valid"].all())):
            # one tensor (a supervised column's features, models/classifier.py): the same numbers, computed once
            metrics.update({"zagg" + k[1:]: v for k, v in zd.items()})
        else:
            metrics.update(monitor(trace["z_agg"], "zagg", trace.get("valid")))
    metrics.update(column.diagnostics())
    metrics["steps_per_s"] = prog.tick_rate(ts)
    recorder.record(step, metrics if circ is None else circuit_metrics(circ, trace, metrics))


def _finish(s: RunState, evaluate: Evaluator, recorder, column, protocol, wall: float, signum, last_ckpt,
            prog: Progress) -> RunResult:
    """The summary (``summary.json``), the store's closing attributes and status, and the RunResult."""
    summary = make_summary(evaluate.evals, evaluate.names, s.step, wall, s.status, at_start=protocol.evaluation.at_start,
                           columns=evaluate.entries or None)
    summary["unconsolidated_buffers"] = running_stat_buffers(column)  # state no rule consolidates (none by default)
    summary["eval_s"] = round(evaluate.seconds, 3)
    summary["eval_share"] = round(evaluate.seconds / wall, 4) if wall > 0 else None
    if s.diverged is not None:
        summary["diverged"] = s.diverged
    recorder.set_attrs(steps_done=s.step, wall_s=wall, eval_s=evaluate.seconds,
                       **({"diverged": s.diverged} if s.diverged is not None else {}))
    recorder.close(s.status)
    return RunResult(s.status, s.step, wall, summary, signum, last_ckpt, prog.timings())
