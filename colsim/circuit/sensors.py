"""Sensors: which part of the observation each column of a circuit sees (issue 14).

A column's sensor is a window of the view — ``top``, ``left``, ``height``, ``width`` in pixels —
and a choice of channels (a channel such as depth where the world provides one). Monty's
learning modules each receive one small sensor patch of the object (Hawkins et al. 2019, "A
Framework for Intelligence and Cortical Function Based on Grid Cells in the Neocortex"; Leadholm
et al. 2025, "Thousand-Brains Systems", arXiv 2507.04494); here a patch is a fixed window of the
rendered view, so a moving view moves every patch over the object alike.
"""
from __future__ import annotations

from typing import NamedTuple, Sequence

import torch
from torch import Tensor

__all__ = ["Sensor", "sense", "sensor_shape"]


class Sensor(NamedTuple):
    channels: tuple[int, ...]  # channel indices of the view
    top: int
    left: int
    height: int
    width: int


def sensor_shape(s: Sensor) -> "tuple[int, int, int]":
    """(C', h, w): what the sensor gives, i.e. the obs_shape of the column behind it."""
    return (len(s.channels), s.height, s.width)


def sense(obs: Tensor, sensors: Sequence[Sensor]) -> Tensor:
    """obs (..., C, H, W) -> (N, ..., C', h, w): sensor n's patch of every view, stacked on a new
    leading dim (the sensors must give equal shapes; :func:`colsim.circuit.config.check_circuit`
    checks that for shared weights). Slicing makes views; the one copy is the stack."""
    C = obs.shape[-3]
    parts = []
    for s in sensors:
        p = obs[..., s.top:s.top + s.height, s.left:s.left + s.width]  # (..., C, h, w)
        if s.channels != tuple(range(C)):
            p = p.index_select(-3, torch.as_tensor(s.channels, device=obs.device))
        parts.append(p)
    return torch.stack(parts)  # (N, ..., C', h, w)
