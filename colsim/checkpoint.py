"""Checkpoints: everything needed to resume a run, loadable with ``torch.load(weights_only=True)``.

A checkpoint (``checkpoints/phase{k:02d}-{name}.pt``) holds: ``step``, ``phase`` (index of the
next phase to run), column parameters and buffers (``model``), optimizer state, rule state,
RNG states (torch global, each stream's generator inside ``stream_state``), stream and
column states (stream positions, windows), and the resolved config (as a YAML string).
Only tensors, dicts, lists and python scalars are stored, so loading needs no pickle.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from colsim.types import tree_map

__all__ = ["save_checkpoint", "load_checkpoint"]


def _plain(tree: Any) -> Any:
    """NamedTuples -> dicts, tensors detached and on CPU (weights_only-safe)."""
    if isinstance(tree, torch.Tensor):
        return tree.detach().cpu().clone()
    if isinstance(tree, tuple) and hasattr(tree, "_fields"):
        return {k: _plain(v) for k, v in tree._asdict().items()}
    if isinstance(tree, dict):
        return {k: _plain(v) for k, v in tree.items()}
    if isinstance(tree, (list, tuple)):
        return [_plain(v) for v in tree]
    return tree


def save_checkpoint(path: str | Path, **content: Any) -> Path:
    """Atomically write ``content`` (written to a temporary file, then renamed)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    torch.save(_plain(content), tmp)
    os.replace(tmp, path)
    return path


def load_checkpoint(path: str | Path, device: str | torch.device = "cpu") -> dict:
    ckpt = torch.load(Path(path), map_location=device, weights_only=True)
    return ckpt


def restore_torch_rng(state: torch.Tensor) -> None:
    torch.set_rng_state(state.cpu())


_ = tree_map  # re-exported helper for callers moving states between devices
