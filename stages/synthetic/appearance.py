"""What the renderer draws besides the 1220-vertex mesh: eyeballs, mouth interior, and the
procedural per-pixel albedo (skin, brows, lashes, lips, nostrils, iris, teeth).

Render-only geometry is appended after the mesh vertices; it never enters the labels. Every
render vertex carries attributes [p, q, eye, mouth, radial, upper]: chart position (mm), eye
and mouth material weights (0 or 1; skin is neither), the fan radius (1 on the hole's rim, 0 at
its centre) and whether it is on the upper lip side (1) or not (0).
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from stages.synthetic.model import MM, build_face_model
from stages.synthetic.topology import MOUTH_Q

FAN_RINGS = (0.7, 0.4, 0.0)
EYE_DEPTH_MM, MOUTH_DEPTH_MM = 2.0, 9.0
IRIS_RADIUS_MM, PUPIL_RADIUS_MM = 5.8, 2.2
SKIRT_RINGS_MM = ((10.0, 12.0), (20.0, 35.0), (22.0, 70.0))   # (outward, backward) of the head skirt
SKIRT_CENTRE_Y_MM = -10.0


@dataclass(frozen=True)
class Look:
    """A subject's colours (RGB in [0, 1]): skin, brows (and lashes), lips, iris; brow
    thickness scale; gaze offset (2,) in mm on the chart; hair colour and hairline shift (mm)."""

    skin: np.ndarray
    brow: np.ndarray
    lips: np.ndarray
    iris: np.ndarray
    brow_scale: float
    gaze: np.ndarray
    hair: np.ndarray
    hairline: float


def random_look(rng: np.random.Generator) -> Look:
    """Draw a subject's colours: skin tones from light to dark, dark brows, reddish lips."""
    darkness = rng.uniform(0.0, 1.0) ** 1.3
    light_skin, dark_skin = np.array([0.93, 0.76, 0.65]), np.array([0.36, 0.23, 0.16])
    skin = (1 - darkness) * light_skin + darkness * dark_skin
    skin = np.clip(skin * rng.uniform(0.92, 1.06, 3), 0, 1)
    brow = np.clip(rng.uniform(0.08, 0.35) * np.array([1.0, 0.8, 0.65]) * rng.uniform(0.8, 1.2, 3), 0, 1)
    lips = np.clip(skin * np.array([0.85, 0.52, 0.52]) * rng.uniform(0.85, 1.05), 0, 1)
    iris = rng.choice([np.array([0.25, 0.15, 0.08]), np.array([0.35, 0.45, 0.6]), np.array([0.3, 0.35, 0.2])])
    hair = rng.choice([np.array([0.06, 0.05, 0.04]), np.array([0.22, 0.14, 0.08]), np.array([0.55, 0.42, 0.25]),
                       np.array([0.5, 0.5, 0.5])]) * rng.uniform(0.7, 1.3)
    hairline = 80.0 if rng.random() < 0.1 else rng.uniform(-8.0, 6.0)
    return Look(skin=skin, brow=brow, lips=lips, iris=iris * rng.uniform(0.7, 1.2),
                brow_scale=rng.uniform(0.8, 1.25), gaze=np.zeros(2), hair=np.clip(hair, 0, 1), hairline=hairline)


@dataclass(frozen=True)
class RenderMesh:
    """Faces (F, 3) and per-vertex attributes (N, 6) of the render mesh; `extend(verts)` adds the
    render-only vertices to the (V, 3) mesh vertices."""

    faces: np.ndarray
    attributes: np.ndarray
    fans: tuple                   # (loop (L,), depth_mm) per hole
    skirt: np.ndarray             # the outer rim loop, extended outward and backward by rings


def _fan(loop: np.ndarray, first: int) -> tuple[np.ndarray, int]:
    """Triangles closing a hole loop with rings of new vertices numbered from `first`.

    Ring r (FAN_RINGS) has len(loop) vertices, the last ring is the centre (one vertex).
    Triangles face the same way as the mesh (the loop runs counter-clockwise round the hole
    when seen from the front for the faces to be front-facing; orientation fixed by caller).
    """
    n = len(loop)
    rings = [np.asarray(loop)]
    index = first
    for r in FAN_RINGS[:-1]:
        rings.append(np.arange(index, index + n))
        index += n
    centre = index
    faces = []
    for outer, inner in zip(rings[:-1], rings[1:]):
        for k in range(n):
            a, b = outer[k], outer[(k + 1) % n]
            c, d = inner[k], inner[(k + 1) % n]
            faces += [[a, b, d], [a, d, c]]
    last = rings[-1]
    faces += [[last[k], last[(k + 1) % n], centre] for k in range(n)]
    return np.array(faces, dtype=np.int64), centre + 1


