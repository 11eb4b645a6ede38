"""Stage train on a tiny project: one epoch writes a checkpoint; under a constant schedule a rerun
with more epochs resumes to the longer run's model, under a cosine one it trains afresh."""
import json
import logging
import shutil
import sys

import numpy as np
import pytest
import torch

from stages import pca, train
from stages.common.cropstore import stamp_run
from stages.common.resume import Checkpoints
from stages.common.params import Params
from stages.nets.dataset import CropStore
from stages.nets import losses
from stages.nets import trainer as trainer_module
from stages.nets.model import FaceNet, NetConfig
from stages.nets.trainer import Trainer, TrainPaths, fingerprint, state_layout
from stages.wcpa.layout import load_resources
from tests.host_syncs import HostSyncs
from tests.tiny_project import interrupt_in, kill_in_epoch, make_tiny_project, tiny_params, write_params


def run_main(monkeypatch):
    monkeypatch.setattr(sys, "argv", ["train"])
    train.main()


def test_train_writes_checkpoints_and_resumes(tmp_path, monkeypatch, caplog):
    params = make_tiny_project(tmp_path, subjects=4, crop_size=32)
    params = params.replace(train={"epochs": 1, "batch_size": 6, "schedule": "constant"})
    write_params(tmp_path / "params.yaml", params)
    monkeypatch.chdir(tmp_path)
    pca.run(params)
    run_main(monkeypatch)
    out = tmp_path / "artifacts" / "train"
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["epoch_000.pt"]
    first = torch.load(out / "checkpoints" / "epoch_000.pt", weights_only=True)
    assert first["epoch"] == 0 and set(first) >= {"modules", "optimizer", "scaler", "rng", "params", "basis_shape"}
    model = torch.load(out / "model.pt", weights_only=True)
    assert model["config"]["n_components"] == 20 and model["config"]["coordconv"]
    metrics = json.loads((out / "metrics.json").read_text())
    assert {"score", "ADD", "MAE_r", "MAE_t", "landmark_crop_px", "sigma_within_1", "sigma_within_2"} <= {
        k[4:] for k in metrics["final"] if k.startswith("val_")}
    assert {"train_sigma_px", "train_mu_gain"} <= set(metrics["final"])
    assert (out / "live" / "plots" / "metrics" / "val" / "score.tsv").is_file()

    params = params.replace(train={"epochs": 2})
    write_params(tmp_path / "params.yaml", params)
    with caplog.at_level(logging.INFO):
        run_main(monkeypatch)
    assert "resuming from" in caplog.text and "epoch_000.pt" in caplog.text
    metrics = json.loads((out / "metrics.json").read_text())
    assert [e["epoch"] for e in metrics["epochs"]] == [1, 2]
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["epoch_000.pt", "epoch_001.pt"]
    assert not (tmp_path / "dvc.yaml").exists()      # dvclive wrote no dvc.yaml


def one_step_trainer(tmp_path, monkeypatch, landmark_loss, **train_settings):
    """A Trainer on a tiny project after one training step -> (trainer, batch, sigma FC before)."""
    params = make_tiny_project(tmp_path, subjects=4, crop_size=32)
    params = params.replace(train={"batch_size": 6, "landmark_loss": landmark_loss, **train_settings})
    monkeypatch.chdir(tmp_path)
    pca.run(params)
    paths = TrainPaths(crop=tmp_path / "artifacts" / "crop", pca=tmp_path / "artifacts" / "pca",
                       split=tmp_path / "artifacts" / "split", out=tmp_path / "artifacts" / "train")
    trainer = Trainer(params, paths, load_resources(params.data.root).camera)
    sigma_before = trainer.model.landmarks.sigma.weight.detach().clone()
    batch = next(iter(trainer.loader))
    trainer.train_step(batch, 0, 10)
    return trainer, batch, sigma_before


def test_validation_runs_in_blocks_with_the_figures_of_one_block(tmp_path, monkeypatch):
    """The trainer validates a block of validate.BLOCK samples at a time (the real val split at
    once held 10 GB): blocks of 2 give the metrics of one block of all, bit for bit, and the
    network never sees more than a block's rows a call."""
    from stages.nets import validate
    params = make_tiny_project(tmp_path, subjects=4, crop_size=32)
    params = params.replace(train={"batch_size": 6, "val_batch_size": 2})
    monkeypatch.chdir(tmp_path)
    pca.run(params)
    paths = TrainPaths(crop=tmp_path / "artifacts" / "crop", pca=tmp_path / "artifacts" / "pca",
                       split=tmp_path / "artifacts" / "split", out=tmp_path / "artifacts" / "train")
    trainer = Trainer(params, paths, load_resources(params.data.root).camera)
    monkeypatch.setattr(validate, "ROWS", 2)
    whole = trainer.validate()
    monkeypatch.setattr(validate, "BLOCK", 2)
    seen, predict = [], trainer_module.predict
    monkeypatch.setattr(trainer_module, "predict", lambda model, images, inv, *a: seen.append(len(inv)) or
                        predict(model, images, inv, *a))
    assert trainer.validate() == whole
    assert len(seen) > 2 and max(seen) == 2 and sum(seen) == whole["n"]


