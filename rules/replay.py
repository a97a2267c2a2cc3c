"""Reservoir replay: a stream-level wrapper that mixes stored column inputs into every step.

Reservoir sampling (Vitter 1985, Algorithm R; as used for continual learning by e.g.
Chaudhry et al. 2019, "On tiny episodic memories", and Buzzega et al. 2020): the n-th valid
item of the stream (n counted from 0) goes to slot n while n < K; afterwards it draws
``r ~ U{0..n}`` and replaces slot r when r < K. Every item seen so far is then in the buffer
with probability K/N (N items seen), whatever the phase it came from — replay needs no phase
boundaries (docs/reference/rules.md).

An *item* is one stream's column input of one tick (``trace["inputs"]``: the context window
``obs_ctx`` (M, C, H, W), ``act_ctx`` (M, A), ``count``, the current ``obs`` and ``action``),
kept on the CPU; only items with a prediction (``valid``) are stored. Each step:

1. draw R items uniformly without replacement from the items stored before this step, once at least R
   are stored (R = ``batch``, default the live batch size B, and at most the capacity K: a buffer smaller
   than the batch replays all K of its items once it is full, rather than never);
2. re-run the column on them (``column.forward_inputs``, in the same local / global mode as
   the live forward) — the replayed trace is computed with the current parameters;
3. concatenate live and replayed traces along the batch (per-stream tensors, block lists,
   inputs; ``loss`` = the valid-count-weighted mean of both losses, i.e. the loss of the
   concatenated batch) and call the inner rule **once** on the merged trace;
4. insert the live step's valid items into the reservoir.

So the inner rule trains exactly what it trains alone, on a batch of B live + R replayed
samples; what replay adds is not local in time (old inputs come back), but it is local in
the circuit: nothing but the rule's input changes. RNG: a ``torch.Generator`` seeded from
``seed`` whose state lives in the rule state (``rng``, uint8), so runs are deterministic and
state round-trips through ``torch.save``.

Metrics: ``replay.filled``, ``replay.seen`` and, when the simulator passes the stream's
labels, ``replay.hist.<class>`` = the number of buffer items per class (labels are only
counted, never learned from).
"""
from __future__ import annotations

from typing import Literal, Optional

import torch
from pydantic import Field
from torch import Tensor

from colsim.config import ConfigError, Strict
from colsim.registry import register_rule
from colsim.rule import Rule
from colsim.types import Trace

__all__ = ["ReplayConfig", "replay", "reservoir_slots", "merge_traces"]


class ReplayConfig(Strict):
    name: Literal["replay"] = "replay"
    capacity: int = Field(1000, gt=0)  # K items
    batch: Optional[int] = Field(None, gt=0)  # R replayed items per step (None: the live batch size; at most capacity)
    seed: int = Field(0, ge=0)


def reservoir_slots(n_seen: int, k: int, capacity: int, gen: torch.Generator) -> Tensor:
    """Slots for the next k items (item i is the (n_seen + i)-th overall); -1 = not kept. -> (k,) long."""
    n = torch.arange(n_seen, n_seen + k, dtype=torch.float64)  # (k,) 0-based item index
    r = torch.floor(torch.rand(k, generator=gen, dtype=torch.float64) * (n + 1)).long()  # r ~ U{0..n}
    slots = torch.where(n < capacity, n.long(), torch.where(r < capacity, r, torch.full_like(r, -1)))
    return slots


def _cat(a, b, B: int, R: int):
    if isinstance(a, Tensor) and isinstance(b, Tensor):
        if a.dim() >= 1 and a.shape[0] == B and b.dim() >= 1 and b.shape[0] == R and a.shape[1:] == b.shape[1:]:
            return torch.cat([a, b.to(a.device)])
        return a
    if isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
        return [_cat(x, y, B, R) for x, y in zip(a, b)]
    if isinstance(a, dict) and isinstance(b, dict):
        return {k: (_cat(v, b[k], B, R) if k in b else v) for k, v in a.items()}
    return a


def merge_traces(live: Trace, rep: Trace) -> Trace:
    """Concatenate two traces along the batch; ``loss`` = mean over the valid entries of both."""
    B, R = live["valid"].shape[0], rep["valid"].shape[0]
    out = Trace(live)
    for k, v in live.items():
        if k in ("loss", "local") or k.startswith("_") or k not in rep:
            continue
        out[k] = _cat(v, rep[k], B, R)
    n_l = live["valid"].sum().to(live["loss"].dtype)
    n_r = rep["valid"].sum().to(live["loss"].dtype)
    out["loss"] = (n_l * live["loss"] + n_r * rep["loss"]) / (n_l + n_r).clamp(min=1)
    return out


