"""Affine view model shared by every world that shows fixed images under random 2-D affine views
(``affine_digits``, ``image_files``): config fields, geometry, action encoding, streams and probe sets,
on the pools of ``protocols/_pools.py`` (the split, overrides, class checks and item picking every
source-image world shares). A world supplies only its canonical images and their classes
(``AffineViewWorld``).

Canonical images and pools
    A world holds N canonical images I0 (N, C, S, S) float32 in [0, 1] (the object in a box
    centred on an S x S canvas) and their classes (N,) in 0..K-1; an image's *row* is its index in
    the world's data (the ``image`` label). A fixed permutation (``split_seed``), stratified by class,
    splits the rows once into three disjoint pools that together cover the data: *probe* (the first
    ``probe_fraction`` of each class's permutation; the reported probe sets), *validation* (the next
    ``validation_fraction``; probe sets for choosing hyper-parameters, never reported) and *train*
    (the rest; streams). The probe pool depends only on (``probe_fraction``, ``split_seed``): adding
    the validation pool took its images from the train pool.

Views
    Pixel coordinates x = (x, y) = (column, row) measured from the canvas centre; y points down, so
    a positive angle turns the image clockwise on screen. A view with absolute parameters
    (theta, s, t) shows

        A(theta, s, t) x = s R(theta) x + t,        view(x) = I0(A^-1 x)

    (rotate and scale about the centre, then translate), rendered by ``affine_grid`` /
    ``grid_sample`` (bilinear, zeros padding, align_corners=False). Each view draws independently
    theta ~ U[-rotation, rotation], log s ~ U[log scale_min, log scale_max], t_x, t_y ~ U[-T, T]
    with T = translation * S / 28. Inactive factors are constant: theta = 0, s = 1, t = 0.
    ``mode="rotation_only"``: rotation alone, theta ~ U[-180 deg, 180 deg].

Appearance (``appearance``, per-phase overridable; ``protocols/_appearance.py``)
    ``none``; ``invert`` (1 - x on the canvas); ``blur_noise`` (Gaussian blur ``blur_sigma`` px, then
    noise ``noise_std`` drawn from the world's generator, clamped to [0, 1]); ``thick`` (grey-scale
    dilation of I0 before the warp, a ``thickness`` x ``thickness`` max filter); ``gamma``
    (x ** ``gamma``). Stream and probe views alike; ``none`` draws nothing, so its streams and probe
    sets are bit-identical to a world without the option.

Actions (the relative-transformation scheme of seq-JEPA, Ghaemi et al. 2025, arXiv 2505.03176)
    The action emitted with a view leads to the next view (theta', s', t') of the same episode. It
    is the relative map g = A' A^-1:

        g x = ds R(dtheta) x + u,   dtheta = theta' - theta,   ds = s' / s,   u = t' - ds R(dtheta) t

    so next(x) = view(g^-1 x): warping the current image by g reproduces the next view (up to
    interpolation error and border clipping); ``AffineViewWorld.apply_action`` does exactly that.
    Encoding (``action_dim = 5``):

        a = (sin dtheta, cos dtheta, u_x / T_ref, u_y / T_ref, log ds)

    T_ref (``shift_unit``, pixels) is the *world's* translation range T (the base config's, not a
    phase override, so an action means the same motion in every phase; 7 * S / 28 when the base
    config has no translation). The last view of an episode has a = 0.

Streams: B streams in lockstep; an episode = one train-pool image of an allowed class (uniform
over classes, then over that class's images) for ``episode_length`` views. ``episodes: same_class``
shows a new train-pool image of the episode's class at every view instead (uniform over the class's
images, drawn from the uniform that picks an episode's image, so no extra draw): the same-class
pairing of EchoSpike (Graf et al. 2024), which uses the class labels to form episodes; the action
still encodes the change of view parameters, and the ``image`` label follows the image shown.
Probe sets are unchanged (one image per episode). Stream b enters its
first episode at view b % episode_length (staggered); ``start`` is True at tick 0 and at every
first view. The state holds the next view's parameters so each action is known when emitted.

Probe sets (``probe_set(classes, n, views, generator, overrides, pool="probe"|"validation")``): n
episodes, classes balanced (n // K or n // K + 1 each) and shuffled. Each class's episodes take its
pool images in a random order and cycle through all of them before any image repeats, so a class
with m episodes and P pool images has min(m, P) distinct source images, each used floor(m / P) or
ceil(m / P) times.
"""
from __future__ import annotations

