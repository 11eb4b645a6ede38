"""The PCA face space of the 3D branch (paper sec. 2.3.1): neutral meshes + ARKit blendshapes.

Meshes are canonical (V, 3) arrays in metres. The basis stores orthonormal components over the
flattened 3V vector and the standard deviation of the fitting meshes along each of them, so the
network works with *normalised* coefficients a_k (unit variance over the fitting meshes):

    verts = mean + sum_k a_k * std_k * component_k

WPDC weight of coefficient k (eq. 3; the paper does not define W): the RMS vertex displacement,
in millimetres, that a unit change of a_k causes, w_k = 1000 * std_k / sqrt(V). With these
weights ||w * (a_pred - a_gt)||^2 is the mean squared vertex error (mm^2) of the in-span part of
the mesh, i.e. every coefficient is weighted by how much it moves the surface.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from scipy.optimize import nnls
from scipy.sparse.linalg import svds
from tqdm import tqdm

from stages.common.io import save_npz
from stages.common.processes import ordered_map
from stages.face.mesh import flip_permutation
from stages.wcpa.arkit import ARKIT_NAMES
from stages.wcpa.layout import read_list, sample_keys
from stages.wcpa.obj import read_obj

log = logging.getLogger(__name__)

NO_BLENDSHAPES = "data/no_blendshapes"   # a folder without meshes, kept in git: the setting for "none"
ARKIT_BLENDSHAPES = ARKIT_NAMES      # the 51 blendshape meshes of the PCA (paper sec. 2.3.1)
MAX_BLENDSHAPE_OFFSET_MM = 20.0     # blendshapes farther from the data's faces are in other units or frame
TIE_SHARE = 1e-6    # neutral choice: expression scores this share of the frames' spread above the lowest tie


@dataclass(frozen=True)
class PCABasis:
    """mean (V, 3) metres; components (C, V, 3) orthonormal as 3V vectors; std (C,) metres."""

    mean: np.ndarray
    components: np.ndarray
    std: np.ndarray

    @property
    def n_components(self) -> int:
        return len(self.components)

    @property
    def n_verts(self) -> int:
        return len(self.mean)

    def project(self, verts: np.ndarray) -> np.ndarray:
        """Least-squares normalised coefficients of meshes (..., V, 3) -> (..., C) float32."""
        verts = np.asarray(verts, dtype=np.float64)
        flat = (verts - self.mean).reshape(verts.shape[:-2] + (-1,))
        coeffs = flat @ self.components.reshape(self.n_components, -1).T / self.std
        return coeffs.astype(np.float32)

    def off_span_mm2(self, verts: np.ndarray, coeffs: np.ndarray) -> np.ndarray:
        """Mean squared distance (mm^2) of the vertices of meshes (..., V, 3) from their
        projection on the basis, given their `project` coefficients (..., C): by Pythagoras
        (orthonormal components) |v - mean|^2 - |a * std|^2 per vertex, in float64, clipped at 0."""
        centred = np.asarray(verts, dtype=np.float64) - self.mean
        total = (centred ** 2).sum(axis=(-2, -1))
        in_span = ((np.asarray(coeffs, dtype=np.float64) * self.std) ** 2).sum(-1)
        return np.maximum(total - in_span, 0.0) * 1e6 / self.n_verts

    def reconstruct(self, coeffs: np.ndarray) -> np.ndarray:
        """Normalised coefficients (..., C) -> meshes (..., V, 3) float32 metres."""
        coeffs = np.asarray(coeffs, dtype=np.float64) * self.std
        flat = coeffs @ self.components.reshape(self.n_components, -1)
        return (self.mean + flat.reshape(coeffs.shape[:-1] + self.mean.shape)).astype(np.float32)

    def wpdc_weights(self) -> np.ndarray:
        """(C,) mm: RMS vertex displacement caused by a unit change of each normalised coefficient."""
        return (1000.0 * self.std / np.sqrt(self.n_verts)).astype(np.float32)

    def save(self, path: Path | str, **extra: np.ndarray) -> None:
        """Write mean, components, std, wpdc_weights and any extra arrays to one .npz, atomically."""
        save_npz(path, mean=self.mean, components=self.components, std=self.std,
                 wpdc_weights=self.wpdc_weights(), **extra)

    @classmethod
    def load(cls, path: Path | str) -> "PCABasis":
        path = Path(path)
        try:
            with np.load(path) as npz:
                return cls(mean=npz["mean"], components=npz["components"], std=npz["std"])
        except FileNotFoundError:
            raise FileNotFoundError(f"{path}: PCA basis not found (run `dvc repro pca`)") from None
        except KeyError as err:
            raise ValueError(f"{path}: not a PCA basis file (missing {err})") from None


def vertex_flip(meshes: np.ndarray) -> dict[str, np.ndarray]:
    """The basis file's flip entry for canonical meshes (N, V, 3): {'flip_perm': (V,) int64}, or,
    when the meshes are not left-right symmetric, {'flip_problem': why} and a warning."""
    try:
        return {"flip_perm": flip_permutation(meshes)}
    except ValueError as err:
        log.warning("no vertex flip permutation (%s): train.flip, finetune.flip and infer.flip_merge "
                    "must be off", err)
        return {"flip_problem": np.array(str(err))}


def load_flip_perm(path: Path | str, needed_by: str) -> np.ndarray:
    """flip_perm (V,) int64 of a basis file; stops naming `needed_by` (the params that asked for
    a flip) when the pca stage found no flip permutation."""
    with np.load(path) as npz:
        if "flip_perm" in npz.files:
            return npz["flip_perm"]
        problem = str(npz["flip_problem"]) if "flip_problem" in npz.files else "no flip_perm entry"
    raise ValueError(f"{path}: no vertex flip permutation ({problem}); {needed_by}")


def fit_pca(meshes: np.ndarray, n_components: int) -> PCABasis:
    """PCA of meshes (N, V, 3) by SVD of the centred data.

    n_components is clamped to N - 1 (the rank of N centred meshes) with a logged warning, so
    that a small data set still gets a usable, exactly-spanning basis.
    """
    meshes = np.asarray(meshes, dtype=np.float64)
    n = len(meshes)
    if n < 2:
        raise ValueError(f"PCA needs at least 2 meshes, got {n}")
    if n_components > n - 1:
        log.warning("pca.n_components=%d > %d meshes - 1: clamped to %d", n_components, n, n - 1)
        n_components = n - 1
    mean = meshes.mean(axis=0)
    centred = (meshes - mean).reshape(n, -1)
    _, singular, vt = np.linalg.svd(centred, full_matrices=False)
    std = singular[:n_components] / np.sqrt(n - 1)
    if (std <= 1e-12).any():
        raise ValueError(f"PCA: {int((std <= 1e-12).sum())} of {n_components} components have zero "
                         "variance (duplicate meshes?); lower pca.n_components")
    return PCABasis(mean=mean, components=vt[:n_components].reshape(n_components, *mean.shape), std=std)


def expression_directions(blendshapes: np.ndarray) -> np.ndarray:
    """Blendshape meshes (B, V, 3) -> expression displacements (B, 3V) from their rest face.

    The rest face is the per-vertex median of the blendshapes: each ARKit blendshape moves one
    region (an eye, the jaw, the brows), so at every vertex most of them sit at rest.
    """
    blendshapes = np.asarray(blendshapes, dtype=np.float64)
    rest = np.median(blendshapes, axis=0)
    return (blendshapes - rest).reshape(len(blendshapes), -1)


class NonNegativeFit:
    """Best non-negative blendshape combination of displacement vectors, solved in the small
    (B x B) Gram space of the expression directions D (B, 3V):

        min_{w >= 0} ||D^T w - y||^2 = ||A w - z||^2 + ||y||^2 - ||z||^2,
        D D^T = U S U^T,  A = S^(1/2) U^T,  z = S^(-1/2) U^T D y   (zero eigenvalues dropped)
    """

    def __init__(self, directions: np.ndarray):
        self.directions = np.asarray(directions, dtype=np.float64)
        values, vectors = np.linalg.eigh(self.directions @ self.directions.T)
        keep = values > 1e-10 * values.max()
        self.root = np.sqrt(values[keep])
        self.basis = vectors[:, keep]
        self.matrix = self.root[:, None] * self.basis.T

    def squared_residuals(self, displacements: np.ndarray) -> np.ndarray:
        """(M, 3V) displacements -> (M,) squared residual of their best non-negative fit (m^2)."""
        y = np.asarray(displacements, dtype=np.float64)
        z = (y @ self.directions.T @ self.basis) / self.root
        fits = np.array([nnls(self.matrix, row)[1] ** 2 for row in z])
        return np.maximum(fits + (y ** 2).sum(1) - (z ** 2).sum(1), 0.0)


def expression_scores(verts: np.ndarray, fit: NonNegativeFit) -> np.ndarray:
    """How badly each frame of one subject (N, V, 3) serves as its rest face -> (N,) m^2.

    ARKit activations are non-negative, so from the rest face every other frame of the subject
    is a non-negative blendshape combination (its identity cancels in the difference): the score
    of candidate g is the mean over frames f of the squared residual of the best non-negative
    fit of x_f - x_g. A frame with an expression leaves the frames without it unexplained.
    The differences are formed one candidate at a time (N x 3V, not N^2 x 3V: 300 MB at 100
    frames of 1220 vertices).
    """
    flat = np.asarray(verts, dtype=np.float64).reshape(len(verts), -1)
    return np.array([fit.squared_residuals(flat - candidate).mean() for candidate in flat])


def medoid_index(verts: np.ndarray) -> int:
    """Index of the frame (N, V, 3) with the smallest summed RMS distance to the others."""
    return int(np.argmin(summed_distances(verts)))


def summed_distances(verts: np.ndarray) -> np.ndarray:
    """Each frame's (N, V, 3) summed distance to the others (N,) m (root of the summed squares)."""
    flat = np.asarray(verts, dtype=np.float64).reshape(len(verts), -1)
    sq = (flat ** 2).sum(1)
    return np.sqrt(np.maximum(sq[:, None] + sq[None, :] - 2 * flat @ flat.T, 0.0)).sum(1)


