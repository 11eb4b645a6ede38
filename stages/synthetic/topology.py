"""The procedural face topology: a left-right symmetric triangle mesh with eye and mouth holes.

Everything is laid out on a flat 2D chart (p, q) in millimetres: p runs to the face's left
(+x), q up, the origin is near the bridge of the nose. The chart is the face "unrolled"; the
3D template (stages/synthetic/model.py) wraps it around a head shape. The mesh is built on the half
p >= 0 (midline points on p = 0 plus points with p > 0), triangulated there, and mirrored, so
the topology is symmetric by construction. Landmarks carry the iBUG-68 meaning; the subject's
right (iBUG 0, 17, 36, 48, ...) is at p < 0.

In the construction chart the lips are parted by `MOUTH_GAP_BUILD` so that the Delaunay
triangulation cannot bridge the mouth slit; `close_mouth` then moves the lips to the neutral
gap of `MOUTH_GAP_NEUTRAL` before the 3D lift.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np
from scipy.spatial import Delaunay

N_VERTS = 1220
RIM_CENTRE_Q, RIM_HALF_WIDTH, RIM_HALF_HEIGHT = -10.0, 92.0, 91.0
RIM_SPACING = 6.2
MIDLINE_SPACING = 5.0

EYE_OUTER = np.array([49.5, 11.5])      # face's left eye (p > 0); the right eye is its mirror
EYE_INNER = np.array([17.5, 9.0])
EYE_UPPER, EYE_LOWER = 5.5, 4.5         # lid heights above / below the corner line (mm)
EYE_STEPS = 9                           # lid samples: corners at t = 0, 1, landmarks at 1/3, 2/3

MOUTH_Q = -52.0
MOUTH_INNER_HALF_WIDTH = 22.0
MOUTH_GAP_BUILD, MOUTH_GAP_NEUTRAL = 6.0, 0.8
MOUTH_INNER_P = np.array([0.0, 3.0, 6.0, 9.0, 12.0, 15.0, 18.0, 20.5])

# Landmarks on the face's left half (p >= 0) in the construction chart: iBUG index -> (p, q).
LEFT_LANDMARKS = {
    **{16 - k: (round(74.0 * np.cos(np.pi * k / 16), 6), round(-96.0 * np.sin(np.pi * k / 16), 6)) for k in range(9)},
    22: (16.0, 25.5), 23: (25.0, 27.5), 24: (34.0, 28.0), 25: (43.0, 26.5), 26: (52.0, 22.0),
    27: (0.0, 12.0), 28: (0.0, 1.0), 29: (0.0, -10.0), 30: (0.0, -21.0),
    33: (0.0, -32.0), 34: (7.0, -31.0), 35: (13.0, -29.0),
    51: (0.0, -44.0), 52: (7.0, -43.0), 53: (16.0, -45.5), 54: (25.5, -52.0),
    55: (16.0, -59.5), 56: (8.0, -63.5), 57: (0.0, -64.5),
}
# iBUG mirror of each right-side landmark (the face's right, p < 0).
IBUG_MIRROR_OF_RIGHT = {
    **{k: 16 - k for k in range(8)}, 17: 26, 18: 25, 19: 24, 20: 23, 21: 22, 31: 35, 32: 34,
    36: 45, 37: 44, 38: 43, 39: 42, 40: 47, 41: 46, 48: 54, 49: 53, 50: 52, 59: 55, 58: 56,
    60: 64, 61: 63, 67: 65,
}


@dataclass(frozen=True)
class FaceTopology:
    """The mesh on the 2D chart.

    chart: (V, 2) neutral chart coordinates (p, q) in mm (mouth closed to the neutral gap);
    build_chart: (V, 2) construction coordinates (lips parted); faces: (F, 3) int64, counter-
    clockwise in the chart (normals toward +z); kpt_ind: (68,) landmark vertices in iBUG order;
    eye_loops: {'left', 'right'} -> vertex loops (outer corner, upper lid to the inner corner,
    lower lid back); mouth_loop: the inner lip loop; rim: the outer boundary vertices.
    """

    chart: np.ndarray
    build_chart: np.ndarray
    faces: np.ndarray
    kpt_ind: np.ndarray
    eye_loops: dict
    mouth_loop: np.ndarray
    rim: np.ndarray


def eye_lids(t: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Left-eye lid curves at t in [0, 1] (outer corner -> inner corner) -> p, q_upper, q_lower (mm)."""
    t = np.clip(t, 0.0, 1.0)
    p = EYE_OUTER[0] + (EYE_INNER[0] - EYE_OUTER[0]) * t
    base = EYE_OUTER[1] + (EYE_INNER[1] - EYE_OUTER[1]) * t
    bulge = np.sin(np.pi * t ** 0.85) ** 0.9      # peak slightly toward the inner corner
    return p, base + EYE_UPPER * bulge, base - EYE_LOWER * bulge


