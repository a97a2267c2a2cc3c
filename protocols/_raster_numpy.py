"""The ``objects3d`` rasteriser vectorised with NumPy: the same camera, coverage test, z-buffer and
shading as ``protocols/_raster.py`` (read its docstring), without numba.

Per view, every front-facing triangle's three edge functions are evaluated at every pixel centre at
once as (F, S*S) arrays; the z-buffer is an ``argmax`` of the interpolated z over triangles (ties:
the first triangle, as in the compiled loop). It makes the same pixels from the same arithmetic
(float64, the same expressions), so the two agree to rounding; it is the baseline that
``benchmarks/bench_render.py`` measures the compiled renderer against, and a cross-check in the tests.
"""
from __future__ import annotations

import numpy as np

__all__ = ["render_numpy"]


def render_numpy(packed, mesh: np.ndarray, rot: np.ndarray, light: np.ndarray, ambient: float, size: int,
                 depth: bool = False) -> np.ndarray:
    """N views -> images (N, 1 + depth, S, S) float32; arguments as ``_raster.render``."""
    S = size
    N = len(mesh)
    out = np.zeros((N, 2 if depth else 1, S, S), np.float32)
    centres = np.arange(S) + 0.5
    qx = np.tile(centres, S)[None]  # (1, P) column centres, P = S*S in row-major order
    qy = np.repeat(centres, S)[None]  # (1, P) row centres
    for n in range(N):
        m, R = int(mesh[n]), np.asarray(rot[n], np.float64)
        v = packed.verts[packed.vstart[m]:packed.vstart[m + 1]]  # (V, 3)
        f = packed.faces[packed.fstart[m]:packed.fstart[m + 1]]  # (F, 3)
        p = v @ R.T  # (V, 3) camera coordinates
        sx, sy, sz = (p[:, 0] + 1.0) * (0.5 * S), (1.0 - p[:, 1]) * (0.5 * S), p[:, 2]
        nrm = packed.normals[packed.fstart[m]:packed.fstart[m + 1]] @ R.T  # (F, 3) rotated normals
        x0, x1, x2 = (sx[f[:, k]][:, None] for k in range(3))  # (F, 1) each
        y0, y1, y2 = (sy[f[:, k]][:, None] for k in range(3))
        area = (x0 - x2) * (y1 - y2) - (x1 - x2) * (y0 - y2)  # (F, 1)
        keep = (nrm[:, 2] > 0.0) & (area[:, 0] != 0.0)  # front-facing, not degenerate
        if not keep.any():
            continue
        x0, x1, x2, y0, y1, y2, area = (a[keep] for a in (x0, x1, x2, y0, y1, y2, area))
        z0, z1, z2 = (sz[f[keep, k]][:, None] for k in range(3))
        inv = 1.0 / area
        w0 = ((x1 - qx) * (y2 - qy) - (x2 - qx) * (y1 - qy)) * inv  # (F', P)
        w1 = ((x2 - qx) * (y0 - qy) - (x0 - qx) * (y2 - qy)) * inv
        w2 = ((x0 - qx) * (y1 - qy) - (x1 - qx) * (y0 - qy)) * inv
        inside = (w0 >= 0.0) & (w1 >= 0.0) & (w2 >= 0.0)
        z = np.where(inside, w0 * z0 + w1 * z1 + w2 * z2, -np.inf)  # (F', P)
        best = z.argmax(0)  # (P,) nearest triangle, the first on ties
        zbest = z[best, np.arange(S * S)]
        hit = zbest > -np.inf
        nk = nrm[keep]
        shade = packed.albedo[packed.fstart[m]:packed.fstart[m + 1]][keep] * (
            ambient + (1.0 - ambient) * np.maximum(0.0, nk[:, 0] * light[n, 0] + nk[:, 1] * light[n, 1]
                                                   + nk[:, 2] * light[n, 2]))  # (F',)
        out[n, 0] = np.where(hit, shade[best], 0.0).reshape(S, S)
        if depth:
            out[n, 1] = np.where(hit, 0.5 * (1.0 + zbest), 0.0).reshape(S, S)
    return out
