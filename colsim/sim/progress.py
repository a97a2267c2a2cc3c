"""Progress of a run: the step rate recorded as ``steps_per_s``, the ``on_step`` callback, and the loop's own
per-part timings (the profile ``benchmarks/bench_online.py`` reads, with no patching of the loop).

Parts (seconds, summed over the run; per tick too with ``profile=True``):
``stream`` (step 1: the wait for the Step, all of it when it is not computed ahead), ``learn`` (steps 2-3: the
column's forward and the rule's update), ``check`` (step 4), ``update`` (step 5: the optimizer and the rule's
``post_step``), ``teacher`` (step 6), ``record`` (step 7: diagnostics and the recorder), ``evaluate`` and
``checkpoint`` (steps 8-13), and ``tick`` (steps 1-7, one tick).
"""
from __future__ import annotations

import time
from typing import Callable, Optional

__all__ = ["Progress", "PARTS"]

PARTS = ("stream", "learn", "check", "update", "teacher", "record", "evaluate", "checkpoint", "tick")


class Progress:
    def __init__(self, total: int, on_step: Optional[Callable[[dict], None]] = None, profile: bool = False):
        self.total, self.on_step, self.profile = total, on_step, profile
        self.rate: Optional[float] = None
        self.totals = dict.fromkeys(PARTS, 0.0)
        self.ticks: dict[str, list[float]] = {p: [] for p in PARTS} if profile else {}
        self._t = 0.0

    def start(self) -> float:
        """Mark the start of a part; returns the time."""
        self._t = time.perf_counter()
        return self._t

    def lap(self, part: str) -> None:
        """The part begun at the last :meth:`start` or :meth:`lap` ends now."""
        now = time.perf_counter()
        dt = now - self._t
        self.totals[part] += dt
        if self.profile:
            self.ticks[part].append(dt)
        self._t = now

    def tick_rate(self, t_start: float) -> float:
        """The exponential moving average of steps per second, updated with the tick begun at ``t_start``."""
        dt = time.perf_counter() - t_start
        self.rate = 1.0 / dt if self.rate is None else 0.9 * self.rate + 0.1 / max(dt, 1e-9)
        return self.rate

    def tick_done(self, t_start: float, info: dict) -> None:
        dt = time.perf_counter() - t_start
        self.totals["tick"] += dt
        if self.profile:
            self.ticks["tick"].append(dt)
        if self.on_step is not None:
            self.on_step({**info, "total": self.total, "steps_per_s": self.rate or 0.0})

    def timings(self) -> dict:
        out: dict = {k: round(v, 6) for k, v in self.totals.items()}
        if self.profile:
            out["per_tick"] = self.ticks
        return out
