"""objects3d — procedural 3-D objects under SO(3) rotations; the action is the relative rotation.

The 3DIEBench setting of seq-JEPA (Ghaemi et al. 2025, arXiv 2505.03176; 3DIEBench: Garrido,
Najman & LeCun 2023, "Self-supervised learning of split invariant equivariant representations",
ICML), at CPU size: a column sees an object from several orientations and, given the rotation to
the next view, predicts that view's embedding; the aggregate of the views should tell the object.

Objects, instances and pools (``protocols/_object_family.py``; built once, nothing is read or downloaded)
    ``family`` ``all`` (24 objects: 12 solids and 12 composites), ``solids`` or ``composites``; the
    class is the object. Each object has ``instances`` seeded variants (``shape_seed``): proportions and
    albedos jittered, always upright and facing the viewer in the canonical pose. An instance's row
    (the ``image`` label, which groups probe splits: colsim.evaluate) is ``class * instances + k``. The
    instances of each class are split into the shared stratified pools (``protocols/_pools.py``):
    *probe*, *validation* and *train* (streams), so probes are scored on instances never trained on.
    With the defaults (10 instances, fractions 0.3 / 0.15): 3 probe, 2 validation, 5 train per class.

Views (``protocols/_raster.py``, a numba z-buffer rasteriser)
    A view shows an instance under the orientation q (a unit quaternion; rotation matrix R maps object
    to camera coordinates), orthographic, on S x S pixels (``image_size``), Lambertian flat shading
    ``albedo * (ambient + (1 - ambient) max(0, n . l))``; with ``depth`` a second channel holds
    (1 + z) / 2 of the visible surface (0: background). Each view draws its orientation independently:
    a rotation of at most ``rotation`` degrees from the canonical pose, Haar-distributed in that ball
    (``rotation: 180``: uniform on SO(3); ``protocols/_rotations.py``). The light direction l is
    L0 = (1, 1, 2) / sqrt 6 (upper right, in front) for ``lighting: fixed``; else uniform on the
    spherical cap of half-angle ``light_angle`` degrees about L0, drawn once per episode
    (``episode``) or per view (``view``). ``rotation``, ``lighting``, ``light_angle`` and
    ``ambient`` may change per phase.

Actions (3DIEBench's convention, as seq-JEPA uses it)
    The action emitted with a view leads to the next view of the same episode: the relative rotation
    between the two orientations, in the *object* frame by default,

        q_rel = q^-1 q',     R' = R R_rel         (``action_frame: object``; 3DIEBench's rot1.inv() * rot2)
        q_rel = q' q^-1,     R' = R_rel R         (``action_frame: camera``: the rotation as the image turns)

    encoded (``action``) as the quaternion (x, y, z, w), scalar last and w >= 0 (``action_dim`` 4,
    3DIEBench's "quat"), or as the rotation vector theta u (``rotvec``, ``action_dim`` 3). The last
    view of an episode has a = 0. ``Objects3D.compose`` applies an action to an orientation. The light
    is a nuisance the action does not carry.

Labels (Step: (B, ...); ProbeSet: per episode (N,) or per view (N, V, ...))
    ``class`` the object; ``image`` the instance row; ``orientation`` (4,) the absolute orientation
    quaternion (x, y, z, w), w >= 0; ``light`` (3,) the unit light direction (camera coordinates);
    ``episode`` (streams) the stream's episode count.

Streams and probe sets follow ``affine_digits``: B streams in lockstep, an episode = one train-pool
instance of an allowed class (uniform over classes, then instances) for ``episode_length`` views,
staggered starts; probe sets balance classes and cycle through a class's pool instances before any
repeats.
"""
from __future__ import annotations

import math
from typing import Any, ClassVar, Literal, Optional

import torch
from pydantic import Field
from torch import Tensor

from colsim.config import ConfigError
from colsim.protocols._object_family import FAMILIES, OBJECT_NAMES, build_family
from colsim.protocols._pools import (
    POOL_FIXED, POOLS, PoolConfig, balanced_items, check_classes, class_picker, missing_class, resolve,
)
from colsim.protocols._pools import split as split_pools
from colsim.protocols._raster import render
from colsim.protocols._rotations import (
    canonical, draw_rotation, quat_conj, quat_from_rotvec, quat_mul, quat_to_matrix, rotvec_from_quat,
)
from colsim.registry import register_world
from colsim.stream import ProbeSet, Stream, World, generator_from_state, rng_state
from colsim.types import Step, WorldSpec