def select_neutral_frames(verts: np.ndarray, subjects: np.ndarray, blendshapes: np.ndarray | None = None,
                          max_frames: int = 100, seed: int = 0, workers: int = 1) -> np.ndarray:
    """One neutral-expression frame per subject -> row indices (S,) in order of first appearance.

    With blendshapes (B, V, 3): the frame with the lowest `expression_scores` (every other frame
    is its non-negative blendshape combination). Without (B = 0 or None): the subject's medoid,
    the hub the expressions radiate from (less reliable: a mild expression can be nearer the
    others than the rest face). Subjects with more than `max_frames` frames are scored on a
    seeded subsample (the cost grows with its square). The subjects are scored on `workers`
    processes (stages.common.processes.ordered_map); the choice does not depend on their number.
    verts: (N, V, 3) canonical meshes; subjects: (N,) subject ids.
    """
    subjects = np.asarray(subjects)
    fit = NonNegativeFit(expression_directions(blendshapes)) if blendshapes is not None and len(blendshapes) else None
    rng = np.random.default_rng(seed)
    candidates = []
    for rows in subject_rows(subjects):
        if len(rows) > max_frames:
            rows = np.sort(rng.choice(rows, max_frames, replace=False))
        candidates.append(rows)
    jobs = ((np.asarray(verts[rows]), fit) for rows in candidates)
    indices = ordered_map(neutral_index, jobs, workers)
    indices = tqdm(indices, total=len(candidates), desc="neutral frames", leave=False)
    return np.asarray([rows[index] for rows, index in zip(candidates, indices)], dtype=np.int64)