def test_a_training_step_reads_no_value_on_the_host(tmp_path, monkeypatch):
    """train_step returns its loss terms as device tensors (float64, summed by train_epoch on the
    device) and reads none of them: on a GPU, each read would wait for the step to finish."""
    trainer, batch, _ = one_step_trainer(tmp_path, monkeypatch, "gnll")
    with HostSyncs() as syncs:
        terms = trainer.train_step(batch, 1, 10)
    assert syncs.count == 0
    assert {"loss", "landmarks"} <= set(terms)
    assert all(value.dtype == torch.float64 and value.dim() == 0 for value in terms.values())


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


def test_a_compiled_step_trains_the_saved_module_as_the_eager_step_does(tmp_path, monkeypatch):
    eager, _, _ = one_step_trainer(tmp_path / "eager", monkeypatch, "gnll", amp=False)
    compiled, _, _ = one_step_trainer(tmp_path / "compiled", monkeypatch, "gnll", amp=False, compile=True)
    assert isinstance(compiled.net, torch._dynamo.eval_frame.OptimizedModule) and compiled.net._orig_mod is compiled.model
    assert not isinstance(eager.net, torch._dynamo.eval_frame.OptimizedModule)
    before = FaceNet(compiled.model.config)       # the saved state: the plain module's keys
    assert compiled.model.state_dict().keys() == before.state_dict().keys()
    # the same gradients (Adam's first step moves every weight by +-lr, the sign of a near-zero
    # gradient's rounding, so the weights after it are not the comparison)
    assert sum(p.grad is not None for p in compiled.model.parameters()) > 10
    for (name, a), b in zip(eager.model.named_parameters(), compiled.model.parameters()):
        if a.grad is not None:
            assert (a.grad - b.grad).abs().max() <= 1e-3 * a.grad.abs().max() + 1e-8, name


def test_gnll_trains_sigma(tmp_path, monkeypatch):
    trainer, _, sigma_before = one_step_trainer(tmp_path, monkeypatch, "gnll")
    assert not torch.equal(trainer.model.landmarks.sigma.weight, sigma_before)


def test_a_checkpoint_of_another_network_layout_has_another_fingerprint():
    """Older code's checkpoints (e.g. one FC for mu and sigma, or sigma trained) are not resumed."""
    config = NetConfig(depth=18, coordconv=True, shape_head="pca", crop_size=32, n_verts=10, n_components=4)
    cfg, lambdas = tiny_params().train, {"landmarks": 0.01}
    def fp(model):
        return fingerprint(cfg, lambdas, 0, {"layout": state_layout(model)})
    first, second = FaceNet(config), FaceNet(config)
    assert fp(first) == fp(second)
    second.landmarks.sigma.requires_grad_(False)             # frozen: another optimiser state
    third = FaceNet(config)
    third.landmarks.sigma = torch.nn.Linear(512, 20)          # another shape
    assert fp(second) != fp(first) != fp(third)


def train_tiny(root, monkeypatch, seed: int = 0, epochs: int = 1, schedule: str = "cosine") -> Params:
    """A tiny project at `root` (data `seed`), pca fitted; returns its params (train.epochs and
    train.schedule set)."""
    params = make_tiny_project(root, subjects=4, crop_size=32, seed=seed)
    params = params.replace(train={"epochs": epochs, "batch_size": 6, "schedule": schedule})
    write_params(root / "params.yaml", params)
    monkeypatch.chdir(root)
    pca.run(params)
    return params


def model_bytes(root) -> bytes:
    return (root / "artifacts" / "train" / "model.pt").read_bytes()


def test_new_crops_retrain_instead_of_resuming(tmp_path, monkeypatch, caplog):
    """`dvc exp run -S crop.margin=...` reruns crop: train must not resume its persisted checkpoints."""
    train_tiny(tmp_path, monkeypatch)
    run_main(monkeypatch)
    before = model_bytes(tmp_path)
    crops = tmp_path / "artifacts" / "crop"
    for split in ("train", "val"):                     # the crops of another margin: other warps and pixels
        warps = np.load(crops / split / "warps.npy")
        warps[:, :, :2] *= 1.1
        np.save(crops / split / "warps.npy", warps)
        images = np.load(crops / split / "images.npy")
        np.save(crops / split / "images.npy", 255 - images)
    stamp_run([crops / "train", crops / "val"])
    with caplog.at_level(logging.INFO):
        run_main(monkeypatch)
    assert "resuming from" not in caplog.text
    assert model_bytes(tmp_path) != before
    assert torch.load(tmp_path / "artifacts" / "train" / "model.pt", weights_only=True)["inputs"]["crop_run"] == \
        CropStore.open(crops / "train").run


