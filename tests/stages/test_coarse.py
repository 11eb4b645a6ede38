"""Stages coarse_train and coarse_predict on a tiny data root (CPU, seconds)."""
import json
import numpy as np
import pandas as pd
import pytest

from stages import coarse_predict, coarse_train
from stages.coarse import train as train_module
from stages.coarse.train import Checkpoint
from stages.common.params import load_params
from stages.wcpa.layout import DataError, image_path, read_list, write_list
from tests.stages.tiny_data import write_tiny_root

TINY = {"locate_backbone": "mobilenet_v3_small", "refine_backbone": "mobilenet_v3_small",
        "locate_size": 64, "refine_size": 64, "epochs": 2, "batch_size": 4, "head_width": 16}


@pytest.fixture
def tiny(tmp_path, monkeypatch):
    """Params pointing at a tiny data root with a train/val split, in tmp_path."""
    tables = write_tiny_root(tmp_path / "data", n_train=10, n_test=3)
    split_dir = tmp_path / "split"
    write_list(split_dir / "train.csv", tables["train"].iloc[:8])
    write_list(split_dir / "val.csv", tables["train"].iloc[8:])
    params = load_params("params.yaml")
    params["data"].update(root=str(tmp_path / "data"), workers=1)
    params["coarse_train"].update(TINY)
    params["coarse_predict"].update(batch_size=2)
    return params, tmp_path, split_dir


def test_train_then_predict_writes_aligned_landmarks(tiny):
    params, tmp, split_dir = tiny
    metrics = coarse_train.run(params, tmp / "coarse_train", split_dir)
    assert (tmp / "coarse_train/model.pt").is_file()
    assert not (tmp / "coarse_train.partial").exists()
    assert np.isfinite(metrics["val/refine_median_px"])
    curve = (tmp / "coarse_train/live/plots/metrics/train/loss.tsv").read_text().splitlines()
    assert len(curve) == 1 + TINY["epochs"]
    result = coarse_predict.run(params, tmp / "coarse_predict", tmp / "coarse_train/model.pt", split_dir)
    for split, count in (("train", 8), ("val", 2), ("test", 3)):
        landmarks = np.load(tmp / f"coarse_predict/{split}.npy")
        assert landmarks.shape == (count, 68, 2) and np.isfinite(landmarks).all()
    saved = json.loads((tmp / "coarse_predict/metrics.json").read_text())
    assert saved["val"]["images"] == 2 and saved["val"]["median_px"] == result["val"]["median_px"]


def test_interrupted_training_resumes_after_the_last_checkpoint(tiny, monkeypatch):
    params, tmp, split_dir = tiny
    save = Checkpoint.save

    def save_then_interrupt(self, state):
        save(self, state)
        raise KeyboardInterrupt

    monkeypatch.setattr(Checkpoint, "save", save_then_interrupt)
    with pytest.raises(KeyboardInterrupt):
        coarse_train.run(params, tmp / "coarse_train", split_dir)
    assert (tmp / "coarse_train.partial/checkpoint.pt").is_file()
    assert not (tmp / "coarse_train").exists()
    monkeypatch.setattr(Checkpoint, "save", save)
    epochs = []
    run_epoch = train_module._epoch
    monkeypatch.setattr(train_module, "_epoch", lambda *a, **k: epochs.append(a[-1]) or run_epoch(*a, **k))
    coarse_train.run(params, tmp / "coarse_train", split_dir)
    assert epochs == [1]
    curve = (tmp / "coarse_train/live/plots/metrics/train/loss.tsv").read_text().splitlines()
    assert len(curve) == 1 + TINY["epochs"]


def test_bad_images_stop_or_are_skipped_once(tiny):
    params, tmp, split_dir = tiny
    table = read_list(split_dir / "train.csv")
    corrupt, empty = (image_path(params["data"]["root"], row) for row in list(table.itertuples(index=False))[2:4])
    corrupt.write_bytes(b"not a jpeg")          # found while streaming, in every epoch
    original = empty.read_bytes()
    empty.write_bytes(b"")                       # found up front
    with pytest.raises(DataError, match=empty.name):
        coarse_train.run(params, tmp / "coarse_train", split_dir)
    empty.write_bytes(original)
    with pytest.raises(DataError, match=corrupt.name):
        coarse_train.run(params, tmp / "coarse_train", split_dir)
    empty.write_bytes(b"")
    params["data"].update(skip_bad=True, max_bad_fraction=0.5)
    coarse_train.run(params, tmp / "coarse_train", split_dir)
    skipped = pd.read_csv(tmp / "coarse_train/skipped.csv")
    assert sorted(skipped["file"]) == sorted([str(corrupt), str(empty)])
    assert json.loads((tmp / "coarse_train/metrics.json").read_text())["train_samples"] == 6
