"""Foveated glimpses of larger images: a full-resolution fovea, an optional low-resolution periphery,
and fixation positions drawn uniformly or by salience (used by the ``saccades`` world).

Coordinates
    A glimpse of side g sits at an integer *top-left* position p = (x0, y0) (column, row) of an
    image of side S, fully inside it: 0 <= x0, y0 <= S - g, so there are P = S - g + 1 positions
    per axis. Its *fixation* (centre) is (x0 + g / 2, y0 + g / 2) pixels from the image's top-left
    corner.

Fovea and periphery
    fovea(p)     = image[:, y0 : y0 + g, x0 : x0 + g]                               (C, g, g)
    periphery(p) = k x k average pooling of the k g x k g square centred on the fixation, with
                   zeros outside the image (``avg_pool2d`` of the zero-padded image; padding
                   (k - 1) g / 2, so (k - 1) g must be even)                           (C, g, g)
    A glimpse with periphery k >= 2 is the fovea's C channels followed by the periphery's C
    channels (2C, g, g); with k = 0 it is the fovea alone.

Salience
    The salience of position p is the mean intensity of the fovea there (over pixels and channels)
    plus a floor f > 0, so blank glimpses stay possible but rare; ``salient_cdf`` returns its
    cumulative sum over the P x P positions in row-major order (y0 major), from which
    ``draw_positions`` samples by inversion (one uniform per fixation, so a fixation costs the same
    draws on every device).
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["crop", "glimpse", "salient_cdf", "draw_positions", "fixation_of"]


def crop(images: Tensor, top_left: Tensor, size: int) -> Tensor:
    """images (N, C, H, W), integer top_left (N, 2) = (x0, y0), in range -> (N, C, size, size)."""
    ar = torch.arange(size, device=images.device)
    rows = top_left[:, 1, None] + ar  # (N, size)
    cols = top_left[:, 0, None] + ar  # (N, size)
    n = torch.arange(len(images), device=images.device)[:, None, None]
    out = images[n, :, rows[:, :, None], cols[:, None, :]]  # (N, size, size, C): advanced dims first
    return out.permute(0, 3, 1, 2)


def glimpse(images: Tensor, top_left: Tensor, size: int, periphery: int = 0) -> Tensor:
    """Glimpses of ``images`` (N, C, S, S) at ``top_left`` (N, 2) -> (N, C, g, g), or (N, 2C, g, g) with a
    periphery of factor k = ``periphery`` >= 2 (module docstring)."""
    fovea = crop(images, top_left, size)  # (N, C, g, g)
    if not periphery:
        return fovea
    pad = (periphery - 1) * size // 2
    wide = crop(F.pad(images, (pad, pad, pad, pad)), top_left, periphery * size)  # (N, C, k g, k g)
    return torch.cat([fovea, F.avg_pool2d(wide, periphery)], 1)  # (N, 2C, g, g)


def salient_cdf(images: Tensor, size: int, floor: float) -> Tensor:
    """Cumulative salience (N, P * P) of every glimpse position of ``images`` (N, C, S, S), row-major."""
    means = F.avg_pool2d(images.mean(1, keepdim=True), size, stride=1)[:, 0]  # (N, P, P)
    return (means.flatten(1) + floor).cumsum(1)  # (N, P * P)


def draw_positions(u: Tensor, positions: int, cdf: Optional[Tensor] = None) -> Tensor:
    """Top-left positions (N, 2) long = (x0, y0) in 0..P-1 from uniforms u (N, 2) in [0, 1):
    uniform over the P x P positions (x0 from u[:, 0], y0 from u[:, 1]), or, given ``cdf``
    (N, P * P), by salience (u[:, 0] alone, by inversion of the cumulative sum)."""
    P = positions
    if cdf is None:
        return (u * P).long().clamp_(max=P - 1)
    target = u[:, :1].to(cdf.dtype) * cdf[:, -1:]  # (N, 1)
    idx = torch.searchsorted(cdf.contiguous(), target, right=True)[:, 0].clamp_(max=P * P - 1)  # (N,)
    return torch.stack([idx % P, idx // P], -1)


def fixation_of(top_left: Tensor, size: int) -> Tensor:
    """Fixation (..., 2) float = glimpse centre (x0 + g / 2, y0 + g / 2) in pixels."""
    return top_left.float() + size / 2
