"""The objects3d rasteriser's geometry, against values computed by hand; the numba and NumPy versions
agree; the procedural meshes are closed, outward-wound and fit the view under any rotation.

Camera (protocols/_raster.py): orthographic, [-1, 1]^2 on S x S pixels, pixel (r, c) centred at
x = (c + 1/2) / (S/2) - 1, y = 1 - (r + 1/2) / (S/2); depth channel (1 + z) / 2; shade
albedo * (ambient + (1 - ambient) max(0, n . l)). All cases: S = 32, ambient 0.2, light l = (0, 0, 1)
(towards the camera), so a face seen head-on has shade = albedo.
"""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from colsim.protocols import _meshes as M
from colsim.protocols._object_family import FAMILIES, OBJECT_NAMES, build_family, object_mesh, pack
from colsim.protocols._raster import render
from colsim.protocols._raster_numpy import render_numpy
from colsim.protocols._rotations import draw_rotation, quat_from_rotvec, quat_to_matrix

S, AMBIENT = 32, 0.2
FACE_ALBEDO = (0.9, 0.8, 0.7, 0.6, 0.5, 0.4)  # box faces in M.box's order: +z, -z, +x, -x, +y, -y
RENDERERS = [pytest.param(render, id="numba"), pytest.param(render_numpy, id="numpy")]


def cube() -> M.Mesh:
    """Unit cube (vertices at +-0.5), each face its own albedo."""
    return M.paint(M.box(1.0, 1.0, 1.0), np.repeat(FACE_ALBEDO, 2))


def plane() -> M.Mesh:
    """A one-sided 1 x 1 square in the x-y plane, facing +z, albedo 1 (two triangles)."""
    v = np.array([(-0.5, -0.5, 0.0), (0.5, -0.5, 0.0), (0.5, 0.5, 0.0), (-0.5, 0.5, 0.0)])
    return M.Mesh(v, np.array([(0, 1, 2), (0, 2, 3)]), np.ones(2))


def view(renderer, mesh: M.Mesh, rotvec=(0.0, 0.0, 0.0)) -> tuple[np.ndarray, np.ndarray]:
    """(shade (S, S), depth (S, S)) of ``mesh`` under the rotation ``rotvec`` (radians)."""
    R = quat_to_matrix(quat_from_rotvec(torch.tensor(rotvec, dtype=torch.float64))).numpy()
    out = renderer(pack([mesh], [0]), np.array([0]), R[None], np.array([[0.0, 0.0, 1.0]]), AMBIENT, S, True)
    assert out.shape == (1, 2, S, S) and out.dtype == np.float32
    return out[0, 0], out[0, 1]


def mask(rows, cols) -> np.ndarray:
    m = np.zeros((S, S), bool)
    m[rows[0]:rows[1] + 1, cols[0]:cols[1] + 1] = True
    return m


@pytest.mark.parametrize("renderer", RENDERERS)
def test_cube_face_on_then_quarter_turns(renderer):
    # face-on: x in [-0.5, 0.5] covers the centres (c + 1/2) / 16 - 1 in [-0.5, 0.5] -> c = 8..23 (16 px);
    # rows likewise. The +z face is in front: depth (1 + 0.5) / 2 = 0.75, shade its albedo 0.9.
    square = mask((8, 23), (8, 23))
    shade, depth = view(renderer, cube())
    assert ((shade > 0) == square).all() and ((depth > 0) == square).all()
    np.testing.assert_allclose(shade[square], 0.9, atol=1e-6)
    np.testing.assert_allclose(depth[square], 0.75, atol=1e-6)
    # +90 deg about y: R_y maps the -x normal (-1, 0, 0) to (0, 0, 1): that face (albedo 0.6) is in front
    shade, depth = view(renderer, cube(), (0.0, math.pi / 2, 0.0))
    assert ((shade > 0) == square).all()
    np.testing.assert_allclose(shade[square], 0.6, atol=1e-6)
    np.testing.assert_allclose(depth[square], 0.75, atol=1e-6)
    # +90 deg about x: R_x maps the +y normal (0, 1, 0) to (0, 0, 1): the top (albedo 0.5) is in front
    shade, depth = view(renderer, cube(), (math.pi / 2, 0.0, 0.0))
    assert ((shade > 0) == square).all()
    np.testing.assert_allclose(shade[square], 0.5, atol=1e-6)
    np.testing.assert_allclose(depth[square], 0.75, atol=1e-6)


