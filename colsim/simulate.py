"""The Simulator: one documented step schedule, integer time, explicit RNG.

``run(column, rule, protocol, recorder, ...)`` executes, before step 0:

0. check the rule against the column (done by :mod:`colsim.build`), draw one fixed probe
   set per phase from the world's probe pool (generator seeded from the run seed), and
   evaluate once (``phase = "init"``) when ``evaluation.at_start``.

then for every phase p (a fresh stream of that phase's distribution, column windows reset)
and every step t of it:

1. take the Step from the stream (``stream.step``: obs, action, start, labels; the simulator
   adds the ``phase`` label); with ``step_ahead``, start the next one on a second thread (the world
   works while the column does; ``Stream.step`` is pure, so the run is the same bit for bit);
2. column forward (``local`` when the rule is layer-local; ``encoder_graph=False`` when the rule reads no
   graph of the encoder's pass, ``Rule.encoder_graph``) -> (column state, Trace);
3. rule update -> (grads, rule state, metrics)          [skipped when the phase has learn: false]
   (2-3 and the evaluations' embedding run under ``autocast`` — ``model.autocast``, :mod:`colsim.device`:
   bf16 by default on CUDA, nothing on CPU; the grads are cast to their parameters' float32);
4. stop with status ``diverged`` if the loss, a rule's loss or a gradient is NaN / Inf (one fused norm
   over the gradients); the root attribute and summary entry ``diverged`` name the step, phase and
   terms (``loss``, ``loss.<rule term>``, ``grads``; ``grad:<parameter>`` when only gradients are);
5. optimizer step on the grads (learning-rate warm-up and schedule applied) — the only place where
   parameters change; the rule's ``post_step`` may rescale the applied update there;
6. teacher update (``column.update_target(step)``, e.g. EMA momentum schedule);
7. record metrics every ``record.metrics_every`` steps;
8. evaluate every ``evaluation.every`` steps when set;

9. checkpoint every ``protocol.checkpoint.every`` steps (``checkpoints/stepNNNNNNNN.pt``, the
   last ``keep`` kept; not at a phase's last step, which step 12 covers);
10. stop at this step boundary if SIGINT / SIGTERM arrived: flush, checkpoint, status
    ``interrupted`` (``RunResult.signal`` says which; ``colsim run`` exits 130 / 143);

and at the end of every phase:

11. the rule's ``boundary(..., "phase_end")`` (EWC Fisher, SI Omega);
12. evaluate on every probe set (this fills row p of the accuracy matrix);
13. checkpoint (``checkpoints/phaseNN-name.pt``).

The recorder's metrics are flushed at every evaluation and before every checkpoint, so the store
on disk always holds everything a checkpoint covers; a hard kill loses at most the metric rows
since the last flush (``record.flush_every`` steps at most), and ``--resume`` re-runs them.

Resuming (``resume=`` a checkpoint, :mod:`colsim.checkpoint`) is this same schedule started from
the checkpoint's position: phase ``phase``, its step ``t``, with the stream and column states, the
rule and optimizer states, the global RNGs and the evaluations so far restored — a resumed run
gives the uninterrupted run's numbers bit for bit on CPU (``tests/test_fault_tolerance.py``).
"""
from __future__ import annotations

import contextlib
import gc
import math
import os
import signal
import sys
import threading
import time
from typing import Any, Callable, NamedTuple, Optional

import numpy as np
import torch

from colsim.analysis.continual import bwt, forgetting, fwt
from colsim._circuit_eval import (COLUMN_SUMMARY_KEYS, circuit_eval_data, circuit_probe_data,
                                  circuit_scores)
from colsim.build import lr_at
from colsim.checkpoint import (prune_step_checkpoints, restore_like, rng_states, save_checkpoint, set_rng_states,
                               step_checkpoint_path)
from colsim.column import Circuit, running_stat_buffers
from colsim.config import ProtocolConfig
from colsim.device import autocast_context, host_to_device, pin_probe_set
from colsim.evaluate import embed_probe_sets, probe_scores, spiking_probe_arrays
from colsim.record import Recorder
from colsim.rule import Rule
from colsim.stream import StepAhead, label_dims

__all__ = ["run", "RunResult", "apply_update", "collapse_diagnostics", "keep_freed_memory", "grad_norm", "build_for_run",
           "run_attrs"]

_M_TRIM_THRESHOLD, _M_MMAP_MAX = -1, -4  # glibc mallopt parameters (malloc.h)
_heap_kept: Optional[bool] = None


