"""Triangle-mesh primitives for procedural 3-D objects (the ``objects3d`` world's building blocks).

A ``Mesh`` is vertices (V, 3) float64 and triangles (F, 3) int64 (vertex indices) plus one albedo per
triangle (F,) in [0, 1]. Every primitive is closed and wound counter-clockwise seen from outside,
so the face normal n = (v1 - v0) x (v2 - v0) / |...| points outwards (the rasteriser culls faces
whose normal points away from the camera and shades with n). Object coordinates: x right, y up,
z towards the viewer; primitives with an axis have it along y, centred on the origin.

    box(sx, sy, sz)                       cuboid of those side lengths
    ellipsoid(rx, ry, rz, seg, rings)     UV-sphere scaled per axis (seg=4, rings=2: an octahedron)
    frustum(r0, r1, h, seg)               truncated cone, radius r0 at y = -h/2, r1 at y = +h/2;
                                          r1 = 0 is a cone / pyramid, r0 = r1 a prism / cylinder
    torus(R, r, seg, tube)                ring about the y axis in the x-z plane
    tetrahedron(s)                        regular, circumradius s

``place(mesh, scale, rot, at)`` scales, rotates (a 3 x 3 matrix) and moves a part; ``merge`` joins
parts into one mesh; ``normalise`` centres a mesh on its bounding-box centre and scales it so its
farthest vertex is at ``radius`` (so every rotation of it stays inside the view's [-1, 1]^2 frame).
"""
from __future__ import annotations

import math
from typing import NamedTuple, Sequence

import numpy as np

__all__ = ["Mesh", "box", "ellipsoid", "frustum", "torus", "tetrahedron", "place", "merge", "normalise",
           "face_normals", "signed_volume", "rot_x", "rot_y", "rot_z", "paint"]


class Mesh(NamedTuple):
    verts: np.ndarray  # (V, 3) float64
    faces: np.ndarray  # (F, 3) int64, counter-clockwise seen from outside
    albedo: np.ndarray  # (F,) float64 in [0, 1]


def _mesh(verts, faces, albedo: float = 1.0) -> Mesh:
    f = np.asarray(faces, np.int64).reshape(-1, 3)
    return Mesh(np.asarray(verts, np.float64).reshape(-1, 3), f, np.full(len(f), float(albedo)))


def paint(m: Mesh, albedo: "float | np.ndarray") -> Mesh:
    """The mesh with albedo ``albedo`` (a scalar, or (F,) per triangle)."""
    return m._replace(albedo=np.broadcast_to(np.asarray(albedo, np.float64), (len(m.faces),)).copy())


def box(sx: float, sy: float, sz: float) -> Mesh:
    x, y, z = sx / 2, sy / 2, sz / 2
    v = [(-x, -y, -z), (x, -y, -z), (x, y, -z), (-x, y, -z), (-x, -y, z), (x, -y, z), (x, y, z), (-x, y, z)]
    quads = [(4, 5, 6, 7), (1, 0, 3, 2), (5, 1, 2, 6), (0, 4, 7, 3), (7, 6, 2, 3), (0, 1, 5, 4)]  # +z -z +x -x +y -y
    return _mesh(v, [t for a, b, c, d in quads for t in ((a, b, c), (a, c, d))])


def ellipsoid(rx: float, ry: float, rz: float, seg: int = 12, rings: int = 8) -> Mesh:
    """UV sphere: poles on the y axis, ``rings`` latitude bands, ``seg`` longitudes."""
    v = [(0.0, ry, 0.0)]
    for i in range(1, rings):
        phi = math.pi * i / rings  # from the north pole
        for j in range(seg):
            th = 2 * math.pi * j / seg
            v.append((rx * math.sin(phi) * math.cos(th), ry * math.cos(phi), -rz * math.sin(phi) * math.sin(th)))
    v.append((0.0, -ry, 0.0))
    south = len(v) - 1

    def ring(i, j):  # vertex of latitude ring i (1..rings-1), longitude j
        return 1 + (i - 1) * seg + j % seg

    f = [(0, ring(1, j), ring(1, j + 1)) for j in range(seg)]
    for i in range(1, rings - 1):
        for j in range(seg):
            a, b, c, d = ring(i, j), ring(i + 1, j), ring(i + 1, j + 1), ring(i, j + 1)
            f += [(a, b, c), (a, c, d)]
    f += [(south, ring(rings - 1, j + 1), ring(rings - 1, j)) for j in range(seg)]
    return _mesh(v, f)


