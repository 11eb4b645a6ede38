"""Stage finetune on a tiny project: from a 1-epoch train model, one finetuning epoch writes
model.pt (the train stage's format), a checkpoint and metrics with the start and final val
metrics; a rerun with more epochs resumes, one with fewer ends at its own epoch's checkpoint; a
changed start model restarts."""
import json
import logging
import sys

import numpy as np
import pytest
import torch

from stages import finetune, pca, train
from stages.common.cropstore import stamp_run
from stages.common.params import Params
from stages.finetuning.trainer import TRAIN_KEYS, FinetuneTrainer
from tests.tiny_project import kill_in_epoch, make_tiny_project, write_params


def run_main(monkeypatch):
    monkeypatch.setattr(sys, "argv", ["finetune"])
    finetune.main()


def finetune_project(root, monkeypatch, epochs: int, mc_samples: int = 16, schedule: str = "cosine") -> Params:
    """A tiny project at `root` with a 1-epoch train model and `epochs` finetuning epochs asked for
    on `schedule`."""
    params = make_tiny_project(root, subjects=4, crop_size=32)
    params = params.replace(train={"epochs": 1, "batch_size": 6, "landmark_loss": "mse"},
                            finetune={"epochs": epochs, "batch_size": 6, "device": "cpu", "val_batch_size": 8,
                                      "mc_samples": mc_samples, "amis_iters": 2, "pnp_points": 0, "schedule": schedule})
    write_params(root / "params.yaml", params)
    monkeypatch.chdir(root)
    pca.run(params)
    train.run(params)
    return params


def test_finetune_starts_from_train_writes_model_and_resumes(tmp_path, monkeypatch, caplog):
    """Under a constant schedule (the paper's finetuning) the epochs are free between resumes."""
    params = finetune_project(tmp_path, monkeypatch, epochs=1, mc_samples=32, schedule="constant")
    run_main(monkeypatch)
    out = tmp_path / "artifacts" / "finetune"
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["epoch_000.pt"]
    model = torch.load(out / "model.pt", weights_only=True)
    start = torch.load(tmp_path / "artifacts" / "train" / "model.pt", weights_only=True)
    assert set(model) == set(start) and model["config"] == start["config"]
    # the start model's train section with finetune's optimisation keys, pretrained off, pose_head first
    expected = {**start["params"], **{key: getattr(params.finetune, key) for key in TRAIN_KEYS}, "pretrained": False}
    assert model["params"] == expected and model["params"]["lr"] != start["params"]["lr"]
    assert list(model["params"]) == ["pose_head"] + [key for key in start["params"] if key != "pose_head"]
    assert any(not torch.equal(model["model"][k], start["model"][k]) for k in start["model"])
    sigma = "landmarks.sigma.weight"      # untrained under the train stage's MSE, trained by the PnP terms
    assert not start["model"][sigma].any() and model["model"][sigma].any()
    metrics = json.loads((out / "metrics.json").read_text())
    assert {"val_score", "val_ADD", "val_MAE_r", "val_MAE_t"} <= set(metrics["start"]) & set(metrics["change"])
    assert metrics["final"]["train_pnp_valid"] > 0.5 and metrics["final"]["train_pnp"] > 0
    assert [e["epoch"] for e in metrics["epochs"]] == [0, 1]
    assert (out / "live" / "plots" / "metrics" / "val" / "ADD.tsv").is_file()

    params = params.replace(finetune={"epochs": 2})
    write_params(tmp_path / "params.yaml", params)
    with caplog.at_level(logging.INFO):
        run_main(monkeypatch)
    assert "resuming from" in caplog.text and "epoch_000.pt" in caplog.text
    resumed = json.loads((out / "metrics.json").read_text())
    assert [e["epoch"] for e in resumed["epochs"]] == [0, 1, 2] and resumed["start"] == metrics["start"]
    assert not (tmp_path / "dvc.yaml").exists()      # dvclive wrote no dvc.yaml

    params = params.replace(finetune={"epochs": 1})   # fewer epochs: not the 2-epoch checkpoint
    write_params(tmp_path / "params.yaml", params)
    caplog.clear()
    with caplog.at_level(logging.INFO):
        run_main(monkeypatch)
    assert "epoch_001.pt has 2 epochs done, more than the 1 asked for" in caplog.text
    assert "resuming from" in caplog.text and "epoch_000.pt (1 epochs done)" in caplog.text
    assert [e["epoch"] for e in json.loads((out / "metrics.json").read_text())["epochs"]] == [0, 1]

    start_file = tmp_path / "artifacts" / "train" / "model.pt"
    start["model"]["landmarks.mu.bias"] += 0.01       # a new start model: finetuning restarts
    torch.save(start, start_file)
    params = params.replace(finetune={"epochs": 0})
    write_params(tmp_path / "params.yaml", params)
    caplog.clear()
    with caplog.at_level(logging.INFO):
        run_main(monkeypatch)
    assert "resuming from" not in caplog.text
    assert [e["epoch"] for e in json.loads((out / "metrics.json").read_text())["epochs"]] == [0]


