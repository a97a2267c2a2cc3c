"""saccades — foveated glimpses of composite scenes; the action is the saccade to the next fixation.

The "predictive learning across saccades" setting of seq-JEPA (Ghaemi et al. 2025, arXiv
2505.03176, the STL-10 experiment): a column sees a scene only through a sequence of glimpses at
fixation points and, given the saccade to the next fixation, predicts the next glimpse's embedding;
the aggregate of a few glimpses should tell the scene's class.

Source objects (``source``; read once, never downloaded)
    ``digits``  scikit-learn's bundled handwritten digits (``load_digits``, 1797 8x8 images, 10
                classes; the embedded default data), placed like ``affine_digits`` (a box of ~20/28
                of the cell, centred).
    ``fashion`` the images at ``path`` (default Fashion-MNIST, Debian package
                ``dataset-fashion-mnist`` under /usr/share/datasets/fashion-mnist; any IDX folder,
                class-folder tree or .npz that ``image_files`` reads, with its readers), resized to
                fill the cell (box 1).
    ``mixed``   both: digit classes 0..9, then the file classes from 10 (a digit and a garment are
                never the same class). Source rows: digits first (0..1796), then the files' rows.
    ``channels`` 1 (grey) or 3 (RGB; grey digits are repeated on the three channels).

Scenes (fixed; built once from ``split_seed``)
    The source images are split into the shared stratified pools (train / validation / probe,
    ``protocols/_pools.py``). Within each pool and class, the images are permuted and cut into
    groups of G^2 (``grid`` = G; a remainder of fewer than G^2 images is left out): one group is one
    scene, a G x G arrangement of cells of side c = S / G (S = ``scene_size``) whose cell (i, j)
    (row i, column j, slot s = i G + j) holds the group's s-th image, shifted by a fixed integer
    offset drawn in [-``jitter``, ``jitter``] px per axis and slot; where objects overlap the
    brighter pixel wins (max), and anything outside the S x S canvas is cut. Every object of a
    scene has the scene's class, so the class is the scene's label. Each source image belongs to at
    most one scene, so a scene's id -- the ``image`` label -- groups probe splits: no source image
    can be on both sides (colsim.evaluate, analysis.probes.group_sides). Scene ids: train scenes,
    then validation, then probe, each by class.

Glimpses and fixations (``protocols/_foveate.py``)
    A glimpse is the g x g fovea (g = ``glimpse`` < S) at an integer top-left position inside the
    scene, plus, with ``periphery`` = k >= 2, a second group of channels: the k g x k g square
    around the fixation average-pooled by k to g x g (zeros outside the scene). Observations are
    (C, g, g) or (2C, g, g). Fixations are drawn independently per view: ``uniform`` over the
    (S - g + 1)^2 positions, or ``salient`` with probability proportional to the fovea's mean
    intensity there plus ``saliency_floor`` (per-phase overridable, as is ``saliency_floor``).

Actions (``action_dim = 2``)
    The action emitted with a glimpse is the saccade to the next glimpse of the same episode,
    a = (x' - x, y' - y) / (S - g) with (x, y) the fixation in pixels (so a in [-1, 1]^2; a = 0 on
    the last view of an episode). Labels: ``class``, ``image`` (scene id), ``fixation`` (x, y) in
    pixels from the scene's top-left corner, ``episode``.

Streams and probe sets
    As the affine-view worlds: B streams in lockstep, an episode = one train scene of an allowed
    class (uniform over classes, then scenes) for ``episode_length`` glimpses, stream b entering its
    first episode at view b % L. Probe sets take the scenes of the probe (or validation) pool,
    classes balanced, each class cycling through its scenes before any repeats.
"""
from __future__ import annotations

from typing import Any, ClassVar, Literal, Optional

import torch
from pydantic import Field, ValidationInfo, field_validator
from torch import Tensor

from colsim.config import ConfigError
from colsim.protocols import affine_digits, image_files
from colsim.protocols._foveate import draw_positions, fixation_of, glimpse, salient_cdf
from colsim.protocols._pools import (
    POOL_FIXED, POOLS, PoolConfig, balanced_items, check_classes, class_picker, missing_class, resolve, split,
)
from colsim.registry import register_world
from colsim.stream import ProbeSet, Stream, World, generator_from_state, rng_state
from colsim.types import Step, WorldSpec

