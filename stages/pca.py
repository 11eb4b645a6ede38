"""Stage pca: fit the PCA face space and the coefficients of every train and val sample.

Reads the train/val lists (artifacts/split), their ground truth (data.root/info) and the 51
blendshape meshes (data.blendshapes); data without them gets pca.data_expressions expression
modes of its training frames in their place. Writes artifacts/pca/:
  basis.npz              mean (V,3), components (C,V,3), std (C,), wpdc_weights (C,) mm,
                         flip_perm (V,) (left-right vertex permutation of the training meshes), or
                         flip_problem (a string) when they are not left-right symmetric
  coeffs_{split}.npy     (N, C) float32 normalised coefficients, rows = the split's list
  verts_{split}.npy      (N, V, 3) float32 ground-truth meshes (metres), a label cache for train
  poses_{split}.npy      (N, 4, 4) float64 ground-truth R_t
  neutral.csv            the neutral frame chosen per training subject
  metrics.json           reconstruction errors (mm) and the neutral-selection check
  skipped.csv            samples whose info file was bad (data.skip_bad): their rows of the three
                         caches are NaN (train and finetune leave them out), the fit ignores them
"""
from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd

from stages.common.badinput import BadInputs
from stages.common.io import save_json, save_npy
from stages.common.params import Params
from stages.common.rowfile import RowReader, RowWriter
from stages.common.stage import stage_main
from stages.face import ibug68
from stages.face.mesh import flip_asymmetry_mm, kpt_flip_permutation
from stages.face.pca import (PCABasis, blendshape_offset_mm, expression_modes, fit_pca, read_blendshapes,
                             read_neutral_list, reconstruction_errors, select_neutral_frames, vertex_flip)
from stages.wcpa.layout import iter_labels, labelled_rows, load_resources, read_list, write_list

log = logging.getLogger("pca")
SPLITS = ("train", "val")
NEUTRAL_ACTION = "neutral"   # the synthetic data's rest-face action: used to measure, never to select
BLOCK = 1024                 # label rows projected and written at a time (15 MB of meshes at 1220 vertices)
EXPRESSION_FRAMES = 4096     # frames whose expressions make the modes that stand in for missing blendshapes


class LabelledRows:
    """The labelled rows of a verts cache, indexed as if the others were not there (reads on demand)."""

    def __init__(self, verts: RowReader, labelled: np.ndarray):
        self.verts, self.rows = verts, np.flatnonzero(labelled)

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, rows: np.ndarray) -> np.ndarray:
        return self.verts[self.rows[rows]]


def choose_neutral(table: pd.DataFrame, verts: RowReader, labelled: np.ndarray, blendshapes: np.ndarray,
                   neutral_list: str, seed: int, max_frames: int, workers: int, n_subjects: int = 0) -> np.ndarray:
    """Row indices of one neutral frame per training subject among the labelled rows (N,) bool of
    the verts cache (N, V, 3) (a skipped sample is never chosen): the rows of the hand-made list
    `neutral_list` (a CSV of ids, a dep of the stage in dvc.yaml), or, when it has none (the
    committed data/automatic_neutrals.csv) or is '', chosen automatically for every subject or
    a seeded draw of n_subjects of them (0: every one), the subjects scored on `workers`
    processes."""
    rows = np.flatnonzero(labelled)
    chosen = read_neutral_list(neutral_list, table.iloc[rows].reset_index(drop=True)) if neutral_list else []
    if len(chosen):
        log.info("neutral meshes from the hand-made list %s", neutral_list)
        return rows[chosen]
    rows = rows[drawn_subjects(table.subject_id.to_numpy()[rows], n_subjects, seed)]
    subjects = table.subject_id.to_numpy()[rows]
    return rows[select_neutral_frames(LabelledRows(verts, labelled), subjects, blendshapes, max_frames, seed,
                                      workers)]


