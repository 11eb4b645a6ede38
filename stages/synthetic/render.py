"""A vectorised numpy z-buffer rasterizer with smooth (Lambert + ambient + specular) shading.

Pixel coordinates are the project's continuous ones: the raster spans [0, W] x [0, H] and
raster pixel (i, j) is sampled at its centre (i + 0.5, j + 0.5), so projected vertices drawn
by stages/viz/draw.py sit exactly on the rendered surface.

Each triangle's candidate pixels are the ones in its bounding box; barycentric coordinates
come from per-triangle affine edge functions, each evaluated only on the candidates the previous
ones kept (about half of a box is outside its triangle); the nearest surface wins through a
`np.maximum.at` buffer of inverse depth; attributes are interpolated perspective-correctly.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import cv2
import numpy as np


@dataclass(frozen=True)
class Raster:
    """Visible samples of a rasterization: pix (P,) flat pixel index (row-major), tri (P,)
    triangle index, bary (P, 3) perspective-correct barycentric weights; shape (H, W)."""

    pix: np.ndarray
    tri: np.ndarray
    bary: np.ndarray
    shape: tuple[int, int]

    def interpolate(self, values: np.ndarray, faces: np.ndarray) -> np.ndarray:
        """Per-vertex values (N, C) -> per-sample values (P, C)."""
        corner = faces[self.tri]                             # (P, 3)
        out = self.bary[:, :1] * values[corner[:, 0]]
        out += self.bary[:, 1:2] * values[corner[:, 1]]
        out += self.bary[:, 2:3] * values[corner[:, 2]]
        return out


def rasterize(uv: np.ndarray, depth: np.ndarray, faces: np.ndarray, width: int, height: int,
              cull_back: bool = True) -> Raster:
    """Z-buffer rasterization.

    uv: (N, 2) vertex pixel positions (continuous coordinates, v down); depth: (N,) positive
    distances along the viewing axis; faces: (F, 3), counter-clockwise when seen from the front
    in a y-up frame (clockwise in v-down pixels). Back faces are dropped when cull_back.
    """
    tri_uv = uv[faces]                                                        # (F, 3, 2)
    a, b, c = tri_uv[:, 0], tri_uv[:, 1], tri_uv[:, 2]
    area = (b[:, 0] - a[:, 0]) * (c[:, 1] - a[:, 1]) - (b[:, 1] - a[:, 1]) * (c[:, 0] - a[:, 0])
    keep = (area < -1e-9) if cull_back else (np.abs(area) > 1e-9)
    keep &= (depth[faces] > 0).all(axis=1)
    lo = np.ceil(tri_uv.min(axis=1) - 0.5).astype(np.int64)
    hi = np.floor(tri_uv.max(axis=1) - 0.5).astype(np.int64)
    lo = np.maximum(lo, 0)
    hi = np.minimum(hi, [width - 1, height - 1])
    span = hi - lo + 1
    keep &= (span > 0).all(axis=1)
    ids = np.flatnonzero(keep)
    if ids.size == 0:
        return _empty(height, width)
    tri, px, py = _box_pixels(ids, lo, span)
    tri, px, py, lam = _inside_triangles(tri, px, py, _edge_functions(tri_uv, area))
    inv_vertex_depth = (1.0 / depth).astype(np.float32)
    inv_z = [inv_vertex_depth[faces[tri, k]] for k in range(3)]
    inv_depth = lam[0] * inv_z[0] + lam[1] * inv_z[1] + lam[2] * inv_z[2]
    pix = py * width + px
    best = np.full(width * height, -np.inf, dtype=np.float32)
    np.maximum.at(best, pix, inv_depth)
    win = np.flatnonzero(inv_depth >= best[pix])
    owner = np.full(width * height, -1, dtype=np.int64)
    owner[pix[win]] = win                       # one winner per pixel where depths tie exactly
    win = owner[owner >= 0]
    bary = np.stack([lam[k][win] * inv_z[k][win] / inv_depth[win] for k in range(3)], axis=1)
    return Raster(pix=pix[win], tri=tri[win], bary=bary, shape=(height, width))


def _box_pixels(ids: np.ndarray, lo: np.ndarray, span: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Every pixel of the bounding boxes of triangles `ids`, boxes lo (F, 2) px of span (F, 2)
    pixels, row by row -> triangle index, pixel x and pixel y, each (P,)."""
    counts = span[ids, 0] * span[ids, 1]
    tri = np.repeat(ids, counts)
    local = np.arange(counts.sum()) - np.repeat(np.cumsum(counts) - counts, counts)
    dy, dx = np.divmod(local, span[tri, 0])
    return tri, lo[tri, 0] + dx, lo[tri, 1] + dy


def _inside_triangles(tri: np.ndarray, px: np.ndarray, py: np.ndarray, edges: np.ndarray
                      ) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[np.ndarray]]:
    """Keep the candidate pixels (tri, px, py, each (P,)) whose centre is inside its triangle:
    all three barycentric functions edges (3, 3, F) [a/b/c, k, triangle] at least -1e-6. Each
    function is evaluated only where the previous ones passed. Returns the kept tri, px, py and
    their barycentric coordinates [lam_0, lam_1, lam_2], each (P',) float32."""
    x = px.astype(np.float32) + np.float32(0.5)
    y = py.astype(np.float32) + np.float32(0.5)
    lam: list[np.ndarray] = []
    for k in range(3):
        value = edges[0, k].take(tri) * x + edges[1, k].take(tri) * y + edges[2, k].take(tri)
        keep = np.flatnonzero(value >= -1e-6)
        tri, px, py, x, y = tri[keep], px[keep], py[keep], x[keep], y[keep]
        lam = [previous[keep] for previous in lam] + [value[keep]]
    return tri, px, py, lam


