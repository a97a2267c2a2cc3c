"""Checkpoints: everything needed to resume a run, loadable with ``torch.load(weights_only=True)``.

A run folder's ``checkpoints/`` holds

* ``phase{k:02d}-{name}.pt`` — taken at the end of phase k (always kept);
* ``step{s:08d}.pt`` — taken every ``protocol.checkpoint.every`` steps within a phase, and when a
  signal stops the run; the last ``protocol.checkpoint.keep`` of them are kept.

A checkpoint holds: ``step`` (steps done), ``phase`` (index of the phase to run next) and ``t``
(steps of that phase already done; 0 at a phase end), column parameters and buffers (``model``:
the EMA teacher and normalisation statistics included), optimizer state, rule state (replay
buffers, SI/EWC accumulators, availabilities, running statistics), the stream state (positions and
its generator's state as a uint8 tensor) and the column state (context windows), the torch /
numpy / python RNG states, the evaluations so far and the frozen read-outs (the summary is rebuilt
from them), the recorder's position (metric rows and evaluations on disk when it was taken) and
the resolved config (a YAML string). Only tensors, dicts, lists and python scalars are stored, so
loading needs no pickle.

Writes are atomic: a temporary file in the same folder, ``fsync``, ``rename``, then an ``fsync``
of the folder — a kill at any moment leaves either the previous set of checkpoints or the new one,
never a truncated file under a checkpoint's name.
"""
from __future__ import annotations

import os
import random
import re
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch

__all__ = ["save_checkpoint", "load_checkpoint", "step_checkpoint_path", "prune_step_checkpoints",
           "latest_checkpoint", "restore_like", "rng_states", "set_rng_states", "CheckpointError"]

_STEP = re.compile(r"^step(\d{8})\.pt$")
_PHASE = re.compile(r"^phase(\d{2})-.*\.pt$")


class CheckpointError(ValueError):
    """A checkpoint that cannot be read (missing, truncated, not a colsim checkpoint)."""