__all__ = ["SaccadesConfig", "Saccades", "saccades", "compose_scenes", "ACTION_NAMES", "FIXED"]

ACTION_NAMES = ("dx", "dy")
FIXED = POOL_FIXED + ("source", "path", "channels", "scene_size", "grid", "jitter", "glimpse", "periphery")


class SaccadesConfig(PoolConfig):
    """World config: the scene source and layout, the glimpse and the fixation policy, plus the
    shared pool fields (``PoolConfig``)."""

    # what ``colsim list worlds`` shows (class attributes, not config fields)
    LABELS: ClassVar[tuple[str, ...]] = ("class", "image", "fixation", "episode")
    ACTION_ENCODING: ClassVar[str] = "saccade to the next fixation, 2-d: (dx, dy) / (scene_size - glimpse)"

    name: Literal["saccades"] = "saccades"
    source: Literal["digits", "fashion", "mixed"] = Field("digits", description="objects the scenes are made of")
    path: str = Field(image_files.FASHION_MNIST, min_length=1, description="source fashion / mixed: IDX folder, class folders or .npz")
    channels: Literal[1, 3] = Field(1, description="1: grey, 3: RGB")
    scene_size: int = Field(48, ge=8, le=1024, description="scene side S in pixels")
    grid: int = Field(2, ge=1, le=16, description="a scene is grid x grid objects of one class")
    jitter: int = Field(2, ge=0, le=64, description="objects' fixed offset in their cell, up to +-jitter px per axis")
    glimpse: int = Field(16, ge=4, le=512, description="fovea side g in pixels (< scene_size)")
    periphery: int = Field(0, ge=0, le=16, description="0: fovea only; k >= 2: add a k*g square pooled k x k")
    fixations: Literal["uniform", "salient"] = "salient"
    saliency_floor: float = Field(0.02, gt=0, le=10, description="salient: added to every position's salience")

    @field_validator("grid")
    @classmethod
    def _check_grid(cls, v: int, info: ValidationInfo) -> int:
        S = info.data.get("scene_size")
        if S is not None and (S % v or S // v < 4):
            raise ValueError(f"scene_size {S} must be a multiple of grid {v} with cells of >= 4 px; "
                             f"pick a grid that divides scene_size")
        return v

    @field_validator("glimpse")
    @classmethod
    def _check_glimpse(cls, v: int, info: ValidationInfo) -> int:
        S = info.data.get("scene_size")
        if S is not None and v >= S:
            raise ValueError(f"must be smaller than the scene (scene_size {S}), got {v}; lower glimpse or "
                             f"raise scene_size")
        return v

    @field_validator("periphery")
    @classmethod
    def _check_periphery(cls, v: int, info: ValidationInfo) -> int:
        g = info.data.get("glimpse")
        if v == 1:
            raise ValueError("must be 0 (no periphery) or a pooling factor >= 2, got 1")
        if v and g is not None and (v - 1) * g % 2:
            raise ValueError(f"(periphery - 1) * glimpse must be even to centre the periphery on the fixation, got "
                             f"({v} - 1) * {g}; use an odd periphery or an even glimpse")
        return v


# ------------------------------------------------------------------------------------------
# source objects and scenes

def _objects(cfg: SaccadesConfig) -> tuple[Tensor, Tensor, list[str]]:
    """Every source image on a cell canvas (N, C, c, c) float32 in [0, 1], classes (N,), class names."""
    c = cfg.scene_size // cfg.grid
    xs, ys, names = [], [], []
    if cfg.source in ("digits", "mixed"):
        x, y = affine_digits._canonical(c)  # (1797, 1, c, c), (1797,)
        xs.append(x.expand(-1, cfg.channels, -1, -1))
        ys.append(y)
        names += [f"digit {k}" for k in range(10)]
    if cfg.source in ("fashion", "mixed"):
        imgs, y, file_names = image_files.read_images(cfg.path, "auto", cfg.channels)
        if cfg.path == image_files.FASHION_MNIST:
            file_names = list(image_files.FASHION_CLASSES)
        xs.append(image_files._canonical(imgs, c, 1.0))
        ys.append(torch.as_tensor(y) + len(names))
        names += file_names
    return torch.cat(xs).contiguous(), torch.cat(ys), names


def compose_scenes(objects: Tensor, members: Tensor, offsets: Tensor, grid: int, size: int) -> Tensor:
    """Scenes (n, C, S, S) from objects (N, C, c, c) with c = S / grid: scene r's slot s = i grid + j
    holds objects[members[r, s]] at (row i c + dy, column j c + dx), (dx, dy) = offsets[r, s];
    overlaps keep the max, the canvas cuts the rest. members (n, grid^2) long, offsets (n, grid^2, 2)."""
    n, C, c = len(members), objects.shape[1], size // grid
    J = int(offsets.abs().max()) if offsets.numel() else 0
    canvas = torch.zeros(n, C, size + 2 * J, size + 2 * J)  # J px of margin catch jittered objects
    ar, scene = torch.arange(c), torch.arange(n)[:, None, None]
    for s in range(grid * grid):  # one slot of every scene at once: the slots of one scene never collide
        i, j = divmod(s, grid)
        rows = (J + i * c + offsets[:, s, 1])[:, None] + ar  # (n, c)
        cols = (J + j * c + offsets[:, s, 0])[:, None] + ar  # (n, c)
        where = (scene, slice(None), rows[:, :, None], cols[:, None, :])  # -> (n, c, c, C)
        canvas[where] = torch.maximum(canvas[where], objects[members[:, s]].permute(0, 2, 3, 1))
    return canvas[:, :, J:J + size, J:J + size].contiguous()


def _group(rows: Tensor, labels: Tensor, num_classes: int, per: int, g: torch.Generator) -> tuple[Tensor, Tensor]:
    """A pool's source rows -> scene members (m, per) and classes (m,): per class, permuted, cut in groups."""
    members, classes = [torch.zeros(0, per, dtype=torch.long)], [torch.zeros(0, dtype=torch.long)]
    for k in range(num_classes):
        r = rows[labels[rows] == k]
        r = r[torch.randperm(len(r), generator=g)]
        m = len(r) // per
        members.append(r[: m * per].view(m, per))
        classes.append(torch.full((m,), k, dtype=torch.long))
    return torch.cat(members), torch.cat(classes)


# ------------------------------------------------------------------------------------------
# world

class Saccades(World):
    """Glimpses of fixed composite scenes at drawn fixations; see the module docstring."""

    fixed = FIXED

    def __init__(self, cfg: SaccadesConfig):
        self.cfg = cfg
        objects, labels, self.class_names = _objects(cfg)
        K = self.num_classes = len(self.class_names)
        S, g, G = cfg.scene_size, cfg.glimpse, cfg.grid
        C = objects.shape[1] * (2 if cfg.periphery else 1)
        self.spec = WorldSpec(obs_shape=(C, g, g), action_dim=2, action_names=ACTION_NAMES, num_classes=K)
        self.positions = S - g + 1  # P top-left positions per axis
        gen = torch.Generator().manual_seed(cfg.split_seed)
        pools = split(labels, K, cfg.probe_fraction, cfg.validation_fraction, cfg.split_seed)  # train, val, probe rows
        groups = [_group(rows, labels, K, G * G, gen) for rows in pools]
        self.scene_members = torch.cat([m for m, _ in groups])  # (n, G^2) source rows, each row in <= 1 scene
        self.scene_labels = torch.cat([k for _, k in groups])  # (n,)
        offsets = torch.randint(-cfg.jitter, cfg.jitter + 1, (len(self.scene_members), G * G, 2), generator=gen)
        self.scenes = compose_scenes(objects, self.scene_members, offsets, G, S)  # (n, C, S, S)
        ends = torch.tensor([0] + [len(m) for m, _ in groups]).cumsum(0).tolist()
        self.train_scenes, self.validation_scenes, self.probe_scenes = (
            torch.arange(ends[i], ends[i + 1]) for i in range(3))  # scene ids of each pool
        self._dev: dict[tuple, Tensor] = {}

    # ---- helpers
    def _resolve(self, overrides: Optional[dict[str, Any]], where: str = "world") -> SaccadesConfig:
        return resolve(self.cfg, overrides, self.fixed, where)

    def _pool(self, pool: str) -> Tensor:
        """Scene ids (m,) of a pool: "train", "validation" or "probe"."""
        if pool in ("train", *POOLS):
            return getattr(self, f"{pool}_scenes")
        raise ConfigError(f"probe_set: pool must be one of {', '.join(POOLS)}, got {pool!r}")

    def _on(self, device: torch.device, cfg: SaccadesConfig) -> tuple[Tensor, Tensor, Optional[Tensor]]:
        """(scenes (n, C, S, S), classes (n,), cumulative salience (n, P^2) or None for uniform fixations)
        on ``device``."""
        if (device, "scenes") not in self._dev:
            self._dev[(device, "scenes")] = self.scenes.to(device)
            self._dev[(device, "labels")] = self.scene_labels.to(device)
        scenes, labels = self._dev[(device, "scenes")], self._dev[(device, "labels")]
        if cfg.fixations == "uniform":
            return scenes, labels, None
        key = (device, cfg.saliency_floor)
        if key not in self._dev:
            self._dev[key] = salient_cdf(self.scenes, cfg.glimpse, cfg.saliency_floor).to(device)
        return scenes, labels, self._dev[key]

    def _check_pool(self, cls: list[int], pool: str, pre: str) -> None:
        """ConfigError naming ``{pre}classes`` unless ``pool`` has a scene of every class in ``cls``."""
        empty = missing_class(self.scene_labels[self._pool(pool)], cls)
        if empty is not None:
            frac = (f"world.{pool}_fraction = {getattr(self.cfg, pool + '_fraction')}" if pool != "train" else
                    "the images left after the probe and validation pools")
            raise ConfigError(f"{pre}classes: the world's {pool} pool has no scene of class {empty} (a scene takes "
                              f"grid^2 = {self.cfg.grid ** 2} images of one class; {frac}); lower world.grid"
                              + (f" or raise world.{pool}_fraction" if pool != "train" else ""))

    def check_phase(self, classes: Optional[list[int]], overrides: Optional[dict[str, Any]] = None, *,
                    pool: str = "probe", where: Optional[str] = None) -> list[int]:
        """Check that a phase gives non-empty streams (train scenes) and probe sets (``pool`` scenes) of
        every class, drawing nothing; returns the sorted classes (see ``World.check_phase``)."""
        pre = f"{where}." if where else ""
        self._resolve(overrides, f"{pre}world" if where else "world")
        cls = check_classes(classes, self.num_classes, f"{pre}classes")
        if pool not in POOLS:
            self._pool(pool)  # the error naming the valid pools
        for p in ("train", pool):
            self._check_pool(cls, p, pre)
        return cls

    # ---- streams
    def stream(self, batch: int, episode_length: int, classes: Optional[list[int]] = None,
               overrides: Optional[dict[str, Any]] = None) -> Stream:
        if batch < 1 or episode_length < 1:
            raise ConfigError(f"stream: batch and episode_length must be >= 1, got {batch}, {episode_length}")
        cfg = self._resolve(overrides)
        cls = check_classes(classes, self.num_classes)
        self._check_pool(cls, "train", "")
        B, L, g, unit = batch, episode_length, cfg.glimpse, float(cfg.scene_size - cfg.glimpse)
        train = self.train_scenes
        pick = class_picker(self.scene_labels[train], cls)  # u (B, 2) -> train-pool positions (B,)
        cdf_cpu = self._on(torch.device("cpu"), cfg)[2]

        def draw(ids: Tensor, u: Tensor) -> Tensor:  # scene ids (B,), u (B, 2) -> top-left (B, 2), on CPU
            return draw_positions(u, self.positions, None if cdf_cpu is None else cdf_cpu[ids])

        def init(generator: torch.Generator) -> dict[str, Tensor]:
            u = torch.rand(B, 6, generator=generator)
            scene = train[pick(u[:, 2:4])]
            return {"rng": rng_state(generator), "scene": scene, "pos": torch.arange(B) % L,
                    "cur": draw(scene, u[:, :2]), "nxt": draw(scene, u[:, 4:6]),
                    "episode": torch.zeros(B, dtype=torch.long), "first": torch.ones(B, dtype=torch.bool)}

        def step(state: dict[str, Tensor]) -> tuple[dict[str, Tensor], Step]:
            gen = generator_from_state(state["rng"].cpu())
            scene, pos, cur, nxt, ep = (state[k] for k in ("scene", "pos", "cur", "nxt", "episode"))
            dev = scene.device
            scenes, labels, _ = self._on(dev, cfg)
            obs = glimpse(scenes[scene], cur, g, cfg.periphery)  # (B, C', g, g)
            last = pos == L - 1  # (B,)
            action = torch.where(last[:, None], 0.0, (nxt - cur).float() / unit)  # (B, 2)
            out = Step(obs=obs, action=action, start=(pos == 0) | state["first"],
                       labels={"class": labels[scene], "image": scene,
                               "fixation": fixation_of(cur, g), "episode": ep})
            u = torch.rand(B, 6, generator=gen)  # (B, 6): next fixation, fresh scene, its first fixation
            new_scene = torch.where(last.cpu(), train[pick(u[:, 2:4])], scene.cpu())
            first_fix = draw(new_scene, u[:, 4:6]).to(dev)
            new_scene = new_scene.to(dev)
            new = {"rng": rng_state(gen), "scene": new_scene, "pos": torch.where(last, 0, pos + 1),
                   "cur": torch.where(last[:, None], first_fix, nxt), "nxt": draw(new_scene.cpu(), u[:, :2]).to(dev),
                   "episode": ep + last.long(), "first": torch.zeros_like(state["first"])}
            return new, out

        return Stream(init=init, step=step)

    # ---- probe sets
    def probe_set(self, classes: Optional[list[int]], n: int, views: int, generator: torch.Generator,
                  overrides: Optional[dict[str, Any]] = None, *, pool: str = "probe",
                  where: Optional[str] = None) -> ProbeSet:
        """n episodes of ``views`` glimpses of ``pool`` scenes ("probe" or "validation").

        Labels: ``class`` (n,), ``image`` (n,) scene ids, ``fixation`` (n, V, 2) pixels.
        """
        if n < 1 or views < 1:
            raise ConfigError(f"probe_set: n and views must be >= 1, got {n}, {views}")
        cls = self.check_phase(classes, overrides, pool=pool, where=where)
        cfg = self._resolve(overrides)
        ids = self._pool(pool)
        scene = ids[balanced_items(self.scene_labels[ids], cls, n, generator)]  # (n,) scene ids
        u = torch.rand(n, views, 2, generator=generator)
        scenes, _, cdf = self._on(torch.device("cpu"), cfg)
        flat = scene.repeat_interleave(views)  # (n V,)
        pos = draw_positions(u.reshape(n * views, 2), self.positions, None if cdf is None else cdf[flat])  # (n V, 2)
        obs = glimpse(scenes[flat], pos, cfg.glimpse, cfg.periphery)  # (n V, C', g, g)
        pos = pos.view(n, views, 2)
        actions = torch.zeros(n, views, 2)  # (n, V, 2); the last view's action stays zero
        actions[:, :-1] = (pos[:, 1:] - pos[:, :-1]).float() / (cfg.scene_size - cfg.glimpse)
        return ProbeSet(obs=obs.reshape(n, views, *self.spec.obs_shape), actions=actions,
                        labels={"class": self.scene_labels[scene], "image": scene, "fixation": fixation_of(pos, cfg.glimpse)})


@register_world("saccades", SaccadesConfig)
def saccades(cfg: SaccadesConfig) -> Saccades:
    """Foveated glimpses (optional periphery) of digit / Fashion-MNIST scenes; actions = saccade vectors.

    One world serves all three pools: streams draw from the train pool, probe sets
    (``probe_set(..., pool=...)``) from the probe or the validation pool.
    """
    return Saccades(cfg)
