"""Stage train on a tiny project: one epoch writes a checkpoint, a rerun with more epochs resumes."""
import json
import logging
import sys
from types import SimpleNamespace

import pytest
import torch
import yaml

from stages import pca, train
from stages.nets import losses
from stages.nets.model import FaceNet, NetConfig
from stages.nets.trainer import Trainer, TrainPaths, fingerprint, state_layout
from stages.wcpa.layout import load_resources
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


def one_step_trainer(tmp_path, monkeypatch, landmark_loss):
    """A Trainer on a tiny project after one training step -> (trainer, batch, sigma FC before)."""
    params = make_tiny_project(tmp_path, subjects=4, crop_size=32)
    params["train"].update(batch_size=6, landmark_loss=landmark_loss)
    monkeypatch.chdir(tmp_path)
    pca.run(params)
    paths = TrainPaths(crop=tmp_path / "artifacts" / "crop", pca=tmp_path / "artifacts" / "pca",
                       split=tmp_path / "artifacts" / "split", out=tmp_path / "artifacts" / "train")
    trainer = Trainer(params, paths, load_resources(params["data"]["root"]).camera)
    sigma_before = trainer.model.landmarks.sigma.weight.detach().clone()
    batch = next(iter(trainer.loader))
    trainer.train_step(batch, 0, 10)
    return trainer, batch, sigma_before


def test_mse_leaves_sigma_out_and_the_vdc_comes_from_the_coefficients(tmp_path, monkeypatch):
    trainer, batch, sigma_before = one_step_trainer(tmp_path, monkeypatch, "mse")
    sigma = trainer.model.landmarks.sigma
    assert sigma.weight.grad is None and torch.equal(sigma.weight, sigma_before)
    assert trainer.model.landmarks.mu.weight.grad is not None and not trainer.needs_verts()
    with torch.no_grad():                 # the coefficient VDC is eq. 2 on the decoded mesh
        out = trainer.model(batch["images"])
        terms = trainer.step_terms({k: v for k, v in out.items() if k != "verts"}, batch, 0)
        on_mesh = losses.vdc(out["verts"], batch["verts"])
    assert terms["vdc"].item() == pytest.approx(on_mesh.item(), rel=1e-4)


def test_gnll_trains_sigma(tmp_path, monkeypatch):
    trainer, _, sigma_before = one_step_trainer(tmp_path, monkeypatch, "gnll")
    assert not torch.equal(trainer.model.landmarks.sigma.weight, sigma_before)


def test_a_checkpoint_of_another_network_layout_has_another_fingerprint():
    """Older code's checkpoints (e.g. one FC for mu and sigma, or sigma trained) are not resumed."""
    config = NetConfig(depth=18, coordconv=True, shape_head="pca", crop_size=32, n_verts=10, n_components=4)
    cfg, lambdas = SimpleNamespace(lr=1e-3, epochs=3), {"gnll": 0.01}
    def fp(model):
        return fingerprint(cfg, lambdas, 0, {"layout": state_layout(model)})
    first, second = FaceNet(config), FaceNet(config)
    assert fp(first) == fp(second)
    second.landmarks.sigma.requires_grad_(False)             # frozen: another optimizer state
    third = FaceNet(config)
    third.landmarks.sigma = torch.nn.Linear(512, 20)          # another shape
    assert fp(second) != fp(first) != fp(third)
