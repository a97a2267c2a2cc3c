"""affine_digits — handwritten digits seen under random affine views; actions are relative transforms.

Data
    scikit-learn's bundled copy of the UCI "Optical Recognition of Handwritten Digits" data
    (E. Alpaydin & C. Kaynak, 1998; ``sklearn.datasets.load_digits``): 1797 images, 8x8, values
    0..16, no download. Each image is scaled to [0, 1], resized (bilinear, antialiased) to a box of
    ~20/28 of the canvas (MNIST's 20x20 digit in a 28x28 frame; the box has the parity of S so it is
    exactly centred) and padded to S x S: the *canonical* image I0. A fixed permutation
    (``split_seed``), stratified by class, splits the images once into three disjoint pools that
    together cover the data: *probe* (the first ``probe_fraction`` of each class's permutation;
    the reported probe sets), *validation* (the next ``validation_fraction``; probe sets for
    choosing hyper-parameters, never reported) and *train* (the rest; streams). The probe pool
    depends only on (``probe_fraction``, ``split_seed``): adding the validation pool took its images
    from the train pool. With the defaults (0.3, 0.15) a class of ~180 images has ~54 probe, ~27
    validation and ~99 train images. Every Step's and ProbeSet's ``image`` label is the dataset row
    (index into ``load_digits()``) of the episode's source digit.

Views, appearance, actions, streams and probe sets
    The shared affine view model of ``protocols/_affine_views.py`` (one module for every world that
    needs it): a view is the canonical image under A(theta, s, t) x = s R(theta) x + t; the action
    leading to the next view is the relative map g = A' A^-1, encoded as
    a = (sin dtheta, cos dtheta, u_x / T_ref, u_y / T_ref, log ds) (``action_dim = 5``).
    Probe sets with the defaults (probe pool ~54 per class): 200 episodes over 10 classes -> 20 per
    class, all distinct; over 2 classes -> 100 per class, every probe image of the class used once or
    twice.
"""
from __future__ import annotations

import functools
from typing import Literal

import torch
from torch import Tensor

from colsim.protocols._affine_views import (  # noqa: F401  (geometry re-exported for tests and callers)
    AffineViewConfig, AffineViewWorld, _base_grid, _draw, _encode, _ranges, _warp, place_in_canvas,
)
from colsim.registry import register_world
from colsim.stream import generator_from_state  # noqa: F401  (re-exported: tests replay a stream's generator)

__all__ = ["AffineDigitsConfig", "AffineDigits", "affine_digits"]

NUM_CLASSES = 10


class AffineDigitsConfig(AffineViewConfig):
    """World config (view, pool and appearance fields: ``AffineViewConfig``); per-phase ``overrides``
    are validated against it too."""

    name: Literal["affine_digits"] = "affine_digits"


@functools.lru_cache(maxsize=4)
def _canonical(image_size: int) -> tuple[Tensor, Tensor]:
    """All 1797 canonical images (N, 1, S, S) float32 in [0, 1] and their classes (N,) long."""
    from sklearn.datasets import load_digits

    d = load_digits()
    x = torch.tensor(d.images, dtype=torch.float32)[:, None] / 16.0  # (N, 1, 8, 8)
    S = image_size
    box = S - 2 * round((S - S * 20 / 28) / 2)  # ~20/28 of S, same parity as S -> exactly centred
    return place_in_canvas(x, S, box).contiguous(), torch.tensor(d.target, dtype=torch.long)


class AffineDigits(AffineViewWorld):
    """sklearn digits under random rotation / translation / scale; see the module docstring."""

    def __init__(self, cfg: AffineDigitsConfig):
        images, labels = _canonical(cfg.image_size)
        super().__init__(cfg, images, labels, NUM_CLASSES)


@register_world("affine_digits", AffineDigitsConfig)
def affine_digits(cfg: AffineDigitsConfig) -> AffineDigits:
    """sklearn handwritten digits under random rotation/translation/scale; actions = relative affine maps.

    One world serves all three pools: streams draw from the train pool, probe sets
    (``probe_set(..., pool=...)``) from the probe or the validation pool.
    """
    return AffineDigits(cfg)