def _oriented(loop: np.ndarray, chart: np.ndarray) -> np.ndarray:
    """The loop ordered counter-clockwise on the chart."""
    pts = chart[loop]
    area = np.sum(pts[:, 0] * np.roll(pts[:, 1], -1) - np.roll(pts[:, 0], -1) * pts[:, 1])
    return loop if area > 0 else loop[::-1]


@lru_cache(maxsize=1)
def render_mesh() -> RenderMesh:
    """The render mesh of the face model (cached)."""
    model = build_face_model()
    topo = model.topology
    n = len(model.template)
    faces = [topo.faces]
    attrs = [_attributes(topo.build_chart, (0, 0), np.ones(n), (topo.build_chart[:, 1] > MOUTH_Q).astype(float))]
    fans = []
    first = n
    for loop, material, depth in ((topo.eye_loops["left"], (1, 0), EYE_DEPTH_MM),
                                  (topo.eye_loops["right"], (1, 0), EYE_DEPTH_MM),
                                  (topo.mouth_loop, (0, 1), MOUTH_DEPTH_MM)):
        loop = _oriented(loop, topo.chart)
        fan_faces, next_first = _fan(loop, first)
        faces.append(fan_faces)
        chart = topo.build_chart[loop]
        centre = chart.mean(axis=0)
        upper = (chart[:, 1] > MOUTH_Q).astype(float)
        for r in FAN_RINGS:
            ring = centre + r * (chart - centre) if r > 0 else centre[None]
            ring_upper = upper if r > 0 else np.zeros(1)
            attrs.append(_attributes(ring, material, np.full(len(ring), r), ring_upper))
        fans.append((loop, depth))
        first = next_first
    rim = _oriented(_rim_loop(topo), topo.chart)
    faces.append(_skirt_faces(rim, first))
    chart = topo.build_chart[rim]
    outward = chart - [0.0, SKIRT_CENTRE_Y_MM]
    outward /= np.linalg.norm(outward, axis=1, keepdims=True)
    for out_mm, back_mm in SKIRT_RINGS_MM:
        attrs.append(_attributes(chart + outward * (out_mm + 0.6 * back_mm), (0, 0), np.ones(len(rim)), np.ones(len(rim))))
    return RenderMesh(faces=np.concatenate(faces), attributes=np.concatenate(attrs), fans=tuple(fans), skirt=rim)


def _rim_loop(topo) -> np.ndarray:
    """The outer boundary as one loop: the rim's boundary edges chained in order."""
    f = topo.faces
    edges = np.sort(np.concatenate([f[:, [0, 1]], f[:, [1, 2]], f[:, [2, 0]]]), axis=1)
    unique, counts = np.unique(edges, axis=0, return_counts=True)
    rim = set(topo.rim.tolist())
    boundary = [e for e in unique[counts == 1] if e[0] in rim or e[1] in rim]
    neighbours: dict[int, list[int]] = {}
    for a, b in boundary:
        neighbours.setdefault(int(a), []).append(int(b))
        neighbours.setdefault(int(b), []).append(int(a))
    loop = [next(iter(neighbours))]
    while len(loop) < len(neighbours):
        step = [v for v in neighbours[loop[-1]] if v not in loop[-2:]]
        loop.append(step[0])
    return np.array(loop, dtype=np.int64)


def _skirt_faces(rim: np.ndarray, first: int) -> np.ndarray:
    """Quads (as triangle pairs) between the rim loop and successive skirt rings numbered from
    `first`, facing outward."""
    n = len(rim)
    rings = [rim] + [np.arange(first + k * n, first + (k + 1) * n) for k in range(len(SKIRT_RINGS_MM))]
    faces = []
    for inner, outer in zip(rings[:-1], rings[1:]):
        for k in range(n):
            a, b = inner[k], inner[(k + 1) % n]
            c, d = outer[k], outer[(k + 1) % n]
            faces += [[a, c, d], [a, d, b]]
    return np.array(faces, dtype=np.int64)


def _attributes(chart: np.ndarray, material: tuple, radial: np.ndarray, upper: np.ndarray) -> np.ndarray:
    return np.column_stack([chart, np.tile(np.asarray(material, float), (len(chart), 1)), radial, upper])


