"""Training targets of the coarse detector: the landmark vertices projected with the GT pose."""
from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd

from stages.common.badinput import BadInputs
from stages.face import ibug68
from stages.face.mesh import flip_permutation, kpt_flip_permutation
from stages.wcpa.layout import Resources, finite_rows, iter_labels

log = logging.getLogger("coarse")


def project_landmarks(resources: Resources, verts: np.ndarray, R_t: np.ndarray) -> np.ndarray:
    """Canonical meshes (N, V, 3) and poses (N, 4, 4) -> landmarks (N, L, 2) full-image px."""
    return resources.camera.project(np.asarray(verts)[:, resources.kpt_ind], R_t)


def load_targets(root: Path | str, table: pd.DataFrame, resources: Resources, bad: BadInputs,
                 workers: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """GT landmarks of the listed samples from their info files -> (landmarks (N', L, 2)
    full-image px, kept row indices (N')). The files are read on `workers` processes a chunk at
    a time (stages.wcpa.layout.iter_labels) and only the landmarks are kept. A bad info file
    stops with its name, or with data.skip_bad is recorded in `bad` and left out."""
    landmarks = np.empty((len(table), resources.n_kpts, 2))
    labelled = np.zeros(len(table), dtype=bool)
    for start, verts, poses in iter_labels(root, table, resources.n_verts, bad, workers):
        landmarks[start:start + len(verts)] = project_landmarks(resources, verts, poses)
        labelled[start:start + len(verts)] = finite_rows(poses)
    kept = np.flatnonzero(labelled)
    return landmarks[kept], kept


def landmark_flip_order(resources: Resources) -> np.ndarray | None:
    """(L,) mirror order of the landmarks: in a mirrored image, landmark k is the mirror of
    landmark order[k] of the original; None when no order is known (flips must stay off).

    For 68 landmarks (the challenge's kpt_ind: the iBUG-68 points), the iBUG-68 mirror table:
    their meaning defines it. The template's vertex flip permutation, matched on one mesh, can
    pair points that nearly coincide (the inner lips of a closed mouth) the wrong way round and
    still pass its checks; where it disagrees with the table, a warning names the pairs. Other
    landmark sets: the template's order when the landmarks are closed under its flip
    permutation; else None, with a warning that says why.
    """
    try:
        from_mesh, reason = kpt_flip_permutation(resources.kpt_ind, flip_permutation(resources.template)), ""
    except ValueError as err:
        from_mesh, reason = None, f"resources/example.obj gives no landmark mirror order ({err})"
    if resources.n_kpts == ibug68.N_POINTS:
        mismatch = "" if from_mesh is None else ibug68.mirror_mismatch(from_mesh)
        if mismatch:
            log.warning("the template's mirror %s: using the table", mismatch)
        return ibug68.MIRROR.copy()
    if from_mesh is None:
        log.warning("%s, and %d landmarks are not the iBUG-68 set: horizontal flips are off", reason, resources.n_kpts)
    return from_mesh
