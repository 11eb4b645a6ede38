"""Stage train on a tiny project: one epoch writes a checkpoint, a rerun with more epochs resumes."""
import json
import logging
import sys

import torch
import yaml

from stages import pca, train
from tests.tiny_project import make_tiny_project


def run_main(monkeypatch):
    monkeypatch.setattr(sys, "argv", ["train"])
    train.main()


def test_train_writes_checkpoints_and_resumes(tmp_path, monkeypatch, caplog):
    params = make_tiny_project(tmp_path, subjects=4, crop_size=32)
    params["train"].update(epochs=1, batch_size=6)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    monkeypatch.chdir(tmp_path)
    pca.run(params)
    run_main(monkeypatch)
    out = tmp_path / "artifacts" / "train"
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["epoch_000.pt"]
    first = torch.load(out / "checkpoints" / "epoch_000.pt", weights_only=False)
    assert first["epoch"] == 0 and set(first) >= {"model", "optimizer", "scaler", "params", "basis_shape"}
    model = torch.load(out / "model.pt", weights_only=False)
    assert model["config"]["n_components"] == 20 and model["config"]["coordconv"]
    metrics = json.loads((out / "metrics.json").read_text())
    assert {"score", "ADD", "MAE_r", "MAE_t", "landmark_crop_px"} <= {k[4:] for k in metrics["final"] if k.startswith("val_")}
    assert (out / "live" / "plots" / "metrics" / "val" / "score.tsv").is_file()

    params["train"]["epochs"] = 2
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    with caplog.at_level(logging.INFO):
        run_main(monkeypatch)
    assert "resuming from" in caplog.text and "epoch_000.pt" in caplog.text
    metrics = json.loads((out / "metrics.json").read_text())
    assert [e["epoch"] for e in metrics["epochs"]] == [1, 2]
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["epoch_000.pt", "epoch_001.pt"]
    assert not (tmp_path / "dvc.yaml").exists()      # dvclive wrote no dvc.yaml