def frustum(r0: float, r1: float, h: float, seg: int = 12) -> Mesh:
    """Radius r0 at y = -h/2, r1 at y = +h/2 (r1 = 0: apex), with caps; ``seg`` sides."""
    ang = [2 * math.pi * j / seg for j in range(seg)]
    bottom = [(r0 * math.cos(a), -h / 2, -r0 * math.sin(a)) for a in ang]
    v = bottom + [(0.0, -h / 2, 0.0)]
    cb = seg  # bottom centre
    f = [(cb, (j + 1) % seg, j) for j in range(seg)]  # bottom cap, seen from below
    if r1 > 0:
        top0 = len(v)
        v += [(r1 * math.cos(a), h / 2, -r1 * math.sin(a)) for a in ang] + [(0.0, h / 2, 0.0)]
        ct = len(v) - 1
        for j in range(seg):
            k = (j + 1) % seg
            f += [(j, k, top0 + k), (j, top0 + k, top0 + j), (ct, top0 + j, top0 + k)]
    else:
        apex = len(v)
        v.append((0.0, h / 2, 0.0))
        f += [(j, (j + 1) % seg, apex) for j in range(seg)]
    return _mesh(v, f)


def torus(R: float, r: float, seg: int = 16, tube: int = 8) -> Mesh:
    v = []
    for j in range(seg):
        th = 2 * math.pi * j / seg
        for i in range(tube):
            ph = 2 * math.pi * i / tube
            rho = R + r * math.cos(ph)
            v.append((rho * math.cos(th), r * math.sin(ph), -rho * math.sin(th)))
    f = []
    for j in range(seg):
        for i in range(tube):
            a, b = j * tube + i, ((j + 1) % seg) * tube + i
            c, d = ((j + 1) % seg) * tube + (i + 1) % tube, j * tube + (i + 1) % tube
            f += [(a, b, c), (a, c, d)]
    return _mesh(v, f)


def tetrahedron(s: float) -> Mesh:
    k = s / math.sqrt(3)
    v = [(k, k, k), (k, -k, -k), (-k, k, -k), (-k, -k, k)]
    return _mesh(v, [(0, 1, 2), (0, 3, 1), (0, 2, 3), (1, 3, 2)])


def rot_x(a: float) -> np.ndarray:
    c, s = math.cos(a), math.sin(a)
    return np.array([[1, 0, 0], [0, c, -s], [0, s, c]])


def rot_y(a: float) -> np.ndarray:
    c, s = math.cos(a), math.sin(a)
    return np.array([[c, 0, s], [0, 1, 0], [-s, 0, c]])


def rot_z(a: float) -> np.ndarray:
    c, s = math.cos(a), math.sin(a)
    return np.array([[c, -s, 0], [s, c, 0], [0, 0, 1]])


def place(m: Mesh, scale: "float | Sequence[float]" = 1.0, rot: "np.ndarray | None" = None,
          at: Sequence[float] = (0.0, 0.0, 0.0)) -> Mesh:
    """v -> rot @ (scale * v) + at. A reflecting scale (an odd number of negative factors) would turn
    the winding inside out and is refused."""
    s = np.broadcast_to(np.asarray(scale, np.float64), (3,))
    if np.prod(s) <= 0:
        raise ValueError(f"place: scale factors must be positive, got {tuple(s)}")
    v = m.verts * s
    if rot is not None:
        v = v @ np.asarray(rot, np.float64).T
    return m._replace(verts=v + np.asarray(at, np.float64))


def merge(parts: Sequence[Mesh]) -> Mesh:
    verts, faces, albedo, n = [], [], [], 0
    for p in parts:
        verts.append(p.verts)
        faces.append(p.faces + n)
        albedo.append(p.albedo)
        n += len(p.verts)
    return Mesh(np.concatenate(verts), np.concatenate(faces), np.concatenate(albedo))


def normalise(m: Mesh, radius: float = 0.9) -> Mesh:
    lo, hi = m.verts.min(0), m.verts.max(0)
    v = m.verts - (lo + hi) / 2
    return m._replace(verts=v * (radius / np.linalg.norm(v, axis=1).max()))


def face_normals(m: Mesh) -> np.ndarray:
    """Outward unit normals (F, 3) from the winding; (0, 0, 0) for a degenerate triangle."""
    a, b, c = (m.verts[m.faces[:, k]] for k in range(3))
    n = np.cross(b - a, c - a)
    norm = np.linalg.norm(n, axis=1, keepdims=True)
    return np.where(norm > 0, n / np.where(norm > 0, norm, 1.0), 0.0)


def signed_volume(m: Mesh) -> float:
    """Volume enclosed by a closed mesh (divergence theorem); > 0 when wound outwards."""
    a, b, c = (m.verts[m.faces[:, k]] for k in range(3))
    return float(np.einsum("ij,ij->i", a, np.cross(b, c)).sum() / 6)
