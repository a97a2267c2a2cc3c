"""The fixed, seeded family of procedural 3-D objects the ``objects3d`` world shows.

Objects (classes)
    24 objects built from the primitives of ``protocols/_meshes.py``, in two families:

    solids      0 cube, 1 brick, 2 sphere (beach-ball shading), 3 egg, 4 cylinder, 5 cone, 6 torus,
                7 pyramid, 8 tetrahedron, 9 octahedron, 10 hex prism, 11 wedge (triangular prism)
    composites  12 table, 13 chair, 14 mug, 15 dumbbell, 16 snowman, 17 arrow, 18 house, 19 rocket,
                20 hammer, 21 mushroom, 22 lamp, 23 jack (three crossed bars)

    ``all`` is both (classes 0..23); ``solids`` and ``composites`` are the 12 of one family, renumbered
    0..11 in the order above. Shading varies by object: one albedo for the whole object, one per part,
    alternating albedo per face ring (sphere, cylinder, torus) or per face of a polyhedron.

Instances
    Every object has ``instances`` seeded variants, so probe and train pools can hold different
    instances of every class (as images of a digit). Instance k of an object is built with the numpy
    generator ``default_rng([seed, class id in "all", k])``: each part's proportions are multiplied by
    factors U[0.8, 1.25] and each albedo by U[0.8, 1.15] (clipped to [0.15, 1]). The built mesh is
    centred on its bounding-box centre and scaled so its farthest vertex lies at radius 0.9: every
    rotation of it fits in the view. The canonical orientation is the object standing upright
    (y up), facing the viewer (+z); an instance's row is ``class * instances + k``.
"""
from __future__ import annotations

import functools
import math
from typing import Callable, NamedTuple

import numpy as np

from colsim.protocols._meshes import (
    Mesh, box, ellipsoid, face_normals, frustum, merge, normalise, paint, place, rot_x, rot_y, rot_z, tetrahedron,
    torus,
)

__all__ = ["FAMILIES", "OBJECT_NAMES", "Packed", "build_family", "object_mesh", "pack"]

Builder = Callable[[np.random.Generator], Mesh]


def _j(rng: np.random.Generator, *base: float) -> "float | tuple[float, ...]":
    """Base proportions times independent U[0.8, 1.25] factors."""
    out = tuple(b * rng.uniform(0.8, 1.25) for b in base)
    return out[0] if len(out) == 1 else out


def _a(rng: np.random.Generator, base: float) -> float:
    """An albedo near ``base``."""
    return float(np.clip(base * rng.uniform(0.8, 1.15), 0.15, 1.0))