def subject_rows(subjects: np.ndarray) -> list[np.ndarray]:
    """The rows (ascending) of each subject of `subjects` (N,), in order of first appearance: one
    sort, where a scan of the table for each subject took 3 ms a subject at the real train
    split's 285,000 rows."""
    codes, _ = pd.factorize(np.asarray(subjects))
    order = np.argsort(codes, kind="stable")
    bounds = np.searchsorted(codes[order], np.arange(codes.max(initial=-1) + 2))
    return [order[start:end] for start, end in zip(bounds[:-1], bounds[1:])]


def neutral_index(frames: np.ndarray, fit: NonNegativeFit | None) -> int:
    """Index of the neutral frame among one subject's frames (M, V, 3): the lowest
    `expression_scores` with a blendshape fit, the medoid without (fit None). Scores within
    TIE_SHARE of the frames' spread (their mean squared distance from their mean) of the lowest
    are a tie, broken by the summed distance to the other frames: when the blendshapes explain
    the frames exactly, opposing ones (jawLeft, jawRight) can explain them from a mild expression
    as well as from the rest face, up to rounding."""
    if fit is None:
        return medoid_index(frames)
    scores = expression_scores(frames, fit)
    flat = np.asarray(frames, dtype=np.float64).reshape(len(frames), -1)
    spread = ((flat - flat.mean(0)) ** 2).sum(1).mean()
    tied = np.flatnonzero(scores <= scores.min() + TIE_SHARE * spread)
    return int(tied[np.argmin(summed_distances(frames)[tied])])