@pytest.mark.parametrize("renderer", RENDERERS)
def test_cube_turned_45_degrees_about_y(renderer):
    # the silhouette widens to the diagonal: |x| <= sqrt(2)/2 = 0.7071 -> c = 5..26 (x = -0.656 .. 0.656;
    # c = 4 and 27 sit at |x| = 0.719); rows stay 8..23
    shade, depth = view(renderer, cube(), (0.0, math.pi / 4, 0.0))
    assert ((shade > 0) == mask((8, 23), (5, 26))).all()
    # two faces at 45 deg: n . l = cos 45 = 0.70711, so shade = albedo (0.2 + 0.8 * 0.70711) = albedo * 0.76569;
    # R_y(45) turns the +z face (0.9) to the right (x > 0, columns 16..26), the -x face (0.6) to the left
    np.testing.assert_allclose(shade[8:24, 16:27], 0.9 * 0.765685, atol=1e-5)
    np.testing.assert_allclose(shade[8:24, 5:16], 0.6 * 0.765685, atol=1e-5)
    # the front edge is at z = 0.7071 and the faces recede at 45 deg: z = 0.70711 - |x|
    # column 16: x = 0.03125, z = 0.67586, depth 0.83793; column 5: x = -0.65625, z = 0.05086, depth 0.52543
    np.testing.assert_allclose(depth[8:24, 16], 0.837928, atol=1e-5)
    np.testing.assert_allclose(depth[8:24, 5], 0.525428, atol=1e-5)
    np.testing.assert_allclose(depth[8:24, 15], depth[8:24, 16], atol=1e-6)  # symmetric about x = 0


@pytest.mark.parametrize("renderer", RENDERERS)
def test_plane_tilted_edge_on_and_from_behind(renderer):
    shade, depth = view(renderer, plane())
    assert ((shade > 0) == mask((8, 23), (8, 23))).all()
    np.testing.assert_allclose(depth[8:24, 8:24], 0.5, atol=1e-6)  # z = 0
    # +60 deg about x: (x, y, 0) -> (x, y cos 60, y sin 60): height 0.5, y' in [-0.25, 0.25] -> rows 12..19;
    # the top edge tilts towards the camera, z = y' tan 60 = sqrt(3) y'; row 12: y' = 0.21875, z = 0.37889
    shade, depth = view(renderer, plane(), (math.pi / 3, 0.0, 0.0))
    assert ((shade > 0) == mask((12, 19), (8, 23))).all()
    np.testing.assert_allclose(depth[12, 8:24], (1 + math.sqrt(3) * 0.21875) / 2, atol=1e-6)
    np.testing.assert_allclose(depth[19, 8:24], (1 - math.sqrt(3) * 0.21875) / 2, atol=1e-6)
    # normal (0, -sin 60, cos 60): n . l = 0.5, shade = 0.2 + 0.8 * 0.5 = 0.6
    np.testing.assert_allclose(shade[12:20, 8:24], 0.6, atol=1e-6)
    # edge-on (90 deg about x) nothing; from behind (180 deg about y) the one-sided plane is culled
    for rv in ((math.pi / 2, 0.0, 0.0), (0.0, math.pi, 0.0)):
        shade, depth = view(renderer, plane(), rv)
        assert shade.max() == 0 and depth.max() == 0