import functools
import math
from typing import Any, ClassVar, Literal, Optional

import torch
import torch.nn.functional as F
from pydantic import Field, field_validator
from torch import Tensor

from colsim.config import ConfigError
from colsim.protocols._appearance import after_warp, before_warp
from colsim.protocols._pools import (
    POOL_FIXED, POOLS, PoolConfig, balanced_items, check_classes, class_picker, missing_class, resolve, split,
)
from colsim.stream import ProbeSet, Stream, World, generator_from_state, rng_state
from colsim.types import Step, WorldSpec

__all__ = ["AffineViewConfig", "AffineViewWorld", "FACTORS", "FIXED", "POOLS", "ACTION_NAMES", "place_in_canvas"]

FACTORS = ("rotation", "translation", "scale")
FIXED = POOL_FIXED + ("image_size",)  # cannot change per phase
_split = split  # the shared stratified split (protocols/_pools.py)
ACTION_NAMES = ("sin_drot", "cos_drot", "dtx", "dty", "dlogscale")


class AffineViewConfig(PoolConfig):
    """View and appearance fields every affine-view world shares, plus the pool fields (``PoolConfig``,
    protocols/_pools.py); a world's config subclasses it and sets ``name`` (a Literal). Per-phase
    ``overrides`` are validated against the world's config."""

    # what ``colsim list worlds`` shows (class attributes, not config fields)
    LABELS: ClassVar[tuple[str, ...]] = ("class", "image", "angle", "shift", "scale", "episode")
    ACTION_ENCODING: ClassVar[str] = ("relative affine map to the next view, 5-d: (sin dθ, cos dθ, u_x/T, u_y/T, "
                                      "log ds)")

    image_size: int = Field(32, ge=8, le=512, description="canvas side S in pixels")
    rotation: float = Field(75.0, ge=0, le=180, description="views' angle ~ U[-rotation, rotation] degrees")
    translation: float = Field(7.0, ge=0, le=28, description="shift range per axis, pixels at 28 px")
    scale: tuple[float, float] = Field((0.5, 1.0), description="(min, max), log-uniform")
    factors: list[Literal["rotation", "translation", "scale"]] = Field(default_factory=lambda: list(FACTORS))
    mode: Literal["affine", "rotation_only"] = "affine"
    episodes: Literal["same_image", "same_class"] = Field(
        "same_image", description="an episode's views show one image (same_image) or a new image of the episode's "
                                  "class at every view (same_class: EchoSpike's same-class pairing; uses the labels)")
    appearance: Literal["none", "invert", "blur_noise", "thick", "gamma"] = "none"
    blur_sigma: float = Field(1.0, gt=0, le=8, description="appearance blur_noise: Gaussian blur sigma, pixels")
    noise_std: float = Field(0.1, ge=0, le=1, description="appearance blur_noise: additive noise std")
    thickness: int = Field(3, ge=3, le=15, description="appearance thick: odd side of the max filter, pixels")
    gamma: float = Field(0.5, gt=0, le=10, description="appearance gamma: intensity exponent")

    @field_validator("scale")
    @classmethod
    def _check_scale(cls, v: tuple[float, float]) -> tuple[float, float]:
        lo, hi = v
        if not 0 < lo <= hi <= 4:
            raise ValueError(f"scale must be (min, max) with 0 < min <= max <= 4, got ({lo}, {hi})")
        return v

    @field_validator("thickness")
    @classmethod
    def _check_thickness(cls, v: int) -> int:
        if v % 2 == 0:
            raise ValueError(f"thickness must be odd (a centred window), got {v}")
        return v

    @field_validator("factors")
    @classmethod
    def _check_factors(cls, v: list[str]) -> list[str]:
        if len(set(v)) != len(v):
            raise ValueError(f"factors must not repeat a factor, got {v}")
        return v


# ------------------------------------------------------------------------------------------
# data

def place_in_canvas(x: Tensor, size: int, box: int) -> Tensor:
    """Images x (N, C, h, w) float in [0, 1] -> canonical (N, C, size, size): each image is resized
    (bilinear, antialiased) so its longer side is ``box`` px (aspect kept), clamped to [0, 1] and
    zero-padded to the centre of the canvas. ``box`` must have the parity of ``size`` (and so must the
    shorter side after resizing, else it sits half a pixel up / left of centre)."""
    h, w = x.shape[-2:]
    bh, bw = (box, max(1, round(box * w / h))) if h >= w else (max(1, round(box * h / w)), box)
    x = F.interpolate(x, size=(bh, bw), mode="bilinear", antialias=True, align_corners=False)
    top, left = (size - bh) // 2, (size - bw) // 2
    return F.pad(x.clamp_(0, 1), (left, size - bw - left, top, size - bh - top))  # (N, C, size, size)


