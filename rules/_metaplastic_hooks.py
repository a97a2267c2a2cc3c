"""The forward hooks of n-GateON (rules/metaplastic.py): importance probes and context gates on activity.

* :class:`_Probe` keeps, during training-mode forwards, each Linear / Conv2d (and MultiheadAttention
  out-projection) unit's per-sample ``h dL/dh`` rows (a gradient hook on the module output) or its mean
  ``|h|``; ``take()`` turns a step's rows into the importance ``I_i = mean_b (h_i dL/dh_i)²`` or ``mean_b |h_i|``.
* :class:`_Gates` multiplies a module's output by the context gate ``g = tanh([U c]+)²`` of the current
  context (Barry, Gerstner & Bellec 2025; GATEONMNIST ``pkg/nGateON.py``, ``network.ReTanh`` and
  ``layer_forward``). Training forwards use ``context``, evaluation forwards ``eval_context``: after a
  phase end the next context is already set for training while the probes still see the network of the
  context that was trained last (rules/metaplastic.py, "Context switch").
"""
from __future__ import annotations

import contextlib

from typing import Any

import torch
from torch import Tensor, nn

__all__ = ["per_sample_importance", "context_gate", "Probe", "Gates", "shared"]


def per_sample_importance(h: Tensor, dh: Tensor, channel_dim: int) -> Tensor:
    """Per-sample importance from one module call: h, dh = dL/dh (N, ...) -> rows (N, C) of sum_pos h dL/dh."""
    p = (h * dh).movedim(channel_dim, -1)  # (N, ..., C)
    return p.reshape(p.shape[0], -1, p.shape[-1]).sum(1) if p.dim() > 1 else p.unsqueeze(0)


def context_gate(U: Tensor, context: int) -> Tensor:
    """n-GateON context gate g = tanh([U c]+)² for the one-hot context c: U (C, K) -> (C,)."""
    return torch.tanh(U[:, context].clamp(min=0)) ** 2


def _unit_output(mod: nn.Module, out) -> "tuple[Tensor, int, int] | None":
    """The units' output of a hooked module -> (h, channel dim, sample dim), or None (nothing to read).

    Linear (B, ..., C) batch-first; Conv2d (N, C, H, W); nn.MultiheadAttention's first output is its
    out_proj's output ((B, T, E) with ``batch_first``, else (T, B, E); unbatched calls are skipped)."""
    if isinstance(mod, nn.MultiheadAttention):
        h = out[0] if isinstance(out, tuple) else out
        if not isinstance(h, Tensor) or h.dim() != 3:
            return None
        return h, 2, 0 if mod.batch_first else 1
    if not isinstance(out, Tensor) or out.dim() < 2:
        return None
    return out, (1 if isinstance(mod, nn.Conv2d) and out.dim() == 4 else out.dim() - 1), 0


def _unit_modules(column: nn.Module, names: set) -> "list[tuple[str, nn.Module]]":
    """(unit weight name, module whose output is those units' h): Linear / Conv2d modules, and
    nn.MultiheadAttention for its out_proj (which it applies without calling the module)."""
    mods = dict(column.named_modules())
    out = [(f"{m}.out_proj.weight", mod) for m, mod in mods.items()
           if isinstance(mod, nn.MultiheadAttention) and f"{m}.out_proj.weight" in names]
    taken = {p for p, _ in out}
    out += [(f"{m}.weight", mod) for m, mod in mods.items()
            if isinstance(mod, (nn.Linear, nn.Conv2d)) and f"{m}.weight" in names and f"{m}.weight" not in taken]
    return out


_MAX_CALLS = 16  # module calls kept per step (context window, current view, replayed batch, ...)


