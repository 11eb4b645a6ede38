"""Stage submit: a predictor's test predictions -> the challenge's upload files.

`python -m stages.submit --predictor NAME` reads artifacts/NAME/predictions_test.npz (its rows
must be the test list's rows, in order), refuses NaN/inf, validates the format
(stages/wcpa/submission.py) and writes submissions/NAME.npy and submissions/NAME.zip.
"""
from __future__ import annotations

import logging
from pathlib import Path

from stages.common.params import load_params, section
from stages.common.predictor import check_finite, predictions_path, predictor_args
from stages.wcpa.layout import list_path, load_resources, read_list
from stages.wcpa.predictions import load_predictions
from stages.wcpa.submission import write_submission

log = logging.getLogger(__name__)
OUT = Path("submissions")


def main(params_file: str, predictor: str) -> None:
    root = Path(section(load_params(params_file), "data").root)
    test = read_list(list_path(root, "test"))
    source = predictions_path(predictor, "test")
    predictions = load_predictions(source, test)
    check_finite(source, predictions)      # no submission is ever written from NaN predictions
    n_verts = load_resources(root).n_verts
    write_submission(OUT / f"{predictor}.npy", OUT / f"{predictor}.zip", predictions["verts"],
                     predictions["R_t"], len(test), n_verts)
    log.info("wrote %s and %s: %d rows x %d columns", OUT / f"{predictor}.npy", OUT / f"{predictor}.zip",
             len(test), 3 * n_verts + 12)


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    args = predictor_args(__doc__.splitlines()[0])
    main(args.params, args.predictor)