# ------------------------------------------------------------------------------------------
# geometry; view parameters p (..., 4) = (theta rad, s, t_x px, t_y px)

def _ranges(cfg: AffineViewConfig) -> tuple[float, float, float, float]:
    """(max |theta| rad, max |t| px, log s_min, log s_max) with inactive factors collapsed."""
    if cfg.mode == "rotation_only":
        return math.pi, 0.0, 0.0, 0.0
    on = set(cfg.factors)
    rot = math.radians(cfg.rotation) if "rotation" in on else 0.0
    shift = cfg.translation * cfg.image_size / 28 if "translation" in on else 0.0
    lo, hi = (math.log(cfg.scale[0]), math.log(cfg.scale[1])) if "scale" in on else (0.0, 0.0)
    return rot, shift, lo, hi


def _draw(u: Tensor, ranges: tuple[float, float, float, float]) -> Tensor:
    """Uniforms u (..., 4) in [0, 1) -> view parameters (..., 4)."""
    rot, shift, lo, hi = ranges
    theta = (2 * u[..., 0] - 1) * rot
    s = torch.exp(lo + u[..., 1] * (hi - lo))
    t = (2 * u[..., 2:4] - 1) * shift
    return torch.cat([theta[..., None], s[..., None], t], -1)


@functools.lru_cache(maxsize=8)
def _base_grid(size: int, device: torch.device) -> Tensor:
    """affine_grid's sampling points for the identity, homogeneous: (S*S, 3) rows (x, y, 1)."""
    eye = torch.eye(2, 3, device=device)[None]
    base = F.affine_grid(eye, [1, 1, size, size], align_corners=False).reshape(size * size, 2)
    return torch.cat([base, torch.ones(size * size, 1, device=device)], -1)


def _warp(img: Tensor, theta: Tensor, s: Tensor, t: Tensor) -> Tensor:
    """img (N, C, S, S) under x -> s R(theta) x + t (pixels about the centre); theta, s (N,), t (N, 2)."""
    N, _, S, _ = img.shape
    c, si = torch.cos(theta) / s, torch.sin(theta) / s
    inv = torch.stack([torch.stack([c, si], -1), torch.stack([-si, c], -1)], -2)  # (N, 2, 2) = R(-theta)/s
    off = -(inv @ (t * (2.0 / S))[..., None])  # (N, 2, 1): t in normalised coordinates
    mat = torch.cat([inv, off], -1)  # (N, 2, 3), the matrix affine_grid takes
    # = F.affine_grid(mat, [N, C, S, S], align_corners=False), as one mm (affine_grid: ~5x slower on CPU)
    grid = (_base_grid(S, img.device) @ mat.reshape(N * 2, 3).T).view(S, S, N, 2).permute(2, 0, 1, 3)
    return F.grid_sample(img, grid.contiguous(), mode="bilinear", padding_mode="zeros", align_corners=False)


def _encode(p: Tensor, q: Tensor, shift_unit: float) -> Tensor:
    """Action (..., 5) leading from view parameters p (..., 4) to q (..., 4) (module docstring)."""
    dth = q[..., 0] - p[..., 0]
    ds = q[..., 1] / p[..., 1]
    c, s = torch.cos(dth), torch.sin(dth)
    tx, ty = p[..., 2], p[..., 3]
    ux = q[..., 2] - ds * (c * tx - s * ty)
    uy = q[..., 3] - ds * (s * tx + c * ty)
    return torch.stack([s, c, ux / shift_unit, uy / shift_unit, torch.log(ds)], -1)


# ------------------------------------------------------------------------------------------
# world

