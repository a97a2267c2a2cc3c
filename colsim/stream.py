"""World / Stream interfaces (docs/architecture.md).

A :class:`World` owns its data in disjoint pools — *train* (streams), *validation* (probe sets for
choosing hyper-parameters) and *probe* (the reported probe sets) — and makes

* :class:`Stream` s — B parallel streams in lockstep, state in / state out::

      stream = world.stream(batch=32, episode_length=8, classes=[0, 1], overrides={})
      state = stream.init(torch.Generator().manual_seed(0))
      state, step = stream.step(state)      # step: colsim.types.Step

  The state is a dict of tensors (including the stream's RNG state as a uint8 tensor under
  ``"rng"``), so it round-trips through ``torch.save`` / ``torch.load(weights_only=True)``
  and a checkpoint resumes the streams exactly where they were.

* :class:`ProbeSet` s — fixed held-out episodes drawn from one phase's distribution::

      ps = world.probe_set(classes, n, views, generator, overrides, pool="probe")  # or "validation"

Worlds never touch the global RNG: every draw uses an explicit ``torch.Generator``.
"""
from __future__ import annotations

import abc
from typing import Any, Callable, NamedTuple, Optional

import torch
from torch import Tensor

from colsim.types import PyTree, Step, WorldSpec

__all__ = ["World", "Stream", "StepAhead", "ProbeSet", "generator_from_state", "rng_state"]


class Stream(NamedTuple):
    init: Callable[[torch.Generator], PyTree]
    step: Callable[[PyTree], "tuple[PyTree, Step]"]


class ProbeSet(NamedTuple):
    """Held-out episodes of one phase.

    obs:     (N, V, C, H, W) V consecutive views of N episodes (one object each).
    actions: (N, V, A) action from view v to view v+1 (the last view's action is zeros).
    labels:  name -> (N,) per-episode labels (``class``; ``image``, the dataset index of the
             episode's source object, so probes can keep one object on one side of a fit/score
             split) or (N, V, ...) per-view latent factors (``angle`` (N, V), ``shift`` (N, V, 2),
             ``scale`` (N, V); objects3d's ``orientation`` (N, V, 4), ``light`` (N, V, 3); saccades'
             ``fixation`` (N, V, 2)). The run store's ``probe`` group holds every one of them as
             ``label_<name>``, dims from :func:`colsim.analysis.schema.label_layout`.
    """

    obs: Tensor
    actions: Tensor
    labels: dict[str, Tensor]


class World(abc.ABC):
    """Abstract world. Subclasses are final and registered with ``registry.register_world``."""

    spec: WorldSpec

    @abc.abstractmethod
    def stream(self, batch: int, episode_length: int, classes: Optional[list[int]],
               overrides: dict[str, Any]) -> Stream:
        """B parallel streams of episodes of ``episode_length`` views of objects of ``classes``."""

    @abc.abstractmethod
    def probe_set(self, classes: Optional[list[int]], n: int, views: int, generator: torch.Generator,
                  overrides: dict[str, Any], *, pool: str = "probe", where: Optional[str] = None) -> ProbeSet:
        """``n`` held-out episodes of ``views`` views from ``pool`` (``"probe"`` or ``"validation"``).

        Source objects are drawn without replacement as far as the pool allows. ``where`` is the
        config path of the phase (e.g. ``protocol.phases[1]``) that prefixes the field of a
        ConfigError (``protocol.phases[1].classes: ...``) when the phase leaves the set empty.
        """

    @abc.abstractmethod
    def check_phase(self, classes: Optional[list[int]], overrides: Optional[dict[str, Any]] = None, *,
                    pool: str = "probe", where: Optional[str] = None) -> list[int]:
        """Check, drawing nothing, that a phase gives a non-empty stream and probe set from ``pool``;
        return its sorted classes. Raise a one-line ConfigError naming ``{where}.classes`` (or
        ``{where}.world.<key>``) otherwise — so a build step can reject a protocol before step 0.
        """


def rng_state(gen: torch.Generator) -> Tensor:
    return gen.get_state().clone()


def generator_from_state(state: Tensor) -> torch.Generator:
    g = torch.Generator()
    g.set_state(state)
    return g


class StepAhead:
    """Compute a stream's next Step on a second thread while the column works on this one.

    ``Stream.step`` is a pure function of its state (the RNG travels inside the state, and worlds
    never touch the global RNG), so the Step computed ahead for a state is the Step that would be
    computed in place: a run with look-ahead is bit-identical to one without, and the state a
    checkpoint saves is the one the schedule holds, untouched by the look-ahead. The world's share of
    a tick (the affine warp, the numba render, the glimpse) then overlaps the column's forward and
    backward on another core::

        ahead = StepAhead(stream.step)
        state, st = ahead.step(state)      # the Step computed ahead for this state, or computed now
        ahead.ahead(state)                 # start the next one; the column works on st meanwhile
        ...
        ahead.close()

    ``enabled=False`` computes every Step in place (no thread). An error inside ``step`` surfaces,
    unchanged, from the ``step`` call that asks for that Step. The world's Python holds the GIL, so
    only its native parts (torch kernels, the numba renderer) truly overlap the column's work.
    """

    def __init__(self, step: Callable[[PyTree], "tuple[PyTree, Step]"], enabled: bool = True):
        self._step = step
        self._pool = None
        if enabled:
            from concurrent.futures import ThreadPoolExecutor

            n = 1  # one intra-op thread beside the column's: with the column's count (2 on the 2-core host),
            # whole runs took 1.2-1.7x as long (oversubscribed); with 1, as long as without the look-ahead
            self._pool = ThreadPoolExecutor(1, thread_name_prefix="colsim-stream",
                                            initializer=torch.set_num_threads, initargs=(n,))
        self._pending: Optional[tuple[PyTree, Any]] = None  # (state, future of step(state))

    def step(self, state: PyTree) -> "tuple[PyTree, Step]":
        pending, self._pending = self._pending, None
        if pending is not None and pending[0] is state:
            return pending[1].result()
        if pending is not None:  # computed ahead for another state (a restore): drop it
            pending[1].cancel() or _wait(pending[1])
        return self._step(state)

    def ahead(self, state: PyTree) -> None:
        """Start computing ``step(state)``; the caller must not change ``state`` in place meanwhile."""
        if self._pool is not None:
            self._pending = (state, self._pool.submit(self._step, state))

    def close(self) -> None:
        self._pending = None
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None


def _wait(future) -> None:
    from concurrent.futures import wait

    wait([future])
