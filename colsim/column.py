"""Column and Circuit interfaces (docs/architecture.md, "Column").

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

A :class:`Circuit` (issue 14) is itself a column: N named columns behind their sensors, with
lateral wiring read from t-1 and a vote, stepped together each tick.

A supervised column (``reads_labels = True``, models/classifier.py) also takes the world's labels of the
tick, ``forward(..., labels={"class": (B,), "target": (B,), "task": (B,), ...})``: its objective is the
cross-entropy on them (the simulator passes them; without them its loss is NaN). Its ``embed`` adds
``logits`` (N, H, K): every head's class scores, which the evaluation scores as the column's own accuracy.

``embed(obs, actions)`` maps held-out episodes (N, V, C, H, W) to the representations the
evaluation records (``z`` (N, V, D), ``z_agg`` (N, D)). ``update_target(step)`` moves
any teacher (EMA) after the optimizer step; ``progress`` in [0, 1] is the fraction of
training done.
"""
from __future__ import annotations

import abc
from typing import Optional, Sequence

import numpy as np
import torch
from torch import Tensor, nn

from colsim.circuit.sensors import Sensor, sense
from colsim.types import PyTree, Trace

__all__ = ["AbstractColumn", "Circuit", "vote", "running_stat_buffers"]


class AbstractColumn(nn.Module, abc.ABC):
    provides: frozenset = frozenset()
    reads_labels: bool = False  # True: forward(..., labels=) gets the tick's world labels (a supervised column)

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

    # Seed ensembles (``colsim run --ensemble``, colsim/sim/ensemble.py): the forward runs under ``torch.vmap``
    # over parameters stacked on a leading seed dimension. ``seed_shared_state``: keys of the state that are the
    # same for every seed (they follow the episode starts alone) and enter the forward once, unstacked.
    seed_shared_state: tuple = ()
    # sub-modules run seed by seed inside the ensemble's forward (convolutions: colsim.sim.ensemble._per_seed)
    seed_loop: tuple = ()

    def ensemble_refusal(self) -> Optional[str]:
        """Why this column cannot run as a seed ensemble (one line naming the setting), or None when it can."""
        return f"model {type(self).__name__} has no seed-ensemble forward"

    def forward_side_state(self) -> dict:
        """What a forward leaves on the module besides its outputs (what :meth:`diagnostics` reads): taken out
        of the vmapped forward, split per seed, and put back with :meth:`load_forward_side_state`."""
        return {}

    def load_forward_side_state(self, side: dict) -> None:  # noqa: B027 — optional
        """Put back one seed's :meth:`forward_side_state`."""

    def trainable(self) -> dict[str, nn.Parameter]:
        """The parameters rules may change (teacher copies are excluded)."""
        return {n: p for n, p in self.named_parameters() if p.requires_grad}


def running_stat_buffers(module: nn.Module) -> list[str]:
    """Names of the buffers that training-mode forward passes re-estimate from the data and evaluation
    then reads: the running statistics of normalisation layers (BatchNorm, InstanceNorm with
    ``track_running_stats``). No rule consolidates them (a rule changes parameters only), so a column
    that has them forgets, or is "protected" by replay, with no weight changing; a run's summary lists
    them as ``unconsolidated_buffers`` (docs/results/forgetting.md. The packaged columns have none."""
    out = []
    for name, m in module.named_modules():
        if isinstance(m, nn.modules.batchnorm._NormBase) and m.track_running_stats:
            out += [f"{name}.{b}" if name else b for b, v in m.named_buffers(recurse=False) if v is not None]
    return out


def vote(x: Tensor, kind: str) -> Tensor:
    """The circuit's vote over the columns' outputs x (N, ..., D) -> (..., D).

    ``mean``: the mean of the columns' vectors. ``consensus``: their coordinate-wise median (a column
    that disagrees with the others cannot drag the vote far). ``evidence``: Monty-style accumulation of
    class evidence over views and columns (Clay, Leadholm & Hawkins 2024, "The Thousand Brains Project:
    a new paradigm for sensorimotor intelligence", arXiv 2412.18354) needs class read-outs, which the
    unsupervised columns do not have while they learn: it is computed by ``colsim.analysis`` from the
    recorded per-column z, and the in-run vote entry holds the mean.
    """
    if kind == "consensus":
        return torch.quantile(x, 0.5, dim=0) if x.shape[0] > 1 else x[0]
    return x.mean(0)


