"""Column and Circuit interfaces (DESIGN.md section 2, "Column").

A column is an ``nn.Module`` whose streaming state is explicit::

    state = column.init_state(batch, device)
    state, trace = column(state, obs, action, start, local=False)

``obs`` (B, C, H, W), ``action`` (B, A) the action leading to the *next* obs, ``start`` (B,)
bool resets a stream's window. ``trace`` (:class:`colsim.types.Trace`) holds what rules
read; ``provides`` lists its keys so a rule's ``needs`` are checked before step 0.
``local=True`` asks for layer-local computation: every block sees a detached input, and
downstream modules see detached encoder outputs (used by LPL / layerwise / local rules).
``encoder_graph=False`` (passed only with ``local=True``, for rules with ``Rule.encoder_graph``
False: ESPP, sparse coding) lets the column run the current view's encoder without an autograd
graph when nothing it returns would carry gradient to the encoder otherwise; the Trace's values
are the same.

``embed(obs, actions)`` maps held-out episodes (N, V, C, H, W) to the representations the
evaluation records (``z`` (N, V, D), ``z_agg`` (N, D)). ``update_target(step)`` moves
any teacher (EMA) after the optimizer step; ``progress`` in [0, 1] is the fraction of
training done.
"""
from __future__ import annotations

import abc
from typing import Optional

import torch
from torch import Tensor, nn

from colsim.types import PyTree, Trace

__all__ = ["AbstractColumn", "Circuit"]


class AbstractColumn(nn.Module, abc.ABC):
    provides: frozenset = frozenset()

    @abc.abstractmethod
    def init_state(self, batch: int, device: torch.device | str) -> PyTree:
        ...

    @abc.abstractmethod
    def forward(self, state: PyTree, obs: Tensor, action: Tensor, start: Tensor, local: bool = False,
                encoder_graph: bool = True) -> "tuple[PyTree, Trace]":
        ...

    @abc.abstractmethod
    def embed(self, obs: Tensor, actions: Tensor) -> dict[str, Tensor]:
        ...

    def update_target(self, step: int) -> None:  # noqa: B027 — optional
        """Move the teacher after an optimizer step (no-op for columns without one)."""

    def diagnostics(self) -> dict[str, float]:
        """Scalar model diagnostics for the metrics store (sparsity, coding rates...)."""
        return {}

    def trainable(self) -> dict[str, nn.Parameter]:
        """The parameters rules may change (teacher copies are excluded)."""
        return {n: p for n, p in self.named_parameters() if p.requires_grad}


class Circuit(nn.Module):
    """N columns and their wiring. A column reads other columns' outputs from t-1 only.

    ``wiring[name]`` lists the columns whose previous ``z`` is appended to this column's
    trace as ``context`` (B, sum D). With one column the circuit is a transparent wrapper;
    parameter names are prefixed with the column's name only when there are several.
    """

    def __init__(self, columns: dict[str, AbstractColumn], wiring: Optional[dict[str, list[str]]] = None):
        super().__init__()
        if not columns:
            raise ValueError("a Circuit needs at least one column")
        self.columns = nn.ModuleDict(columns)
        self.wiring = wiring or {n: [] for n in columns}
        for n, srcs in self.wiring.items():
            for s in srcs:
                if s not in columns:
                    raise ValueError(f"wiring[{n!r}] reads unknown column {s!r}; columns: {sorted(columns)}")

    @property
    def single(self) -> AbstractColumn:
        if len(self.columns) != 1:
            raise ValueError("this circuit has several columns")
        return next(iter(self.columns.values()))

    def init_state(self, batch: int, device) -> dict:
        return {n: {"col": c.init_state(batch, device), "z_prev": None} for n, c in self.columns.items()}

    def forward(self, state: dict, obs: Tensor, action: Tensor, start: Tensor, local: bool = False,
                encoder_graph: bool = True):
        new_state, traces = {}, {}
        kw = {} if encoder_graph else {"encoder_graph": False}
        for n, col in self.columns.items():
            s, tr = col(state[n]["col"], obs, action, start, local=local, **kw)
            srcs = self.wiring.get(n, [])
            if srcs:
                prev = [state[m]["z_prev"] for m in srcs]
                if all(p is not None for p in prev):
                    tr["context"] = torch.cat(prev, dim=-1)
            traces[n] = tr
            new_state[n] = {"col": s, "z_prev": tr["z"].detach() if "z" in tr else None}
        return new_state, traces