@register_rule("replay", ReplayConfig, kind="modifier", updates=False)
def replay(cfg: ReplayConfig, inner: Rule, column=None) -> Rule:
    """Reservoir replay: re-run stored column inputs and train the inner rule on live + replayed batch."""
    if column is None or not hasattr(column, "forward_inputs"):
        raise ConfigError(f"rule.wrap: replay re-runs stored inputs but model {type(column).__name__} has no "
                          f"forward_inputs(); use a seq-JEPA column or drop '+replay'")
    num_classes = getattr(getattr(column, "spec", None), "num_classes", 0)
    K = cfg.capacity

    def init(params):
        return {"inner": inner.init(params), "rng": torch.Generator().manual_seed(cfg.seed).get_state(),
                "seen": 0, "filled": 0, "buf": {}, "labels": torch.full((K,), -1, dtype=torch.long)}

    def update(params, state, trace):
        gen = torch.Generator()
        gen.set_state(state["rng"])
        # the buffer lives on the CPU (.cpu() is a no-op there): a fresh state holds no template for it, so
        # restore_like puts a resumed CUDA run's buffer on the GPU (the RNG state and labels keep their templates')
        stored = {k: v.cpu() for k, v in state["buf"].items()}
        labels = state["labels"]
        inputs = trace["inputs"]
        valid = trace["valid"].detach().cpu()
        B = valid.shape[0]
        R = min(cfg.batch or B, K)  # a buffer smaller than the batch replays all of itself once full
        filled = state["filled"]
        # 1-3. replay R stored items, merged into the live trace
        replayed = filled >= R
        if replayed:
            idx = torch.randperm(filled, generator=gen)[:R]  # (R,)
            dev = trace["valid"].device
            rep_in = {k: v[idx].to(dev) for k, v in stored.items()}
            rep = column.forward_inputs(rep_in, local=bool(trace["local"]))
            if "labels" in trace:
                rep["labels"] = {"class": labels[idx]}
            merged = merge_traces(trace, rep)
        else:
            merged = trace
        grads, s_in, metrics = inner.update(params, state["inner"], merged)
        # 4. reservoir insertion of this step's valid items
        buf = dict(stored)
        if not buf:
            buf = {k: torch.zeros((K, *v.shape[1:]), dtype=v.dtype) for k, v in inputs.items()
                   if isinstance(v, Tensor) and v.dim() >= 1 and v.shape[0] == B}
        items = valid.nonzero().flatten()  # (k,) streams with a prediction
        slots = reservoir_slots(state["seen"], int(items.numel()), K, gen)
        keep = slots >= 0
        if bool(keep.any()):
            src, dst = items[keep], slots[keep]
            for k in buf:
                buf[k] = buf[k].clone()
                buf[k][dst] = inputs[k].detach()[src.to(inputs[k].device)].cpu().to(buf[k].dtype)
            labels = labels.clone()
            lab = trace.get("labels", {}).get("class") if isinstance(trace.get("labels"), dict) else None
            labels[dst] = lab.detach().cpu().long()[src] if lab is not None else -1
        seen = state["seen"] + int(items.numel())
        filled = min(seen, K)
        metrics = dict(metrics)
        metrics["replay.filled"] = float(filled)
        metrics["replay.seen"] = float(seen)
        metrics["replay.replayed"] = float(R if replayed else 0)  # items replayed this step
        if "labels" in trace:
            have = labels[:filled]
            have = have[have >= 0]
            hist = torch.bincount(have, minlength=num_classes) if have.numel() else torch.zeros(num_classes, dtype=torch.long)
            for c, v in enumerate(hist.tolist()):
                metrics[f"replay.hist.{c}"] = float(v)
        new = {"inner": s_in, "rng": gen.get_state(), "seen": seen, "filled": filled, "buf": buf, "labels": labels}
        return grads, new, metrics

    def post_step(params, state, delta):
        delta, s_in = inner.post_step(params, state["inner"], delta)
        return delta, {**state, "inner": s_in}

    def boundary(params, state, event):
        return {**state, "inner": inner.boundary(params, state["inner"], event)}

    return Rule(init, update, inner.needs | {"inputs", "valid", "loss"},
                post_step if inner.post_step is not None else None,
                boundary if inner.boundary is not None else None)
