"""Stage pca: fit the PCA face space and the coefficients of every train and val sample.

Reads the train/val lists (artifacts/split), their ground truth (data.root/info) and the 51
blendshape meshes (data.blendshapes). Writes artifacts/pca/:
  basis.npz              mean (V,3), components (K,V,3), std (K,), wpdc_weights (K,) mm,
                         flip_perm (V,) (left-right vertex permutation of the training meshes), or
                         flip_problem (a string) when they are not left-right symmetric
  coeffs_{split}.npy     (N, K) float32 normalised coefficients, rows = the split's list
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
from stages.common.params import load_params, section, stage_args
from stages.face.pca import (fit_pca, read_blendshapes, read_neutral_list,
                             reconstruction_errors, select_neutral_frames, vertex_flip)
from stages.wcpa.layout import labelled_rows, load_labels, load_resources, read_list, write_list

log = logging.getLogger("pca")
SPLITS = ("train", "val")
NEUTRAL_ACTION = "neutral"   # the synthetic data's rest-face action: used to measure, never to select


def choose_neutral(table: pd.DataFrame, verts: np.ndarray, blendshapes: np.ndarray, neutral_list: str,
                   seed: int, max_frames: int) -> np.ndarray:
    """Row indices of one neutral frame per training subject (automatic, or a hand-made list),
    among the labelled rows of verts (N, V, 3) (a skipped sample is never chosen)."""
    labelled = np.flatnonzero(labelled_rows(verts))
    table, verts = table.iloc[labelled].reset_index(drop=True), verts[labelled]
    if neutral_list:
        log.info("neutral meshes from the hand-made list %s", neutral_list)
        return labelled[read_neutral_list(neutral_list, table)]
    return labelled[select_neutral_frames(verts, table.subject_id.to_numpy(), blendshapes, max_frames, seed)]


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


def run(params: dict, out: Path = Path("artifacts/pca"), split_dir: Path = Path("artifacts/split")) -> dict:
    cfg, data = section(params, "pca"), section(params, "data")
    resources = load_resources(data.root)
    tables = {s: read_list(split_dir / f"{s}.csv") for s in SPLITS}
    bad = BadInputs(skip=data.skip_bad, max_fraction=data.max_bad_fraction)
    labels = {}
    for split in SPLITS:
        log.info("reading %d %s labels from %s", len(tables[split]), split, data.root)
        labels[split] = load_labels(data.root, tables[split], resources.n_verts, bad)
    bad.finish(out, total=sum(len(t) for t in tables.values()))
    train_verts = labels["train"][0]
    blendshapes = read_blendshapes(data.blendshapes, resources.n_verts)
    chosen = choose_neutral(tables["train"], train_verts, blendshapes, cfg.neutral_list, params["seed"],
                            cfg.max_frames_per_subject)
    meshes = np.concatenate([train_verts[chosen].astype(np.float64), blendshapes])
    log.info("PCA of %d neutral + %d blendshape meshes", len(chosen), len(blendshapes))
    basis = fit_pca(meshes, cfg.n_components)
    metrics = {"n_meshes": len(meshes), "n_neutral": len(chosen), "n_blendshapes": len(blendshapes),
               "n_components": basis.n_components, "neutral": neutral_check(tables["train"], chosen)}
    for split in SPLITS:
        verts, poses = labels[split]
        save_npy(out / f"coeffs_{split}.npy", basis.project(verts))
        save_npy(out / f"verts_{split}.npy", verts)
        save_npy(out / f"poses_{split}.npy", poses)
        labelled = labelled_rows(verts)
        metrics[f"reconstruction_{split}"] = error_summary(reconstruction_errors(basis, verts[labelled]))
        metrics[f"skipped_{split}"] = int((~labelled).sum())
    basis.save(out / "basis.npz", **vertex_flip(train_verts[labelled_rows(train_verts)]))
    write_list(out / "neutral.csv", tables["train"].iloc[chosen])
    save_json(out / "metrics.json", metrics)
    log.info("metrics: %s", metrics)
    return metrics


def main() -> None:
    args = stage_args(__doc__.splitlines()[0])
    logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s")
    run(load_params(args.params))


if __name__ == "__main__":
    main()
