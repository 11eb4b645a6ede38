"""How much of a split's score ratio is the draw of its subjects: a subject bootstrap.

A split's challenge score is a mean over its samples, and its samples come in groups (the
frames of one subject share the face). Resampling whole subjects with replacement gives the
spread the ratio (predictor mean / baseline mean, both on the same resampled samples) would have
over other draws of as many subjects. Reads the evaluate stage's per-sample errors
(artifacts/evaluate/<predictor>/errors_<split>.csv). Prints, per split, the ratio, its bootstrap
standard error and 95 % interval, and the share of draws at or under --bar.

    python -m benchmarks.split_noise [--predictor infer] [--reference baseline] [--draws 4000] [--bar 0.3333]
Needs dvc repro evaluate@infer evaluate@baseline.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pandas as pd

KEYS = ["subject_id", "facial_action", "img_id"]


def paired_scores(folder: Path, predictor: str, reference: str, split: str) -> pd.DataFrame:
    """One row per sample: subject_id, score (predictor), reference (the reference's score)."""
    def read(name: str) -> pd.DataFrame:
        path = folder / name / f"errors_{split}.csv"
        if not path.is_file():
            raise SystemExit(f"{path}: not found (run `dvc repro evaluate@{name}`)")
        return pd.read_csv(path, dtype={k: str for k in KEYS})[KEYS + ["score"]]
    both = read(predictor).merge(read(reference), on=KEYS, suffixes=("", "_reference"), validate="one_to_one")
    return both.rename(columns={"score_reference": "reference"})


def resampled_sums(table: pd.DataFrame, columns: list[str], draws: int, seed: int = 0) -> np.ndarray:
    """Sums (draws, len(columns) + 1) of `columns` and of the sample count over `draws`
    resamplings of whole subjects (with replacement, as many subjects as the table has)."""
    grouped = table.groupby("subject_id")
    sums = np.column_stack([grouped[columns].sum().to_numpy(), grouped.size().to_numpy()])
    picks = np.random.default_rng(seed).multinomial(len(sums), np.full(len(sums), 1 / len(sums)), size=draws)
    return picks @ sums


def subject_bootstrap(table: pd.DataFrame, draws: int, seed: int = 0) -> np.ndarray:
    """Ratios (draws,) of the summed scores over `draws` resamplings of whole subjects."""
    totals = resampled_sums(table, ["score", "reference"], draws, seed)
    return totals[:, 0] / totals[:, 1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--evaluate", default="artifacts/evaluate")
    parser.add_argument("--predictor", default="infer")
    parser.add_argument("--reference", default="baseline")
    parser.add_argument("--draws", type=int, default=4000)
    parser.add_argument("--bar", type=float, default=1 / 3)
    args = parser.parse_args()
    for split in ("val", "test"):
        table = paired_scores(Path(args.evaluate), args.predictor, args.reference, split)
        ratio = table["score"].sum() / table["reference"].sum()
        boot = subject_bootstrap(table, args.draws)
        low, high = np.percentile(boot, [2.5, 97.5])
        print(f"{split}: {table['subject_id'].nunique()} subjects, {len(table)} samples; ratio {ratio:.4f}, "
              f"subject-bootstrap s.e. {boot.std():.4f}, 95% interval {low:.4f}-{high:.4f}, "
              f"draws <= {args.bar:.4f}: {np.mean(boot <= args.bar):.1%}")


if __name__ == "__main__":
    main()