def test_another_data_root_with_the_same_image_count_retrains(tmp_path, monkeypatch, caplog):
    first, second = tmp_path / "first", tmp_path / "second"
    train_tiny(first, monkeypatch, seed=0)
    run_main(monkeypatch)
    train_tiny(second, monkeypatch, seed=1)           # same ids and counts, other faces and crops
    shutil.copytree(first / "artifacts" / "train", second / "artifacts" / "train")   # persisted checkpoints
    with caplog.at_level(logging.INFO):
        run_main(monkeypatch)
    assert "resuming from" not in caplog.text
    assert model_bytes(second) != model_bytes(first)


def curves(root) -> dict[str, str]:
    """The dvclive curves of train: {file under live/plots: its text}."""
    plots = root / "artifacts" / "train" / "live" / "plots"
    return {str(p.relative_to(plots)): p.read_text() for p in sorted(plots.rglob("*.tsv"))}


@pytest.mark.parametrize("interruption", ["in_epoch", "in_checkpoint_write"])
def test_an_interrupted_run_resumes_to_the_uninterrupted_model_and_curves(tmp_path, monkeypatch, interruption):
    """Killed in epoch 2, or while epoch 2's checkpoint is written (its curves logged already):
    the resumed run's model and dvclive curves are the uninterrupted run's."""
    whole, parts = tmp_path / "whole", tmp_path / "parts"
    train_tiny(whole, monkeypatch, epochs=2)
    run_main(monkeypatch)
    params = train_tiny(parts, monkeypatch, epochs=2)
    if interruption == "in_epoch":
        kill_in_epoch(lambda: run_main(monkeypatch), Trainer, 1, monkeypatch)
    else:
        interrupt_in(Checkpoints, "save", 2, lambda: run_main(monkeypatch), monkeypatch)
    assert params.train.epochs == 2 and not (parts / "artifacts" / "train" / "model.pt").exists()
    run_main(monkeypatch)
    assert model_bytes(parts) == model_bytes(whole)
    last = "artifacts/train/checkpoints/epoch_001.pt"              # a DVC output: the same bytes, the same hash
    assert (parts / last).read_bytes() == (whole / last).read_bytes()
    assert curves(parts) == curves(whole) and len(curves(whole)) > 5
    assert curves(whole)["metrics/val/score.tsv"].splitlines()[0] == "step\tscore"
    assert [line.split("\t")[0] for line in curves(whole)["metrics/val/score.tsv"].splitlines()] == ["step", "0", "1"]


@pytest.mark.parametrize("schedule", ["constant", "cosine"])
def test_more_epochs_give_the_model_of_a_longer_run_from_scratch(tmp_path, monkeypatch, caplog, schedule):
    """`dvc exp run -S train.epochs=2` after a finished 1-epoch run: under a constant schedule it
    resumes, under a cosine one (each step's rate depends on the epochs) it trains afresh; either
    way the model is the one a 2-epoch run from scratch writes."""
    scratch, raised = tmp_path / "scratch", tmp_path / "raised"
    train_tiny(scratch, monkeypatch, epochs=2, schedule=schedule)
    run_main(monkeypatch)
    params = train_tiny(raised, monkeypatch, epochs=1, schedule=schedule)
    run_main(monkeypatch)
    write_params(raised / "params.yaml", params.replace(train={"epochs": 2}))
    with caplog.at_level(logging.INFO):
        run_main(monkeypatch)
    assert ("resuming from" in caplog.text) == (schedule == "constant")
    assert model_bytes(raised) == model_bytes(scratch)


@pytest.mark.parametrize("change", ["code", "val_pnp_flags"])
def test_a_rerun_with_other_code_or_validation_trains_instead_of_loading_the_finished_run(tmp_path, monkeypatch,
                                                                                          caplog, change):
    """dvc repro reruns train after a change to its code (a dep) or to val_pnp_flags (a params
    leaf): the persisted checkpoints of the finished run must not be resumed (they would write
    the old model, or keep the old validation in metrics.json)."""
    params = train_tiny(tmp_path, monkeypatch)
    run_main(monkeypatch)
    if change == "code":
        digest = trainer_module.code_digest
        monkeypatch.setattr(trainer_module, "code_digest", lambda module: digest(module) + "+fix")
    else:
        write_params(tmp_path / "params.yaml", params.replace(train={"val_pnp_flags": "EPNP"}))
    with caplog.at_level(logging.INFO):
        run_main(monkeypatch)
    assert "resuming from" not in caplog.text and "written with other params or inputs" in caplog.text


def test_one_changed_crop_pixel_retrains_instead_of_resuming(tmp_path, monkeypatch, caplog):
    """The crop run's identity reads every byte of the crops: one pixel of one row changed by a
    rerun of crop (e.g. one image replaced, the same landmarks) must not resume the finished run."""
    train_tiny(tmp_path, monkeypatch)
    run_main(monkeypatch)
    crops = tmp_path / "artifacts" / "crop"
    images = np.load(crops / "train" / "images.npy")
    images[len(images) // 2, 5, 7, 1] ^= 1
    np.save(crops / "train" / "images.npy", images)
    stamp_run([crops / "train", crops / "val"])
    with caplog.at_level(logging.INFO):
        run_main(monkeypatch)
    assert "resuming from" not in caplog.text
