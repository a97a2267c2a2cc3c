"""A seed ensemble: S runs of one config that differ only in their seed, stepped as one batched program.

The S columns' parameters, buffers (and so the EMA teacher) are stacked over a leading seed dimension in one
module, :attr:`SeedEnsemble.stacked`, whose optimizer steps every seed at once (Adam's and SGD's updates are
elementwise, so a stacked step is each seed's step). The column's forward runs under ``torch.vmap`` over that
dimension (``torch.func.functional_call`` on the stacked parameters); the rule differentiates the sum of the
seeds' losses, whose gradient with respect to seed s's slice is seed s's own gradient.

What stays per seed is what a separate run would hold: the stream and its generator, the evaluator, the
recorder, the collapse window, the checkpoints, and the global RNG. Random numbers drawn inside the vmapped
forward (dropout) come from each seed's own generator, in the order its separate run would draw them
(:class:`_SeedRandomness`), so an ensemble repeats its separate runs: to float rounding on CPU (the batched
kernels sum in another order; ``tests/test_ensemble.py`` checks 1e-6).

``materialize(s)`` copies seed s's slice of the parameters, buffers and optimizer state into that seed's own
column and optimizer, for what runs per seed (evaluation, checkpoints).
"""
from __future__ import annotations

import contextlib
import copy
import inspect
from typing import Any, Optional

import torch
import torch.nn.functional as F
from torch import nn
from torch._C import _functorch
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode

from colsim.checkpoint import rng_states, set_rng_states
from colsim.config import ConfigError

__all__ = ["SeedEnsemble", "ensemble_refusal", "split_seeds"]


def ensemble_refusal(rule_name: str, rule, column) -> Optional[str]:
    """One line saying why this rule / column pair cannot run as a seed ensemble, or None."""
    if not getattr(rule, "seed_batched", False):
        return (f"--ensemble: rule {rule_name!r} cannot run as a seed ensemble (its update is not batched over "
                "seeds; backprop is); run the seeds separately with --seeds")
    why = column.ensemble_refusal()
    return None if why is None else f"--ensemble: {why}; run the seeds separately with --seeds"


def split_seeds(x: Any, s: int) -> Any:
    """Seed s's slice of a (nested) output of the vmapped forward (tensors (S, ...) -> (...))."""
    if isinstance(x, torch.Tensor):
        return x[s]
    if isinstance(x, dict):
        return type(x)((k, split_seeds(v, s)) for k, v in x.items())
    if isinstance(x, (list, tuple)):
        return type(x)(split_seeds(v, s) for v in x)
    return x


class _SeedRandomness(TorchDispatchMode):
    """Inside the vmapped forward: a seeded random op inside a kernel (attention's dropout), seen here on the
    physical (S, ...) tensor with the seed dimension first, is drawn slice by slice from each seed's own generator,
    so each seed gets the numbers its separate run would draw from the global generator. Other random ops are
    refused; ops given a generator of their own (:class:`_SeedDropout`'s) pass."""

    def __init__(self, generators: list):
        super().__init__()
        self.generators = generators

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if torch.Tag.nondeterministic_seeded not in func.tags or kwargs.get("generator") is not None:
            return func(*args, **kwargs)
        name = func.overloadpacket.__name__
        if "attention" in name and float(kwargs.get("dropout_p", args[3] if len(args) > 3 else 0.0)) == 0.0:
            return func(*args, **kwargs)  # a fused attention kernel without dropout draws nothing
        x, S = args[0], len(self.generators)
        p = args[1] if len(args) > 1 else kwargs.get("p", 0.5)
        if name != "bernoulli_" or not isinstance(p, float) or x.shape[0] != S:
            raise ConfigError(f"--ensemble: the column draws random numbers with {func} inside its forward, which a "
                              "seed ensemble cannot split per seed; run the seeds separately with --seeds")
        for s, g in enumerate(self.generators):
            x[s].bernoulli_(p, generator=g)
        return x