def _edge_functions(tri_uv: np.ndarray, area: np.ndarray) -> np.ndarray:
    """Per-triangle affine barycentric functions lam_k(x, y) = a_k x + b_k y + c_k of triangles
    (F, 3, 2) of signed doubled area (F,) -> (3, 3, F) float32: [a/b/c, k, triangle]."""
    p = tri_uv[:, [1, 2, 0]]
    q = tri_uv[:, [2, 0, 1]]
    inv = 1.0 / np.where(area == 0, 1.0, area)[:, None]
    a = (p[..., 1] - q[..., 1]) * inv
    b = (q[..., 0] - p[..., 0]) * inv
    c = (p[..., 0] * q[..., 1] - p[..., 1] * q[..., 0]) * inv
    return np.ascontiguousarray(np.stack([a, b, c]).transpose(0, 2, 1), dtype=np.float32)


def _empty(height: int, width: int) -> Raster:
    return Raster(np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros((0, 3)), (height, width))


def vertex_normals(verts: np.ndarray, faces: np.ndarray) -> np.ndarray:
    """Area-weighted unit vertex normals (N, 3) of a mesh (counter-clockwise = outward)."""
    v = verts[faces]
    face_n = np.cross(v[:, 1] - v[:, 0], v[:, 2] - v[:, 0])
    normals = np.zeros_like(verts)
    for k in range(3):
        np.add.at(normals, faces[:, k], face_n)
    return normals / np.maximum(np.linalg.norm(normals, axis=1, keepdims=True), 1e-12)


@dataclass(frozen=True)
class Light:
    """Lighting in the camera frame: direction (3,) toward the light (unit), ambient and diffuse
    strengths, specular strength and exponent, and an RGB tint (3,)."""

    direction: np.ndarray
    ambient: float
    diffuse: float
    specular: float
    shininess: float
    tint: np.ndarray


def shade(normals: np.ndarray, view: np.ndarray, albedo: np.ndarray, light: Light) -> np.ndarray:
    """Per-sample colour (P, 3) in [0, 1] from unit normals (P, 3), unit view vectors toward the
    camera (P, 3), albedo (P, 3) and the light."""
    n = normals / np.maximum(_row_norms(normals), 1e-12)
    n_dot_l = np.clip(n @ light.direction, 0.0, None)
    half = light.direction + view
    half /= np.maximum(_row_norms(half), 1e-12)
    spec = light.specular * np.clip(_row_dots(n, half), 0.0, None) ** light.shininess * (n_dot_l > 0)
    color = albedo * (light.ambient + light.diffuse * n_dot_l)[:, None] + spec[:, None]
    return np.clip(color * light.tint, 0.0, 1.0)


def _row_dots(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Row-wise dot products (P,) of (P, 3) arrays, summed in index order as ndarray.sum(1)
    sums three terms (the same bits)."""
    return x[:, 0] * y[:, 0] + x[:, 1] * y[:, 1] + x[:, 2] * y[:, 2]


def _row_norms(x: np.ndarray) -> np.ndarray:
    """Euclidean norms (P, 1) of the rows of x (P, 3): np.linalg.norm(x, axis=1, keepdims=True),
    bit for bit, without its (P, 3) temporaries."""
    return np.sqrt(_row_dots(x, x))[:, None]


def render_region(verts_cam: np.ndarray, uv: np.ndarray, faces: np.ndarray, attributes: np.ndarray,
                  albedo_fn: Callable[[np.ndarray], np.ndarray], light: Light, box: tuple[int, int, int, int],
                  supersample: int) -> tuple[np.ndarray, np.ndarray]:
    """Render a mesh into the pixel box (x0, y0, x1, y1) of the full image.

    verts_cam: (N, 3) OpenGL camera points (metres); uv: (N, 2) their full-image pixels;
    attributes: (N, C) per-vertex values handed (interpolated, (P, C)) to albedo_fn -> (P, 3).
    Returns colour (h, w, 3) float in [0, 1] and coverage alpha (h, w), averaged over
    supersample x supersample samples per pixel.
    """
    x0, y0, x1, y1 = box
    w, h = (x1 - x0) * supersample, (y1 - y0) * supersample
    local_uv = (uv - [x0, y0]) * supersample
    raster = rasterize(local_uv, -verts_cam[:, 2], faces, w, h)
    per_vertex = np.column_stack([vertex_normals(verts_cam, faces), verts_cam, attributes]).astype(np.float32)
    values = raster.interpolate(per_vertex, faces)
    normals, points = values[:, :3], values[:, 3:6]
    view = -points / _row_norms(points)
    color = shade(normals, view, albedo_fn(values[:, 6:]), light)
    canvas = np.zeros((h * w, 4), dtype=np.float32)
    canvas[raster.pix, :3] = color
    canvas[raster.pix, 3] = 1.0
    canvas = canvas.reshape(h, w, 4)
    if supersample > 1:
        canvas = cv2.resize(canvas, (x1 - x0, y1 - y0), interpolation=cv2.INTER_AREA)
    alpha = canvas[..., 3]
    rgb = canvas[..., :3] / np.maximum(alpha, 1e-6)[..., None]
    return rgb, alpha
