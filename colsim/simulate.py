"""The Simulator: one documented step schedule, integer time, explicit RNG.

``run(column, rule, protocol, recorder, ...)`` executes, before step 0:

0. check the rule against the column (done by :mod:`colsim.build`), draw one fixed probe
   set per phase from the world's probe pool (generator seeded from the run seed), and
   evaluate once (``phase = "init"``) when ``evaluation.at_start``.

then for every phase p (a fresh stream of that phase's distribution, column windows reset)
and every step t of it:

1. take the Step from the stream (``stream.step``: obs, action, start, labels; the simulator
   adds the ``phase`` label);
2. column forward (``local`` when the rule is layer-local) -> (column state, Trace);
3. rule update -> (grads, rule state, metrics)          [skipped when the phase has learn: false]
4. stop with status ``diverged`` if the loss or a rule's loss is NaN / Inf;
5. optimizer step on the grads (learning-rate warm-up applied) — the only place where
   parameters change; the rule's ``post_step`` may rescale the applied update there;
6. teacher update (``column.update_target(progress)``, e.g. EMA momentum schedule);
7. record metrics every ``record.metrics_every`` steps;
8. evaluate every ``evaluation.every`` steps when set;

and at the end of every phase:

9. the rule's ``boundary(..., "phase_end")`` (EWC Fisher, SI Omega);
10. evaluate on every probe set (this fills row p of the accuracy matrix);
11. checkpoint (``checkpoints/phaseNN-name.pt``).
"""
from __future__ import annotations

import math
import os
import sys
import time
from typing import Any, Callable, NamedTuple, Optional

import numpy as np
import torch

from colsim.analysis.continual import bwt, forgetting, fwt
from colsim.build import lr_at
from colsim.checkpoint import save_checkpoint
from colsim.config import ProtocolConfig
from colsim.evaluate import embed_probe_sets, probe_scores
from colsim.record import Recorder
from colsim.rule import Rule

__all__ = ["run", "RunResult", "apply_update", "collapse_diagnostics", "keep_freed_memory"]

_M_TRIM_THRESHOLD, _M_MMAP_MAX = -1, -4  # glibc mallopt parameters (malloc.h)
_heap_kept: Optional[bool] = None


def keep_freed_memory() -> bool:
    """Let glibc's malloc keep and reuse freed memory instead of returning it to the kernel.

    PyTorch's CPU allocator is plain ``malloc``: every activation above glibc's mmap threshold
    (at most 32 MiB: a ResNet-18 block output at batch 192 is 48 MiB) is a fresh ``mmap`` whose
    pages fault in, zero-filled, on first touch, and are unmapped again when freed — every step.
    With mmap off for the process's main heap and trimming off, the second step reuses the first
    step's pages: seqjepa_resnet18's CPU step takes ~15 % less time, convolution forwards ~2x
    less (``benchmarks/bench_step.py``). Peak memory is the same high-water mark a training loop
    reaches anyway; it is simply not handed back between steps. Process-wide and idempotent;
    ``colsim run`` calls it for CPU runs (``COLSIM_KEEP_FREED_MEMORY=0`` opts out). Returns
    whether it took effect (False off glibc).
    """
    global _heap_kept
    if _heap_kept is not None:
        return _heap_kept
    _heap_kept = False
    if os.environ.get("COLSIM_KEEP_FREED_MEMORY", "1") == "0" or not sys.platform.startswith("linux"):
        return False
    try:
        import ctypes

        libc = ctypes.CDLL(None)
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # not glibc (musl has no mallopt)
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    _heap_kept = bool(mallopt(_M_MMAP_MAX, 0)) and bool(mallopt(_M_TRIM_THRESHOLD, 2 ** 31 - 1))
    return _heap_kept


class RunResult(NamedTuple):
    status: str  # completed | diverged | interrupted
    steps: int
    wall_s: float
    summary: dict


def collapse_diagnostics(z: torch.Tensor, prefix: str) -> dict[str, float]:
    """Per-dim std (min / mean), participation-ratio effective rank, mean pairwise cosine of z (B, D)."""
    z = z.detach().float()
    if z.shape[0] < 2:
        return {}
    std = z.std(0)
    s = torch.linalg.svdvals(z - z.mean(0, keepdim=True))
    pr = float(s.sum() ** 2 / (s ** 2).sum().clamp(min=1e-12))
    zn = torch.nn.functional.normalize(z, dim=-1)
    cos = zn @ zn.T
    B = z.shape[0]
    mean_cos = float((cos.sum() - cos.diagonal().sum()) / (B * B - B))
    return {f"{prefix}_std_min": float(std.min()), f"{prefix}_std_mean": float(std.mean()),
            f"{prefix}_eff_rank": pr, f"{prefix}_mean_cos": mean_cos}


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


def _seeded(seed: int, *salt: int) -> torch.Generator:
    s = seed
    for x in salt:
        s = (s * 1_000_003 + x + 1) % (2 ** 63 - 1)
    return torch.Generator().manual_seed(s)


