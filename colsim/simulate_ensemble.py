"""The step schedule of :func:`colsim.simulate.run` for a seed ensemble (``colsim run --seeds 0-7 --ensemble``).

The same numbered steps, with steps 2-3, 5 and 6 done once for all seeds on the stacked parameters
(:class:`colsim.sim.ensemble.SeedEnsemble`) and everything else per seed, as its separate run does it:

1. each seed's Step from its own stream (the episode starts must agree across seeds: the column's window
   state is shared, ``AbstractColumn.seed_shared_state``);
2-3. one vmapped column forward and one rule update over the seeds [skipped when the phase does not learn];
4. each seed's finite check; a seed that diverges stops there (its run folder says so), the others go on;
5. one optimizer step on the stacked parameters (learning-rate schedule as in a run);
6. one teacher update;
7. each seed's metric row, to its own recorder (its own collapse diagnostics and model diagnostics);
8, 12. each seed's evaluation, on its parameters copied out of the stack, with its own global RNG;
9, 10, 13. each seed's checkpoint (parameters, optimizer state and RNG copied out): ``colsim run --resume``
   continues one seed's run folder as a separate run;
11. the rule's phase-end boundary on the stacked state.

Each seed's summary and store close as its separate run's would; ``wall_s`` is the ensemble's wall time.
"""
from __future__ import annotations

import contextlib
import time
from pathlib import Path
from typing import Callable, Optional

import torch

from colsim.build import build_optimizer, lr_at
from colsim.config import ConfigError
from colsim.sim.checkpointer import Checkpointer, phase_states
from colsim.sim.diagnostics import CollapseMonitor
from colsim.sim.ensemble import SeedEnsemble, split_seeds
from colsim.sim.evaluator import Evaluator
from colsim.sim.guard import grad_norm, nonfinite_terms
from colsim.sim.host import HostGuards
from colsim.sim.progress import Progress
from colsim.sim.tick import mask_missing_losses
from colsim.simulate import RunResult, RunState, _finish, _record, apply_update, phase_end

__all__ = ["SeedRun", "run_ensemble"]


class SeedRun:
    """One seed's own parts: its built run (world, column, rule, local, optimizer), recorder, run folder."""

    def __init__(self, seed: int, built, recorder, run_dir, config_yaml: str, rng: dict):
        self.seed, self.built, self.recorder = seed, built, recorder
        self.dir, self.config_yaml, self.rng = Path(run_dir), config_yaml, rng


def _metrics(metrics: dict, s: int) -> dict:
    return {k: float(v[s]) if torch.is_tensor(v) else v for k, v in metrics.items()}