def drawn_subjects(subjects: np.ndarray, n_subjects: int, seed: int) -> np.ndarray:
    """(N,) bool: the rows of a seeded draw of n_subjects of the distinct subjects (N,) (all of
    them with 0, or with no more subjects than that)."""
    distinct = pd.unique(subjects)
    if not n_subjects or len(distinct) <= n_subjects:
        return np.ones(len(subjects), dtype=bool)
    drawn = np.random.default_rng(seed).choice(len(distinct), n_subjects, replace=False)
    return pd.Series(subjects).isin(distinct[drawn]).to_numpy()     # hashed: np.isin loops on strings


def data_expressions(table: pd.DataFrame, verts: RowReader, labelled: np.ndarray, neutral: np.ndarray,
                     n_modes: int, seed: int) -> np.ndarray:
    """Without blendshapes: n_modes expression meshes (K, V, 3) from the training frames'
    displacements from their subject's neutral frame (stages.face.pca.expression_modes, on
    EXPRESSION_FRAMES of them), or none when pca.data_expressions is 0."""
    modes = expression_modes(verts, table.subject_id.to_numpy(), labelled, neutral, n_modes, EXPRESSION_FRAMES, seed)
    if len(modes):
        log.info("no blendshapes: %d expression modes of up to %d training frames stand in for them", len(modes),
                 EXPRESSION_FRAMES)
    return modes


def flip_check(mean: np.ndarray, perm: np.ndarray, kpt_ind: np.ndarray) -> dict:
    """How well the vertex flip permutation (V,) mirrors the mean training mesh (V, 3): the miss
    per vertex, mean and max mm (stages.face.mesh.flip_asymmetry_mm; a network trained with flips
    learns half of it as a bias), and, for 68 landmarks, whether it pairs them as the iBUG-68
    mirror table does (the nearly coincident inner lips of a closed mouth can be paired the wrong
    way round). A warning when the landmarks disagree."""
    miss = flip_asymmetry_mm(mean, perm)
    check = {"asymmetry_mean_mm": float(miss.mean()), "asymmetry_max_mm": float(miss.max())}
    if len(kpt_ind) == ibug68.N_POINTS:
        try:
            pairs = kpt_flip_permutation(kpt_ind, perm)
        except ValueError:
            pairs = np.full(len(kpt_ind), -1)          # a landmark vertex's mirror is no landmark
        mismatch = ibug68.mirror_mismatch(pairs)
        check["landmark_pairs_as_ibug68"] = not mismatch
        if mismatch:
            log.warning("the vertex flip %s (-1: no landmark): flipped training targets and the flip-merge move "
                        "those points", mismatch)
    log.info("vertex flip: the mean training mesh mirrored misses itself by %.3f mm (mean), %.3f mm (max)",
             check["asymmetry_mean_mm"], check["asymmetry_max_mm"])
    return check


def neutral_check(table: pd.DataFrame, chosen: np.ndarray) -> dict:
    """How often the chosen frame lies in an action folder named 'neutral' (where one exists)."""
    has_neutral = set(table.subject_id[table.facial_action.str.lower() == NEUTRAL_ACTION])
    picked = table.iloc[chosen]
    picked = picked[picked.subject_id.isin(has_neutral)]
    if not len(picked):
        return {"subjects_with_neutral_action": 0}
    hits = int((picked.facial_action.str.lower() == NEUTRAL_ACTION).sum())
    return {"subjects_with_neutral_action": len(picked), "neutral_selected": hits,
            "neutral_accuracy": hits / len(picked)}


def error_summary(errors: np.ndarray) -> dict:
    return {"mean_mm": float(errors.mean()), "max_mm": float(errors.max()),
            "median_mm": float(np.median(errors))}


def cache_labels(root: str, table: pd.DataFrame, n_verts: int, bad: BadInputs, verts_path: Path,
                 workers: int) -> tuple[np.ndarray, np.ndarray]:
    """Read the ground truth of a list chunk by chunk on `workers` processes into the verts cache
    (N, V, 3) float32 metres at verts_path -> R_t (N, 4, 4) float64 and labelled (N,) bool
    (False: skipped, NaN rows)."""
    poses = np.full((len(table), 4, 4), np.nan)
    labelled = np.zeros(len(table), dtype=bool)
    with RowWriter(verts_path, (len(table), n_verts, 3), np.float32) as out:
        for start, verts, chunk_poses in iter_labels(root, table, n_verts, bad, workers):
            poses[start:start + len(verts)] = chunk_poses
            labelled[start:start + len(verts)] = labelled_rows(verts)
            out.write(start, verts)
    return poses, labelled