class AffineViewWorld(World):
    """Abstract: fixed canonical images under random affine views (module docstring). A final
    subclass loads its data and calls ``super().__init__(cfg, images, labels, num_classes)``;
    ``fixed`` names the config fields a phase may not override."""

    fixed: tuple[str, ...] = FIXED

    def __init__(self, cfg: AffineViewConfig, images: Tensor, labels: Tensor, num_classes: int):
        """images (N, C, S, S) float32 in [0, 1], canonical; labels (N,) long in 0..num_classes-1."""
        if type(self) is AffineViewWorld:
            raise TypeError("AffineViewWorld is abstract: use a world built on it (affine_digits, image_files)")
        self.cfg = cfg
        S = cfg.image_size
        self.num_classes = num_classes
        self.spec = WorldSpec(obs_shape=(images.shape[1], S, S), action_dim=5, action_names=ACTION_NAMES,
                              num_classes=num_classes)
        # dataset rows (n,) of each pool, disjoint, covering all images
        self.train_index, self.validation_index, self.probe_index = _split(
            labels, num_classes, cfg.probe_fraction, cfg.validation_fraction, cfg.split_seed)
        # canonical images (n, C, S, S) and classes (n,) of each pool
        self.train_images, self.train_labels = images[self.train_index], labels[self.train_index]
        self.validation_images, self.validation_labels = images[self.validation_index], labels[self.validation_index]
        self.probe_images, self.probe_labels = images[self.probe_index], labels[self.probe_index]
        base_shift = _ranges(cfg)[1]
        self.shift_unit = base_shift if base_shift > 0 else 7.0 * S / 28  # pixels per unit of action dtx / dty
        self._dev: dict[torch.device, tuple[Tensor, Tensor, Tensor]] = {}

    # ---- helpers
    def _resolve(self, overrides: Optional[dict[str, Any]], where: str = "world") -> AffineViewConfig:
        return resolve(self.cfg, overrides, self.fixed, where)

    def _classes(self, classes: Optional[list[int]], where: str = "classes") -> list[int]:
        return check_classes(classes, self.num_classes, where)

    def _pool(self, pool: str) -> tuple[Tensor, Tensor, Tensor]:
        """(dataset rows (n,), canonical images (n, C, S, S), classes (n,)) of a probe-set pool."""
        if pool == "probe":
            return self.probe_index, self.probe_images, self.probe_labels
        if pool == "validation":
            return self.validation_index, self.validation_images, self.validation_labels
        raise ConfigError(f"probe_set: pool must be one of {', '.join(POOLS)}, got {pool!r}")

    def _train_on(self, device: torch.device) -> tuple[Tensor, Tensor, Tensor]:
        if device not in self._dev:
            self._dev[device] = (self.train_images.to(device), self.train_labels.to(device),
                                 self.train_index.to(device))
        return self._dev[device]

    def check_phase(self, classes: Optional[list[int]], overrides: Optional[dict[str, Any]] = None, *,
                    pool: str = "probe", where: Optional[str] = None) -> list[int]:
        """Check that a phase (``classes``, world ``overrides``) gives a non-empty stream and probe set from
        ``pool``, without drawing anything; returns the sorted classes. Errors are one-line ConfigErrors
        whose field path starts with ``where`` (e.g. ``protocol.phases[1]`` -> ``protocol.phases[1].classes:``).
        """
        pre = f"{where}." if where else ""
        self._resolve(overrides, f"{pre}world" if where else "world")
        cls = self._classes(classes, f"{pre}classes")
        empty = missing_class(self._pool(pool)[2], cls)
        if empty is not None:
            raise ConfigError(f"{pre}classes: the world's {pool} pool has no image of class {empty} "
                              f"(world.{pool}_fraction = {getattr(self.cfg, pool + '_fraction')}); raise "
                              f"world.{pool}_fraction")
        return cls

    def apply_action(self, images: Tensor, actions: Tensor) -> Tensor:
        """Warp images (N, C, S, S) by the relative transforms actions (N, 5) encode -> (N, C, S, S)."""
        dth = torch.atan2(actions[:, 0], actions[:, 1])
        return _warp(images, dth, torch.exp(actions[:, 4]), actions[:, 2:4] * self.shift_unit)

    # ---- streams
    def stream(self, batch: int, episode_length: int, classes: Optional[list[int]] = None,
               overrides: Optional[dict[str, Any]] = None) -> Stream:
        if batch < 1 or episode_length < 1:
            raise ConfigError(f"stream: batch and episode_length must be >= 1, got {batch}, {episode_length}")
        cfg = self._resolve(overrides)
        ranges, unit, B, L = _ranges(cfg), self.shift_unit, batch, episode_length
        pick = class_picker(self.train_labels, self._classes(classes))  # u (B, 2) -> train-pool rows (B,)
        src: dict[torch.device, Tensor] = {}  # device -> canonical train images after before_warp (n, C, S, S)
        same_class = cfg.episodes == "same_class"

        def init(generator: torch.Generator) -> dict[str, Tensor]:
            u = torch.rand(B, 10, generator=generator)
            return {"rng": rng_state(generator), "image": pick(u[:, 8:]), "pos": torch.arange(B) % L,
                    "cur": _draw(u[:, :4], ranges), "nxt": _draw(u[:, 4:8], ranges),
                    "episode": torch.zeros(B, dtype=torch.long), "first": torch.ones(B, dtype=torch.bool)}

        def step(state: dict[str, Tensor]) -> tuple[dict[str, Tensor], Step]:
            g = generator_from_state(state["rng"].cpu())
            img, pos, cur, nxt, ep = (state[k] for k in ("image", "pos", "cur", "nxt", "episode"))  # img: train-pool rows
            dev = img.device
            images, labels, rows = self._train_on(dev)
            if dev not in src:  # the train pool as this phase's appearance shapes it before the warp
                src[dev] = before_warp(images, cfg)
            obs = _warp(src[dev][img], cur[:, 0], cur[:, 1], cur[:, 2:])  # (B, C, S, S)
            obs = after_warp(obs, cfg, g)  # appearance; blur_noise draws its noise from the stream's generator
            last = pos == L - 1  # (B,)
            action = torch.where(last[:, None], 0.0, _encode(cur, nxt, unit))  # (B, 5)
            out = Step(obs=obs, action=action, start=(pos == 0) | state["first"],
                       labels={"class": labels[img], "angle": cur[:, 0], "shift": cur[:, 2:], "scale": cur[:, 1],
                               "episode": ep, "image": rows[img]})
            u = torch.rand(B, 10, generator=g)  # (B, 10): fresh view, fresh next view, fresh image
            fresh = pick(u[:, 8:])  # (B,) a new episode's image
            if same_class:  # within an episode, another image of its class (drawn by u[:, 9])
                fresh = torch.where(last.cpu(), fresh, pick(u[:, 8:], like=img.cpu()))
            fresh, u = fresh.to(dev), u.to(dev)
            new = {"rng": rng_state(g), "image": fresh if same_class else torch.where(last, fresh, img),
                   "pos": torch.where(last, 0, pos + 1),
                   "cur": torch.where(last[:, None], _draw(u[:, :4], ranges), nxt),
                   "nxt": _draw(u[:, 4:8], ranges), "episode": ep + last.long(),
                   "first": torch.zeros_like(state["first"])}
            return new, out

        return Stream(init=init, step=step)

    # ---- probe sets
    def probe_set(self, classes: Optional[list[int]], n: int, views: int, generator: torch.Generator,
                  overrides: Optional[dict[str, Any]] = None, *, pool: str = "probe",
                  where: Optional[str] = None) -> ProbeSet:
        """n episodes of ``views`` views from ``pool`` ("probe" or "validation"); see the module docstring.

        ``where`` prefixes the field path of configuration errors (e.g. ``protocol.phases[1]``).
        Labels: ``class`` (n,), ``image`` (n,) dataset rows, ``angle`` (n, V), ``shift`` (n, V, 2), ``scale`` (n, V).
        """
        if n < 1 or views < 1:
            raise ConfigError(f"probe_set: n and views must be >= 1, got {n}, {views}")
        cls = self.check_phase(classes, overrides, pool=pool, where=where)
        cfg = self._resolve(overrides)
        rows, images, labels = self._pool(pool)
        img = balanced_items(labels, cls, n, generator)  # (n,) pool rows; a class cycles through all its images
        p = _draw(torch.rand(n, views, 4, generator=generator), _ranges(cfg))  # (n, V, 4)
        S, C = cfg.image_size, images.shape[1]
        src = before_warp(images[img], cfg)[:, None].expand(n, views, C, S, S).reshape(n * views, C, S, S)
        flat = p.reshape(n * views, 4)
        obs = after_warp(_warp(src, flat[:, 0], flat[:, 1], flat[:, 2:]), cfg, generator)
        obs = obs.reshape(n, views, C, S, S)
        actions = torch.zeros(n, views, 5)  # (n, V, 5); the last view's action stays zero
        actions[:, :-1] = _encode(p[:, :-1], p[:, 1:], self.shift_unit)
        return ProbeSet(obs=obs, actions=actions,
                        labels={"class": labels[img], "angle": p[..., 0], "shift": p[..., 2:],
                                "scale": p[..., 1], "image": rows[img]})