def build_for_run(cfg):
    """What every run does before its first step (``colsim run``, ``--resume``, a sweep task):
    deterministic algorithms (warn only), :func:`keep_freed_memory` on CPU, then
    ``colsim.build.build_run(cfg)`` -> (world, column, rule, local, optimizer).

    On CUDA it also sets ``CUBLAS_WORKSPACE_CONFIG=:4096:8`` when the environment leaves it unset: cuBLAS
    (CUDA >= 10.2) is deterministic only with a fixed workspace, read when its first handle is made, so
    it must be set before the run's first matrix product (NVIDIA's cuBLAS docs, "Results reproducibility";
    PyTorch's "Reproducibility" notes). With it a CUDA run repeats bit for bit and resumes exactly
    (tests/test_device.py, run on an H200)."""
    from colsim.build import build_run

    if cfg.device != "cpu":
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(True, warn_only=True)
    if cfg.device == "cpu":
        keep_freed_memory()  # reuse activation memory between steps (see its docstring)
    return build_run(cfg)


def run_attrs(cfg, resolved: dict, **extra) -> dict:
    """The run store's root attributes (DESIGN.md, the run store): the resolved config, the run's
    identity (rule, model, protocol, seed, device), versions and start time, then ``extra``."""
    import datetime as _dt

    from colsim import __version__

    return {"config": resolved, "rule": cfg.rule.name, "model": cfg.protocol.model, "protocol": cfg.protocol.name,
            "seed": cfg.seed, "device": cfg.device, "colsim_version": __version__, "torch_version": torch.__version__,
            "started": _dt.datetime.now().isoformat(timespec="seconds"), **extra}


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


def _freeze_gc() -> bool:
    """Move every object alive now (modules, parameters, data, imported libraries: ~10^6 objects) to
    Python's permanent generation for the run (``gc.freeze``; ``run`` unfreezes at its end), so the
    cyclic collector's full collections scan only what the run creates: a full collection over the
    whole heap took ~0.4 s, one such pause every few hundred ticks at B = 1
    (benchmarks/bench_online.py). No effect on any number; ``COLSIM_GC_FREEZE=0`` opts out."""
    if os.environ.get("COLSIM_GC_FREEZE", "1") == "0":
        return False
    gc.freeze()
    return True


class RunResult(NamedTuple):
    status: str  # completed | diverged | interrupted
    steps: int
    wall_s: float
    summary: dict
    signal: Optional[int] = None  # the signal (SIGINT / SIGTERM) that stopped the run
    checkpoint: Optional[str] = None  # the last checkpoint written


