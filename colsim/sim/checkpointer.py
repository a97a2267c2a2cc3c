"""Checkpoints on the schedule (steps 9, 10 and 13) and a checkpoint's state restored (``--resume``).

The file format, atomic writes and pruning are :mod:`colsim.checkpoint`'s; this module decides what a
checkpoint of a running loop holds and how the loop restarts from one, so that a resumed run repeats the
uninterrupted run bit for bit on CPU (``tests/test_fault_tolerance.py``).
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Optional

import torch

from colsim.checkpoint import (prune_step_checkpoints, restore_like, rng_states, save_checkpoint, set_rng_states,
                               step_checkpoint_path)
from colsim.sim.host import rng_kept, seeded

__all__ = ["Checkpointer", "resume_position", "phase_states"]


class Checkpointer:
    """Writes the loop's state to ``ckpt_dir`` (nothing when it is None) and remembers the last file."""

    def __init__(self, ckpt_dir, *, column, optimizer, recorder, evaluator, config_yaml: str = "", keep: int = 2,
                 every: Optional[int] = None, every_seconds: Optional[float] = None, monitor=None):
        self.dir = Path(ckpt_dir) if ckpt_dir is not None else None
        self.column, self.optimizer, self.recorder, self.evaluator = column, optimizer, recorder, evaluator
        self.config_yaml, self.keep = config_yaml, keep
        self.every, self.every_seconds = every, every_seconds
        self.monitor = monitor  # the collapse diagnostics' window of recent ticks (B = 1)
        self.last: Optional[str] = None
        self._since = time.monotonic()  # wall time of the last checkpoint (or of the run's start)

    def due(self, step: int) -> bool:
        """A step checkpoint is due after ``step`` steps: every ``every`` steps, or ``every_seconds`` of wall time
        after the last checkpoint (a checkpoint changes no number of the run, so where a timed one lands does not
        matter for the results)."""
        if self.dir is None:
            return False
        return bool(self.every and step % self.every == 0) or (
            self.every_seconds is not None and time.monotonic() - self._since >= self.every_seconds)

    def save(self, path, *, step: int, phase: int, t: int, rstate, sstate, cstate) -> None:
        """Flush the metrics, then write everything the schedule reads from here on (atomically): the run
        continues at phase ``phase``, its step ``t``, with ``step`` steps done."""
        if self.dir is None:
            return
        self.recorder.flush()
        save_checkpoint(path, step=step, phase=phase, t=t, model=self.column.state_dict(),
                        optimizer=self.optimizer.state_dict(), rule_state=rstate, torch_rng=torch.get_rng_state(),
                        rng=rng_states(), stream_state=sstate, column_state=cstate, config=self.config_yaml,
                        frozen_readouts=self.evaluator.frozen_tensors(), evals=self.evaluator.evals,
                        recorder=self.recorder.position(),
                        collapse_window=self.monitor.state_dict() if self.monitor is not None else {})
        self.last = str(path)
        self._since = time.monotonic()

    def at_step(self, *, step: int, phase: int, t: int, rstate, sstate, cstate) -> None:
        """A within-phase checkpoint (``stepNNNNNNNN.pt``); only the last ``keep`` are kept."""
        if self.dir is None:
            return
        self.save(step_checkpoint_path(self.dir, step), step=step, phase=phase, t=t, rstate=rstate, sstate=sstate,
                  cstate=cstate)
        prune_step_checkpoints(self.dir, self.keep)

    def at_phase_end(self, p_idx: int, name: str, *, step: int, rstate, sstate, cstate) -> None:
        """The phase-end checkpoint (``phaseNN-name.pt``, always kept): the run continues with phase p + 1."""
        if self.dir is None:
            return
        self.save(self.dir / f"phase{p_idx:02d}-{name}.pt", step=step, phase=p_idx + 1, t=0, rstate=rstate,
                  sstate=sstate, cstate=cstate)


def resume_position(resume: Optional[dict], optimizer, rstate, device: str) -> tuple[Any, int, int, int]:
    """(rule state, first phase, steps done, first step of that phase): (rstate, 0, 0, 0) for a fresh run; from a
    checkpoint, its optimizer state loaded and its rule state restored onto ``rstate``'s devices."""
    if resume is None:
        return rstate, 0, 0, 0
    optimizer.load_state_dict(resume["optimizer"])
    rstate = restore_like(rstate, resume["rule_state"], device)
    if "rng" not in resume:  # a checkpoint from before step-level checkpoints: torch's RNG only
        torch.set_rng_state(resume["torch_rng"])
    return rstate, int(resume["phase"]), int(resume["step"]), int(resume.get("t", 0))


def phase_states(stream, column, p_idx: int, t_begin: int, *, seed: int, batch: int, device: str,
                 resume: Optional[dict], resumed_phase: bool):
    """A phase's fresh stream and column states, or, when the run resumes inside this phase (``t_begin`` > 0),
    the checkpoint's, with the global RNGs as they were then. Either way the global RNGs end as in the
    uninterrupted run."""
    if resumed_phase and "rng" in resume and t_begin == 0:
        set_rng_states(resume["rng"])  # before the phase's fresh states, as in the uninterrupted run
    with rng_kept(t_begin > 0):  # mid-phase: the fresh states are only templates
        sstate = stream.init(seeded(seed, 11, p_idx))
        cstate = column.init_state(batch, device)
    if t_begin > 0:
        sstate = restore_like(sstate, resume["stream_state"], "cpu")
        cstate = restore_like(cstate, resume["column_state"], device)
        set_rng_states(resume["rng"])
    return sstate, cstate
