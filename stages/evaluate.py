"""Stage evaluate: the challenge score and the paper's metrics of one predictor, on val and test.

`python -m stages.evaluate --predictor NAME` reads artifacts/NAME/predictions_{val,test}.npz.
val: ground truth from <data.root>/info. test: ground truth from <data.test_gt>/info (the
synthetic set's local leaderboard); where that folder has no info/ (NO_TEST_GT, kept in git: the
real challenge's test labels are not public) the test metrics are skipped (logged), and the test
sheet shows the predictions alone.
Writes to artifacts/evaluate/NAME/: metrics.json ({"val": {...}, "test": {...}}), headline.json
(the same splits with HEADLINE_KEYS only: the file dvc.yaml declares as metrics),
errors_{val,test}.csv (per sample, with ids, yaw_deg and distance_m), plots/<split>_*.csv
(histograms and error against |yaw| and distance) and sheet_{val,test}.png.
Rows the crop stage skipped (the predictions' `skipped`) are scored with their fallback
prediction, as the submission holds it, but never drawn (their image may be unreadable). With
data.skip_bad a bad ground-truth info file leaves its row out of the metrics, listed in skipped.csv.
Predictions and labels are read a chunk of rows at a time: memory stays flat in the split's size.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from stages.common.badinput import BadInputs
from stages.common.io import atomic_write, save_json
from stages.common.params import DataParams, Params
from stages.common.predictor import add_predictor, check_finite, predictions_path
from stages.common.stage import stage_main
from stages.common.threads import ordered_thread_map
from stages.viz.draw import save_png
from stages.viz.sheet import SheetSample, pick_extremes, pick_random, qualitative_sheet
from stages.wcpa.layout import (DataError, Resources, image_path, info_path, iter_labels, labelled_rows, list_path,
                                load_resources, read_image, read_info, read_list, sample_key)
from stages.wcpa.predictions import open_predictions
from stages.wcpa.report import empty_error_table, error_table, plot_tables
from stages.wcpa.score import summarize

log = logging.getLogger(__name__)
SPLIT = Path("artifacts/split")
NO_TEST_GT = "data/no_test_gt"     # a folder without labels, kept in git: the setting for "none"
OUT = Path("artifacts/evaluate")
SUMMARY_COLUMNS = ["score", "score_cam", "score_add", "score_shape10", "ADD", "MAE_r", "MAE_t",
                   "mesh_median", "mesh_mean", "landmark_px", "n"]
# The keys `dvc metrics show` / `dvc exp show` list: the score, its three terms, the pose and shape
# errors and the landmark error (absent for predictors without landmarks, e.g. the baseline).
SCORE_ROWS = 64         # rows a thread scores at a time: (64, V, 3) float64 temporaries of 1.9 MB at 1220 vertices
HEADLINE_KEYS = ("score", "score_cam", "score_add", "score_shape10", "ADD", "MAE_r", "MAE_t",
                 "mesh_median", "mesh_mean", "landmark_px")


@dataclass(frozen=True)
class SplitData:
    """One split to evaluate: its list, the predictions file and the ground-truth root (None: none)."""

    name: str
    table: pd.DataFrame
    predictions: Path
    gt_root: Path | None


@dataclass(frozen=True)
class ScoredRows:
    """The per-sample errors of a split's rows with ground truth (an error_table) and those
    rows' indices in the split (N_scored,)."""

    errors: pd.DataFrame
    rows: np.ndarray


def splits_of(predictor: str, data: DataParams) -> list[SplitData]:
    """val (labels in data.root) and test (labels in data.test_gt when present)."""
    root, test_gt = Path(data.root), labelled_test_folder(data.test_gt)
    if test_gt is None:
        log.info("test: no ground truth at data.test_gt = %r; test metrics skipped (the real challenge's "
                 "test labels are not public: upload submissions/%s.zip instead)", data.test_gt, predictor)
    return [SplitData("val", read_list(SPLIT / "val.csv"), predictions_path(predictor, "val"), root),
            SplitData("test", read_list(list_path(root, "test")), predictions_path(predictor, "test"), test_gt)]


def labelled_test_folder(test_gt: str) -> Path | None:
    """The folder of the test labels (its info/ read as the data root's) named by data.test_gt,
    or None where that folder has no info/ (NO_TEST_GT: the real data's labels are not public).
    dvc.yaml lists the folder as a dependency, so it must exist: an empty name or a missing folder
    stops with DataError."""
    if not test_gt:
        raise DataError(f"data.test_gt is empty: name the folder of the test labels, or {NO_TEST_GT} where there "
                        "are none (dvc.yaml lists it as a dependency of evaluate)")
    if not Path(test_gt).is_dir():
        raise DataError(f"{test_gt}: data.test_gt names no folder (the test labels' folder, or {NO_TEST_GT} where "
                        "there are none)")
    return Path(test_gt) if (Path(test_gt) / "info").is_dir() else None


def sheet_samples(split: SplitData, root: Path, predictions: dict, scored: ScoredRows | None,
                  resources: Resources, count: int, seed: int) -> list[SheetSample]:
    """The rows to draw among those the crop stage did not skip: lowest/highest scores with
    ground truth (their labels read again), seeded random rows without."""
    camera = resources.camera
    drawable = ~crop_skipped(predictions)
    if scored is None:
        rows = np.flatnonzero(drawable)
        rows = rows[pick_random(len(rows), count, seed)]
        labels = [None] * len(rows)
    else:
        positions = np.flatnonzero(drawable[scored.rows])
        positions = positions[pick_extremes(scored.errors["score"].to_numpy()[positions], count)]
        rows = scored.rows[positions]
        labels = [f"score {score:.1f} mm" for score in scored.errors["score"].to_numpy()[positions]]
    samples = []
    for i, label in zip(rows, labels):
        row = split.table.iloc[i]
        uv_pred = camera.project(predictions["verts"][i], predictions["R_t"][i])
        uv_gt = None if label is None else camera.project(*read_info(info_path(split.gt_root, row), resources.n_verts))
        samples.append(SheetSample(read_image(image_path(root, row), camera.size), uv_pred, uv_gt, sample_key(row),
                                   label or "prediction"))
    return samples


