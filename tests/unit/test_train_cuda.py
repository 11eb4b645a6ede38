"""CUDA + AMP training steps (skipped without a GPU)."""
from pathlib import Path

import pytest
import torch

from stages import pca
from stages.nets.trainer import Trainer, TrainPaths
from stages.wcpa.camera import Camera
from tests.tiny_project import PROJ, make_tiny_project

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


@pytest.mark.parametrize("train", [{}, {"pose_head": "direct6dof", "pose_frame": "camera", "coordconv": True,
                                        "coord_maps": "image"}], ids=["pnp", "direct-camera-image-maps"])
def test_amp_training_epoch_on_cuda(tmp_path, monkeypatch, train):
    params = make_tiny_project(tmp_path, subjects=4, crop_size=32)
    params = params.replace(train={"device": "cuda", "amp": True, "batch_size": 6, **train},
                            infer={"checkpoint": "train"})
    monkeypatch.chdir(tmp_path)
    pca.run(params)
    base = Path(tmp_path)
    paths = TrainPaths(crop=base / "artifacts/crop", pca=base / "artifacts/pca",
                       split=base / "artifacts/split", out=base / "artifacts/train")
    trainer = Trainer(params, paths, Camera(PROJ, 800, 800))
    assert trainer.amp in (torch.bfloat16, torch.float16)
    assert trainer.scaler.is_enabled() == (trainer.amp == torch.float16)   # bfloat16 needs no loss scaling
    terms = trainer.train_epoch(0)
    assert all(torch.isfinite(torch.tensor(v)) for v in terms.values())
    assert next(trainer.model.parameters()).is_cuda
    assert all(map(torch.isfinite, map(torch.tensor, trainer.validate().values())))