def _rings(m: Mesh, per_ring: int, a: float, b: float) -> Mesh:
    """Alternate albedo a / b every ``per_ring`` consecutive triangles (stripes on a surface of revolution)."""
    k = (np.arange(len(m.faces)) // per_ring) % 2
    return paint(m, np.where(k == 0, a, b))


# ---- solids -----------------------------------------------------------------------------------

def cube(rng):
    m = box(*_j(rng, 1.0, 1.0, 1.0))
    return paint(m, np.repeat([_a(rng, v) for v in (0.95, 0.3, 0.8, 0.45, 0.65, 0.55)], 2))  # six face tones


def brick(rng):
    return paint(box(*_j(rng, 1.6, 0.6, 0.8)), _a(rng, 0.7))


def sphere(rng):
    r = _j(rng, 1.0)
    m = ellipsoid(r, r, r, seg=12, rings=8)
    # beach ball: longitude j of every band alternates, so rotation shows
    seg = 12
    lon = np.concatenate([np.arange(seg), np.repeat(np.arange(seg), 2).tolist() * 6, np.arange(seg)])
    return paint(m, np.where((lon // 2) % 2 == 0, _a(rng, 0.95), _a(rng, 0.35)))


def egg(rng):
    return paint(ellipsoid(*_j(rng, 0.7, 1.0, 0.7)), _a(rng, 0.8))


def cylinder(rng):
    r, h = _j(rng, 0.6, 1.6)
    return _rings(frustum(r, r, h, seg=12), 6, _a(rng, 0.85), _a(rng, 0.45))


def cone(rng):
    r, h = _j(rng, 0.7, 1.5)
    return paint(frustum(r, 0.0, h, seg=14), _a(rng, 0.75))


def ring(rng):
    R, r = _j(rng, 0.8, 0.28)
    return _rings(torus(R, r, seg=16, tube=8), 16, _a(rng, 0.9), _a(rng, 0.5))


def pyramid(rng):
    r, h = _j(rng, 0.9, 1.2)
    m = place(frustum(r, 0.0, h, seg=4), rot=rot_y(math.pi / 4))
    return paint(m, np.array([_a(rng, 0.5)] * 4 + [_a(rng, 0.9), _a(rng, 0.7)] * 2))


def tetra(rng):
    m = place(tetrahedron(1.0), _j(rng, 1.0, 1.0, 1.0))
    return paint(m, np.array([_a(rng, v) for v in (0.95, 0.7, 0.5, 0.3)]))


def octahedron(rng):
    m = place(ellipsoid(1.0, 1.0, 1.0, seg=4, rings=2), _j(rng, 0.9, 1.2, 0.9))
    return paint(m, np.array([_a(rng, 0.9), _a(rng, 0.5)] * 4))


def hex_prism(rng):
    r, h = _j(rng, 0.7, 1.0)
    return paint(frustum(r, r, h, seg=6), _a(rng, 0.65))


def wedge(rng):
    r, h = _j(rng, 0.7, 1.8)
    return paint(place(frustum(r, r, h, seg=3), rot=rot_z(math.pi / 2)), _a(rng, 0.8))


# ---- composites -------------------------------------------------------------------------------

def table(rng):
    w, d, t, legh = _j(rng, 1.6, 1.0, 0.12, 0.9)
    top, leg = _a(rng, 0.85), _a(rng, 0.45)
    lw = 0.12
    parts = [paint(place(box(w, t, d), at=(0, legh / 2 + t / 2, 0)), top)]
    for sx in (-1, 1):
        for sz in (-1, 1):
            parts.append(paint(place(box(lw, legh, lw), at=(sx * (w / 2 - lw), 0, sz * (d / 2 - lw))), leg))
    return merge(parts)


def chair(rng):
    w, seat_h, back_h = _j(rng, 0.9, 0.8, 0.9)
    a_seat, a_back, a_leg = _a(rng, 0.8), _a(rng, 0.6), _a(rng, 0.4)
    lw = 0.1
    parts = [paint(place(box(w, 0.1, w), at=(0, seat_h / 2, 0)), a_seat),
             paint(place(box(w * 0.96, back_h, 0.08), at=(0, seat_h / 2 + 0.05 + back_h / 2, -w / 2 + 0.06)), a_back)]
    for sx in (-1, 1):
        for sz in (-1, 1):
            parts.append(paint(place(box(lw, seat_h, lw), at=(sx * (w / 2 - lw), 0, sz * (w / 2 - lw))), a_leg))
    return merge(parts)


def mug(rng):
    r, h = _j(rng, 0.55, 1.1)
    body = _rings(frustum(r, r, h, seg=12), 6, _a(rng, 0.85), _a(rng, 0.65))
    handle = place(torus(h * 0.28, 0.07, seg=12, tube=6), rot=rot_x(math.pi / 2), at=(r + h * 0.12, 0, 0))
    return merge([body, paint(handle, _a(rng, 0.5))])


def dumbbell(rng):
    rb, bar = _j(rng, 0.45, 1.4)
    a_b, a_bar = _a(rng, 0.7), _a(rng, 0.95)
    bells = [paint(ellipsoid(rb, rb, rb, seg=10, rings=6), a_b)]
    parts = [place(bells[0], at=(s * bar / 2, 0, 0)) for s in (-1, 1)]
    parts.append(paint(place(frustum(0.1, 0.1, bar, seg=8), rot=rot_z(math.pi / 2)), a_bar))
    return merge(parts)


def snowman(rng):
    r0, r1, r2 = _j(rng, 0.6, 0.45, 0.32)
    a = _a(rng, 0.95)
    y1 = r0 + r1 * 0.8
    y2 = y1 + r1 + r2 * 0.8
    parts = [paint(place(ellipsoid(r, r, r, seg=10, rings=6), at=(0, y, 0)), a)
             for r, y in ((r0, 0.0), (r1, y1), (r2, y2))]
    nose = place(frustum(0.08, 0.0, 0.35, seg=6), rot=rot_x(math.pi / 2), at=(0, y2, r2 + 0.12))
    return merge(parts + [paint(nose, _a(rng, 0.45))])


def arrow(rng):
    L, rs, rh = _j(rng, 1.6, 0.1, 0.3)
    shaft = paint(frustum(rs, rs, L, seg=8), _a(rng, 0.6))
    head = paint(place(frustum(rh, 0.0, rh * 2, seg=10), at=(0, L / 2 + rh, 0)), _a(rng, 0.95))
    return merge([place(p, rot=rot_z(-math.pi / 2)) for p in (shaft, head)])


def house(rng):
    w, h, d, roof = _j(rng, 1.2, 0.9, 1.0, 0.6)
    walls = paint(box(w, h, d), _a(rng, 0.85))
    roof_m = place(_roof(w * 1.1, roof, d * 1.1), at=(0, h / 2, 0))
    return merge([walls, paint(roof_m, _a(rng, 0.4))])


def _roof(w: float, h: float, d: float) -> Mesh:
    """Triangular prism along z: base of width w at y = 0, ridge at height h, depth d."""
    z = d / 2
    v = [(-w / 2, 0, z), (w / 2, 0, z), (0, h, z), (-w / 2, 0, -z), (w / 2, 0, -z), (0, h, -z)]
    f = [(0, 1, 2), (3, 5, 4), (1, 4, 5), (1, 5, 2), (0, 2, 5), (0, 5, 3), (0, 3, 4), (0, 4, 1)]
    return Mesh(np.asarray(v, np.float64), np.asarray(f, np.int64), np.ones(len(f)))


def rocket(rng):
    r, L = _j(rng, 0.3, 1.4)
    body = _rings(frustum(r, r, L, seg=10), 10, _a(rng, 0.9), _a(rng, 0.7))
    nose = place(frustum(r, 0.0, r * 2.2, seg=10), at=(0, L / 2 + r * 1.1, 0))
    parts = [body, paint(nose, _a(rng, 0.45))]
    for k in range(3):
        fin = place(box(0.05, L * 0.35, r * 1.3), at=(0, -L / 2 + L * 0.17, r + r * 0.6))
        parts.append(paint(place(fin, rot=rot_y(2 * math.pi * k / 3)), _a(rng, 0.55)))
    return merge(parts)


def hammer(rng):
    L, hw, hh = _j(rng, 1.6, 0.8, 0.25)
    handle = paint(frustum(0.08, 0.08, L, seg=8), _a(rng, 0.55))
    head = paint(place(box(hw, hh, hh), at=(hw * 0.2, L / 2, 0)), _a(rng, 0.9))
    return merge([handle, head])


def mushroom(rng):
    rs, hs, rc = _j(rng, 0.22, 0.8, 0.75)
    stem = paint(frustum(rs, rs * 0.8, hs, seg=10), _a(rng, 0.9))
    cap = paint(place(ellipsoid(rc, rc * 0.5, rc, seg=12, rings=6), at=(0, hs / 2, 0)), _a(rng, 0.45))
    return merge([stem, cap])


def lamp(rng):
    rb, hp, rs = _j(rng, 0.5, 1.2, 0.5)
    base = paint(place(frustum(rb, rb * 0.8, 0.15, seg=12), at=(0, -hp / 2, 0)), _a(rng, 0.4))
    pole = paint(frustum(0.05, 0.05, hp, seg=6), _a(rng, 0.7))
    shade = paint(place(frustum(rs, rs * 0.5, rs * 0.9, seg=12), at=(0, hp / 2, 0)), _a(rng, 0.95))
    return merge([base, pole, shade])


def jack(rng):
    lx, ly, lz = _j(rng, 1.6, 1.3, 1.0)
    t = 0.18
    # three thicknesses, so no two bars share a face plane (coplanar faces would z-fight)
    return merge([paint(box(lx, t, t), _a(rng, 0.9)), paint(box(0.85 * t, ly, 0.85 * t), _a(rng, 0.6)),
                  paint(box(0.7 * t, 0.7 * t, lz), _a(rng, 0.35))])


SOLIDS: tuple[Builder, ...] = (cube, brick, sphere, egg, cylinder, cone, ring, pyramid, tetra, octahedron,
                               hex_prism, wedge)
COMPOSITES: tuple[Builder, ...] = (table, chair, mug, dumbbell, snowman, arrow, house, rocket, hammer, mushroom,
                                   lamp, jack)
_ALL = SOLIDS + COMPOSITES
OBJECT_NAMES = tuple(b.__name__ for b in _ALL)
FAMILIES: dict[str, tuple[int, ...]] = {  # family -> its objects' ids in "all"
    "all": tuple(range(len(_ALL))),
    "solids": tuple(range(len(SOLIDS))),
    "composites": tuple(range(len(SOLIDS), len(_ALL))),
}


def object_mesh(obj: int, instance: int, seed: int) -> Mesh:
    """Instance ``instance`` of object ``obj`` (an id in family "all"), normalised (module docstring)."""
    rng = np.random.default_rng([seed, obj, instance])
    return normalise(_ALL[obj](rng), 0.9)


class Packed(NamedTuple):
    """Meshes packed for the rasteriser: mesh m owns vertices vstart[m]:vstart[m+1] and faces
    fstart[m]:fstart[m+1]; a face's indices are local to its mesh."""

    verts: np.ndarray  # (sum V, 3) float64
    faces: np.ndarray  # (sum F, 3) int32
    normals: np.ndarray  # (sum F, 3) float64, outward unit normals in object coordinates
    albedo: np.ndarray  # (sum F,) float64
    vstart: np.ndarray  # (M + 1,) int64
    fstart: np.ndarray  # (M + 1,) int64
    labels: np.ndarray  # (M,) int64 class of every mesh (0..K-1 within the family)


def pack(meshes: "list[Mesh]", labels: "list[int] | np.ndarray") -> Packed:
    """Meshes (with their classes) -> one ``Packed`` for the rasteriser; mesh m is row m."""
    vstart = np.cumsum([0] + [len(m.verts) for m in meshes])
    fstart = np.cumsum([0] + [len(m.faces) for m in meshes])
    return Packed(np.ascontiguousarray(np.concatenate([m.verts for m in meshes]), np.float64),
                  np.ascontiguousarray(np.concatenate([m.faces for m in meshes]), np.int32),
                  np.ascontiguousarray(np.concatenate([face_normals(m) for m in meshes]), np.float64),
                  np.ascontiguousarray(np.concatenate([m.albedo for m in meshes]), np.float64),
                  vstart.astype(np.int64), fstart.astype(np.int64), np.asarray(labels, np.int64))


@functools.lru_cache(maxsize=4)
def build_family(family: str, instances: int, seed: int) -> Packed:
    """Every instance of every object of ``family``, row ``class * instances + k``, packed."""
    objs = FAMILIES[family]
    return pack([object_mesh(obj, k, seed) for obj in objs for k in range(instances)],
                np.repeat(np.arange(len(objs)), instances))
