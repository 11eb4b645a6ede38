"""Stage finetune: the trained network finetuned through the differentiable PnP layer (EPro-PnP,
paper sec. 2.4, eq. 4-6).

Reads artifacts/train/model.pt (the start), artifacts/crop/{train,val}, artifacts/pca,
artifacts/split and the camera of data.root; params: finetune, lambda.*, seed. Writes
artifacts/finetune/: checkpoints/epoch_NNN.pt (every epoch; a rerun resumes from the newest one
written with the same params, start model and inputs; a start model trained on other inputs
stops the stage), model.pt (same format as the train stage's),
metrics.json (val metrics of the start model and the final one, their change, the history) and
live/ (dvclive curves; step 0 is the start model).
Multi-GPU: `torchrun --nproc_per_node N -m stages.finetune`.
"""
from __future__ import annotations

from pathlib import Path

from stages.common.params import Params
from stages.common.stage import stage_main
from stages.finetuning.trainer import FinetunePaths, run_finetune
from stages.nets.trainer import TrainPaths
from stages.wcpa.layout import load_resources

START = Path("artifacts/train/model.pt")
OUT = Path("artifacts/finetune")


def run(params: Params, paths: FinetunePaths | None = None) -> dict:
    paths = paths or FinetunePaths(start=START, data=TrainPaths(
        crop=Path("artifacts/crop"), pca=Path("artifacts/pca"), split=Path("artifacts/split"), out=OUT))
    camera = load_resources(params.data.root).camera
    return run_finetune(params, paths, camera)


def main(argv: list[str] | None = None) -> None:
    stage_main(__doc__, run, argv=argv)


if __name__ == "__main__":
    main()
