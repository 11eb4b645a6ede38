"""The PCA face space of data without blendshapes: how much of the training and val meshes it
misses with the neutral meshes alone, and with `pca.data_expressions` expression modes of the
training frames in the blendshapes' place (stages.face.pca.expression_modes).

Runs stage pca's `run` on the project's data and split (artifacts/split) with `data.blendshapes`
set to the committed empty folder, into a temporary folder, for each neutral source:
  automatic  the stage's own choice without blendshapes (each subject's medoid frame);
  action     each subject's first frame of the facial action named `neutral` (`--action`), as a
             hand-made `pca.neutral_list` would give: neutral meshes that carry no expression.
Prints, per neutral source and number of expression modes, the meshes fitted and the mean and
largest per-sample reconstruction error (mm) of the training and val meshes.

    python -m benchmarks.ablate_pca [--params params.yaml] [--modes 0 51] [--action neutral]
"""
from __future__ import annotations

import argparse
import logging
import tempfile
from pathlib import Path

import pandas as pd

from stages import pca
from stages.common.params import load_params
from stages.face.pca import NO_BLENDSHAPES
from stages.wcpa.layout import write_list

SPLIT = Path("artifacts/split")


def action_neutrals(action: str, folder: Path) -> Path:
    """A neutral list (CSV of ids) of each training subject's first frame of `action`."""
    table = pd.read_csv(SPLIT / "train.csv", dtype=str, keep_default_na=False)
    rows = table[table.facial_action.str.lower() == action.lower()].groupby("subject_id", sort=False).head(1)
    if not len(rows):
        raise SystemExit(f"{SPLIT / 'train.csv'}: no facial action named {action!r}")
    path = folder / "neutral_list.csv"
    write_list(path, rows)
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--modes", type=int, nargs="+", default=[0, 51])
    parser.add_argument("--action", default="neutral")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    params = load_params(args.params).replace(data={"blendshapes": NO_BLENDSHAPES})
    print(f"{'neutrals':10s} {'modes':>5s} {'meshes':>6s} {'train mean':>10s} {'train max':>9s} "
          f"{'val mean':>9s} {'val max':>8s}  (reconstruction error, mm)")
    with tempfile.TemporaryDirectory() as tmp:
        sources = {"automatic": "", "action": str(action_neutrals(args.action, Path(tmp)))}
        for name, neutral_list in sources.items():
            for modes in args.modes:
                run = params.replace(pca={"neutral_list": neutral_list, "data_expressions": modes})
                metrics = pca.run(run, out=Path(tmp) / f"{name}_{modes}", split_dir=SPLIT)
                train, val = metrics["reconstruction_train"], metrics["reconstruction_val"]
                print(f"{name:10s} {modes:5d} {metrics['n_meshes']:6d} {train['mean_mm']:10.2e} {train['max_mm']:9.2e} "
                      f"{val['mean_mm']:9.2e} {val['max_mm']:8.2e}")


if __name__ == "__main__":
    main()
