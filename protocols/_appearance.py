"""Appearance contexts: image-level changes of how a world looks, independent of the view geometry.

A world option ``appearance`` (per phase overridable) selects one of

* ``none``       — the rendered view unchanged;
* ``invert``     — contrast inversion on the canvas, ``x -> 1 - x`` (background becomes 1);
* ``blur_noise`` — Gaussian blur of standard deviation ``blur_sigma`` pixels (separable kernel
  truncated at ``ceil(3 sigma)``, normalised to sum 1, zero padding outside the canvas), then
  additive Gaussian noise ``noise_std * n``, ``n ~ N(0, 1)`` drawn from the world's
  generator, then clamped to [0, 1];
* ``thick``      — stroke-thickness remap: grey-scale dilation of the *canonical* image before
  the affine warp (max over a ``thickness`` x ``thickness`` window, stride 1, same size);
* ``gamma``      — intensity remap ``x -> x ** gamma`` (gamma < 1 brightens faint strokes).

All operate on (N, 1, S, S) float tensors in [0, 1]. ``thick`` acts before the warp (it changes
the object), the others after it (they change the picture), so the action still describes
the same motion in every context.
"""
from __future__ import annotations

import math
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["APPEARANCES", "thicken", "gaussian_kernel", "blur", "before_warp", "after_warp"]

APPEARANCES = ("none", "invert", "blur_noise", "thick", "gamma")


def thicken(img: Tensor, size: int) -> Tensor:
    """Grey-scale dilation: out[i, j] = max of img over the size x size window centred at (i, j). (N, 1, S, S)."""
    return F.max_pool2d(img, size, stride=1, padding=size // 2)


def gaussian_kernel(sigma: float) -> Tensor:
    """1-D kernel (2r+1,), r = ceil(3 sigma): exp(-x^2 / (2 sigma^2)) normalised to sum 1."""
    r = math.ceil(3 * sigma)
    x = torch.arange(-r, r + 1, dtype=torch.float32)
    w = torch.exp(-x ** 2 / (2 * sigma ** 2))
    return w / w.sum()


def blur(img: Tensor, sigma: float) -> Tensor:
    """Separable Gaussian blur of img (N, 1, S, S), zero padding -> (N, 1, S, S)."""
    w = gaussian_kernel(sigma).to(img)
    r = (len(w) - 1) // 2
    out = F.conv2d(img, w.view(1, 1, 1, -1), padding=(0, r))  # along columns (x)
    return F.conv2d(out, w.view(1, 1, -1, 1), padding=(r, 0))  # along rows (y)


def before_warp(img: Tensor, cfg) -> Tensor:
    """Canonical images (N, 1, S, S) as the appearance ``cfg.appearance`` changes them before the warp."""
    return thicken(img, cfg.thickness) if cfg.appearance == "thick" else img


def after_warp(obs: Tensor, cfg, generator: Optional[torch.Generator]) -> Tensor:
    """Rendered views (N, 1, S, S) under ``cfg.appearance``; ``blur_noise`` draws its noise from ``generator``
    (a CPU generator: the noise is drawn on the CPU and moved to ``obs``'s device)."""
    a = cfg.appearance
    if a == "invert":
        return 1.0 - obs
    if a == "gamma":
        return obs.clamp(min=0.0) ** cfg.gamma
    if a == "blur_noise":
        noise = torch.randn(obs.shape, generator=generator).to(obs.device)  # (N, 1, S, S)
        return (blur(obs, cfg.blur_sigma) + cfg.noise_std * noise).clamp_(0.0, 1.0)
    return obs