class _SeedDropout(TorchFunctionMode):
    """Inside the vmapped forward: ``F.dropout`` draws each seed's mask from that seed's generator, into a tensor
    laid out in memory as its separate run's (``empty_like`` of the input: torch fills a dense tensor in memory
    order), and applies it as ``at::dropout`` does on CPU (``input * (mask / (1 - p))``)."""

    def __init__(self, generators: list):
        super().__init__()
        self.generators = generators

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is not F.dropout:
            return func(*args, **kwargs)
        bound = inspect.signature(F.dropout).bind(*args, **kwargs)
        bound.apply_defaults()
        x, p, training, inplace = (bound.arguments[k] for k in ("input", "p", "training", "inplace"))
        if not training or p == 0.0 or not _functorch.is_batchedtensor(x):
            return func(*args, **kwargs)
        level, bdim = _functorch.maybe_get_level(x), _functorch.maybe_get_bdim(x)
        phys = _functorch.get_unwrapped(x)
        with torch._C._DisableFuncTorch():  # plain tensors: the draws and the product below vmap
            noise = torch.stack([torch.empty_like(phys.select(bdim, s)).bernoulli_(1.0 - p, generator=g)
                                 for s, g in enumerate(self.generators)], dim=bdim)
            out = phys * noise.div_(1.0 - p)
        return _functorch._add_batch_dim(out, bdim, level)


def _per_seed(module: nn.Module, S: int) -> None:
    """Make ``module`` (a sub-module of the stacked column) run seed by seed inside the vmapped forward: its input
    and its parameters' slices are unwrapped to the physical (S, ...) tensors, the module runs once per seed on
    plain tensors (the kernels of a separate run), and the outputs are stacked and wrapped back. For convolutions,
    which vmap would run as one grouped convolution over the seeds (slower on CPU, and transposed layouts after it)."""
    inner = module.forward

    def forward(x, *args, **kw):
        if not _functorch.is_batchedtensor(x):
            return inner(x, *args, **kw)
        level = _functorch.maybe_get_level(x)

        def phys(t):
            return _functorch.get_unwrapped(t).movedim(_functorch.maybe_get_bdim(t), 0) \
                if _functorch.is_batchedtensor(t) else t.expand(S, *t.shape)

        with torch._C._DisableFuncTorch():
            # unbind, not S indexings: its backward stacks the seeds' gradients once instead of filling S zero
            # tensors of the stacked shape per parameter (measured: a fifth of an ensemble tick)
            params = {n: phys(p).unbind(0) for n, p in module.named_parameters()}
            buffers = {n: phys(b).unbind(0) for n, b in module.named_buffers()}
            xs = phys(x).unbind(0)
            outs = [torch.func.functional_call(module, ({n: p[s] for n, p in params.items()},
                                                        {n: b[s] for n, b in buffers.items()}), (xs[s], *args), kw)
                    for s in range(S)]
            out = torch.utils._pytree.tree_map(lambda *ts: torch.stack(ts), *outs)
        return torch.utils._pytree.tree_map(lambda t: _functorch._add_batch_dim(t, 0, level), out)

    module.forward = forward