class Probe:
    """Forward hooks on Linear / Conv2d modules (training mode): per-sample h·dL/dh rows or mean |h|."""

    def __init__(self, column: nn.Module, names: set, kind: str):
        self.kind = kind
        self.rows: dict[str, list] = {}
        self.handles = [mod.register_forward_hook(self._hook(pname)) for pname, mod in _unit_modules(column, names)]

    def _hook(self, pname: str):
        def hook(mod, inp, out):
            got = _unit_output(mod, out) if mod.training else None
            if got is None or got[0].numel() == 0:
                return
            out, cdim, rdim = got
            calls = self.rows.setdefault(pname, [])
            del calls[:-_MAX_CALLS]  # forwards no rule update consumed (learning off) are dropped, not hoarded
            if self.kind == "activity":
                with torch.no_grad():
                    h = out.detach().abs().movedim(cdim, -1)
                    calls.append(h.reshape(-1, h.shape[-1]).mean(0).float())  # (C,)
                return
            if not (torch.is_grad_enabled() and out.requires_grad):
                return
            acc: dict[str, Any] = {"s": None}
            h = out.detach()  # shares storage: an in-place ReLU after the module turns h into relu(h), but
            # dL/dh is 0 wherever h < 0, so h dL/dh is unchanged
            channel = cdim if rdim == 0 else out.dim() - 1
            # the hook must not refer to `out`: out -> its hooks -> the hook -> out is a cycle that Python's
            # collector cannot see through, and it kept every step's graph alive (a full-size action_shift run
            # grew past the 24 GB host)

            def grad_hook(g: Tensor):
                with torch.no_grad():
                    s = per_sample_importance(h.movedim(rdim, 0), g.movedim(rdim, 0), channel).float()  # (N, C)
                acc["s"] = s if acc["s"] is None else acc["s"] + s

            out.register_hook(grad_hook)
            calls.append(acc)
        return hook

    def take(self) -> dict[str, Tensor]:
        """Per unit weight: importance (C,) of this step's calls (those that received a gradient)."""
        out = {}
        for pname, calls in self.rows.items():
            if self.kind == "activity":
                out[pname] = torch.stack(calls).mean(0)
            else:
                rows = [c["s"] for c in calls if c["s"] is not None]
                if rows:
                    out[pname] = (torch.cat(rows) ** 2).mean(0)  # mean over samples of (h dL/dh)²
        self.rows = {}
        return out


_CONTEXT_BUFFER = "_colsim_metaplastic_context"


class Gates:
    """Context gates on activity: forward hooks multiply a module's output by g (current context)."""

    def __init__(self, column: nn.Module, names: set):
        self.U: dict[str, Tensor] = {}
        self.column = column
        # [context of training-mode forwards, of evaluation forwards (the last one trained)], kept as Python ints
        # (read by every hooked forward without a device sync) and mirrored in a buffer of the column, so that a
        # resumed run's first forward runs in the checkpoint's context, before any update restores the rule state
        self._k = [0, 0]
        column.register_buffer(_CONTEXT_BUFFER, torch.zeros(2, dtype=torch.long))
        column.register_load_state_dict_post_hook(lambda mod, keys: self._load())
        self.handles = [mod.register_forward_hook(self._hook(pname)) for pname, mod in _unit_modules(column, names)]

    def _load(self) -> None:
        self._k = [int(v) for v in getattr(self.column, _CONTEXT_BUFFER).tolist()]

    def _set(self, i: int, k: int) -> None:
        if self._k[i] != k:
            self._k[i] = k
            getattr(self.column, _CONTEXT_BUFFER)[i] = k

    @property
    def context(self) -> int:
        return self._k[0]

    @context.setter
    def context(self, k: int) -> None:
        self._set(0, k)

    @property
    def eval_context(self) -> int:
        return self._k[1]

    @contextlib.contextmanager
    def in_context(self, k: int):
        """Evaluation forwards in context ``k`` for the duration (``probe_context: own``); the buffer is untouched."""
        old = self._k[1]
        self._k[1] = k
        try:
            yield
        finally:
            self._k[1] = old

    @eval_context.setter
    def eval_context(self, k: int) -> None:
        self._set(1, k)

    def _hook(self, pname: str):
        def hook(mod, inp, out):
            U = self.U.get(pname)
            got = _unit_output(mod, out) if U is not None else None
            if got is None:
                return None
            h, cdim, _ = got
            g = context_gate(U, self.context if mod.training else self.eval_context).to(h.device, h.dtype)  # (C,)
            shape = [1] * h.dim()
            shape[cdim] = -1
            return (h * g.view(shape), *out[1:]) if isinstance(out, tuple) else h * g.view(shape)
        return hook


def shared(column: nn.Module, attr: str, make):
    """One hook object per column and kind (the rule may be built twice on the same column)."""
    obj = getattr(column, attr, None)
    if obj is None:
        obj = make()
        setattr(column, attr, obj)
    return obj