def write_plots(folder: Path, split: str, errors: pd.DataFrame, bins: int) -> None:
    """plots/<split>_<kind>.csv for each kind of plot_tables (header only without ground truth)."""
    for kind, table in plot_tables(errors, bins).items():
        with atomic_write(folder / f"{split}_{kind}.csv") as tmp:
            table.to_csv(tmp, index=False, float_format="%.6g")


def crop_skipped(predictions: dict) -> np.ndarray:
    """(N,) bool: rows the crop stage skipped (the predictions' `skipped`; none when absent)."""
    if "skipped" not in predictions:
        return np.zeros(len(predictions["verts"]), bool)
    return np.asarray(predictions["skipped"][:], dtype=bool)


def score_split(split: SplitData, predictions: dict, resources: Resources, bad: BadInputs,
                workers: int) -> ScoredRows:
    """The errors of every row with ground truth, a chunk at a time as its labels are read
    (iter_labels on `workers` processes, the rows of skipped info files left out), SCORE_ROWS
    rows at a time of the predictions (open_predictions) read and scored on `workers` threads:
    memory stays flat in the split's size, and the scoring grows with the cores."""
    keys = [key for key in ("verts", "R_t", "landmarks") if key in predictions]

    def labelled_chunks():
        for start, verts, poses in iter_labels(split.gt_root, split.table, resources.n_verts, bad, workers):
            keep = np.flatnonzero(labelled_rows(poses))
            for part in (keep[first:first + SCORE_ROWS] for first in range(0, len(keep), SCORE_ROWS)):
                yield start + part, split.table.iloc[start + part], verts[part], poses[part]

    def errors(rows: np.ndarray, table: pd.DataFrame, verts: np.ndarray,
               poses: np.ndarray) -> tuple[np.ndarray, pd.DataFrame]:
        chunk = {key: predictions[key][rows] for key in keys}
        return rows, error_table(table, verts, poses, chunk, resources.camera)

    scored = list(ordered_thread_map(errors, labelled_chunks(), workers))
    if not scored:
        return ScoredRows(empty_error_table("landmarks" in predictions), np.zeros(0, np.int64))
    return ScoredRows(pd.concat([part for _, part in scored], ignore_index=True),
                      np.concatenate([rows for rows, _ in scored]))


def evaluate_split(split: SplitData, out: Path, root: Path, resources: Resources, params: Params,
                   bad: BadInputs) -> dict | None:
    """Metrics of one split (None without ground truth); writes its errors, plots and sheet."""
    settings = params.evaluate
    predictions = open_predictions(split.predictions, split.table)
    check_finite(split.predictions, predictions)
    scored = None
    if split.gt_root is None:
        errors = empty_error_table("landmarks" in predictions)
    else:
        scored = score_split(split, predictions, resources, bad, params.data.workers)
        errors = scored.errors
    with atomic_write(out / f"errors_{split.name}.csv") as tmp:
        errors.to_csv(tmp, index=False, float_format="%.6g")
    write_plots(out / "plots", split.name, errors, settings.bins)
    samples = sheet_samples(split, root, predictions, scored, resources, settings.sheet_samples, params.seed)
    save_png(out / f"sheet_{split.name}.png", qualitative_sheet(samples, resources.faces, resources.kpt_ind,
                                                                 settings.tile_size))
    return None if scored is None else summarize(errors)


def metrics_table(metrics: dict) -> str:
    """The metrics of each split as a small text table (mm, degrees, px)."""
    frame = pd.DataFrame(metrics).T.reindex(columns=SUMMARY_COLUMNS).dropna(axis=1, how="all")
    return frame.to_string(float_format=lambda v: f"{v:.3f}", formatters={"n": lambda v: f"{v:.0f}"})


def headline(metrics: dict) -> dict:
    """{split: {key: value}} -> the same splits with only HEADLINE_KEYS, in that order."""
    return {split: {key: values[key] for key in HEADLINE_KEYS if key in values}
            for split, values in metrics.items()}


def write_headline(out: Path, metrics: dict) -> None:
    """out/headline.json: the headline keys of every scored split (see headline)."""
    save_json(out / "headline.json", headline(metrics))


def run(params: Params, predictor: str) -> None:
    data = params.data
    root = Path(data.root)
    resources = load_resources(root)
    out = OUT / predictor
    metrics = {}
    bad = BadInputs(skip=data.skip_bad, max_fraction=data.max_bad_fraction)
    splits = splits_of(predictor, data)
    for split in splits:
        summary = evaluate_split(split, out, root, resources, params, bad)
        if summary is not None:
            metrics[split.name] = summary
    bad.finish(out, total=sum(len(s.table) for s in splits if s.gt_root is not None))
    save_json(out / "metrics.json", metrics)
    write_headline(out, metrics)
    log.info("%s (mm, deg, px):\n%s", predictor, metrics_table(metrics))


def main(argv: list[str] | None = None) -> None:
    stage_main(__doc__, run, add_predictor, argv)


if __name__ == "__main__":
    main()