def _plain(tree: Any) -> Any:
    """NamedTuples -> dicts, tensors detached and on CPU (weights_only-safe)."""
    if isinstance(tree, torch.Tensor):
        return tree.detach().cpu().clone()
    if isinstance(tree, np.ndarray):
        return torch.from_numpy(np.ascontiguousarray(tree).copy())
    if isinstance(tree, np.generic):
        return tree.item()
    if isinstance(tree, tuple) and hasattr(tree, "_fields"):
        return {k: _plain(v) for k, v in tree._asdict().items()}
    if isinstance(tree, dict):
        return {k: _plain(v) for k, v in tree.items()}
    if isinstance(tree, (list, tuple)):
        return [_plain(v) for v in tree]
    return tree


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def save_checkpoint(path: str | Path, **content: Any) -> Path:
    """Atomically write ``content``: temporary file, fsync, rename, fsync of the folder.

    A failed write (a full disk) removes the temporary file and re-raises; the checkpoints already
    there are untouched."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        with open(tmp, "wb") as f:
            torch.save(_plain(content), f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)
    return path


def load_checkpoint(path: str | Path, device: str | torch.device = "cpu") -> dict:
    """``torch.load(path, weights_only=True)``; CheckpointError (one line) if it cannot be read."""
    try:
        ckpt = torch.load(Path(path), map_location=device, weights_only=True)
    except Exception as exc:  # noqa: BLE001 — truncated, corrupt or foreign files alike
        raise CheckpointError(f"{path}: not a readable colsim checkpoint ({type(exc).__name__})") from None
    if not isinstance(ckpt, dict) or not {"step", "phase", "model", "optimizer", "config"} <= set(ckpt):
        raise CheckpointError(f"{path}: not a colsim checkpoint (no step / phase / model / optimizer / config)")
    return ckpt


def step_checkpoint_path(ckpt_dir: str | Path, step: int) -> Path:
    return Path(ckpt_dir) / f"step{int(step):08d}.pt"


def prune_step_checkpoints(ckpt_dir: str | Path, keep: int) -> list[Path]:
    """Delete all but the ``keep`` latest ``step*.pt`` (and stale temporary files); returns the deleted."""
    d = Path(ckpt_dir)
    steps = sorted(p for p in d.glob("step*.pt") if _STEP.match(p.name))
    gone = steps[:-keep] if keep > 0 else steps
    for p in gone:
        p.unlink(missing_ok=True)
    for p in d.glob(".*.tmp"):
        p.unlink(missing_ok=True)
    if gone:
        _fsync_dir(d)
    return gone


def checkpoints_newest_first(ckpt_dir: str | Path, phase_end_steps: list[int]) -> list[Path]:
    """The checkpoints in ``ckpt_dir``, the one with the most steps done first (none loaded).

    ``phase_end_steps[k]`` is the step count at the end of phase k (from the run's config), so
    phase checkpoints are ordered without being loaded; at equal steps a phase-end checkpoint comes
    first (it also holds the phase's boundary update and evaluation)."""
    keyed: list[tuple[int, int, Path]] = []
    for p in Path(ckpt_dir).glob("*.pt"):
        m, n = _STEP.match(p.name), _PHASE.match(p.name)
        if m:
            keyed.append((int(m.group(1)), 0, p))
        elif n and int(n.group(1)) < len(phase_end_steps):
            keyed.append((phase_end_steps[int(n.group(1))], 1, p))
    return [p for *_, p in sorted(keyed, key=lambda k: (k[0], k[1]), reverse=True)]


def latest_checkpoint(ckpt_dir: str | Path, phase_end_steps: list[int]) -> Optional[Path]:
    """The checkpoint with the most steps done in ``ckpt_dir`` (None when there is none); see
    :func:`checkpoints_newest_first`."""
    found = checkpoints_newest_first(ckpt_dir, phase_end_steps)
    return found[0] if found else None


def restore_like(template: Any, saved: Any, device: str | torch.device = "cpu") -> Any:
    """Rebuild a saved state (dicts / lists of tensors, as :func:`save_checkpoint` stores it) in the
    structure of ``template`` (the freshly initialised state: NamedTuples come back as NamedTuples),
    each tensor on its template tensor's device (a state keeps where its rule put it: a replay RNG
    state is a CPU byte tensor on a CUDA run too), on ``device`` where the template has none. Keys
    the template lacks are kept as saved."""
    if isinstance(saved, torch.Tensor):
        return saved.to(template.device if isinstance(template, torch.Tensor) else device)
    if isinstance(template, tuple) and hasattr(template, "_fields") and isinstance(saved, dict):
        return type(template)(**{k: restore_like(getattr(template, k), saved[k], device) if k in saved
                                 else getattr(template, k) for k in template._fields})
    if isinstance(saved, dict):
        t = template if isinstance(template, dict) else {}
        return {k: restore_like(t.get(k), v, device) for k, v in saved.items()}
    if isinstance(saved, list):
        same = isinstance(template, (list, tuple)) and len(template) == len(saved)
        t = list(template) if same else [None] * len(saved)
        out = [restore_like(a, b, device) for a, b in zip(t, saved)]
        return tuple(out) if isinstance(template, tuple) and not hasattr(template, "_fields") else out
    return saved


def rng_states() -> dict:
    """The global RNGs (torch CPU, and CUDA's when initialised, numpy, python ``random``) as tensors and
    scalars."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    py_version, py_state, py_gauss = random.getstate()
    cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_available() and torch.cuda.is_initialized() else []
    return {"torch": torch.get_rng_state(), "cuda": cuda,
            "numpy": {"kind": str(kind), "keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)), "pos": int(pos),
                      "has_gauss": int(has_gauss), "gauss": float(gauss)},
            "python": {"version": int(py_version), "state": torch.tensor(py_state, dtype=torch.int64),
                       "gauss": py_gauss}}


def set_rng_states(states: dict) -> None:
    torch.set_rng_state(states["torch"].cpu())
    if states.get("cuda") and torch.cuda.is_available() and len(states["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all([s.cpu() for s in states["cuda"]])
    n = states["numpy"]
    np.random.set_state((n["kind"], n["keys"].cpu().numpy().astype(np.uint32), int(n["pos"]), int(n["has_gauss"]),
                         float(n["gauss"])))
    p = states["python"]
    random.setstate((int(p["version"]), tuple(int(x) for x in p["state"].tolist()), p["gauss"]))