def read_neutral_list(path: Path | str, table: pd.DataFrame) -> np.ndarray:
    """A hand-made CSV of ids (subject_id, facial_action, img_id), at most one a subject (the
    paper's lists 200 of its persons) -> row indices into `table` (none for a list with no rows)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: neutral list (pca.neutral_list) not found")
    chosen = read_list(path)            # the train list's reader: its checks and messages
    if chosen.empty:
        return np.empty(0, dtype=np.int64)
    doubled = chosen.subject_id[chosen.subject_id.duplicated()]
    if len(doubled):
        raise ValueError(f"{path}: {doubled.nunique()} subject(s) listed more than once, e.g. {doubled.iloc[0]}: "
                         "one neutral frame per subject")
    where = pd.Series(np.arange(len(table)), index=sample_keys(table))
    wanted = pd.Series(sample_keys(chosen))
    unknown = wanted[~wanted.isin(where.index)]
    if len(unknown):
        raise ValueError(f"{path}: {len(unknown)} id(s) not among the training split's labelled rows (not in the "
                         f"split, or skipped as a bad input), e.g. {unknown.iloc[0]}")
    return where[wanted.to_numpy()].to_numpy().astype(np.int64)


def expression_modes(verts, subjects: np.ndarray, usable: np.ndarray, neutral: np.ndarray, n_modes: int,
                     max_frames: int, seed: int) -> np.ndarray:
    """Stand-ins for the ARKit blendshapes when the data has none -> (K, V, 3) metres, K <= n_modes.

    The expression displacements x_f - x_n(f) of up to `max_frames` frames f (a seeded draw
    among the usable rows that are no subject's neutral frame), each from its subject's neutral
    frame n(f), are factored by a truncated SVD. Mode k is the neutral frames' mean plus the
    displacement along the k-th right singular vector that the frames reach farthest, on the
    side they reach it (the vector's sign is arbitrary), as a blendshape is its expression at
    full activation. With the neutral meshes the PCA then spans
    identity and the data's main expressions, where the neutral meshes alone span no expression.

    verts: (N, V, 3) metres, indexed by arrays of rows (an array or a stages.common.rowfile
    RowReader); subjects (N,) subject ids; usable (N,) bool rows with labels; neutral (S,) the
    row of each subject's neutral frame (select_neutral_frames); K = min(n_modes, frames - 1).
    """
    subjects = np.asarray(subjects)
    neutral_of = dict(zip(subjects[neutral].tolist(), neutral.tolist()))
    candidates = np.flatnonzero(usable & ~np.isin(np.arange(len(subjects)), neutral)
                                & pd.Series(subjects).isin(list(neutral_of)).to_numpy())   # np.isin loops on strings
    rng = np.random.default_rng(seed)
    rows = np.sort(rng.choice(candidates, min(max_frames, len(candidates)), replace=False))
    n_modes = min(n_modes, len(rows) - 1)
    shape = verts.shape[1:]
    if n_modes < 1:
        return np.zeros((0,) + shape)
    base = np.array([neutral_of[s] for s in subjects[rows].tolist()])
    displacements = (np.asarray(verts[rows], np.float64) - np.asarray(verts[base], np.float64)).reshape(len(rows), -1)
    _, _, vt = svds(displacements, k=n_modes, rng=np.random.default_rng(seed))
    along = displacements @ vt[::-1].T                  # (frames, K); svds: ascending singular values
    reach = along[np.abs(along).argmax(0), np.arange(n_modes)]     # the signed extreme of each direction
    mean = np.asarray(verts[neutral], np.float64).mean(0)
    return mean + (reach[:, None] * vt[::-1]).reshape((n_modes,) + shape)


def blendshape_offset_mm(blendshapes: np.ndarray, neutral: np.ndarray, folder: Path | str) -> float:
    """The RMS distance (mm) of the blendshapes' (B, V, 3) rest face (their per-vertex median:
    each blendshape moves part of the face) from the mean of the neutral meshes (S, V, 3), both
    metres; a ValueError naming the folder above MAX_BLENDSHAPE_OFFSET_MM (other units, or
    another frame than the data's head frame)."""
    rest = np.median(np.asarray(blendshapes, np.float64), axis=0)
    offset = 1000 * float(np.sqrt(((rest - np.asarray(neutral, np.float64).mean(0)) ** 2).sum(-1).mean()))
    if not offset <= MAX_BLENDSHAPE_OFFSET_MM:
        raise ValueError(f"{folder}: the blendshapes' rest face lies {offset:.1f} mm RMS from the mean neutral "
                         f"mesh of the data (at most {MAX_BLENDSHAPE_OFFSET_MM:g}): the meshes must be in metres, "
                         "in the data's head frame")
    return offset


def read_blendshapes(folder: Path | str, n_verts: int) -> np.ndarray:
    """The 51 ARKit blendshape meshes <folder>/<Name>.obj -> (51, V, 3) metres.

    A folder with no .obj file at all stands for "no blendshapes" (NO_BLENDSHAPES, for data
    that comes without them): a warning is logged and (0, V, 3) returned (the pca stage then puts
    expression modes of the data in their place: expression_modes). A missing folder, or a
    folder with some of the meshes, is an error naming it.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder}: blendshape folder not found (set data.blendshapes; data without "
                                f"ARKit blendshapes: data.blendshapes: {NO_BLENDSHAPES})")
    if not any(folder.glob("*.obj")):
        log.warning("%s: no blendshape meshes", folder)
        return np.zeros((0, n_verts, 3))
    missing = [name for name in ARKIT_BLENDSHAPES if not (folder / f"{name}.obj").is_file()]
    if missing:
        raise FileNotFoundError(f"{folder}: {len(missing)} blendshape mesh(es) missing, e.g. {missing[0]}.obj")
    meshes = []
    for name in ARKIT_BLENDSHAPES:
        verts, _ = read_obj(folder / f"{name}.obj")
        if verts.shape != (n_verts, 3):
            raise ValueError(f"{folder / f'{name}.obj'}: {len(verts)} vertices, the data has {n_verts}")
        meshes.append(verts)
    return np.stack(meshes)


def reconstruction_errors(basis: PCABasis, verts: np.ndarray, chunk: int = 4096) -> np.ndarray:
    """Per-sample mean vertex distance (mm) between meshes (N, V, 3) and their PCA fit. (N,)"""
    errors = []
    for start in range(0, len(verts), chunk):
        part = np.asarray(verts[start:start + chunk], dtype=np.float64)
        fit = basis.reconstruct(basis.project(part))
        errors.append(1000.0 * np.linalg.norm(fit - part, axis=-1).mean(-1))
    return np.concatenate(errors) if errors else np.zeros(0)