def extend(mesh: RenderMesh, verts: np.ndarray) -> np.ndarray:
    """Mesh vertices (V, 3) metres -> render vertices (N, 3): adds the eyeball/mouth fan rings,
    pushed behind the hole along -z (canonical frame) more toward the centre."""
    out = [verts]
    for loop, depth in mesh.fans:
        rim = verts[loop]
        centre = rim.mean(axis=0)
        for r in FAN_RINGS:
            ring = centre + r * (rim - centre) if r > 0 else centre[None]
            back = depth * MM * (np.sqrt(1 - r) if depth > EYE_DEPTH_MM else 0.5 + 0.5 * r * r)
            out.append(ring - np.array([0.0, 0.0, back]))
    rim = verts[mesh.skirt]
    outward = rim[:, :2] - [0.0, SKIRT_CENTRE_Y_MM * MM]
    outward /= np.linalg.norm(outward, axis=1, keepdims=True)
    for out_mm, back_mm in SKIRT_RINGS_MM:
        out.append(rim + MM * np.column_stack([outward * out_mm, np.full(len(rim), -back_mm)]))
    return np.concatenate(out)


def _polyline_distance(points: np.ndarray, line: np.ndarray) -> np.ndarray:
    """Distance (P,) from points (P, 2) to an open polyline (M, 2)."""
    a, b = line[:-1], line[1:]
    seg = b - a
    t = np.clip(((points[:, None] - a) * seg).sum(-1) / (seg ** 2).sum(-1), 0.0, 1.0)
    return np.linalg.norm(points[:, None] - (a + t[..., None] * seg), axis=-1).min(axis=1)


def _soft(x: np.ndarray, width: float) -> np.ndarray:
    """Smooth 1 -> 0 transition around x = 0 over `width` (x < 0 inside)."""
    return 1.0 / (1.0 + np.exp(np.clip(x / width, -30, 30)))


FIELD_STEP_MM = 0.4
FIELDS = ("brow_distance", "lashes", "lips", "nostrils", "cheeks", "eye_shadow")


@dataclass(frozen=True)
class ChartFields:
    """Albedo feature fields sampled on a chart grid of shape (H, W): planes (len(FIELDS), H * W)
    float32, row-major, with grid point (i, j) at chart (origin + (j, i) * FIELD_STEP_MM);
    eye_centres (2, 2) mm."""

    planes: np.ndarray
    shape: tuple[int, int]
    origin: np.ndarray
    eye_centres: np.ndarray

    def sample(self, chart: np.ndarray) -> list[np.ndarray]:
        """Nearest-grid-point lookup: chart (P, 2) mm -> one (P,) array per field (FIELDS order)."""
        idx = np.rint((chart - self.origin) / FIELD_STEP_MM).astype(np.int64)
        h, w = self.shape
        flat = np.clip(idx[:, 1], 0, h - 1) * w + np.clip(idx[:, 0], 0, w - 1)
        return [plane.take(flat) for plane in self.planes]


@lru_cache(maxsize=1)
def chart_fields() -> ChartFields:
    """The feature fields of the face model's chart (cached): brow distance (mm), lash, lip,
    nostril, cheek and eye-shadow weights in [0, 1]."""
    topo = build_face_model().topology
    chart, kpt = topo.build_chart, topo.kpt_ind
    origin = chart.min(axis=0) - 2.0
    size = np.ceil((chart.max(axis=0) + 2.0 - origin) / FIELD_STEP_MM).astype(int) + 1
    jj, ii = np.meshgrid(np.arange(size[0]), np.arange(size[1]))
    grid = origin + np.stack([jj.ravel(), ii.ravel()], -1) * FIELD_STEP_MM
    p, q = grid[:, 0], grid[:, 1]
    brows = np.minimum(_polyline_distance(grid, chart[kpt[17:22]]), _polyline_distance(grid, chart[kpt[22:27]]))
    lashes = np.zeros(len(grid))
    for side in ("right", "left"):
        lid = chart[topo.eye_loops[side][:10]]
        lashes = np.maximum(lashes, _soft(_polyline_distance(grid, lid) - 0.9, 0.35) * (q > lid[:, 1].min() - 1))
    lip_outline = chart[kpt[48:60]]
    lip_d = _polyline_distance(grid, np.vstack([lip_outline, lip_outline[:1]]))
    lips = np.where(_inside(grid, lip_outline), 1.0, _soft(lip_d, 0.6))
    nostrils = np.exp(-(((np.abs(p) - 5.5) / 2.8) ** 2 + ((q + 29.5) / 1.6) ** 2))
    cheeks = np.exp(-(((np.abs(p) - 42) / 14) ** 2 + ((q + 20) / 12) ** 2))
    shadow = np.exp(-(((np.abs(p) - 33) / 12) ** 2 + ((q - 13) / 7) ** 2))
    planes = np.stack([brows, lashes, lips, nostrils, cheeks, shadow]).astype(np.float32)
    centres = np.array([chart[topo.eye_loops[s]].mean(axis=0) + [0.0, 0.8] for s in ("right", "left")])
    return ChartFields(planes=planes, shape=(int(size[1]), int(size[0])), origin=origin, eye_centres=centres)