def mouth_profile(p: np.ndarray) -> np.ndarray:
    """Opening profile of the inner lips in [0, 1]: 1 at the midline, 0 at the corners."""
    return np.clip(1.0 - (np.asarray(p) / MOUTH_INNER_HALF_WIDTH) ** 2, 0.0, None) ** 0.7


def close_mouth(chart: np.ndarray) -> np.ndarray:
    """Construction chart (..., 2) -> neutral chart: the lips move toward each other.

    Each point above (below) the mouth line within the mouth's width moves down (up) by up to
    half the gap difference, decaying with the distance from the inner lip (8 mm scale), so the
    map is smooth and monotonic away from the slit.
    """
    p, q = chart[..., 0], chart[..., 1]
    half_gap = MOUTH_GAP_BUILD / 2 * mouth_profile(p)
    shift = (MOUTH_GAP_BUILD - MOUTH_GAP_NEUTRAL) / 2 * mouth_profile(p)
    dist = np.clip(np.abs(q - MOUTH_Q) - half_gap, 0.0, None)
    out = np.array(chart, dtype=np.float64, copy=True)
    out[..., 1] = q - np.sign(q - MOUTH_Q) * shift * np.exp(-dist / 8.0)
    return out


def rim_point(angle: np.ndarray) -> np.ndarray:
    """Points of the outer rim (an ellipse on the chart) at angles (rad, 0 = +p, pi/2 = top)."""
    return np.stack([RIM_HALF_WIDTH * np.cos(angle), RIM_CENTRE_Q + RIM_HALF_HEIGHT * np.sin(angle)], -1)


def _rim_left() -> np.ndarray:
    """Rim points with p > 0, evenly spaced by arc length, from bottom to top (excluding the midline)."""
    angle = np.linspace(-np.pi / 2, np.pi / 2, 2001)
    pts = rim_point(angle)
    arc = np.concatenate([[0.0], np.cumsum(np.linalg.norm(np.diff(pts, axis=0), axis=1))])
    n = int(round(arc[-1] / RIM_SPACING))
    return rim_point(np.interp(np.linspace(0, arc[-1], n + 1)[1:-1], arc, angle))


def _eye_loop_left() -> np.ndarray:
    """Left eye hole loop: outer corner, upper lid toward the inner corner, inner corner, lower lid back."""
    t = np.arange(1, EYE_STEPS) / EYE_STEPS
    p, up, low = eye_lids(t)
    upper = np.stack([p, up], -1)
    lower = np.stack([p, low], -1)[::-1]
    return np.concatenate([[EYE_OUTER], upper, [EYE_INNER], lower])


def _mouth_chain_left() -> tuple[np.ndarray, np.ndarray]:
    """Inner lip points in the construction chart: upper (p >= 0, from the midline) and lower."""
    half = MOUTH_GAP_BUILD / 2 * mouth_profile(MOUTH_INNER_P)
    upper = np.stack([MOUTH_INNER_P, MOUTH_Q + half], -1)
    lower = np.stack([MOUTH_INNER_P, MOUTH_Q - half], -1)
    return upper, lower


def _midline(fixed_q: list[float]) -> np.ndarray:
    """q values on p = 0: the fixed ones plus fillers about MIDLINE_SPACING apart (not across the mouth)."""
    qs = sorted(fixed_q)
    gap_low, gap_high = MOUTH_Q - MOUTH_GAP_BUILD / 2, MOUTH_Q + MOUTH_GAP_BUILD / 2
    out = [qs[0]]
    for a, b in zip(qs[:-1], qs[1:]):
        if not (np.isclose(a, gap_low) and np.isclose(b, gap_high)):
            n = max(int(round((b - a) / MIDLINE_SPACING)), 1)
            out += list(np.linspace(a, b, n + 1)[1:-1])
        out.append(b)
    return np.array(out)


