"""Every loader of a torch file refuses one whose pickle would run code, before running it."""
import pickle
import zipfile
from pathlib import Path

import pytest
import torch

from stages.coarse.detector import Detector
from stages.common.io import UnsafeCheckpointError, load_torch
from stages.common.resume import Checkpoints
from stages.finetuning.trainer import load_start
from stages.nets.checkpoint import CheckpointError, read_checkpoint


class RunsCode:
    """Unpickling this calls Path.touch(marker): what a planted file could do with os.system."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return Path.touch, (self.marker,)


@pytest.fixture
def planted(tmp_path):
    """A checkpoint-like dict with a code-running object inside -> (path, marker file)."""
    marker = tmp_path / "code_ran"
    path = tmp_path / "checkpoints" / "epoch_009.pt"
    path.parent.mkdir()
    torch.save({"epoch": 9, "fingerprint": "x", "config": {}, "model": {}, "params": {}, "basis_shape": [],
                "inputs": {}, "payload": RunsCode(marker)}, path)
    return path, marker


def test_the_planted_file_does_run_code_when_unpickled(planted):
    path, marker = planted
    with zipfile.ZipFile(path) as archive:                  # a torch file is a zip with a pickle inside
        pickle.loads(archive.read(next(n for n in archive.namelist() if n.endswith("data.pkl"))))
    assert marker.exists()


@pytest.mark.parametrize("load, error", [
    (load_torch, UnsafeCheckpointError),
    (read_checkpoint, CheckpointError),
    (load_start, UnsafeCheckpointError),
    (lambda path: Detector(path, torch.device("cpu")), UnsafeCheckpointError),
])
def test_model_loaders_refuse_it(planted, load, error):
    path, marker = planted
    with pytest.raises(error, match=f"{path}: refused: not a file of tensors and plain data"):
        load(path)
    assert not marker.exists()


def test_resume_ignores_it(planted, caplog):
    path, marker = planted
    assert Checkpoints(path.parent, "x").latest(epochs=20) is None
    assert not marker.exists() and "refused" in caplog.text