__all__ = ["Objects3DConfig", "Objects3D", "objects3d", "LIGHT0", "FIXED"]

LIGHT0 = (1 / math.sqrt(6), 1 / math.sqrt(6), 2 / math.sqrt(6))  # default direction towards the light
FIXED = POOL_FIXED + ("family", "instances", "shape_seed", "image_size", "depth", "action", "action_frame")
_ACTION_NAMES = {"quaternion": ("qx", "qy", "qz", "qw"), "rotvec": ("rx", "ry", "rz")}
_U = 5  # uniforms per view: 3 for the orientation, 2 for the light


class Objects3DConfig(PoolConfig):
    """World config: which objects, how views are rendered and drawn, how actions are encoded, plus the
    pool fields (``PoolConfig``); per-phase ``overrides`` are validated against it too."""

    # what ``colsim list worlds`` shows (class attributes, not config fields)
    LABELS: ClassVar[tuple[str, ...]] = ("class", "image", "orientation", "light", "episode")
    ACTION_ENCODING: ClassVar[str] = ("relative rotation to the next view (3DIEBench): quaternion 4-d (x, y, z, w), "
                                      "or rotation vector 3-d (action: rotvec)")

    name: Literal["objects3d"] = "objects3d"
    family: Literal["all", "solids", "composites"] = Field("all", description="which objects are the classes")
    instances: int = Field(10, ge=2, le=200, description="seeded variants of every object, split into the pools")
    shape_seed: int = Field(0, ge=0, description="seed of the instances' proportions and albedos")
    image_size: int = Field(32, ge=16, le=128, description="side S in pixels (32-64 is the intended range)")
    depth: bool = Field(False, description="add a depth channel")
    rotation: float = Field(180.0, ge=0, le=180, description="largest angle from the canonical pose, degrees")
    lighting: Literal["fixed", "episode", "view"] = "fixed"
    light_angle: float = Field(60.0, ge=0, le=90, description="light directions within this angle of L0, degrees")
    ambient: float = Field(0.2, ge=0, le=1, description="share of light that ignores the normal")
    action: Literal["quaternion", "rotvec"] = "quaternion"
    action_frame: Literal["object", "camera"] = "object"


# ------------------------------------------------------------------------------------------
# draws and encodings (float64)

def _lights(u: Tensor, cfg: Objects3DConfig) -> Tensor:
    """Uniforms u (..., 2) -> unit light directions (..., 3): L0 when fixed, else uniform on the cap of
    half-angle ``light_angle`` about L0 (cos alpha uniform in [cos m, 1], azimuth uniform)."""
    L0 = torch.tensor(LIGHT0, dtype=torch.float64)
    if cfg.lighting == "fixed" or cfg.light_angle == 0:
        return L0.expand(*u.shape[:-1], 3).clone()
    e1 = torch.tensor([2.0, 0.0, -1.0], dtype=torch.float64) / math.sqrt(5)  # orthogonal to L0
    e2 = torch.linalg.cross(L0, e1)
    cos_a = 1 - u[..., 0] * (1 - math.cos(math.radians(cfg.light_angle)))
    sin_a = torch.sqrt((1 - cos_a ** 2).clamp(min=0))
    phi = 2 * math.pi * u[..., 1]
    return (cos_a[..., None] * L0 + (sin_a * torch.cos(phi))[..., None] * e1
            + (sin_a * torch.sin(phi))[..., None] * e2)


def _relative(q: Tensor, q_next: Tensor, frame: str) -> Tensor:
    """The relative rotation (..., 4), w >= 0, that leads from orientation q to q_next (module docstring)."""
    rel = quat_mul(quat_conj(q), q_next) if frame == "object" else quat_mul(q_next, quat_conj(q))
    return canonical(rel)


