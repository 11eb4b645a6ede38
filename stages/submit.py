"""Stage submit: a predictor's test predictions -> the challenge's upload files.

`python -m stages.submit --predictor NAME` reads artifacts/NAME/predictions_test.npz (its rows
must be the test list's rows, in order), refuses NaN/inf, validates the format
(stages/wcpa/submission.py) and writes submissions/NAME.npy and submissions/NAME.zip, a block
of rows at a time (memory flat in the test set's size).
"""
from __future__ import annotations

import logging
from pathlib import Path

from stages.common.params import Params
from stages.common.predictor import add_predictor, check_finite, predictions_path
from stages.common.stage import stage_main
from stages.wcpa.layout import list_path, load_resources, read_list
from stages.wcpa.predictions import open_predictions
from stages.wcpa.submission import write_submission

log = logging.getLogger(__name__)
OUT = Path("submissions")


def run(params: Params, predictor: str) -> None:
    root = Path(params.data.root)
    test = read_list(list_path(root, "test"))
    source = predictions_path(predictor, "test")
    predictions = open_predictions(source, test)
    check_finite(source, predictions)      # no submission is ever written from NaN predictions
    n_verts = load_resources(root).n_verts
    write_submission(OUT / f"{predictor}.npy", OUT / f"{predictor}.zip", predictions["verts"],
                     predictions["R_t"], len(test), n_verts)
    log.info("wrote %s and %s: %d rows x %d columns", OUT / f"{predictor}.npy", OUT / f"{predictor}.zip",
             len(test), 3 * n_verts + 12)


def main(argv: list[str] | None = None) -> None:
    stage_main(__doc__, run, add_predictor, argv)


if __name__ == "__main__":
    main()