def _fill(fixed: np.ndarray, count: int, holes: list[np.ndarray], spacing: float) -> np.ndarray:
    """`count` filler points with p > 0, spread by farthest-point sampling among hex-grid candidates."""
    step = spacing * 0.5
    rows = np.arange(RIM_CENTRE_Q - RIM_HALF_HEIGHT, RIM_CENTRE_Q + RIM_HALF_HEIGHT, step * np.sqrt(3) / 2)
    cand = np.array([(p + (i % 2) * step / 2, q) for i, q in enumerate(rows)
                     for p in np.arange(step * 0.6, RIM_HALF_WIDTH, step)])
    inside = ((cand[:, 0] / RIM_HALF_WIDTH) ** 2 + ((cand[:, 1] - RIM_CENTRE_Q) / RIM_HALF_HEIGHT) ** 2) < 0.93
    for hole in holes:
        inside &= ~in_polygon(cand, hole, margin=1.5)
    cand = cand[inside & (cand[:, 0] > spacing * 0.4)]
    dist = np.min(np.linalg.norm(cand[:, None] - fixed[None], axis=-1), axis=1)
    chosen = []
    for _ in range(count):
        k = int(np.argmax(dist))
        chosen.append(cand[k])
        dist = np.minimum(dist, np.linalg.norm(cand - cand[k], axis=1))
    return np.array(chosen)


def in_polygon(points: np.ndarray, polygon: np.ndarray, margin: float = 0.0) -> np.ndarray:
    """Even-odd test: points (N, 2) inside the closed polygon (M, 2), or within `margin` of it."""
    a, b = polygon, np.roll(polygon, -1, axis=0)
    px, py = points[:, None, 0], points[:, None, 1]
    crosses = (a[:, 1] > py) != (b[:, 1] > py)
    with np.errstate(divide="ignore", invalid="ignore"):
        x_at = a[:, 0] + (py - a[:, 1]) * (b[:, 0] - a[:, 0]) / (b[:, 1] - a[:, 1])
    inside = (crosses & (px < x_at)).sum(axis=1) % 2 == 1
    if margin > 0:
        seg = b - a
        s = np.clip(((points[:, None] - a) * seg).sum(-1) / (seg ** 2).sum(-1), 0.0, 1.0)
        near = np.linalg.norm(points[:, None] - (a + s[..., None] * seg), axis=-1).min(axis=1) < margin
        inside |= near
    return inside


def _loop_edges_present(faces: np.ndarray, loop: np.ndarray) -> bool:
    edges = {tuple(sorted(e)) for f in faces for e in ((f[0], f[1]), (f[1], f[2]), (f[2], f[0]))}
    return all(tuple(sorted((a, b))) in edges for a, b in zip(loop, np.roll(loop, -1)))


@lru_cache(maxsize=1)
def build_topology() -> FaceTopology:
    """Build the symmetric face mesh on the chart (deterministic; cached)."""
    eye = _eye_loop_left()
    up, low = _mouth_chain_left()
    mouth_half = np.concatenate([up, [[MOUTH_INNER_HALF_WIDTH, MOUTH_Q]], low[::-1]])
    rim = _rim_left()
    named = {k: np.array(v) for k, v in LEFT_LANDMARKS.items()}
    mid_fixed = [q for k, (p, q) in named.items() if p == 0.0]
    mid_fixed += [RIM_CENTRE_Q - RIM_HALF_HEIGHT, RIM_CENTRE_Q + RIM_HALF_HEIGHT, up[0, 1], low[0, 1]]
    midline = _midline(mid_fixed)
    if len(midline) % 2:                      # V = midline + 2 * side: the midline count must be even
        fillers = [i for i, q in enumerate(midline) if not np.isclose(mid_fixed, q).any()]
        midline = np.delete(midline, fillers[-1])
    mid_pts = np.stack([np.zeros_like(midline), midline], -1)
    side_named = np.array([v for v in named.values() if v[0] > 0])
    fixed_side = np.concatenate([side_named, eye, up[1:], [[MOUTH_INNER_HALF_WIDTH, MOUTH_Q]], low[1:], rim])
    n_side = (N_VERTS - len(mid_pts)) // 2
    fill = _fill(np.concatenate([fixed_side, mid_pts]), n_side - len(fixed_side), [eye, mouth_half], 5.6)
    half = np.concatenate([mid_pts, fixed_side, fill])
    faces = _triangulate_half(half, [eye, mouth_half])
    return _mirror(half, len(mid_pts), faces, named, eye, up, low, rim)