class Circuit(AbstractColumn):
    """N named columns, their sensors, their lateral wiring (t-1 only) and a vote (docs/guide/circuits.md).

    Each tick every column sees its sensor's patch of the view (:func:`colsim.circuit.sensors.sense`,
    (B, C, H, W) -> (N, B, c, h, w)), the shared action and episode starts. Column n also reads
    ``context`` (B, W): the mean of the z_AGG its ``wiring[n]`` sources produced at t-1 (detached;
    masked at an episode's first view and before a source had a context of its own).

    * shared weights (``shared=`` one column): the N patches are stacked on the batch dimension and
      run as ONE forward of batch N*B — rows ``n*B:(n+1)*B`` are column n. Parameter names are the
      column's own (``encoder.*``); the rule is built on that column and sees its Trace of batch N*B
      (so batch statistics — BatchNorm in training, LPL's variance term — span every column's streams).
    * per-column weights (``columns=`` a dict): one module per column (a loop); parameter names are
      prefixed with the column name (``c0.encoder.*``) so ``partition`` can address columns; the Trace
      holds ``columns`` (name -> that column's Trace) for the per-column rules
      (:func:`colsim.rule.per_column`), and ``z``, ``z_agg``, ``valid``, ``loss_pred`` concatenated in
      the same N*B layout; ``loss`` is the mean of the columns' losses.

    ``embed`` returns per column and, last, the vote (``names + ["vote"]``): ``z`` (n, N+1, V, D),
    ``z_agg`` (n, N+1, W), ``loss_pred`` (n, N+1). Lateral input at evaluation: each reading column
    gets the mean of its sources' z_AGG of the same episode computed without lateral input (one
    lateral round; a probe episode has no earlier tick).
    """

    def __init__(self, names: Sequence[str], sensors: Sequence[Sensor], wiring: Optional[dict[str, list[str]]] = None,
                 vote: str = "mean", *, shared: Optional[AbstractColumn] = None,
                 columns: Optional[dict[str, AbstractColumn]] = None):
        super().__init__()
        self.names = list(names)
        if not self.names:
            raise ValueError("a Circuit needs at least one column")
        if (shared is None) == (columns is None):
            raise ValueError("give either shared= (one column for all) or columns= (one per name)")
        if columns is not None and list(columns) != self.names:
            raise ValueError(f"columns {list(columns)} do not match names {self.names}")
        if len(sensors) != len(self.names):
            raise ValueError(f"{len(sensors)} sensors for {len(self.names)} columns")
        self.sensors = list(sensors)
        self.wiring = {n: list((wiring or {}).get(n, [])) for n in self.names}
        for n, srcs in self.wiring.items():
            for s in srcs:
                if s not in self.names or s == n:
                    raise ValueError(f"wiring[{n!r}] reads {s!r}; it must name another column of {self.names}")
        self.vote_kind = vote
        self.shared = shared
        self.columns = nn.ModuleDict(columns) if columns is not None else None
        first = shared if shared is not None else next(iter(columns.values()))
        self.provides = frozenset(first.provides)
        self.local_columns: dict[str, bool] = {n: True for n in self.names}  # per-column rules: layer-local or not
        idx = {n: i for i, n in enumerate(self.names)}
        self._src = [[idx[s] for s in self.wiring[n]] for n in self.names]
        self._reads = any(self._src)

    # ------------------------------------------------------------------ helpers
    @property
    def n(self) -> int:
        return len(self.names)

    def _modules_by_name(self) -> "list[tuple[str, AbstractColumn]]":
        return [(n, self.shared) for n in self.names] if self.shared is not None else list(self.columns.items())

    def describe(self) -> dict:
        """The store's ``circuit`` root attribute (as a dict)."""
        return {"columns": self.names, "sensors": {n: s._asdict() for n, s in zip(self.names, self.sensors)},
                "shared": self.shared is not None, "wiring": self.wiring, "vote": self.vote_kind}

    def batch_labels(self, labels: dict) -> dict:
        """World labels (B, ...) laid out like the Trace: shared weights -> (N*B, ...) (column-major)."""
        if self.shared is None:
            return labels
        return {k: torch.cat([v] * self.n) if isinstance(v, Tensor) else v for k, v in labels.items()}

    def _context(self, state: dict, start: Tensor) -> "tuple[Optional[Tensor], Optional[Tensor]]":
        """Lateral input of every column from the t-1 z_AGG in ``state`` -> ((N, B, W), (N, B) bool) or Nones."""
        prev = state["z_prev"]
        if not self._reads or prev is None:
            return None, None
        ok_prev = state["prev_valid"] & ~start  # (B,) same episode, and the sources had a z_AGG then
        ctx = torch.stack([prev[src].mean(0) if src else torch.zeros_like(prev[0]) for src in self._src])  # (N, B, W)
        ok = torch.stack([ok_prev if src else torch.zeros_like(ok_prev) for src in self._src])  # (N, B)
        return ctx, ok

    # ------------------------------------------------------------------ column interface
    def init_state(self, batch: int, device) -> dict:
        col = (self.shared.init_state(self.n * batch, device) if self.shared is not None
               else {n: c.init_state(batch, device) for n, c in self.columns.items()})
        return {"col": col, "z_prev": None, "prev_valid": torch.zeros(batch, dtype=torch.bool, device=device)}

    def forward(self, state: dict, obs: Tensor, action: Tensor, start: Tensor, local: bool = False,
                encoder_graph: bool = True):
        """obs (B, C, H, W), action (B, A), start (B,) -> (state, Trace of batch N*B, see the class docstring)."""
        N, B = self.n, obs.shape[0]
        x = sense(obs, self.sensors)  # (N, B, c, h, w)
        graph = {} if encoder_graph else {"encoder_graph": False}  # a local rule's: no unused encoder graph
        ctx, ok = self._context(state, start)
        if self.shared is not None:
            kw = {} if ctx is None else {"context": ctx.reshape(N * B, -1), "context_valid": ok.reshape(N * B)}
            col, trace = self.shared(state["col"], x.reshape(N * B, *x.shape[2:]), action.repeat(N, 1),
                                     start.repeat(N), local=local, **kw, **graph)  # one batched forward, (N*B, ...)
        else:
            col, traces = {}, {}
            for i, (n, c) in enumerate(self.columns.items()):
                kw = {} if ctx is None or not self._src[i] else {"context": ctx[i], "context_valid": ok[i]}
                col[n], traces[n] = c(state["col"][n], x[i], action, start, local=local and self.local_columns[n],
                                      **kw, **graph)
            trace = Trace(columns=traces, loss=torch.stack([t["loss"] for t in traces.values()]).mean())
            for k in ("z", "z_agg", "valid", "loss_pred"):
                if all(k in t for t in traces.values()):
                    trace[k] = torch.cat([t[k] for t in traces.values()])  # (N*B, ...)
        z_agg = trace["z_agg"].detach().view(N, B, -1)  # (N, B, W)
        valid = trace["valid"].view(N, B)[0] if "valid" in trace else torch.ones(B, dtype=torch.bool, device=obs.device)
        return {"col": col, "z_prev": z_agg, "prev_valid": valid}, trace

    def column_losses(self, trace) -> np.ndarray:
        """(N,) each column's prediction loss ``1 - cos`` over its streams with a context (NaN: none had one)."""
        lp = trace["loss_pred"].detach().view(self.n, -1).float()  # (N, B)
        v = trace["valid"].view(self.n, -1).float() if "valid" in trace else torch.ones_like(lp)
        n = v.sum(1)
        return torch.where(n > 0, (lp * v).sum(1) / n.clamp(min=1), torch.full_like(n, float("nan"))).cpu().numpy()

    def group_metrics(self, metrics: dict) -> dict:
        """``{"<column>/<key>": float}`` -> ``{"<key>": (N,) array}`` (NaN where a column lacks it); others as they are."""
        out, per = {}, {}
        for k, v in metrics.items():
            head, _, rest = k.partition("/")
            if rest and head in self.names:
                per.setdefault(rest, {})[head] = v
            else:
                out[k] = v
        for k, d in per.items():
            out[k] = np.array([d.get(n, np.nan) for n in self.names], dtype=np.float64)
        return out

    @torch.no_grad()
    def embed(self, obs: Tensor, actions: Tensor) -> dict[str, Tensor]:
        """obs (n, V, C, H, W), actions (n, V, A) -> per column and the vote (class docstring)."""
        N, n = self.n, obs.shape[0]
        x = sense(obs, self.sensors)  # (N, n, V, c, h, w)
        if self.shared is not None:
            flat = x.reshape(N * n, *x.shape[2:])
            acts = actions.repeat(N, 1, 1)
            outs = self.shared.embed(flat, acts)
            if self._reads:
                ctx, ok = self._embed_context(outs["z_agg"].view(N, n, -1))
                outs = self.shared.embed(flat, acts, context=ctx.reshape(N * n, -1), context_valid=ok.reshape(-1))
            z, z_agg = outs["z"].view(N, n, *outs["z"].shape[1:]), outs["z_agg"].view(N, n, -1)
            lp = outs["loss_pred"].view(N, n) if "loss_pred" in outs else None
            layers = [l.view(N, n, *l.shape[1:]) for l in outs.get("layers") or []]
        else:
            outs = [c.embed(x[i], actions) for i, c in enumerate(self.columns.values())]
            if self._reads:
                ctx, ok = self._embed_context(torch.stack([o["z_agg"] for o in outs]))
                outs = [c.embed(x[i], actions, context=ctx[i], context_valid=ok[i]) if self._src[i] else outs[i]
                        for i, c in enumerate(self.columns.values())]
            z, z_agg = torch.stack([o["z"] for o in outs]), torch.stack([o["z_agg"] for o in outs])
            lp = torch.stack([o["loss_pred"] for o in outs]) if all("loss_pred" in o for o in outs) else None
            layers = [torch.stack(ls) for ls in zip(*[o.get("layers") or [] for o in outs])]
        out = {"z": torch.cat([z, vote(z, "mean")[None]]).transpose(0, 1),  # (n, N+1, V, D)
               "z_agg": torch.cat([z_agg, vote(z_agg, self.vote_kind)[None]]).transpose(0, 1),  # (n, N+1, W)
               # per-block local terms: every column's blocks side by side (n, V, N*C_l)
               "layers": [l.permute(1, 2, 0, 3).reshape(n, l.shape[2], -1) for l in layers]}
        if lp is not None:
            out["loss_pred"] = torch.cat([lp, lp.mean(0, keepdim=True)]).T  # (n, N+1), the vote's = the mean
        return out

    def _embed_context(self, z_agg: Tensor) -> "tuple[Tensor, Tensor]":
        """z_agg (N, n, W) without lateral input -> each column's context (N, n, W) and validity (N, n)."""
        ctx = torch.stack([z_agg[src].mean(0) if src else torch.zeros_like(z_agg[0]) for src in self._src])
        ok = torch.tensor([bool(src) for src in self._src], device=z_agg.device)[:, None].expand(-1, z_agg.shape[1])
        return ctx, ok

    def update_target(self, step: int) -> None:
        for m in ([self.shared] if self.shared is not None else self.columns.values()):
            m.update_target(step)

    def diagnostics(self) -> dict[str, float]:
        if self.shared is not None:
            return self.shared.diagnostics()
        return {f"{n}/{k}": v for n, c in self.columns.items() for k, v in c.diagnostics().items()}

    def trainable(self) -> dict[str, nn.Parameter]:
        if self.shared is not None:
            return self.shared.trainable()
        return {f"{n}.{k}": p for n, c in self.columns.items() for k, p in c.trainable().items()}
