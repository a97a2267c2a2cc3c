"""Private helpers shared by the rules: units of a weight, metric groups, per-group norms.

* A *unit* is an output row of a Linear weight (out, in) or an output channel of a conv
  weight (out, in, kh, kw): every trainable parameter with >= 2 dims whose name ends in
  ``weight`` (``in_proj_weight`` included) has ``shape[0]`` units; its bias is the
  parameter with ``weight`` replaced by ``bias`` when that has ``shape[0]`` entries.
* For n-GateON gating (``gated_units``) two more kinds of parameter are made of units: CRATE's
  ISTA dictionaries ``D`` (d, p), whose columns are the atoms of the p code units (unit dim 1),
  and CRATE-alpha's decoder ``D_hat`` (d, r d), whose rows feed the d output units (unit dim 0).
* A metric *group* is the first component of a parameter name, with the block index for
  encoder blocks (``encoder.blocks.1.0.weight`` -> ``encoder.1``): a few numbers per step
  instead of one per tensor.
"""
from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["unit_layers", "gated_units", "layer_name", "group_of", "group_norms", "zeros_like_tree"]


def unit_layers(params: dict[str, Tensor]) -> dict[str, "str | None"]:
    """weight name -> its bias name (or None) for every parameter made of units (see module doc)."""
    out: dict[str, "str | None"] = {}
    for n, p in params.items():
        if p.dim() >= 2 and n.endswith("weight"):
            b = n[: -len("weight")] + "bias"
            out[n] = b if b in params and params[b].dim() == 1 and params[b].shape[0] == p.shape[0] else None
    return out


def gated_units(params: dict[str, Tensor]) -> dict[str, "tuple[int, str | None]"]:
    """name -> (unit dim, bias name or None): ``unit_layers`` plus CRATE's ``D`` (dim 1) and ``D_hat`` (dim 0)."""
    out: dict[str, "tuple[int, str | None]"] = {w: (0, b) for w, b in unit_layers(params).items()}
    for n, p in params.items():
        if p.dim() == 2 and n.split(".")[-1] == "D":
            out[n] = (1, None)
        elif p.dim() == 2 and n.split(".")[-1] == "D_hat":
            out[n] = (0, None)
    return out


def layer_name(weight_name: str) -> str:
    """``encoder.blocks.0.0.weight`` -> ``encoder.blocks.0.0``; ``...in_proj_weight`` -> ``...in_proj``;
    other names (``...ista.D``) are kept."""
    if not weight_name.endswith("weight"):
        return weight_name
    return weight_name[: -len("weight")].rstrip("._") or weight_name


def group_of(name: str) -> str:
    parts = name.split(".")
    if parts[0] == "encoder" and len(parts) > 2 and parts[1] == "blocks":
        return f"encoder.{parts[2]}"
    return parts[0]


def group_norms(tensors: dict[str, Tensor], prefix: str) -> dict[str, float]:
    """L2 norm per metric group and in total: ``{prefix}.{group}`` and ``{prefix}.total``."""
    sq: dict[str, float] = {}
    for n, t in tensors.items():
        sq[group_of(n)] = sq.get(group_of(n), 0.0) + float(t.detach().double().pow(2).sum())
    out = {f"{prefix}.{g}": v ** 0.5 for g, v in sorted(sq.items())}
    out[f"{prefix}.total"] = sum(sq.values()) ** 0.5
    return out


def zeros_like_tree(params: dict[str, Tensor]) -> dict[str, Tensor]:
    return {n: torch.zeros_like(p, memory_format=torch.contiguous_format).detach() for n, p in params.items()}