@pytest.mark.parametrize("renderer", RENDERERS)
def test_nearer_surface_wins_whatever_the_order(renderer):
    # two parallel squares, the smaller one in front (z = 0.3, albedo 0.5) of the larger (z = 0, albedo 1)
    back = plane()
    front = M.paint(M.place(plane(), scale=(0.5, 0.5, 1.0), at=(0.0, 0.0, 0.3)), 0.5)
    for parts in ((back, front), (front, back)):
        shade, depth = view(renderer, M.merge(parts))
        np.testing.assert_allclose(shade[12:20, 12:20], 0.5, atol=1e-6)  # |x| <= 0.25 -> c = 12..19
        np.testing.assert_allclose(depth[12:20, 12:20], 0.65, atol=1e-6)
        assert shade[8, 8] == pytest.approx(1.0) and depth[8, 8] == pytest.approx(0.5)


def test_numba_and_numpy_renderers_agree():
    """The same arithmetic: identical pixels on every object under random rotations and lights."""
    p = build_family("all", 2, 0)
    g = torch.Generator().manual_seed(0)
    n = 96
    R = quat_to_matrix(draw_rotation(torch.rand(n, 3, generator=g, dtype=torch.float64), math.pi)).numpy()
    light = torch.nn.functional.normalize(torch.randn(n, 3, generator=g, dtype=torch.float64), dim=1).numpy()
    mesh = np.arange(n) % len(p.labels)
    a = render(p, mesh, R, light, 0.3, 32, True)
    b = render_numpy(p, mesh, R, light, 0.3, 32, True)
    assert (np.abs(a - b) > 1e-6).mean() < 1e-3, np.abs(a - b).max()  # measured: none differ
    assert (a[:, 0] > 0).mean() > 0.1


def test_family_meshes_are_closed_outward_and_fit_the_view():
    assert len(FAMILIES["all"]) >= 20 and len(set(OBJECT_NAMES)) == len(OBJECT_NAMES)
    assert FAMILIES["all"] == FAMILIES["solids"] + FAMILIES["composites"]
    for obj in FAMILIES["all"]:
        m = object_mesh(obj, 0, 0)
        assert M.signed_volume(m) > 0, OBJECT_NAMES[obj]  # wound outwards
        # closed: every directed edge (a, b) appears once and its reverse (b, a) once
        e = np.concatenate([m.faces[:, [0, 1]], m.faces[:, [1, 2]], m.faces[:, [2, 0]]])
        fwd = {tuple(x) for x in e}
        assert len(fwd) == len(e) and all((b, a) in fwd for a, b in fwd), OBJECT_NAMES[obj]
        assert np.linalg.norm(m.verts, axis=1).max() == pytest.approx(0.9)
        assert 0.15 <= m.albedo.min() and m.albedo.max() <= 1
    # convex primitives: every face normal points away from the centre
    for prim in (M.box(1, 2, 3), M.ellipsoid(1, 0.5, 1), M.frustum(1, 0.4, 2), M.frustum(1, 0, 1), M.tetrahedron(1)):
        c = np.einsum("fkd->fd", prim.verts[prim.faces]) / 3
        assert (np.einsum("fd,fd->f", M.face_normals(prim), c - prim.verts.mean(0)) > 0).all()
    # radius 0.9 < 1 - 1/32: under any rotation the outermost ring of pixels stays empty
    p = build_family("all", 2, 0)
    g = torch.Generator().manual_seed(1)
    n = 4 * len(p.labels)
    R = quat_to_matrix(draw_rotation(torch.rand(n, 3, generator=g, dtype=torch.float64), math.pi)).numpy()
    out = render(p, np.arange(n) % len(p.labels), R, np.tile([0.0, 0.0, 1.0], (n, 1)), AMBIENT, S)
    ring = out[:, 0].copy()
    ring[:, 1:-1, 1:-1] = 0
    assert ring.max() == 0 and (out[:, 0].reshape(n, -1) > 0).any(1).all()


def test_instances_are_seeded_variants():
    a, b, c = object_mesh(12, 0, 0), object_mesh(12, 0, 0), object_mesh(12, 1, 0)
    assert np.array_equal(a.verts, b.verts) and np.array_equal(a.albedo, b.albedo)
    assert not np.allclose(a.verts, c.verts) and len(a.faces) == len(c.faces)
    assert not np.allclose(a.verts, object_mesh(12, 0, 1).verts)  # another shape_seed
