"""Z-buffer triangle rasteriser for the ``objects3d`` world, compiled with numba (``@njit``).

Camera and image (orthographic; the same for ``protocols/_raster_numpy.py``, the vectorised NumPy
version of this renderer that ``benchmarks/bench_render.py`` and the tests compare against)
    A view of a mesh under the rotation R (object -> camera coordinates) puts the vertex v at
    p = R v. The camera looks along -z from +z (x right, y up, z towards the camera) and shows the
    square [-1, 1]^2 of the x-y plane on S x S pixels: pixel (row r, column c) has its centre at

        x = 2 (c + 1/2) / S - 1,        y = 1 - 2 (r + 1/2) / S,

    i.e. screen coordinates (sx, sy) = ((x + 1) S / 2, (1 - y) S / 2) with pixel centres at
    half-integers. A pixel shows the triangle that covers its centre with the largest z (nearest
    the camera; ties: the first triangle of the mesh). Coverage: the centre's three barycentric
    coordinates, each an edge function divided by the triangle's signed area, are all >= 0; a centre
    on an edge shared by two triangles is covered by at least one of them (the shared edge's
    function is the exact negative in the other), so there are no cracks. Triangles whose rotated
    outward normal has n_z <= 0 face away (or are edge-on) and are skipped (back-face culling: the
    meshes are closed).

Shading (Lambertian, flat per triangle; Lambert 1760)
    channel 0:  I = albedo * (ambient + (1 - ambient) * max(0, n . l))   on the object, 0 elsewhere
    channel 1 (when ``depth``):  (1 + z) / 2 of the visible surface (in (0, 1] for |z| < 1: nearer is
    brighter), 0 elsewhere
    with n the triangle's rotated unit normal and l the unit direction towards the light (camera
    coordinates). Depth is interpolated linearly in screen space, which is exact for an orthographic
    camera.

Meshes arrive packed (``protocols/_object_family.Packed``): mesh m owns vertices vstart[m]:vstart[m+1]
and faces fstart[m]:fstart[m+1], whose vertex indices are local to the mesh.
"""
from __future__ import annotations

import math

import numpy as np
from numba import njit

__all__ = ["render", "render_kernel"]


@njit(cache=True, nogil=True)
def render_kernel(verts, faces, normals, albedo, vstart, fstart, mesh, rot, light, ambient, depth, out):
    """Fill ``out`` (N, C, S, S) float32, zeroed, with the N views (module docstring).

    verts (sum V, 3) f8, faces (sum F, 3) i4, normals (sum F, 3) f8, albedo (sum F,) f8, vstart /
    fstart (M + 1,) i8, mesh (N,) i8, rot (N, 3, 3) f8, light (N, 3) f8, ambient f8, depth bool.
    """
    N, S = mesh.shape[0], out.shape[2]
    half = 0.5 * S
    maxv = 0
    for m in range(vstart.shape[0] - 1):
        maxv = max(maxv, vstart[m + 1] - vstart[m])
    sx = np.empty(maxv)
    sy = np.empty(maxv)
    sz = np.empty(maxv)
    zbuf = np.empty((S, S))
    for n in range(N):
        m = mesh[n]
        R = rot[n]
        zbuf[:, :] = -np.inf
        v0 = vstart[m]
        for i in range(vstart[m + 1] - v0):  # vertices -> screen
            x, y, z = verts[v0 + i, 0], verts[v0 + i, 1], verts[v0 + i, 2]
            px = R[0, 0] * x + R[0, 1] * y + R[0, 2] * z
            py = R[1, 0] * x + R[1, 1] * y + R[1, 2] * z
            sx[i] = (px + 1.0) * half
            sy[i] = (1.0 - py) * half
            sz[i] = R[2, 0] * x + R[2, 1] * y + R[2, 2] * z
        lx, ly, lz = light[n, 0], light[n, 1], light[n, 2]
        for f in range(fstart[m], fstart[m + 1]):
            ax, ay, az = normals[f, 0], normals[f, 1], normals[f, 2]
            nz = R[2, 0] * ax + R[2, 1] * ay + R[2, 2] * az
            if nz <= 0.0:  # faces away or edge-on
                continue
            nx = R[0, 0] * ax + R[0, 1] * ay + R[0, 2] * az
            ny = R[1, 0] * ax + R[1, 1] * ay + R[1, 2] * az
            shade = albedo[f] * (ambient + (1.0 - ambient) * max(0.0, nx * lx + ny * ly + nz * lz))
            a, b, c = faces[f, 0], faces[f, 1], faces[f, 2]
            x0, y0, z0 = sx[a], sy[a], sz[a]
            x1, y1, z1 = sx[b], sy[b], sz[b]
            x2, y2, z2 = sx[c], sy[c], sz[c]
            area = (x0 - x2) * (y1 - y2) - (x1 - x2) * (y0 - y2)  # = E(v0, v1, v2)
            if area == 0.0:
                continue
            inv = 1.0 / area
            c_lo = max(0, int(math.ceil(min(x0, x1, x2) - 0.5)))
            c_hi = min(S - 1, int(math.floor(max(x0, x1, x2) - 0.5)))
            r_lo = max(0, int(math.ceil(min(y0, y1, y2) - 0.5)))
            r_hi = min(S - 1, int(math.floor(max(y0, y1, y2) - 0.5)))
            for r in range(r_lo, r_hi + 1):
                qy = r + 0.5
                for col in range(c_lo, c_hi + 1):
                    qx = col + 0.5
                    # barycentrics: E(a, b, q) = (a_x - q_x)(b_y - q_y) - (b_x - q_x)(a_y - q_y), over the area
                    w0 = ((x1 - qx) * (y2 - qy) - (x2 - qx) * (y1 - qy)) * inv
                    if w0 < 0.0:
                        continue
                    w1 = ((x2 - qx) * (y0 - qy) - (x0 - qx) * (y2 - qy)) * inv
                    if w1 < 0.0:
                        continue
                    w2 = ((x0 - qx) * (y1 - qy) - (x1 - qx) * (y0 - qy)) * inv
                    if w2 < 0.0:
                        continue
                    zq = w0 * z0 + w1 * z1 + w2 * z2
                    if zq > zbuf[r, col]:
                        zbuf[r, col] = zq
                        out[n, 0, r, col] = shade
        if depth:
            for r in range(S):
                for col in range(S):
                    if zbuf[r, col] > -np.inf:
                        out[n, 1, r, col] = 0.5 * (1.0 + zbuf[r, col])


def render(packed, mesh: np.ndarray, rot: np.ndarray, light: np.ndarray, ambient: float, size: int,
           depth: bool = False) -> np.ndarray:
    """N views -> images (N, 1 + depth, S, S) float32 (module docstring).

    packed: ``Packed`` meshes; mesh (N,) which mesh each view shows; rot (N, 3, 3) object -> camera
    rotations; light (N, 3) unit directions towards the light; ambient in [0, 1]; size S.
    """
    mesh = np.ascontiguousarray(mesh, np.int64)
    N = len(mesh)
    out = np.zeros((N, 2 if depth else 1, size, size), np.float32)
    if N:
        render_kernel(packed.verts, packed.faces, packed.normals, packed.albedo, packed.vstart, packed.fstart, mesh,
                      np.ascontiguousarray(rot, np.float64), np.ascontiguousarray(light, np.float64),
                      float(ambient), bool(depth), out)
    return out