def collapse_diagnostics(z: torch.Tensor, prefix: str, valid: Optional[torch.Tensor] = None) -> dict[str, float]:
    """Per-dim std (min / mean), effective ranks and mean pairwise cosine of the rows of z (B, D).

    ``valid`` (B,) bool keeps only the rows that hold a representation (z_AGG of the streams with a
    context). Fewer than 2 rows: every value is NaN (recorded as missing, not as a number no
    computation produced). ``{prefix}_eff_rank`` = the participation ratio of the centred
    covariance and ``{prefix}_rankme`` = RankMe of the uncentred singular values — the functions
    and names :mod:`colsim.analysis.metrics` uses for the same quantities (REFERENCE.md section 5).
    """
    from colsim.analysis.metrics import participation_ratio, rankme  # numpy only; analysis never imports torch

    keys = [f"{prefix}_{k}" for k in ("std_min", "std_mean", "eff_rank", "rankme", "mean_cos")]
    if z.shape[0] < 2:  # B = 1 (the online protocol): no tensor work, no host sync
        return dict.fromkeys(keys, float("nan"))
    z = z.detach().float()
    if valid is not None:
        z = z[valid.to(torch.bool)]
    if z.shape[0] < 2:
        return dict.fromkeys(keys, float("nan"))
    std = z.std(0)
    s_c = torch.linalg.svdvals(z - z.mean(0, keepdim=True)).double().cpu().numpy()  # centred
    s_u = torch.linalg.svdvals(z).double().cpu().numpy()  # uncentred
    zn = torch.nn.functional.normalize(z, dim=-1)
    cos = zn @ zn.T
    B = z.shape[0]
    mean_cos = float((cos.sum() - cos.diagonal().sum()) / (B * B - B))
    vals = [float(std.min()), float(std.mean()), participation_ratio(s_c ** 2 / (B - 1)), rankme(s_u), mean_cos]
    return dict(zip(keys, vals))


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
        on_step: Optional[Callable[[dict], None]] = None, resume: Optional[dict] = None,
        autocast: Optional[str] = None, step_ahead: Optional[bool] = None) -> RunResult:
    """Run ``protocol`` (see the module docstring for the step schedule). Returns a RunResult.

    ``resume``: a checkpoint dict (:func:`colsim.checkpoint.load_checkpoint`) whose model
    parameters are already loaded into ``column``; the run continues from the checkpoint's
    position (phase ``phase``, its step ``t``), restoring optimizer, rule state, stream and column
    states, the global RNGs and the evaluations so far. The recorder is expected to be cut back to
    the checkpoint's position already (:meth:`colsim.record.ZarrRecorder.reopen`).

    SIGINT / SIGTERM (when called from the main thread) stop the run at the next step boundary with
    a checkpoint (``ckpt_dir`` given) and status ``interrupted``; a second signal stops at once.

    ``autocast``: ``bf16`` | ``fp16`` | ``none`` / None (the run config's ``model.autocast``,
    :mod:`colsim.device`); stream batches go to a CUDA ``device`` through pinned memory.

    ``step_ahead``: compute the stream's next Step on a second thread while the column works on this
    one (:class:`colsim.stream.StepAhead`); the run is bit-identical either way. None: off unless the
    environment sets ``COLSIM_STEP_AHEAD=1``. Off by default: on the 2-core CPU host it measured no
    faster (docs/reference/protocols.md, the `online` protocol's step-ahead paragraph); it is meant for hosts with a spare core, e.g. a GPU run's.
    """
    t0 = time.perf_counter()
    diverged: Optional[dict] = None  # {"step", "phase", "terms"}: what went non-finite where
    params = column.trainable()
    rstate = rule.init(params)
    first_phase, first_t = 0, 0
    step = 0
    evals: list[dict] = []
    if resume is not None:
        optimizer.load_state_dict(resume["optimizer"])
        rstate = restore_like(rstate, resume["rule_state"], device)
        first_phase, step, first_t = int(resume["phase"]), int(resume["step"]), int(resume.get("t", 0))
        evals = [{k: v.numpy() if isinstance(v, torch.Tensor) else v for k, v in e.items()}
                 for e in resume.get("evals", [])]
        if "rng" not in resume:  # a checkpoint from before step-level checkpoints: torch's RNG only
            torch.set_rng_state(resume["torch_rng"])
    ck = protocol.checkpoint
    ev = protocol.evaluation
    names = [ph.name for ph in protocol.phases]
    action_names = list(world.spec.action_names)
    probe_sets = [pin_probe_set(world.probe_set(ph.classes, ev.probe_samples, ev.views, _seeded(seed, 7, j), ph.world,
                                                pool=ev.pool), device)
                  for j, ph in enumerate(protocol.phases)]
    amp = autocast_context(device, autocast)  # a null context without autocast: float32 as ever
    cast_grads = amp is not contextlib.nullcontext
    total = protocol.total_steps
    status = "completed"
    recording = protocol.record.enabled

    circ = column if isinstance(column, Circuit) else None  # several columns (issue 14)
    entries = circ.names + ["vote"] if circ is not None else []
    if circ is not None:
        import json

        recorder.set_columns(circ.names)
        recorder.set_attrs(circuit=json.dumps(circ.describe()))
    # probe set j -> the task read-out fitted right after phase j (re-applied unchanged); circuits: per entry k
    frozen: dict = {} if circ is None else {k: {} for k in range(len(entries))}
    if resume is not None and resume.get("frozen_readouts"):
        frozen = _readouts_from_tensors(resume["frozen_readouts"], circuit=circ is not None)
        for k in range(len(entries)):
            frozen.setdefault(k, {})
    eval_seconds = [0.0]
    last_ckpt: list[Optional[str]] = [None]
    stop = _SignalStop()
    ahead: Optional[StepAhead] = None

    def checkpoint(path, p_next: int, t_next: int, sstate, cstate) -> None:
        """Flush the metrics, then write everything the schedule reads from here on (atomically)."""
        if ckpt_dir is None:
            return
        recorder.flush()
        save_checkpoint(path, step=step, phase=p_next, t=t_next, model=column.state_dict(),
                        optimizer=optimizer.state_dict(), rule_state=rstate, torch_rng=torch.get_rng_state(),
                        rng=rng_states(), stream_state=sstate, column_state=cstate, config=config_yaml,
                        frozen_readouts=_readouts_to_tensors(frozen, circuit=circ is not None), evals=evals, recorder=recorder.position())
        last_ckpt[0] = str(path)

    def evaluate(phase_name: str, phase_end: Optional[int] = None) -> None:
        te = time.perf_counter()
        recorder.flush()  # the store holds every metric row up to this evaluation
        with amp():
            emb = embed_probe_sets(column, probe_sets, ev.batch, device)
        if circ is None:
            per = [probe_scores(emb, probe_sets, action_names, seed=seed, frozen=frozen)]
        else:  # every column and the vote (the last entry), each on its own
            per = circuit_scores(emb, probe_sets, action_names, seed, frozen)
        for e_k, sc in enumerate(per):
            if phase_end is not None:  # freeze this phase's read-out: its frozen cell is the task probe's
                (frozen if circ is None else frozen[e_k])[phase_end] = sc["readouts"][phase_end]
                sc["frozen_acc"][phase_end], sc["frozen_acc_se"][phase_end] = sc["acc_agg"][phase_end], sc["acc_agg_se"][phase_end]
        sc = per[-1]  # one column's, or the vote's: the summary's numbers
        k = len(evals)
        evals.append({"phase": phase_name, "step": step, **{n: v for n, v in sc.items() if n != "readouts"},
                      **({f"col_{n}": np.array([p[n] for p in per], dtype=np.float64) for n in COLUMN_SUMMARY_KEYS}
                         if circ is not None else {})})
        coords = {"eval": (("eval",), np.array([k])), "step": (("eval",), np.array([step], dtype=np.int64)),
                  "phase": (("eval",), np.array([phase_name], dtype="<U64")),
                  "probe_set": (("probe_set",), np.array(names, dtype="<U64")),
                  "action_dim": (("action_dim",), np.array(action_names, dtype="<U64")),
                  "block": (("block",), np.array([f"block{i}" for i in range(sc["block_pred_loss"].shape[1])],
                                                 dtype="<U64"))}
        if circ is not None:
            coords["column"] = (("column",), np.array(entries, dtype="<U64"))
        if protocol.record.probe:
            static = {
                "actions": (("probe_set", "sample", "view", "action_dim"), np.stack([p.actions.numpy() for p in probe_sets])),
            }
            for lab in probe_sets[0].labels:  # every label the world's probe sets carry (class, image, angle, ...)
                if all(lab in p.labels for p in probe_sets):
                    arr = np.stack([p.labels[lab].numpy() for p in probe_sets])  # (P, N) or (P, N, V, ...)
                    static[f"label_{lab}"] = (("probe_set", *label_dims(lab, arr.ndim - 1)), arr)
            spk, spk_static = spiking_probe_arrays(emb)  # spike counts and a raster (spiking columns only)
            zs = circuit_probe_data(emb) if circ is not None else {
                "z": (("eval", "probe_set", "sample", "view", "unit"), emb.z[None].astype(np.float32)),
                "z_agg": (("eval", "probe_set", "sample", "unit_agg"), emb.z_agg[None].astype(np.float32))}
            recorder.record_eval("probe", {**zs, **spk}, {n: c for n, c in coords.items() if n != "block"},
                                 {**static, **spk_static})
        if circ is not None:
            recorder.record_eval("evaluation", circuit_eval_data(per, EVAL_SET_KEYS, EVAL_SCALAR_KEYS), coords)
            eval_seconds[0] += time.perf_counter() - te
            return
        data = {}
        for n in EVAL_SET_KEYS:
            data[n] = (("eval", "probe_set"), np.asarray(sc[n], dtype=np.float64)[None])
        for n in EVAL_SCALAR_KEYS:
            data[n] = (("eval",), np.array([sc[n]], dtype=np.float64))
        for n in ("equivariance_r2_dim", "equivariance_r2_dim_se"):
            data[n] = (("eval", "action_dim"), np.asarray(sc[n], dtype=np.float64)[None])
        for n in ("equivariance_r2_set_dim", "equivariance_r2_set_dim_se"):
            data[n] = (("eval", "probe_set", "action_dim"), np.asarray(sc[n], dtype=np.float64)[None])
        data["block_pred_loss"] = (("eval", "probe_set", "block"), np.asarray(sc["block_pred_loss"], np.float64)[None])
        recorder.record_eval("evaluation", data, coords)
        eval_seconds[0] += time.perf_counter() - te

    # a rule that reads no graph of the encoder's pass (ESPP, sparse coding): the column skips building it
    graph_kw = {} if rule.encoder_graph or not local else {"encoder_graph": False}
    stop.install()
    frozen_gc = _freeze_gc()
    try:
        if ev.at_start and resume is None:
            evaluate("init")
        rate = None
        for p_idx, ph in enumerate(protocol.phases):
            if p_idx < first_phase:
                continue
            stream = world.stream(protocol.stream.batch, protocol.stream.episode_length, ph.classes, ph.world)
            if ahead is not None:
                ahead.close()
            ahead = StepAhead(stream.step, os.environ.get("COLSIM_STEP_AHEAD", "0") == "1" if step_ahead is None
                              else step_ahead)
            t_begin = first_t if (resume is not None and p_idx == first_phase) else 0
            if resume is not None and p_idx == first_phase and "rng" in resume and t_begin == 0:
                set_rng_states(resume["rng"])  # before the phase's fresh states, as in the uninterrupted run
            with _rng_kept(t_begin > 0):  # mid-phase: the fresh states are only templates
                sstate = stream.init(_seeded(seed, 11, p_idx))
                cstate = column.init_state(protocol.stream.batch, device)
            if t_begin > 0:
                sstate = restore_like(sstate, resume["stream_state"], "cpu")
                cstate = restore_like(cstate, resume["column_state"], device)
                set_rng_states(resume["rng"])
            learn = ph.learn and protocol.learn
            column.train(learn)
            first = t_begin == 0
            for t in range(t_begin, ph.steps):
                ts = time.perf_counter()
                # 1. Step
                sstate, st = ahead.step(sstate)
                if t + 1 < ph.steps:
                    ahead.ahead(sstate)  # step_ahead: the next Step, on another core while the column works
                st.labels["phase"] = torch.full_like(st.labels["class"], p_idx)  # (B,) phase id
                obs, action = host_to_device(st.obs, device), host_to_device(st.action, device)  # pinned to CUDA
                start = st.start.to(device) | first
                first = False
                metrics: dict[str, float] = {"phase": float(p_idx)}
                if learn:
                    with amp():
                        # 2. column forward
                        cstate, trace = column(cstate, obs, action, start, local=local, **graph_kw)
                        # world truth, for rule diagnostics only (replay's class histogram); laid out like the trace
                        trace["labels"] = st.labels if circ is None else circ.batch_labels(st.labels)
                        # 3. rule update
                        grads, rstate, rm = rule.update(params, rstate, trace)
                    if cast_grads:  # a local rule's -dW computed in bf16 / fp16: the optimizer steps in float32
                        grads = {n: g if g is None or g.dtype == params[n].dtype else g.to(params[n].dtype)
                                 for n, g in grads.items()}
                    loss = float(trace["loss"].detach())
                    metrics["loss"] = loss
                    metrics.update(rm)
                    # 4. divergence check: one fused norm over every gradient (non-finite iff some entry is)
                    gn = grad_norm(grads)
                    bad = [k for k, v in rm.items() if k.startswith("loss") and not math.isfinite(v)]
                    if not math.isfinite(loss) or bad or (not math.isfinite(gn) and not _all_finite(grads)):
                        status = "diverged"
                        terms = (["loss"] if not math.isfinite(loss) else []) + bad
                        if not math.isfinite(gn):  # the gradients too: named when no loss term says why
                            nf = [n for n, g in grads.items() if g is not None and not bool(torch.isfinite(g).all())]
                            terms += [f"grad:{n}" for n in nf[:5]] + ([f"grad:+{len(nf) - 5} more"] if len(nf) > 5
                                                                        else []) if not terms else ["grads"]
                        diverged = {"step": step, "phase": ph.name, "terms": terms}
                        recorder.record(step, _circuit_metrics(circ, trace, metrics) if circ is not None else
                                        {k: v for k, v in metrics.items()})
                        break
                    # 5. optimizer step (the single mutation point)
                    for g in optimizer.param_groups:
                        g["lr"] = lr_at(g, step, total)
                    rstate = apply_update(params, grads, optimizer, rule, rstate)
                    # 6. teacher
                    column.update_target(step + 1)  # optimizer steps done: an integer, not a fraction of the run
                    metrics["grad_norm"] = gn
                    metrics["lr"] = optimizer.param_groups[0]["lr"]
                else:
                    with torch.no_grad(), amp():
                        cstate, trace = column(cstate, obs, action, start, local=False)
                    metrics["loss"] = float(trace["loss"])
                if "valid" in trace and not bool(trace["valid"].any()):  # no stream had a context (a phase's first
                    # tick): the prediction term was not computed, so every loss total is missing, not 0
                    metrics.update({k: float("nan") for k in metrics if k == "loss" or k.startswith("loss.")})
                # 7. record
                if recording and step % protocol.record.metrics_every == 0:
                    if circ is None:
                        metrics.update(collapse_diagnostics(trace["z"], "z"))
                        metrics.update(collapse_diagnostics(trace["z_agg"], "zagg", trace.get("valid")))
                    metrics.update(column.diagnostics())
                    dt = time.perf_counter() - ts
                    rate = 1.0 / dt if rate is None else 0.9 * rate + 0.1 / max(dt, 1e-9)
                    metrics["steps_per_s"] = rate
                    recorder.record(step, metrics if circ is None else _circuit_metrics(circ, trace, metrics))
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
                # 9. scheduled checkpoint (the phase's last step has its phase-end checkpoint)
                if t != ph.steps - 1 and ((ck.every and step % ck.every == 0) or stop.signum is not None):
                    if ckpt_dir is not None:
                        checkpoint(step_checkpoint_path(ckpt_dir, step), p_idx, t + 1, sstate, cstate)
                        prune_step_checkpoints(ckpt_dir, ck.keep)
                    # 10. stop on a signal
                    if stop.signum is not None:
                        status = "interrupted"
                        break
            if status != "completed":
                break
            # 11. rule boundary
            if rule.boundary is not None and learn:
                rstate = rule.boundary(params, rstate, "phase_end")
            # 12. evaluate
            evaluate(ph.name, phase_end=p_idx)
            # 13. checkpoint
            checkpoint(ckpt_dir / f"phase{p_idx:02d}-{ph.name}.pt" if ckpt_dir is not None else None, p_idx + 1, 0,
                       sstate, cstate)
            if stop.signum is not None and p_idx + 1 < len(protocol.phases):
                status = "interrupted"
                break
    except KeyboardInterrupt:  # a second signal, or Ctrl-C outside the main thread's handlers
        status = "interrupted"
    finally:
        stop.uninstall()
        if ahead is not None:
            ahead.close()
        if frozen_gc:
            gc.unfreeze()
    wall = time.perf_counter() - t0
    summary = make_summary(evals, names, step, wall, status, at_start=ev.at_start, columns=entries or None)
    summary["unconsolidated_buffers"] = running_stat_buffers(column)  # state no rule consolidates (none by default)
    summary["eval_s"] = round(eval_seconds[0], 3)
    summary["eval_share"] = round(eval_seconds[0] / wall, 4) if wall > 0 else None
    if diverged is not None:
        summary["diverged"] = diverged
    recorder.set_attrs(steps_done=step, wall_s=wall, eval_s=eval_seconds[0],
                       **({"diverged": diverged} if diverged is not None else {}))
    recorder.close(status)
    return RunResult(status, step, wall, summary, stop.signum, last_ckpt[0])