def run(column, rule: Rule, protocol: ProtocolConfig, recorder: Recorder, *, world, optimizer: torch.optim.Optimizer,
        seed: int = 0, device: str = "cpu", local: bool = False, ckpt_dir=None, config_yaml: str = "",
        on_step: Optional[Callable[[dict], None]] = None, resume: Optional[dict] = None) -> RunResult:
    """Run ``protocol`` (see the module docstring for the step schedule). Returns a RunResult.

    ``resume``: a checkpoint dict (:func:`colsim.checkpoint.load_checkpoint`) whose model
    parameters are already loaded into ``column``; the run continues with the phase after the
    checkpoint, restoring optimizer, rule state, step counter and the torch RNG.
    """
    t0 = time.perf_counter()
    params = column.trainable()
    rstate = rule.init(params)
    first_phase = 0
    step = 0
    if resume is not None:
        optimizer.load_state_dict(resume["optimizer"])
        rstate = _to_device(resume["rule_state"], device)
        first_phase, step = int(resume["phase"]), int(resume["step"])
        torch.set_rng_state(resume["torch_rng"])
    ev = protocol.evaluation
    names = [ph.name for ph in protocol.phases]
    action_names = list(world.spec.action_names)
    probe_sets = [world.probe_set(ph.classes, ev.probe_samples, ev.views, _seeded(seed, 7, j), ph.world)
                  for j, ph in enumerate(protocol.phases)]
    total = protocol.total_steps
    evals: list[dict] = []
    status = "completed"
    recording = protocol.record.enabled

    def evaluate(phase_name: str) -> None:
        emb = embed_probe_sets(column, probe_sets, ev.batch, device)
        sc = probe_scores(emb, probe_sets, action_names, seed=seed)
        k = len(evals)
        evals.append({"phase": phase_name, "step": step, **sc})
        coords = {"eval": (("eval",), np.array([k])), "step": (("eval",), np.array([step], dtype=np.int64)),
                  "phase": (("eval",), np.array([phase_name], dtype="<U64")),
                  "probe_set": (("probe_set",), np.array(names, dtype="<U64")),
                  "action_dim": (("action_dim",), np.array(action_names, dtype="<U64"))}
        if protocol.record.probe:
            static = {
                "actions": (("probe_set", "sample", "view", "action_dim"), np.stack([p.actions.numpy() for p in probe_sets])),
                "label_class": (("probe_set", "sample"), np.stack([p.labels["class"].numpy() for p in probe_sets])),
            }
            for lab, extra in (("angle", ()), ("scale", ()), ("shift", ("xy",))):
                if lab in probe_sets[0].labels:
                    static[f"label_{lab}"] = (("probe_set", "sample", "view", *extra),
                                              np.stack([p.labels[lab].numpy() for p in probe_sets]))
            recorder.record_eval("probe", {
                "z": (("eval", "probe_set", "sample", "view", "unit"), emb.z[None].astype(np.float32)),
                "z_agg": (("eval", "probe_set", "sample", "unit_agg"), emb.z_agg[None].astype(np.float32)),
            }, coords, static)
        recorder.record_eval("evaluation", {
            "acc_agg": (("eval", "probe_set"), sc["acc_agg"][None]),
            "acc_z": (("eval", "probe_set"), sc["acc_z"][None]),
            "probe_acc_agg": (("eval",), np.array([sc["probe_acc_agg"]])),
            "probe_acc_z": (("eval",), np.array([sc["probe_acc_z"]])),
            "equivariance_r2": (("eval",), np.array([sc["equivariance_r2"]])),
            "equivariance_r2_dim": (("eval", "action_dim"), sc["equivariance_r2_dim"][None]),
        }, coords)

    try:
        if ev.at_start and resume is None:
            evaluate("init")
        rate = None
        for p_idx, ph in enumerate(protocol.phases):
            if p_idx < first_phase:
                continue
            stream = world.stream(protocol.stream.batch, protocol.stream.episode_length, ph.classes, ph.world)
            sstate = stream.init(_seeded(seed, 11, p_idx))
            cstate = column.init_state(protocol.stream.batch, device)
            column.train(ph.learn)
            first = True
            for t in range(ph.steps):
                ts = time.perf_counter()
                # 1. Step
                sstate, st = stream.step(sstate)
                st.labels["phase"] = torch.full_like(st.labels["class"], p_idx)  # (B,) phase id
                obs, action = st.obs.to(device, non_blocking=True), st.action.to(device, non_blocking=True)
                start = st.start.to(device) | first
                first = False
                metrics: dict[str, float] = {"phase": float(p_idx)}
                if ph.learn:
                    # 2. column forward
                    cstate, trace = column(cstate, obs, action, start, local=local)
                    trace["labels"] = st.labels  # world truth, for rule diagnostics only (replay's class histogram)
                    # 3. rule update
                    grads, rstate, rm = rule.update(params, rstate, trace)
                    loss = float(trace["loss"].detach())
                    metrics["loss"] = loss
                    metrics.update(rm)
                    # 4. divergence check
                    bad = [k for k, v in rm.items() if k.startswith("loss") and not math.isfinite(v)]
                    if not math.isfinite(loss) or bad or not all(bool(torch.isfinite(g).all()) for g in grads.values()):
                        status = "diverged"
                        recorder.record(step, {k: v for k, v in metrics.items()})
                        break
                    # 5. optimizer step (the single mutation point)
                    gn = math.sqrt(sum(float(g.pow(2).sum()) for g in grads.values())) if grads else 0.0
                    for g in optimizer.param_groups:
                        g["lr"] = lr_at(g, step)
                    rstate = apply_update(params, grads, optimizer, rule, rstate)
                    # 6. teacher
                    column.update_target((step + 1) / total)
                    metrics["grad_norm"] = gn
                    metrics["lr"] = optimizer.param_groups[0]["lr"]
                else:
                    with torch.no_grad():
                        cstate, trace = column(cstate, obs, action, start, local=False)
                    metrics["loss"] = float(trace["loss"])
                # 7. record
                if recording and step % protocol.record.metrics_every == 0:
                    metrics.update(collapse_diagnostics(trace["z"], "z"))
                    metrics.update(collapse_diagnostics(trace["z_agg"], "zagg"))
                    metrics.update(column.diagnostics())
                    dt = time.perf_counter() - ts
                    rate = 1.0 / dt if rate is None else 0.9 * rate + 0.1 / max(dt, 1e-9)
                    metrics["steps_per_s"] = rate
                    recorder.record(step, metrics)
                elif not recording:
                    dt = time.perf_counter() - ts
                    rate = 1.0 / dt if rate is None else 0.9 * rate + 0.1 / max(dt, 1e-9)
                step += 1
                if on_step is not None:
                    on_step({"phase": ph.name, "phase_index": p_idx, "step": step, "total": total,
                             "loss": metrics.get("loss", float("nan")), "steps_per_s": rate or 0.0})
                # 8. scheduled evaluation
                if ev.every and step % ev.every == 0 and t != ph.steps - 1:
                    evaluate(ph.name)
            if status != "completed":
                break
            # 9. rule boundary
            if rule.boundary is not None and ph.learn:
                rstate = rule.boundary(params, rstate, "phase_end")
            # 10. evaluate
            evaluate(ph.name)
            # 11. checkpoint
            if ckpt_dir is not None:
                save_checkpoint(ckpt_dir / f"phase{p_idx:02d}-{ph.name}.pt", step=step, phase=p_idx + 1,
                                model=column.state_dict(), optimizer=optimizer.state_dict(), rule_state=rstate,
                                torch_rng=torch.get_rng_state(), stream_state=sstate, column_state=cstate,
                                config=config_yaml)
    except KeyboardInterrupt:
        status = "interrupted"
    wall = time.perf_counter() - t0
    summary = make_summary(evals, names, step, wall, status, at_start=ev.at_start)
    recorder.set_attrs(steps_done=step, wall_s=wall)
    recorder.close(status)
    return RunResult(status, step, wall, summary)