class Objects3D(World):
    """Procedural 3-D objects under SO(3) rotations, rendered by a numba rasteriser; see the module docstring."""

    fixed: tuple[str, ...] = FIXED

    def __init__(self, cfg: Objects3DConfig):
        self.cfg = cfg
        self.packed = build_family(cfg.family, cfg.instances, cfg.shape_seed)
        self.class_names = tuple(OBJECT_NAMES[o] for o in FAMILIES[cfg.family])
        self.num_classes = K = len(self.class_names)
        labels = torch.as_tensor(self.packed.labels)  # (M,) class of every instance row
        self.spec = WorldSpec(obs_shape=(2 if cfg.depth else 1, cfg.image_size, cfg.image_size),
                              action_dim=len(_ACTION_NAMES[cfg.action]), action_names=_ACTION_NAMES[cfg.action],
                              num_classes=K, channel_names=("luminance", "depth") if cfg.depth else ("luminance",))
        # instance rows (n,) of each pool, disjoint, covering all instances; and their classes
        self.train_index, self.validation_index, self.probe_index = split_pools(
            labels, K, cfg.probe_fraction, cfg.validation_fraction, cfg.split_seed)
        self.train_labels = labels[self.train_index]
        self.validation_labels = labels[self.validation_index]
        self.probe_labels = labels[self.probe_index]

    # ---- views and actions
    def render(self, rows: Tensor, q: Tensor, light: Tensor, cfg: Optional[Objects3DConfig] = None) -> Tensor:
        """Instance rows (N,), orientations q (N, 4) and light directions (N, 3) -> views (N, C, S, S) float32."""
        cfg = cfg or self.cfg
        rot = quat_to_matrix(q.detach().cpu().double()).numpy()  # (N, 3, 3)
        out = render(self.packed, rows.detach().cpu().numpy(), rot, light.detach().cpu().double().numpy(),
                     cfg.ambient, cfg.image_size, cfg.depth)
        return torch.from_numpy(out)

    def encode(self, q: Tensor, q_next: Tensor) -> Tensor:
        """The action (..., A) float32 leading from orientation q (..., 4) to q_next (..., 4)."""
        rel = _relative(q.double(), q_next.double(), self.cfg.action_frame)
        return (rel if self.cfg.action == "quaternion" else rotvec_from_quat(rel)).float()

    def compose(self, q: Tensor, action: Tensor) -> Tensor:
        """The orientation (..., 4), w >= 0, that the action (..., A) leads to from orientation q (..., 4)."""
        a = action.double()
        rel = a / a.norm(dim=-1, keepdim=True) if self.cfg.action == "quaternion" else quat_from_rotvec(a)
        q = q.double()
        return canonical(quat_mul(q, rel) if self.cfg.action_frame == "object" else quat_mul(rel, q))

    # ---- pools and checks
    def _resolve(self, overrides: Optional[dict[str, Any]], where: str = "world") -> Objects3DConfig:
        return resolve(self.cfg, overrides, self.fixed, where)

    def _pool(self, pool: str) -> tuple[Tensor, Tensor]:
        """(instance rows (n,), classes (n,)) of a probe-set pool."""
        if pool == "probe":
            return self.probe_index, self.probe_labels
        if pool == "validation":
            return self.validation_index, self.validation_labels
        raise ConfigError(f"probe_set: pool must be one of {', '.join(POOLS)}, got {pool!r}")

    def check_phase(self, classes: Optional[list[int]], overrides: Optional[dict[str, Any]] = None, *,
                    pool: str = "probe", where: Optional[str] = None) -> list[int]:
        """Check that a phase (``classes``, world ``overrides``) gives a non-empty stream and probe set from
        ``pool``, drawing nothing; returns the sorted classes. One-line ConfigErrors whose field path starts
        with ``where`` (e.g. ``protocol.phases[1].classes: ...``)."""
        pre = f"{where}." if where else ""
        self._resolve(overrides, f"{pre}world")
        cls = check_classes(classes, self.num_classes, f"{pre}classes")
        for name, labels in (("train", self.train_labels), (pool, self._pool(pool)[1])):
            empty = missing_class(labels, cls)
            if empty is not None:
                raise ConfigError(f"{pre}classes: the world's {name} pool has no instance of class {empty} "
                                  f"({self.class_names[empty]}; world.instances = {self.cfg.instances}); raise "
                                  f"world.instances")
        return cls

    # ---- streams
    def stream(self, batch: int, episode_length: int, classes: Optional[list[int]] = None,
               overrides: Optional[dict[str, Any]] = None) -> Stream:
        if batch < 1 or episode_length < 1:
            raise ConfigError(f"stream: batch and episode_length must be >= 1, got {batch}, {episode_length}")
        cfg = self._resolve(overrides)
        cls = self.check_phase(classes, overrides)
        pick = class_picker(self.train_labels, cls)  # uniforms (B, 2) -> train-pool positions (B,)
        B, L, max_angle = batch, episode_length, math.radians(cfg.rotation)
        per_view = cfg.lighting == "view"

        def draw(u: Tensor) -> tuple[Tensor, Tensor]:  # u (B, 5) -> orientation (B, 4), light (B, 3)
            return draw_rotation(u[:, :3], max_angle), _lights(u[:, 3:], cfg)

        def init(generator: torch.Generator) -> dict[str, Tensor]:
            u = torch.rand(B, 2 * _U + 2, generator=generator, dtype=torch.float64)
            cur, light = draw(u[:, :_U])
            nxt, lnext = draw(u[:, _U:2 * _U])
            return {"rng": rng_state(generator), "item": pick(u[:, 2 * _U:]), "pos": torch.arange(B) % L,
                    "cur": cur, "light": light, "nxt": nxt, "light_next": lnext if per_view else light,
                    "episode": torch.zeros(B, dtype=torch.long), "first": torch.ones(B, dtype=torch.bool)}

        def step(state: dict[str, Tensor]) -> tuple[dict[str, Tensor], Step]:
            g = generator_from_state(state["rng"].cpu())
            item, pos, cur, nxt, ep = (state[k].cpu() for k in ("item", "pos", "cur", "nxt", "episode"))
            light = state["light"].cpu()
            rows = self.train_index[item]  # (B,) instance rows
            obs = self.render(rows, cur, light, cfg)  # (B, C, S, S)
            last = pos == L - 1  # (B,)
            action = torch.where(last[:, None], 0.0, self.encode(cur, nxt))  # (B, A)
            out = Step(obs=obs, action=action, start=(pos == 0) | state["first"].cpu(),
                       labels={"class": self.train_labels[item], "image": rows, "orientation": cur.float(),
                               "light": light.float(), "episode": ep})
            u = torch.rand(B, 2 * _U + 2, generator=g, dtype=torch.float64)  # fresh view, next view, fresh item
            fresh, fresh_light = draw(u[:, :_U])
            after, after_light = draw(u[:, _U:2 * _U])
            new_light = torch.where(last[:, None], fresh_light, state["light_next"].cpu())
            new = {"rng": rng_state(g), "item": torch.where(last, pick(u[:, 2 * _U:]), item),
                   "pos": torch.where(last, 0, pos + 1), "cur": torch.where(last[:, None], fresh, nxt),
                   "light": new_light, "nxt": after, "light_next": after_light if per_view else new_light,
                   "episode": ep + last.long(), "first": torch.zeros_like(state["first"].cpu())}
            return new, out

        return Stream(init=init, step=step)

    # ---- probe sets
    def probe_set(self, classes: Optional[list[int]], n: int, views: int, generator: torch.Generator,
                  overrides: Optional[dict[str, Any]] = None, *, pool: str = "probe",
                  where: Optional[str] = None) -> ProbeSet:
        """n episodes of ``views`` views of instances from ``pool`` ("probe" or "validation").

        Labels: ``class`` (n,), ``image`` (n,) instance rows, ``orientation`` (n, V, 4), ``light`` (n, V, 3).
        """
        if n < 1 or views < 1:
            raise ConfigError(f"probe_set: n and views must be >= 1, got {n}, {views}")
        cls = self.check_phase(classes, overrides, pool=pool, where=where)
        cfg = self._resolve(overrides)
        rows, labels = self._pool(pool)
        item = balanced_items(labels, cls, n, generator)  # (n,) pool positions
        u = torch.rand(n, views, _U, generator=generator, dtype=torch.float64)
        q = draw_rotation(u[..., :3], math.radians(cfg.rotation))  # (n, V, 4)
        light = _lights(u[..., 3:], cfg)  # (n, V, 3)
        if cfg.lighting == "episode":
            light = light[:, :1].expand(n, views, 3)
        obs = self.render(rows[item].repeat_interleave(views), q.reshape(n * views, 4), light.reshape(n * views, 3),
                          cfg)
        A = self.spec.action_dim
        actions = torch.zeros(n, views, A)  # (n, V, A); the last view's action stays zero
        actions[:, :-1] = self.encode(q[:, :-1], q[:, 1:])
        return ProbeSet(obs=obs.reshape(n, views, *obs.shape[1:]), actions=actions,
                        labels={"class": labels[item], "image": rows[item], "orientation": q.float(),
                                "light": light.float().contiguous()})


@register_world("objects3d", Objects3DConfig)
def objects3d(cfg: Objects3DConfig) -> Objects3D:
    """24 procedural 3-D objects under SO(3) rotations, numba-rendered; actions = relative rotations (3DIEBench).

    One world serves all three pools: streams draw from the train pool, probe sets
    (``probe_set(..., pool=...)``) from the probe or the validation pool.
    """
    return Objects3D(cfg)