def grad_norm(grads: dict) -> float:
    """The global L2 norm of the gradients in one fused pass (``torch._foreach_norm``): the recorded
    ``grad_norm`` and the divergence check (NaN / Inf in any gradient makes it non-finite). A finite
    gradient whose norm overflows float32 is told apart by :func:`_all_finite`, off the hot path."""
    gs = [g for g in grads.values() if g is not None]
    if not gs:
        return 0.0
    norms = torch._foreach_norm(gs)
    if len({(n.dtype, n.device) for n in norms}) > 1:
        norms = [n.double().cpu() for n in norms]
    return float(torch.linalg.vector_norm(torch.stack(norms)))


def _all_finite(grads: dict) -> bool:
    return all(bool(torch.isfinite(g).all()) for g in grads.values() if g is not None)


class _SignalStop:
    """SIGINT / SIGTERM -> ``signum`` set; the simulator stops at the next step boundary. A second
    signal raises KeyboardInterrupt (stop now). Installed only from the main thread."""

    def __init__(self):
        self.signum: Optional[int] = None
        self._old: dict = {}

    def _handle(self, signum, frame):
        if self.signum is not None:
            raise KeyboardInterrupt
        self.signum = signum

    def install(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return
        for s in (signal.SIGINT, signal.SIGTERM):
            try:
                self._old[s] = signal.signal(s, self._handle)
            except (ValueError, OSError):  # not allowed here (embedded interpreter)
                pass

    def uninstall(self) -> None:
        for s, h in self._old.items():
            signal.signal(s, h)
        self._old.clear()


class _rng_kept:
    """Context: the global RNGs are the same after the block as before it (when ``on``)."""

    def __init__(self, on: bool):
        self.on = on

    def __enter__(self):
        self.saved = rng_states() if self.on else None
        return self

    def __exit__(self, *exc):
        if self.saved is not None:
            set_rng_states(self.saved)
        return False


def _f(x) -> Optional[float]:
    x = float(x)
    return x if math.isfinite(x) else None


# evaluation-group variables (written every evaluation; see colsim.evaluate)
EVAL_SET_KEYS = ("acc_agg", "acc_agg_se", "acc_z", "acc_z_se", "seen_acc", "seen_acc_se", "frozen_acc", "frozen_acc_se",
                 "prediction_loss", "prediction_loss_se", "equivariance_r2_set", "equivariance_r2_set_se")
EVAL_SCALAR_KEYS = ("probe_acc_agg", "probe_acc_agg_se", "probe_acc_z", "probe_acc_z_se", "equivariance_r2",
                    "equivariance_r2_se")
# summary prefix -> (evaluation key, higher is better)
READOUTS = {"": ("acc_agg", True), "seen_": ("seen_acc", True), "frozen_": ("frozen_acc", True),
            "prediction_": ("prediction_loss", False)}


def _circuit_metrics(circ: Circuit, trace, metrics: dict) -> dict:
    """A circuit's metric row: ``loss`` (column,) each column's prediction loss, ``loss_circuit`` what the rule
    minimised, collapse diagnostics per column (``z_*`` over its B streams), and every ``<column>/<key>``
    (per-column rules' metrics, per-column models' diagnostics) as a (column,) array."""
    out = dict(metrics)
    if "loss" in out:
        out["loss_circuit"] = out.pop("loss")
    if "loss_pred" in trace:
        out["loss"] = circ.column_losses(trace)
    if "z" in trace:
        N = circ.n
        z, za = trace["z"].detach().view(N, -1, trace["z"].shape[-1]), trace["z_agg"].detach().view(N, -1, trace["z_agg"].shape[-1])
        valid = trace["valid"].view(N, -1) if "valid" in trace else None
        for i, n in enumerate(circ.names):
            out.update({f"{n}/{k}": v for k, v in collapse_diagnostics(z[i], "z").items()})
            out.update({f"{n}/{k}": v for k, v in collapse_diagnostics(za[i], "zagg", None if valid is None
                                                                         else valid[i]).items()})
    return circ.group_metrics(out)


def _readouts_to_tensors(frozen: dict, circuit: bool = False) -> dict:
    """Frozen read-outs as plain tensors (checkpoints load with ``weights_only=True``); a circuit's under
    ``"<entry>:<probe set>"``."""
    if circuit:
        return {f"{k}:{j}": v for k, fr in frozen.items() for j, v in _readouts_to_tensors(fr).items()}
    return {str(j): {f: torch.as_tensor(np.asarray(getattr(r, f))) for f in r._fields}
            for j, r in frozen.items() if r is not None}


def _readouts_from_tensors(d: dict, circuit: bool = False) -> dict:
    from colsim.analysis.probes import LinearReadout

    if circuit:
        out: dict = {}
        for key, r in d.items():
            k, j = (int(x) for x in key.split(":"))
            out.setdefault(k, {})[j] = LinearReadout(**{f: v.cpu().numpy() for f, v in r.items()})
        return out
    return {int(j): LinearReadout(**{f: v.cpu().numpy() for f, v in r.items()}) for j, r in d.items()}


def _rows(evals: list[dict], key: str) -> list:
    return [[_f(v) for v in e[key]] for e in evals]


def _continual(evals: list[dict], names: list[str], key: str, higher_better: bool, at_start: bool) -> dict:
    """Forgetting / BWT / FWT (Avalanche's definitions, colsim.analysis.continual) on the phase-end rows of
    ``key`` (eval x probe_set) of the phases completed (a run that stopped early: forgetting and BWT over
    its completed phases, FWT keeps the next-phase cells it measured), with the standard error of the forgetting from the cells' standard errors
    (cells treated as independent). For a loss (``higher_better=False``) the matrix is negated first, so
    forgetting > 0 means the loss went up and BWT / FWT > 0 mean it went down."""
    out: dict[str, Any] = {"forgetting": None, "bwt": None, "fwt": None, "forgetting_se": None}
    ends: dict[str, dict] = {}
    for e in evals:
        if e["phase"] != "init":
            ends[e["phase"]] = e  # the last evaluation of a phase closes it
    P = len(names)
    T = 0  # phases completed (a run that stopped early has fewer)
    while T < P and names[T] in ends:
        T += 1
    if T == 0:
        return out
    sign = 1.0 if higher_better else -1.0
    A = sign * np.stack([np.asarray(ends[n][key], dtype=float) for n in names[:T]])  # (T, P)
    SE = np.stack([np.asarray(ends[n].get(f"{key}_se", np.full(P, np.nan)), dtype=float) for n in names[:T]])
    if T >= 2:
        out["forgetting"], out["bwt"] = _f(forgetting(A[:, :T])), _f(bwt(A[:, :T]))
        out["forgetting_se"] = _f(np.sqrt(sum(SE[k, k] ** 2 + SE[T - 1, k] ** 2 for k in range(T - 1))) / (T - 1))
    if at_start and evals and evals[0]["phase"] == "init" and P >= 2:
        out["fwt"] = _f(fwt(A, sign * np.asarray(evals[0][key], dtype=float)))  # keeps A[T-1, T] when T < P
    return out


def make_summary(evals: list[dict], names: list[str], steps: int, wall: float, status: str, at_start: bool,
                 columns: Optional[list[str]] = None) -> dict:
    """summary.json. Matrices have rows = evaluations (init first when present) and columns = probe
    sets, each with a ``_se`` twin: ``accuracy_matrix`` (task probe on z_AGG), ``seen_matrix``,
    ``frozen_matrix``, ``prediction_loss_matrix``. For each read-out, forgetting / BWT / FWT on its
    phase-end rows: ``forgetting``, ``bwt``, ``fwt`` (task probe), ``seen_*``, ``frozen_*``,
    ``prediction_*`` (loss: forgetting > 0 = the loss went up), each forgetting with ``_se``.
    ``gain`` holds every headline metric's change from the step-0 evaluation (positive = better; a
    loss counts as its decrease) with its standard error."""
    P = len(names)
    out: dict[str, Any] = {
        "accuracy_matrix": _rows(evals, "acc_agg"),
        "accuracy_matrix_se": _rows(evals, "acc_agg_se"),
        "seen_matrix": _rows(evals, "seen_acc"),
        "seen_matrix_se": _rows(evals, "seen_acc_se"),
        "frozen_matrix": _rows(evals, "frozen_acc"),
        "frozen_matrix_se": _rows(evals, "frozen_acc_se"),
        "prediction_loss_matrix": _rows(evals, "prediction_loss"),
        "prediction_loss_matrix_se": _rows(evals, "prediction_loss_se"),
        "evaluations": [{"phase": e["phase"], "step": int(e["step"])} for e in evals],
        "probe_sets": names,
    }
    for prefix, (key, hb) in READOUTS.items():
        out.update({f"{prefix}{k}": v for k, v in _continual(evals, names, key, hb, at_start).items()})
    for key in ("probe_acc_agg", "probe_acc_z", "equivariance_r2"):
        out[key] = [_f(e[key]) for e in evals]
        out[f"{key}_se"] = [_f(e[f"{key}_se"]) for e in evals]
    out["prediction_loss"] = [_f(np.nanmean(e["prediction_loss"])) if np.isfinite(e["prediction_loss"]).any()
                              else None for e in evals]
    out["prediction_loss_se"] = [_f(np.sqrt(np.nansum(np.square(e["prediction_loss_se"]))) / P) for e in evals]
    out["equivariance_probe"] = "linear"
    gain: dict[str, Any] = {}
    if at_start and len(evals) >= 2 and evals[0]["phase"] == "init":
        for key, sign in (("probe_acc_agg", 1), ("probe_acc_z", 1), ("equivariance_r2", 1), ("prediction_loss", -1)):
            v, se = out[key], out[f"{key}_se"]
            if v[0] is not None and v[-1] is not None:
                gain[key] = _f(sign * (v[-1] - v[0]))
                gain[f"{key}_se"] = _f(math.sqrt((se[-1] or 0.0) ** 2 + (se[0] or 0.0) ** 2)) \
                    if se[0] is not None and se[-1] is not None else None
    out["gain"] = gain
    if columns:  # a circuit: the matrices above are the vote's; pooled accuracies per column and the vote
        out["columns"] = {"names": list(columns), **{k: [[_f(x) for x in np.asarray(e[f"col_{k}"])] for e in evals]
                                                      for k in COLUMN_SUMMARY_KEYS if all(f"col_{k}" in e for e in evals)}}
    out.update({"steps": int(steps), "wall_s": round(float(wall), 3), "status": status})
    return out