class SeedEnsemble:
    """``columns``: the S seeds' columns (built alike); ``rngs``: each seed's global RNG states
    (:func:`colsim.checkpoint.rng_states`) as its separate run would hold them now."""

    def __init__(self, columns: list, rngs: list[dict]):
        self.columns, self.rngs, self.S = list(columns), list(rngs), len(columns)
        self.stacked = copy.deepcopy(self.columns[0])
        named = [dict(c.named_parameters()) for c in self.columns]
        bufs = [dict(c.named_buffers()) for c in self.columns]
        with torch.no_grad():
            for mname, mod in self.stacked.named_modules():
                for k, p in list(mod._parameters.items()):
                    if p is not None:
                        full = f"{mname}.{k}" if mname else k
                        q = nn.Parameter(torch.stack([n[full].detach() for n in named]), requires_grad=p.requires_grad)
                        if hasattr(p, "_no_weight_decay"):
                            q._no_weight_decay = p._no_weight_decay
                        mod._parameters[k] = q
                for k, b in list(mod._buffers.items()):
                    if b is not None:
                        full = f"{mname}.{k}" if mname else k
                        mod._buffers[k] = torch.stack([n[full] for n in bufs])
        self.shared = tuple(self.stacked.seed_shared_state)
        for name in self.stacked.seed_loop:
            _per_seed(self.stacked.get_submodule(name), self.S)

    # ------------------------------------------------------------------ per-seed global RNG
    @contextlib.contextmanager
    def seed_rng(self, s: int):
        """The global RNGs are seed s's inside the block (what its separate run would see), and stay its after."""
        outer = rng_states()
        set_rng_states(self.rngs[s])
        try:
            yield
        finally:
            self.rngs[s] = rng_states()
            set_rng_states(outer)

    # ------------------------------------------------------------------ state
    def stack_state(self, states: list[dict]) -> dict:
        """The seeds' column states -> one: tensors stacked (S, ...), the shared keys once (checked equal)."""
        out = {}
        for k in states[0]:
            if k in self.shared:
                if any(not torch.equal(st[k], states[0][k]) for st in states[1:]):
                    raise ConfigError(f"--ensemble: the seeds' column state {k!r} differs; run the seeds separately")
                out[k] = states[0][k]
            else:
                out[k] = _stack(st[k] for st in states)
        return out

    def unstack_state(self, state: dict, s: int) -> dict:
        return {k: v if k in self.shared else split_seeds(v, s) for k, v in state.items()}

    # ------------------------------------------------------------------ the forward
    def forward(self, state: dict, obs: torch.Tensor, action: torch.Tensor, start: torch.Tensor,
                **kw) -> "tuple[dict, dict, list[dict]]":
        """state (stacked), obs (S, B, C, H, W), action (S, B, A), start (B,) shared by the seeds ->
        (state, trace with (S, ...) tensors, each seed's forward side state)."""
        col = self.stacked
        params, buffers = dict(col.named_parameters()), dict(col.named_buffers())
        own = {k: v for k, v in state.items() if k not in self.shared}
        shared = {k: v for k, v in state.items() if k in self.shared}

        def one(p, b, own_s, obs_s, action_s):
            st, tr = torch.func.functional_call(col, (p, b), ({**own_s, **shared}, obs_s, action_s, start), kw)
            return ({k: v for k, v in st.items() if k not in self.shared}, {k: v for k, v in st.items()
                    if k in self.shared}, dict(tr), col.forward_side_state())

        gens = [torch.Generator().manual_seed(0) for _ in range(self.S)]
        for g, r in zip(gens, self.rngs):
            g.set_state(r["torch"])
        with _SeedRandomness(gens), _SeedDropout(gens):
            own2, shared2, trace, side = torch.vmap(one, randomness="different")(params, buffers, own, obs, action)
        for g, r in zip(gens, self.rngs):
            r["torch"] = g.get_state()
        new = {**own2, **{k: v[0] for k, v in shared2.items()}}  # a shared key comes out expanded over seeds
        return new, trace, [split_seeds(side, s) for s in range(self.S)]

    # ------------------------------------------------------------------ one seed's own objects
    @torch.no_grad()
    def materialize(self, s: int, optimizer=None, seed_optimizer=None) -> None:
        """Copy seed s's parameters and buffers (and, given both, the optimizer's state) into its own column."""
        params, buffers = dict(self.stacked.named_parameters()), dict(self.stacked.named_buffers())
        for n, p in self.columns[s].named_parameters():
            p.copy_(params[n][s])
        for n, b in self.columns[s].named_buffers():
            b.copy_(buffers[n][s])
        if optimizer is None or seed_optimizer is None:
            return
        for eo, so in zip(getattr(optimizer, "optimizers", [optimizer]), getattr(seed_optimizer, "optimizers",
                                                                                 [seed_optimizer])):
            so.state.clear()
            for eg, sg in zip(eo.param_groups, so.param_groups):
                sg.update({k: v for k, v in eg.items() if k != "params"})
                for ep, sp in zip(eg["params"], sg["params"]):
                    if ep in eo.state:
                        so.state[sp] = {k: (v[s].clone() if torch.is_tensor(v) and v.dim() and v.shape[0] == self.S
                                            and v.shape[1:] == sp.shape else
                                            v.clone() if torch.is_tensor(v) else v) for k, v in eo.state[ep].items()}


def _stack(xs) -> Any:
    xs = list(xs)
    if isinstance(xs[0], torch.Tensor):
        return torch.stack(xs)
    if isinstance(xs[0], dict):
        return {k: _stack(x[k] for x in xs) for k in xs[0]}
    if isinstance(xs[0], (list, tuple)):
        return type(xs[0])(_stack(x[i] for x in xs) for i in range(len(xs[0])))
    return xs[0]
