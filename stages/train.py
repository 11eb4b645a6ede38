"""Stage train: the two-branch network on the crop store, without the PnP layer (paper sec. 3.1).

Reads artifacts/crop/{train,val}, artifacts/pca (basis, label cache), artifacts/split and the
camera of data.root. Writes artifacts/train/: checkpoints/epoch_NNN.pt (every epoch; a rerun
resumes from the newest one written with the same params and inputs: crops, PCA basis and
label caches, split lists and resources, by content), model.pt (the final network, with the
identity of those inputs),
metrics.json (final val metrics and the per-epoch history) and live/ (dvclive curves).
Multi-GPU: `torchrun --nproc_per_node N -m stages.train`.
"""
from __future__ import annotations

from pathlib import Path

from stages.common.params import Params
from stages.common.stage import stage_main
from stages.nets.trainer import TrainPaths, run_training
from stages.wcpa.layout import load_resources

OUT = Path("artifacts/train")


def run(params: Params, paths: TrainPaths | None = None) -> dict:
    paths = paths or TrainPaths(crop=Path("artifacts/crop"), pca=Path("artifacts/pca"),
                                split=Path("artifacts/split"), out=OUT)
    camera = load_resources(params.data.root).camera
    return run_training(params, paths, camera)


def main(argv: list[str] | None = None) -> None:
    stage_main(__doc__, run, argv=argv)


if __name__ == "__main__":
    main()