def run_ensemble(seeds: list[SeedRun], rule_spec, protocol, *, device: str = "cpu",
                 on_step: Optional[Callable[[dict], None]] = None) -> list[RunResult]:
    """Run ``protocol`` for every seed of ``seeds`` as one ensemble (module docstring); one RunResult per seed."""
    t0 = time.perf_counter()
    S = len(seeds)
    cols = [r.built[1] for r in seeds]
    rule, local = seeds[0].built[2], seeds[0].built[3]
    ens = SeedEnsemble(cols, [r.rng for r in seeds])
    params = ens.stacked.trainable()
    optimizer = build_optimizer(rule_spec, ens.stacked, protocol.schedule)
    rstate = rule.init(params)
    states = [RunState(step=0, phase=0, rstate=None) for _ in seeds]
    amp = contextlib.nullcontext
    evals, monitors, ckpts = [], [], []
    for s, r in enumerate(seeds):
        with ens.seed_rng(s):
            evals.append(Evaluator(cols[s], protocol, r.built[0], r.recorder, seed=r.seed, device=device, amp=amp,
                                   resume=None))
        monitors.append(CollapseMonitor(protocol.record.collapse_window))
        ckpts.append(Checkpointer(r.dir / "checkpoints", column=cols[s], optimizer=r.built[4], recorder=r.recorder,
                                  evaluator=evals[s], monitor=monitors[s], config_yaml=r.config_yaml,
                                  keep=protocol.checkpoint.keep, every=protocol.checkpoint.every,
                                  every_seconds=protocol.checkpoint.every_seconds))
    prog = Progress(protocol.total_steps, on_step)
    ev, rec = protocol.evaluation, protocol.record
    live = list(range(S))
    step = 0

    def each(fn, *args, **kw):  # fn(s, ...) for every seed still running, with its parameters and RNG
        for s in live:
            ens.materialize(s, optimizer, seeds[s].built[4])
            with ens.seed_rng(s):
                fn(s, *args, **kw)

    def checkpoint(s, kind, *args, **kw):
        st = states[s]
        getattr(ckpts[s], kind)(*args, rstate=split_seeds(rstate, s), sstate=st.sstate,
                                cstate=ens.unstack_state(cstate, s), **kw)

    with HostGuards() as host:
        if ev.at_start:
            prog.start()
            each(lambda s: evals[s]("init", 0))  # 0. before step 0
            prog.lap("evaluate")
        for p, ph in enumerate(protocol.phases):
            streams = [r.built[0].stream(protocol.stream.batch, protocol.stream.episode_length, ph.classes, ph.world)
                       for r in seeds]
            cstates = []
            for s in range(S):
                with ens.seed_rng(s):
                    states[s].phase = p
                    states[s].sstate, cs = phase_states(streams[s], cols[s], p, 0, seed=seeds[s].seed, device=device,
                                                        batch=protocol.stream.batch, resume=None, resumed_phase=False)
                cstates.append(cs)
            cstate = ens.stack_state(cstates)
            learn = ph.learn and protocol.learn
            ens.stacked.train(learn)
            for c in cols:
                c.train(learn)
            for t in range(ph.steps):
                ts = prog.start()
                # 1. every seed's Step
                steps = []
                for s in range(S):
                    states[s].sstate, st = streams[s].step(states[s].sstate)
                    st.labels["phase"] = torch.full_like(st.labels["class"], p)
                    steps.append(st)
                if any(not torch.equal(st.start, steps[0].start) for st in steps[1:]):
                    raise ConfigError("--ensemble: the seeds' episodes start at different ticks (the world does not "
                                      "align its episodes across seeds); run the seeds separately with --seeds")
                obs = torch.stack([st.obs for st in steps]).to(device)  # (S, B, C, H, W)
                action = torch.stack([st.action for st in steps]).to(device)  # (S, B, A)
                start = steps[0].start.to(device) | (t == 0)  # (B,)
                prog.lap("stream")
                # 2-3. one forward and one rule update for every seed
                with torch.set_grad_enabled(learn):
                    cstate, trace, side = ens.forward(cstate, obs, action, start, local=local if learn else False)
                rm: dict = {}
                if learn:
                    trace["labels"] = {k: torch.stack([st.labels[k] for st in steps]) for k in steps[0].labels}
                    grads, rstate, rm = rule.update(params, rstate, trace)
                losses = trace["loss"].detach()  # (S,)
                prog.lap("learn")
                # 4. each seed's finite check
                rows, gns = {}, {}
                for s in list(live):
                    m = {"phase": float(p), "loss": float(losses[s]), **_metrics(rm, s)}
                    if learn:
                        gs = {n: g[s] for n, g in grads.items() if g is not None}
                        gns[s] = grad_norm(gs)
                        bad = nonfinite_terms(m["loss"], _metrics(rm, s), gs, gns[s])
                        if bad is not None:
                            states[s].status = "diverged"
                            states[s].diverged = {"step": step, "phase": ph.name, "terms": bad}
                            seeds[s].recorder.record(step, m)
                            live.remove(s)
                            continue
                    rows[s] = m
                prog.lap("check")
                if not live:
                    break
                if learn:
                    # 5. one optimizer step for every seed (a diverged seed's slice moves too; its run has ended)
                    for g in optimizer.param_groups:
                        g["lr"] = lr_at(g, step, protocol.total_steps)
                    rstate = apply_update(params, grads, optimizer, rule, rstate)
                    prog.lap("update")
                    ens.stacked.update_target(step + 1)  # 6. teacher
                    prog.lap("teacher")
                # 7. each seed's metric row
                for s in live:
                    m = rows[s]
                    if learn:
                        m["grad_norm"], m["lr"] = gns[s], optimizer.param_groups[0]["lr"]
                    tr = split_seeds(trace, s)
                    mask_missing_losses(m, tr)
                    if rec.enabled and step % rec.metrics_every == 0:
                        cols[s].load_forward_side_state(side[s])
                        _record(seeds[s].recorder, step, m, tr, cols[s], None, prog, ts, monitors[s])
                if not rec.enabled:
                    prog.tick_rate(ts)
                prog.lap("record")
                step += 1
                for s in live:
                    states[s].step = step
                prog.tick_done(ts, {"phase": ph.name, "phase_index": p, "step": step,
                                    "loss": float(losses[live].mean())})
                if ev.every and step % ev.every == 0 and t != ph.steps - 1:  # 8.
                    prog.start()
                    each(lambda s: evals[s](ph.name, step))
                    prog.lap("evaluate")
                if t != ph.steps - 1 and (any(ckpts[s].due(step) for s in live) or host.stop.signum is not None):
                    prog.start()  # 9-10.
                    each(checkpoint, "at_step", step=step, phase=p, t=t + 1)
                    prog.lap("checkpoint")
                    if host.stop.signum is not None:
                        for s in live:
                            states[s].status = "interrupted"
                        break
            if not live or host.stop.signum is not None and t != ph.steps - 1:
                break
            if rule.boundary is not None and learn:  # 11.
                rstate = phase_end(params, rule, rstate, optimizer)
            prog.start()
            each(lambda s: evals[s](ph.name, step, phase_end=p))  # 12.
            prog.lap("evaluate")
            prog.start()
            each(checkpoint, "at_phase_end", p, ph.name, step=step)  # 13.
            prog.lap("checkpoint")
            if host.stop.signum is not None and p + 1 < len(protocol.phases):
                for s in live:
                    states[s].status = "interrupted"
                break
    wall = time.perf_counter() - t0
    out = []
    for s in range(S):
        ens.materialize(s)
        out.append(_finish(states[s], evals[s], seeds[s].recorder, cols[s], protocol, wall, host.stop.signum,
                           ckpts[s].last, prog))
    return out
