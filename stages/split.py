"""Stage split: subject-wise train/val split of the data root's training list.

Reads <data.root>/list/WCPA_track2_train.csv; a seeded draw puts split.val_fraction of the
subjects (at least one, never all) in val. Writes artifacts/split/train.csv and val.csv (list
format, the original row order kept) and summary.json.
"""
from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd

from stages.common.io import atomic_dir, save_json
from stages.common.params import Params
from stages.common.stage import stage_main
from stages.wcpa.layout import DataError, list_path, read_list, write_list

log = logging.getLogger(__name__)
OUT = Path("artifacts/split")


def choose_val_subjects(subjects: pd.Series, val_fraction: float, seed: int) -> set[str]:
    """Seeded choice of round(val_fraction * S) subjects (clipped to 1 .. S-1) from a list's ids."""
    unique = np.array(sorted(set(subjects)))
    if len(unique) < 2:
        raise DataError(f"a subject-wise split needs at least 2 subjects, the list has {len(unique)}")
    n_val = int(np.clip(round(val_fraction * len(unique)), 1, len(unique) - 1))
    rng = np.random.default_rng(seed)
    return set(rng.choice(unique, size=n_val, replace=False).tolist())


def split_table(table: pd.DataFrame, val_fraction: float, seed: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    """A list table -> (train rows, val rows), subject-disjoint, each in the original order."""
    is_val = table["subject_id"].isin(choose_val_subjects(table["subject_id"], val_fraction, seed))
    return table[~is_val].reset_index(drop=True), table[is_val].reset_index(drop=True)


def summary(train: pd.DataFrame, val: pd.DataFrame, source: Path) -> dict:
    """Counts of the split, for artifacts/split/summary.json."""
    return {"source": str(source),
            "train": {"samples": len(train), "subjects": int(train["subject_id"].nunique())},
            "val": {"samples": len(val), "subjects": int(val["subject_id"].nunique())}}


def run(params: Params) -> None:
    root = Path(params.data.root)
    source = list_path(root, "train")
    train, val = split_table(read_list(source), params.split.val_fraction, params.seed)
    with atomic_dir(OUT) as tmp:
        write_list(tmp / "train.csv", train)
        write_list(tmp / "val.csv", val)
        save_json(tmp / "summary.json", summary(train, val, source))
    log.info("split %s: %d train samples (%d subjects), %d val samples (%d subjects)", source,
             len(train), train["subject_id"].nunique(), len(val), val["subject_id"].nunique())


def main(argv: list[str] | None = None) -> None:
    stage_main(__doc__, run, argv=argv)


if __name__ == "__main__":
    main()