def _to_device(tree, device):
    if isinstance(tree, torch.Tensor):
        return tree.to(device)
    if isinstance(tree, dict):
        return {k: _to_device(v, device) for k, v in tree.items()}
    if isinstance(tree, list):
        return [_to_device(v, device) for v in tree]
    return tree


def _f(x) -> Optional[float]:
    x = float(x)
    return x if math.isfinite(x) else None


def make_summary(evals: list[dict], names: list[str], steps: int, wall: float, status: str, at_start: bool) -> dict:
    """summary.json: accuracy matrix rows = evaluations (init first when present), columns = probe sets."""
    acc = [[_f(v) for v in e["acc_agg"]] for e in evals]
    phase_rows = [np.array(e["acc_agg"], dtype=float) for e in evals if e["phase"] != "init"]
    # rows at phase ends only: the last evaluation carrying each phase name
    ends = {}
    for e in evals:
        if e["phase"] != "init":
            ends[e["phase"]] = np.array(e["acc_agg"], dtype=float)
    P = len(names)
    out: dict[str, Any] = {
        "accuracy_matrix": acc,
        "evaluations": [{"phase": e["phase"], "step": int(e["step"])} for e in evals],
        "probe_sets": names,
        "forgetting": None, "bwt": None, "fwt": None,
        "probe_acc_agg": [_f(e["probe_acc_agg"]) for e in evals],
        "probe_acc_z": [_f(e["probe_acc_z"]) for e in evals],
        "equivariance_r2": [_f(e["equivariance_r2"]) for e in evals],
        "equivariance_probe": "linear",
        "steps": int(steps),
        "wall_s": round(float(wall), 3),
        "status": status,
    }
    if len(ends) == P and P >= 2:
        A = np.stack([ends[n] for n in names])
        out["forgetting"] = _f(forgetting(A))
        out["bwt"] = _f(bwt(A))
        if at_start and evals and evals[0]["phase"] == "init":
            out["fwt"] = _f(fwt(A, np.array(evals[0]["acc_agg"], dtype=float)))
    del phase_rows
    return out
