"""A tiny data root in the WCPA layout for stage tests: a symmetric toy mesh whose 68 landmark
vertices are drawn as coloured dots on a noisy background (iBUG eyes at 36-41 / 42-47), or an
asymmetric one (no vertex flip permutation) whose landmarks are mirror pairs in iBUG-68 order."""
from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pandas as pd

from stages.face import ibug68
from stages.wcpa.camera import Camera, rt_from_euler
from stages.wcpa.layout import image_path, info_path, landmarks_path, list_path, write_landmarks, write_list
from stages.wcpa.obj import write_obj

PROJ = np.array([[1.57443701, 0, 0, 0], [0, 1.57443701, 0, 0],
                 [0, 0, -0.99999976, -1], [0, 0, -0.001, 0]])
N_EXTRA = 20   # mirrored pairs of non-landmark vertices
SHIFTED = 3    # extra vertices of the asymmetric mesh moved sideways


def toy_mesh(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """(V, 3) left-right symmetric mesh (metres) and its 68 landmark indices."""
    right = np.column_stack([-rng.uniform(0.005, 0.07, 34 + N_EXTRA), rng.uniform(-0.08, 0.06, 34 + N_EXTRA),
                             rng.uniform(0.0, 0.05, 34 + N_EXTRA)])
    right[:6] = [[-0.045 + 0.006 * k, 0.03 + 0.002 * (k % 2), 0.03] for k in range(6)]   # right eye
    verts = np.concatenate([right, right * [-1.0, 1.0, 1.0]])
    n_half = len(right)
    others = [k for k in range(68) if not 36 <= k < 48]
    kpt_ind = np.empty(68, dtype=np.int64)
    kpt_ind[36:42] = np.arange(6)
    kpt_ind[42:48] = n_half + np.arange(6)[::-1]
    kpt_ind[others[:28]] = 6 + np.arange(28)
    kpt_ind[others[28:]] = n_half + 6 + np.arange(28)
    return verts, kpt_ind


def asymmetric_mesh(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """(V, 3) mesh (metres) with SHIFTED non-landmark vertices moved 2 cm sideways, and its 68
    landmark indices in iBUG-68 order (the landmark vertices are mirror images of each other)."""
    pairs = [k for k in range(ibug68.N_POINTS) if ibug68.MIRROR[k] > k]
    middle = [k for k in range(ibug68.N_POINTS) if ibug68.MIRROR[k] == k]
    n_half = len(pairs) + N_EXTRA
    right = np.column_stack([-rng.uniform(0.005, 0.07, n_half), rng.uniform(-0.08, 0.06, n_half),
                             rng.uniform(0.0, 0.05, n_half)])
    mid = np.column_stack([np.zeros(len(middle)), rng.uniform(-0.08, 0.06, len(middle)),
                           rng.uniform(0.0, 0.05, len(middle))])
    verts = np.concatenate([right, right * [-1.0, 1.0, 1.0], mid])
    verts[len(pairs):len(pairs) + SHIFTED, 0] += 0.02
    kpt_ind = np.empty(ibug68.N_POINTS, dtype=np.int64)
    kpt_ind[pairs] = np.arange(len(pairs))
    kpt_ind[ibug68.MIRROR[pairs]] = n_half + np.arange(len(pairs))
    kpt_ind[middle] = 2 * n_half + np.arange(len(middle))
    return verts, kpt_ind


def _render(camera: Camera, points: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    image = rng.integers(0, 60, size=(camera.height, camera.width, 3), dtype=np.uint8)
    colors = (np.arange(len(points))[:, None] * [37, 91, 53] % 200 + 55).astype(int)
    for (x, y), color in zip(points, colors):
        cv2.circle(image, (int(x), int(y)), 2, tuple(int(c) for c in color), -1)
    return image


def write_tiny_root(root: Path, n_train: int, n_test: int, size: int = 200, seed: int = 0,
                    asymmetric: bool = False) -> dict:
    """Write root/ (images, info, 68landmarks, lists, resources) -> {'train': table, 'test': table}.

    asymmetric: the mesh of `asymmetric_mesh` instead of the symmetric toy mesh."""
    rng = np.random.default_rng(seed)
    verts, kpt_ind = (asymmetric_mesh if asymmetric else toy_mesh)(rng)
    (root / "resources").mkdir(parents=True, exist_ok=True)
    write_obj(root / "resources/example.obj", verts, np.array([[0, 1, 2]]))
    np.save(root / "resources/kpt_ind.npy", kpt_ind)
    np.savetxt(root / "resources/projection_matrix.txt", PROJ)
    camera = Camera(PROJ, size, size)
    tables = {}
    for split, count in (("train", n_train), ("test", n_test)):
        rows = [(f"{split}{k // 2:03d}", f"action{k % 2}", f"{k:05d}") for k in range(count)]
        table = pd.DataFrame(rows, columns=["subject_id", "facial_action", "img_id"])
        for row in table.itertuples(index=False):
            pose = rt_from_euler(rng.normal(0, [0.15, 0.15, 0.15]), [rng.normal(0, 0.01), rng.normal(0, 0.01), -0.5])
            mesh = (verts * rng.uniform(0.95, 1.05)).astype(np.float32)
            points = camera.project(mesh[kpt_ind], pose)
            for path in (image_path(root, row), info_path(root, row), landmarks_path(root, row)):
                path.parent.mkdir(parents=True, exist_ok=True)
            cv2.imwrite(str(image_path(root, row)), _render(camera, points, rng))
            np.savez(info_path(root, row), verts=mesh, R_t=pose)
            write_landmarks(landmarks_path(root, row), points)
        write_list(list_path(root, split), table)
        tables[split] = table
    return tables