def albedo(attrs: np.ndarray, look: Look) -> np.ndarray:
    """Per-sample attributes (P, 6) -> albedo (P, 3) in [0, 1]."""
    chart = attrs[:, :2]
    out = np.empty((len(attrs), 3))
    eye, mouth = attrs[:, 2] > 0.5, attrs[:, 3] > 0.5
    skin = ~(eye | mouth)
    fields = chart_fields()
    out[skin] = _skin(chart[skin], look, fields)
    out[eye] = _eye(chart[eye], look, fields.eye_centres)
    out[mouth] = _mouth(attrs[mouth], look)
    return out


def _skin(chart: np.ndarray, look: Look, fields: ChartFields) -> np.ndarray:
    brow_d, lashes, lips, nostrils, cheeks, shadow = fields.sample(chart)
    color = look.skin * (1 - 0.08 * cheeks[:, None] * np.array([-0.3, 1.0, 1.0]))
    hairline = 68.0 + look.hairline - 0.0055 * chart[:, 0] ** 2
    hair_w = _soft(hairline - chart[:, 1], 1.5)[:, None]
    _blend(color, hair_w, look.hair)
    color *= (1 - 0.12 * shadow)[:, None]
    inner = np.clip(np.abs(chart[:, 0]) - 14.0, 0.0, None) / 40.0
    brow_w = _soft(brow_d - look.brow_scale * (3.2 - 1.8 * inner), 0.7)[:, None]
    _blend(color, brow_w, look.brow)
    _blend(color, lashes[:, None], 0.5 * look.brow)
    _blend(color, lips[:, None], look.lips)
    color *= (1 - 0.75 * nostrils)[:, None]
    return color


def _blend(color: np.ndarray, weight: np.ndarray, paint) -> None:
    """colour (P, 3) <- colour * (1 - weight) + paint * weight, in place; weight (P, 1)."""
    color *= 1 - weight
    color += paint * weight


def _inside(points: np.ndarray, polygon: np.ndarray) -> np.ndarray:
    """Even-odd test: points (P, 2) inside the closed polygon (M, 2)."""
    a, b = polygon, np.roll(polygon, -1, axis=0)
    py = points[:, None, 1]
    crosses = (a[:, 1] > py) != (b[:, 1] > py)
    with np.errstate(divide="ignore", invalid="ignore"):
        x_at = a[:, 0] + (py - a[:, 1]) * (b[:, 0] - a[:, 0]) / (b[:, 1] - a[:, 1])
    return (crosses & (points[:, None, 0] < x_at)).sum(axis=1) % 2 == 1


def _eye(chart: np.ndarray, look: Look, eye_centres: np.ndarray) -> np.ndarray:
    side = (chart[:, 0] > 0).astype(int)
    centre = eye_centres[side] + look.gaze
    r = np.linalg.norm(chart - centre, axis=1)
    sclera = np.array([0.9, 0.87, 0.84])
    iris_w = _soft(r - IRIS_RADIUS_MM, 0.3)[:, None]
    pupil_w = _soft(r - PUPIL_RADIUS_MM, 0.2)[:, None]
    ring = 1 - 0.35 * np.clip(r / IRIS_RADIUS_MM, 0, 1)[:, None] ** 4
    color = sclera * (1 - iris_w) + look.iris * ring * iris_w
    return color * (1 - pupil_w) + 0.03 * pupil_w


def _mouth(attrs: np.ndarray, look: Look) -> np.ndarray:
    p, radial, upper = attrs[:, 0], attrs[:, 4], attrs[:, 5]
    dark = np.tile(look.lips * 0.25, (len(attrs), 1))
    teeth = (radial > 0.5) & (np.abs(p) < 17.0)
    shade = np.where(upper > 0.5, 0.85, 0.6)
    dark[teeth] = np.array([0.92, 0.9, 0.82]) * shade[teeth, None]
    return dark