def test_a_start_model_trained_on_other_crops_stops(tmp_path, monkeypatch):
    finetune_project(tmp_path, monkeypatch, epochs=1)
    crops = tmp_path / "artifacts" / "crop"
    np.save(crops / "train" / "images.npy", 255 - np.load(crops / "train" / "images.npy"))
    stamp_run([crops / "train", crops / "val"])        # crop reran; train did not
    with pytest.raises(ValueError, match=r"artifacts/train/model.pt: trained on other inputs than finetune reads "
                                         r"\(crop_run differ\): re-run `dvc repro train`"):
        run_main(monkeypatch)


def test_cuda_graph_on_a_cpu_run_stops_naming_the_key(tmp_path, monkeypatch):
    params = finetune_project(tmp_path, monkeypatch, epochs=1)
    write_params(tmp_path / "params.yaml", params.replace(finetune={"cuda_graph": True, "compile": True}))
    with pytest.raises(ValueError, match=r"finetune.cuda_graph is true but the stage runs on cpu"):
        run_main(monkeypatch)


def test_compiling_the_layer_keeps_the_checkpoints_identity(tmp_path, monkeypatch):
    """finetune.compile is a speed key (the same arithmetic to rounding): a run resumes across
    it, not across a change to what the layer computes."""
    from stages.finetuning.trainer import FinetunePaths
    from stages.nets.trainer import TrainPaths
    from stages.wcpa.layout import load_resources
    params = finetune_project(tmp_path, monkeypatch, epochs=1)
    art = tmp_path / "artifacts"
    paths = FinetunePaths(start=art / "train" / "model.pt", data=TrainPaths(
        crop=art / "crop", pca=art / "pca", split=art / "split", out=art / "finetune"))
    camera = load_resources(params.data.root).camera

    def identity(**changes) -> str:
        return FinetuneTrainer(params.replace(finetune=changes), paths, camera).fp

    assert identity(compile=True) == identity(compile=False) != identity(compile=False, mc_samples=8)


def test_the_start_models_identity_is_its_weights_network_inputs_and_params_less_the_speed_keys():
    """A train rerun that rewrote model.pt with other workers (a speed key) keeps finetune's
    checkpoints; other weights (bfloat16 ones too, and a 0-dim buffer) or another lr do not."""
    from stages.finetuning.trainer import start_identity
    start = {"model": {"w": torch.arange(6, dtype=torch.float32).reshape(2, 3), "n": torch.tensor(3),
                       "h": torch.ones(2, dtype=torch.bfloat16)},
             "config": {"depth": 18}, "basis_shape": [4, 5, 3], "inputs": {"crop_run": "abc"},
             "params": {"lr": 1e-4, "workers": 2, "compile": False}}
    same = {**start, "params": {"lr": 1e-4, "workers": 12, "compile": True}}
    other_lr = {**start, "params": {**start["params"], "lr": 2e-4}}
    other_w = {**start, "model": {**start["model"], "h": torch.full((2,), 1.5, dtype=torch.bfloat16)}}
    assert start_identity(start) == start_identity(same)
    assert len({start_identity(start), start_identity(other_lr), start_identity(other_w)}) == 3


def test_an_interrupted_finetune_resumes_to_the_uninterrupted_model(tmp_path, monkeypatch):
    whole, parts = tmp_path / "whole", tmp_path / "parts"
    finetune_project(whole, monkeypatch, epochs=2)
    run_main(monkeypatch)
    finetune_project(parts, monkeypatch, epochs=2)
    kill_in_epoch(lambda: run_main(monkeypatch), FinetuneTrainer, 1, monkeypatch)
    run_main(monkeypatch)
    model = "artifacts/finetune/model.pt"
    assert (parts / model).read_bytes() == (whole / model).read_bytes()
    plots = "artifacts/finetune/live/plots/metrics/val/score.tsv"     # the start model's step, then 2 epochs
    assert (parts / plots).read_text() == (whole / plots).read_text()
    assert [line.split("\t")[0] for line in (whole / plots).read_text().splitlines()] == ["step", "0", "1", "2"]


def test_a_start_model_from_before_the_newer_train_keys_reads_as_their_old_values(tmp_path):
    """A train model saved before pose_head and wpdc_weights existed trained the PnP head with
    the fixed WPDC weights: that is what finetune continues."""
    from stages.common.params import load_params
    from stages.finetuning.trainer import start_config
    saved = load_params("params.yaml").train.as_dict()
    older = {key: value for key, value in saved.items() if key not in ("pose_head", "wpdc_weights")}
    cfg = start_config(tmp_path / "model.pt", {"params": older})
    assert (cfg.pose_head, cfg.wpdc_weights) == ("pnp", "fixed") and cfg.as_dict() == saved
