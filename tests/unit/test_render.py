"""The synthetic renderer's rasterizer: coverage against OpenCV, depth order, perspective-correct
barycentrics and back-face culling."""
import cv2
import numpy as np

from stages.synthetic.render import rasterize

FOCAL, CENTRE = 300.0, 40.0          # pinhole of the tests: u = FOCAL x / z + CENTRE (v likewise)
SIZE = 80


def _project(points: np.ndarray) -> np.ndarray:
    """Camera points (N, 3), z > 0 the depth -> pixels (N, 2), v down (y down)."""
    return FOCAL * points[:, :2] / points[:, 2:] + CENTRE


def _front_facing(faces: np.ndarray, uv: np.ndarray) -> np.ndarray:
    """Reorder each triangle so that it is clockwise in v-down pixels (the rasterizer's front)."""
    a, b, c = (uv[faces[:, k]] for k in range(3))
    area = (b[:, 0] - a[:, 0]) * (c[:, 1] - a[:, 1]) - (b[:, 1] - a[:, 1]) * (c[:, 0] - a[:, 0])
    return np.where((area > 0)[:, None], faces[:, [0, 2, 1]], faces)


def _pixel_centres(pix: np.ndarray) -> np.ndarray:
    return np.column_stack([pix % SIZE, pix // SIZE]) + 0.5


def test_covered_pixels_are_those_opencv_puts_inside_each_triangle():
    rng = np.random.default_rng(3)
    for _ in range(20):
        uv = rng.uniform(-10, SIZE + 10, (3, 2))
        faces = _front_facing(np.array([[0, 1, 2]]), uv)
        raster = rasterize(uv, np.ones(3), faces, SIZE, SIZE)
        grid = np.stack(np.meshgrid(np.arange(SIZE), np.arange(SIZE)), -1).reshape(-1, 2) + 0.5
        contour = uv.astype(np.float32).reshape(-1, 1, 2)
        distance = np.array([cv2.pointPolygonTest(contour, tuple(map(float, p)), True) for p in grid])
        covered = np.zeros(SIZE * SIZE, bool)
        covered[raster.pix] = True
        clear = np.abs(distance) > 1e-3             # pixel centres on an edge may go either way
        assert np.array_equal(covered[clear], distance[clear] > 0)


def test_nearer_triangle_owns_the_overlap_and_each_pixel_has_one_owner():
    square = np.array([[-0.1, -0.1], [0.1, -0.1], [0.1, 0.1], [-0.1, 0.1]])
    big = np.array([[-0.2, -0.2], [0.2, -0.2], [0.2, 0.2], [-0.2, 0.2]])
    far = np.column_stack([big, np.full(4, 2.0)])                  # 30 px half-size at depth 2
    near = np.column_stack([square * 0.5, np.full(4, 1.0)])       # 15 px half-size at depth 1
    points = np.vstack([far, near])
    faces = np.array([[0, 1, 2], [0, 2, 3], [4, 5, 6], [4, 6, 7]])
    uv = _project(points)
    faces = _front_facing(faces, uv)
    raster = rasterize(uv, points[:, 2], faces, SIZE, SIZE)
    assert len(np.unique(raster.pix)) == len(raster.pix)
    offset = np.abs(_pixel_centres(raster.pix) - CENTRE).max(axis=1)
    half_near = FOCAL * 0.05 / 1.0                                  # 15 px
    inner, outer = offset < half_near - 1e-3, offset > half_near + 1e-3
    assert inner.sum() > 500 and outer.sum() > 1000
    assert (raster.tri[inner] >= 2).all()
    assert (raster.tri[outer] < 2).all()


def test_interpolated_camera_points_lie_on_the_pixel_rays():
    """Perspective-correct barycentrics: interpolating the 3D corners of a slanted triangle gives
    points that project back onto the pixel centres."""
    rng = np.random.default_rng(5)
    for _ in range(10):
        points = np.column_stack([rng.uniform(-0.12, 0.12, (3, 2)), rng.uniform(0.8, 2.5, 3)])
        uv = _project(points)
        faces = _front_facing(np.array([[0, 1, 2]]), uv)
        raster = rasterize(uv, points[:, 2], faces, SIZE, SIZE)
        if len(raster.pix) < 20:
            continue
        assert np.allclose(raster.bary.sum(axis=1), 1.0, atol=1e-5)
        assert (raster.bary >= -1e-5).all()
        interpolated = raster.interpolate(points, faces)
        assert np.abs(_project(interpolated) - _pixel_centres(raster.pix)).max() < 1e-3


def test_back_faces_are_culled_unless_asked_for():
    uv = np.array([[10.0, 10.0], [60.0, 15.0], [30.0, 70.0]])
    front = _front_facing(np.array([[0, 1, 2]]), uv)
    back = front[:, [0, 2, 1]]
    assert len(rasterize(uv, np.ones(3), front, SIZE, SIZE).pix) > 500
    assert len(rasterize(uv, np.ones(3), back, SIZE, SIZE).pix) == 0
    both = rasterize(uv, np.ones(3), back, SIZE, SIZE, cull_back=False)
    assert np.array_equal(np.sort(both.pix), np.sort(rasterize(uv, np.ones(3), front, SIZE, SIZE).pix))