def project_cache(basis: PCABasis, verts: RowReader, labelled: np.ndarray,
                  coeffs_path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Write the coefficients (N, C) float32 of a verts cache to coeffs_path, block by block ->
    the labelled rows' reconstruction errors (M,) mm and their mean mesh (V, 3) float64 metres."""
    errors, total = [], np.zeros(verts.shape[1:])
    with RowWriter(coeffs_path, (len(verts), basis.n_components), np.float32) as out:
        for start, block in verts.blocks(BLOCK):
            out.write(start, basis.project(block))
            usable = block[labelled[start:start + len(block)]]
            errors.append(reconstruction_errors(basis, usable))
            total += usable.sum(0, dtype=np.float64)
    return (np.concatenate(errors) if errors else np.zeros(0)), total / max(int(labelled.sum()), 1)


def run(params: Params, out: Path = Path("artifacts/pca"), split_dir: Path = Path("artifacts/split")) -> dict:
    cfg, data = params.pca, params.data
    resources = load_resources(data.root)
    tables = {s: read_list(split_dir / f"{s}.csv") for s in SPLITS}
    bad = BadInputs(skip=data.skip_bad, max_fraction=data.max_bad_fraction)
    poses, labelled = {}, {}
    for split in SPLITS:
        log.info("reading %d %s labels from %s", len(tables[split]), split, data.root)
        poses[split], labelled[split] = cache_labels(data.root, tables[split], resources.n_verts, bad,
                                                     out / f"verts_{split}.npy", data.workers)
    bad.finish(out, total=sum(len(t) for t in tables.values()))
    train_verts = RowReader(out / "verts_train.npy")
    blendshapes = read_blendshapes(data.blendshapes, resources.n_verts)
    chosen = choose_neutral(tables["train"], train_verts, labelled["train"], blendshapes, cfg.neutral_list,
                            params.seed, cfg.max_frames_per_subject, data.workers, cfg.neutral_subjects)
    offset = blendshape_offset_mm(blendshapes, train_verts[chosen], data.blendshapes) if len(blendshapes) else None
    expressions = blendshapes if len(blendshapes) else data_expressions(tables["train"], train_verts, labelled["train"],
                                                                        chosen, cfg.data_expressions, params.seed)
    meshes = np.concatenate([train_verts[chosen].astype(np.float64), expressions])
    log.info("PCA of %d neutral + %d %s meshes", len(chosen), len(expressions),
             "blendshape" if len(blendshapes) else "data expression")
    basis = fit_pca(meshes, cfg.n_components)
    metrics = {"n_meshes": len(meshes), "n_neutral": len(chosen), "n_blendshapes": len(blendshapes),
               "n_data_expressions": len(expressions) - len(blendshapes),
               "n_components": basis.n_components, "neutral": neutral_check(tables["train"], chosen),
               "blendshape_offset_mm": offset}
    mean_mesh = {}
    for split in SPLITS:
        errors, mean_mesh[split] = project_cache(basis, RowReader(out / f"verts_{split}.npy"), labelled[split],
                                                 out / f"coeffs_{split}.npy")
        save_npy(out / f"poses_{split}.npy", poses[split])
        metrics[f"reconstruction_{split}"] = error_summary(errors)
        metrics[f"skipped_{split}"] = int((~labelled[split]).sum())
    flip = vertex_flip(mean_mesh["train"])
    basis.save(out / "basis.npz", **flip)
    if "flip_perm" in flip:
        metrics["flip"] = flip_check(mean_mesh["train"], flip["flip_perm"], resources.kpt_ind)
    write_list(out / "neutral.csv", tables["train"].iloc[chosen])
    save_json(out / "metrics.json", metrics)
    return metrics


def main(argv: list[str] | None = None) -> None:
    stage_main(__doc__, run, argv=argv)


if __name__ == "__main__":
    main()