def _triangulate_half(points: np.ndarray, holes: list[np.ndarray]) -> np.ndarray:
    """Delaunay of the half chart without triangles inside the holes, oriented counter-clockwise."""
    tri = Delaunay(points).simplices
    a, b, c = (points[tri[:, k]] for k in range(3))
    area = (b[:, 0] - a[:, 0]) * (c[:, 1] - a[:, 1]) - (b[:, 1] - a[:, 1]) * (c[:, 0] - a[:, 0])
    tri = np.where(area[:, None] < 0, tri[:, [0, 2, 1]], tri)
    keep = np.abs(area) > 1e-6
    centroid = (a + b + c) / 3
    for hole in holes:
        keep &= ~in_polygon(centroid, hole)
    return tri[keep].astype(np.int64)


def _index_of(points: np.ndarray, target: np.ndarray) -> int:
    d = np.linalg.norm(points - target, axis=1)
    k = int(np.argmin(d))
    if d[k] > 1e-9:
        raise AssertionError(f"chart point {target} is not a mesh vertex")
    return k


def _mirror(half: np.ndarray, n_mid: int, faces: np.ndarray, named: dict, eye: np.ndarray,
            up: np.ndarray, low: np.ndarray, rim: np.ndarray) -> FaceTopology:
    """Mirror the half mesh to the full mesh and locate the landmarks and loops."""
    side = half[n_mid:]
    build = np.concatenate([half, side * np.array([-1.0, 1.0])])
    mirror_index = np.concatenate([np.arange(n_mid), np.arange(n_mid, len(half)) + len(side)])
    mirror_faces = mirror_index[faces][:, [0, 2, 1]]
    all_faces = np.concatenate([faces, mirror_faces])
    kpt = np.zeros(68, dtype=np.int64)
    for k, v in named.items():
        kpt[k] = _index_of(half, v)
    eye_left = np.array([_index_of(half, v) for v in eye])
    eye_right = mirror_index[eye_left]
    t_kpt = {37: 3, 38: 6, 40: 6, 41: 3}
    kpt[45], kpt[36] = eye_left[0], eye_right[0]
    kpt[42], kpt[39] = eye_left[EYE_STEPS], eye_right[EYE_STEPS]
    kpt[44], kpt[43] = eye_left[t_kpt[37]], eye_left[t_kpt[38]]
    kpt[46], kpt[47] = eye_left[2 * EYE_STEPS - t_kpt[41]], eye_left[2 * EYE_STEPS - t_kpt[40]]
    up_idx = np.array([_index_of(half, v) for v in up])
    low_idx = np.array([_index_of(half, v) for v in low])
    corner = _index_of(half, np.array([MOUTH_INNER_HALF_WIDTH, MOUTH_Q]))
    kpt[62], kpt[63], kpt[64], kpt[65], kpt[66] = up_idx[0], up_idx[3], corner, low_idx[3], low_idx[0]
    for right, left in IBUG_MIRROR_OF_RIGHT.items():
        kpt[right] = mirror_index[kpt[left]]
    mouth_loop = np.concatenate([mirror_index[up_idx[::-1]], up_idx[1:], [corner], low_idx[::-1],
                                 mirror_index[low_idx[1:]], [mirror_index[corner]]])
    rim_idx = np.array([_index_of(half, v) for v in rim])
    rim_loop = np.concatenate([rim_idx, mirror_index[rim_idx]])
    for loop in (eye_left, eye_right, mouth_loop):
        if not _loop_edges_present(all_faces, loop):
            raise AssertionError("a hole boundary is not a chain of mesh edges")
    return FaceTopology(chart=close_mouth(build), build_chart=build, faces=all_faces, kpt_ind=kpt,
                        eye_loops={"left": eye_left, "right": eye_right}, mouth_loop=mouth_loop,
                        rim=rim_loop)
