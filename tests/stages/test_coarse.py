"""Stages coarse_train and coarse_predict on a tiny data root (CPU, seconds)."""
import dataclasses
import json
import logging
import re
import time
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest
import torch

from stages import coarse_predict, coarse_train
from stages.coarse import train as train_module
from stages.coarse.detector import Detector
from stages.coarse_predict import predict_split
from stages.common.badinput import BadInputs
from stages.common.cropstore import ResumableRows
from stages.common.params import load_params
from stages.common.resume import Checkpoints
from stages.face import ibug68
from stages.wcpa.layout import (SAMPLE_FILES, DataError, image_path, list_path, load_resources, read_info, read_list,
                                write_list)
from tests.stages.tiny_data import write_tiny_root
from tests.tiny_project import interrupt_after

TINY = {"locate_backbone": "mobilenet_v3_small", "refine_backbone": "mobilenet_v3_small",
        "locate_size": 64, "refine_size": 64, "epochs": 2, "batch_size": 4, "head_width": 16}


@pytest.fixture
def tiny(tmp_path, monkeypatch):
    """Params pointing at a tiny data root with a train/val split, in tmp_path."""
    tables = write_tiny_root(tmp_path / "data", n_train=10, n_test=3)
    split_dir = tmp_path / "split"
    write_list(split_dir / "train.csv", tables["train"].iloc[:8])
    write_list(split_dir / "val.csv", tables["train"].iloc[8:])
    params = load_params("params.yaml").replace(data={"root": str(tmp_path / "data"), "workers": 1},
                                                coarse_train=TINY, coarse_predict={"batch_size": 2})
    return params, tmp_path, split_dir


def test_train_then_predict_writes_aligned_landmarks(tiny):
    params, tmp, split_dir = tiny
    metrics = coarse_train.run(params, tmp / "coarse_train", split_dir)
    assert (tmp / "coarse_train/model.pt").is_file()
    assert not (tmp / "coarse_train.partial").exists()
    assert np.isfinite(metrics["val/refine_median_px"])
    curve = (tmp / "coarse_train/live/plots/metrics/train/loss.tsv").read_text().splitlines()
    assert len(curve) == 1 + TINY["epochs"]
    (tmp / "coarse_predict").mkdir()
    (tmp / "coarse_predict/README.md").write_text("in git")      # the folder's README survives the stage
    result = coarse_predict.run(params, tmp / "coarse_predict", tmp / "coarse_train/model.pt", split_dir)
    assert (tmp / "coarse_predict/README.md").read_text() == "in git"
    for split, count in (("train", 8), ("val", 2), ("test", 3)):
        landmarks = np.load(tmp / f"coarse_predict/{split}.npy")
        assert landmarks.shape == (count, 68, 2) and np.isfinite(landmarks).all()
    saved = json.loads((tmp / "coarse_predict/metrics.json").read_text())
    assert saved["val"]["images"] == 2 and saved["val"]["median_px"] == result["val"]["median_px"]


def interrupt_after_the_first_epoch(params, tmp, split_dir, monkeypatch) -> None:
    """Run coarse_train until its first checkpoint is saved, then stop it as a kill would."""
    interrupt_after(Checkpoints, "save", 1, lambda: coarse_train.run(params, tmp / "coarse_train", split_dir),
                    monkeypatch)


def epochs_trained(params, tmp, split_dir, monkeypatch) -> list[int]:
    """Run coarse_train to the end -> the epochs it trained (those it did not resume past)."""
    epochs = []
    run_epoch = train_module._epoch
    monkeypatch.setattr(train_module, "_epoch", lambda *a, **k: epochs.append(a[-1]) or run_epoch(*a, **k))
    coarse_train.run(params, tmp / "coarse_train", split_dir)
    return epochs


def test_interrupted_training_resumes_after_the_last_checkpoint(tiny, monkeypatch):
    params, tmp, split_dir = tiny
    interrupt_after_the_first_epoch(params, tmp, split_dir, monkeypatch)
    assert (tmp / "coarse_train.partial/checkpoints/epoch_000.pt").is_file()
    assert not (tmp / "coarse_train").exists()
    assert epochs_trained(params, tmp, split_dir, monkeypatch) == [1]
    curve = (tmp / "coarse_train/live/plots/metrics/train/loss.tsv").read_text().splitlines()
    assert [line.split("\t")[0] for line in curve] == ["step", "0", "1"]      # not dvclive's resumed 0, 0, 1


def test_a_run_of_fewer_epochs_after_an_interruption_trains_and_writes_its_model(tiny, monkeypatch):
    """The interrupted run's epoch_001.pt (other params) must not outrank the new run's epoch_000.pt."""
    params, tmp, split_dir = tiny
    interrupt_after(Checkpoints, "save", 2, lambda: coarse_train.run(params, tmp / "coarse_train", split_dir),
                    monkeypatch)
    assert (tmp / "coarse_train.partial/checkpoints/epoch_001.pt").is_file()
    params = params.replace(coarse_train={"epochs": 1})
    assert epochs_trained(params, tmp, split_dir, monkeypatch) == [0]
    assert (tmp / "coarse_train/model.pt").is_file() and not (tmp / "coarse_train.partial").exists()


def test_a_checkpoint_of_other_data_at_the_same_root_is_not_resumed(tiny, monkeypatch):
    params, tmp, split_dir = tiny
    interrupt_after_the_first_epoch(params, tmp, split_dir, monkeypatch)
    write_tiny_root(tmp / "data", n_train=10, n_test=3, seed=1)       # same ids and counts, other faces
    assert epochs_trained(params, tmp, split_dir, monkeypatch) == [0, 1]
    saved = torch.load(tmp / "coarse_train/model.pt", weights_only=True)
    assert set(saved["inputs"]) == {"resources", "samples"} and isinstance(saved["flip_order"], list)


def test_the_checkpoints_identity_leaves_out_speed_keys_and_keeps_the_resolved_view_paths(tiny):
    """compile (a speed key) and decode / augment written otherwise but resolving to the same
    path keep a run's checkpoints; a path that resolves otherwise, or a param that changes the
    training, does not."""
    params, tmp, split_dir = tiny
    tables = {split: read_list(split_dir / f"{split}.csv") for split in ("train", "val")}
    cpu = torch.device("cpu")

    def key(**changes) -> str:
        return coarse_train.fingerprint(params.replace(coarse_train=changes), tables, {}, 1, cpu)

    base = key(decode="opencv", augment="opencv", compile=False)
    assert key(decode="auto", augment="auto", compile=True) == base        # auto is opencv on a CPU
    assert key(decode="torch", augment="opencv", compile=False) != base
    assert key(decode="opencv", augment="opencv", compile=False, lr=0.5) != base


def _record_augmenters(monkeypatch) -> list:
    """Patch the training's ViewSet to record (flip_order, flip_prob) of each augmenting one made."""
    made, make = [], train_module.ViewSet

    def recording(samples, sizes, margin, seed, jitters=None, flip_order=None, flip_prob=0.0, **kwargs):
        if jitters:
            made.append((flip_order, flip_prob))
        return make(samples, sizes, margin, seed, jitters, flip_order, flip_prob, **kwargs)

    monkeypatch.setattr(train_module, "ViewSet", recording)
    return made


def test_asymmetric_mesh_trains_with_the_ibug_flip_order(tmp_path, monkeypatch):
    tables = write_tiny_root(tmp_path / "data", n_train=10, n_test=3, asymmetric=True)
    write_list(tmp_path / "split/train.csv", tables["train"].iloc[:8])
    write_list(tmp_path / "split/val.csv", tables["train"].iloc[8:])
    params = load_params("params.yaml").replace(data={"root": str(tmp_path / "data"), "workers": 1},
                                                coarse_train={**TINY, "epochs": 1, "flip_prob": 0.5})
    made = _record_augmenters(monkeypatch)
    coarse_train.run(params, tmp_path / "coarse_train", tmp_path / "split")
    assert made and all(np.array_equal(order, ibug68.MIRROR) and prob == 0.5 for order, prob in made)
    saved = torch.load(tmp_path / "coarse_train/model.pt", weights_only=True)["flip_order"]
    assert np.array_equal(saved, ibug68.MIRROR)


def test_without_a_flip_order_training_and_flip_test_run_with_flips_off(tiny, monkeypatch, caplog):
    params, tmp, split_dir = tiny
    params = params.replace(coarse_train={"epochs": 1, "flip_prob": 0.5}, coarse_predict={"flip_test": True})
    monkeypatch.setattr(coarse_train, "landmark_flip_order", lambda resources: None)
    made = _record_augmenters(monkeypatch)
    with caplog.at_level(logging.WARNING):
        coarse_train.run(params, tmp / "coarse_train", split_dir)
        coarse_predict.run(params, tmp / "coarse_predict", tmp / "coarse_train/model.pt", split_dir)
    assert made and all(order is None and prob == 0.0 for order, prob in made)
    assert "coarse_train.flip_prob=0.5 ignored" in caplog.text
    assert "coarse_predict.flip_test ignored" in caplog.text
    assert np.isfinite(np.load(tmp / "coarse_predict/val.npy")).all()


def test_ids_with_non_ascii_characters_train_and_predict(tiny):
    """A facial_action of UTF-8 text (keys are stored as bytes for the loader processes): the
    stage's bookkeeping must decode them as UTF-8, not ASCII."""
    params, tmp, split_dir = tiny
    root, name = Path(params.data.root), "lächeln"
    first = read_list(split_dir / "train.csv").iloc[0]
    for kind in SAMPLE_FILES:
        folder = root / kind / first.subject_id / first.facial_action
        if folder.is_dir():
            folder.rename(folder.with_name(name))
    for path in (split_dir / "train.csv", split_dir / "val.csv", list_path(root, "train")):
        table = read_list(path)
        moved = (table.subject_id == first.subject_id) & (table.facial_action == first.facial_action)
        write_list(path, table.assign(facial_action=table.facial_action.where(~moved, name)))
    metrics = coarse_train.run(params.replace(coarse_train={"epochs": 1}), tmp / "coarse_train", split_dir)
    assert metrics["train_samples"] == 8
    coarse_predict.run(params, tmp / "coarse_predict", tmp / "coarse_train/model.pt", split_dir)
    assert np.isfinite(np.load(tmp / "coarse_predict/train.npy")).all()


def _odd_size_image(root, row):
    """Overwrite a sample's image with a 640x480 one -> its path."""
    path = image_path(root, row)
    cv2.imwrite(str(path), np.full((480, 640, 3), 90, np.uint8))
    return path


@pytest.mark.parametrize("position, decode", [(0, "opencv"), (5, "opencv"), (5, "torch")])
def test_an_image_of_another_size_stops_training_naming_it_or_is_skipped(tiny, position, decode):
    params, tmp, split_dir = tiny
    params = params.replace(coarse_train={"epochs": 1, "decode": decode})
    row = next(read_list(split_dir / "train.csv").iloc[position:].itertuples(index=False))
    path = _odd_size_image(params.data.root, row)
    with pytest.raises(DataError, match=re.escape(f"{path}: image is 640x480, the data set's images are 200x200")):
        coarse_train.run(params, tmp / "coarse_train", split_dir)
    params = params.replace(data={"skip_bad": True, "max_bad_fraction": 0.2})
    metrics = coarse_train.run(params, tmp / "coarse_train", split_dir)
    assert metrics["train_samples"] == 7
    assert str(path) in (tmp / "coarse_train/skipped.csv").read_text()


def test_an_image_of_another_size_stops_prediction_naming_it_or_is_skipped(tiny):
    params, tmp, split_dir = tiny
    params = params.replace(coarse_train={"epochs": 1})
    coarse_train.run(params, tmp / "coarse_train", split_dir)
    root = params.data.root
    path = _odd_size_image(root, next(read_list(list_path(root, "test")).iloc[1:].itertuples(index=False)))
    with pytest.raises(DataError, match=re.escape(f"{path}: image is 640x480, the data set's images are 200x200")):
        coarse_predict.run(params, tmp / "coarse_predict", tmp / "coarse_train/model.pt", split_dir)
    params = params.replace(data={"skip_bad": True, "max_bad_fraction": 0.2})
    coarse_predict.run(params, tmp / "coarse_predict", tmp / "coarse_train/model.pt", split_dir)
    test = np.load(tmp / "coarse_predict/test.npy")
    assert np.isnan(test[1]).all() and np.isfinite(test[[0, 2]]).all()
    assert str(path) in (tmp / "coarse_predict/skipped.csv").read_text()


@pytest.mark.parametrize("decode, augment", [("opencv", "opencv"), ("torch", "opencv"), ("opencv", "torch")])
def test_bad_images_stop_or_are_skipped_once(tiny, decode, augment):
    params, tmp, split_dir = tiny
    params = params.replace(coarse_train={"decode": decode, "augment": augment})
    table = read_list(split_dir / "train.csv")
    corrupt, empty = (image_path(params.data.root, row) for row in list(table.itertuples(index=False))[2:4])
    corrupt.write_bytes(b"not a jpeg")          # found while streaming, in every epoch
    original = empty.read_bytes()
    empty.write_bytes(b"")                       # found up front
    with pytest.raises(DataError, match=empty.name):
        coarse_train.run(params, tmp / "coarse_train", split_dir)
    empty.write_bytes(original)
    with pytest.raises(DataError, match=corrupt.name):
        coarse_train.run(params, tmp / "coarse_train", split_dir)
    empty.write_bytes(b"")
    params = params.replace(data={"skip_bad": True, "max_bad_fraction": 0.5})
    coarse_train.run(params, tmp / "coarse_train", split_dir)
    skipped = pd.read_csv(tmp / "coarse_train/skipped.csv")
    assert sorted(skipped["file"]) == sorted([str(corrupt), str(empty)])
    assert json.loads((tmp / "coarse_train/metrics.json").read_text())["train_samples"] == 6


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(
    not torch.cuda.is_available(), reason="no CUDA"))])
def test_prediction_on_the_torch_path_is_the_opencv_paths(tiny, device):
    params, tmp, split_dir = tiny
    coarse_train.run(params.replace(coarse_train={"epochs": 1}), tmp / "coarse_train", split_dir)
    model = tmp / "coarse_train/model.pt"
    detector = Detector(model, torch.device(device), 2, amp=False)
    table = read_list(split_dir / "train.csv")
    cfg = params.coarse_predict
    size = load_resources(params.data.root).camera.size
    found = {decode: predict_split(detector, params.data.root, table, size, dataclasses.replace(cfg, decode=decode),
                                   2, BadInputs(skip=False, max_fraction=0.0), decode,
                                   ResumableRows(tmp / decode, decode, (len(table), 68, 2), np.float64))
             for decode in ("opencv", "torch")}
    assert np.isfinite(found["torch"]).all()
    diff = np.abs(found["torch"] - found["opencv"]).max()     # px; the CPU decodes alike (1.2e-5 px measured)
    assert diff < (1e-3 if device == "cpu" else 2.0), diff


def predicted_images(monkeypatch) -> list:
    """The images the detector is called on from now on, one count per call."""
    calls, call = [], Detector.__call__
    monkeypatch.setattr(Detector, "__call__", lambda self, images, *a, **k: calls.append(len(images))
                        or call(self, images, *a, **k))
    return calls


def test_interrupted_prediction_resumes_its_rows_and_only_with_the_same_detector_and_settings(tiny, monkeypatch):
    params, tmp, split_dir = tiny
    coarse_train.run(params.replace(coarse_train={"epochs": 1}), tmp / "coarse_train", split_dir)
    model, out = tmp / "coarse_train/model.pt", tmp / "coarse_predict"
    coarse_predict.run(params, out, model, split_dir)
    whole = {split: np.load(out / f"{split}.npy") for split in ("train", "val", "test")}
    assert not (tmp / "coarse_predict.partial").exists()
    interrupt_after(ResumableRows, "write", 2, lambda: coarse_predict.run(params, out, model, split_dir), monkeypatch)
    assert (tmp / "coarse_predict.partial/train/done.npy").exists()
    calls = predicted_images(monkeypatch)
    coarse_predict.run(params, out, model, split_dir)
    assert sum(calls) == 8 - 4 + 2 + 3             # train's first 2 batches of 2 were kept
    metrics = json.loads((out / "metrics.json").read_text())
    assert [metrics[f"{split}_resumed"] for split in ("train", "val", "test")] == [4, 0, 0]
    for split, landmarks in whole.items():
        np.testing.assert_array_equal(np.load(out / f"{split}.npy"), landmarks)
    interrupt_after(ResumableRows, "write", 2, lambda: coarse_predict.run(params, out, model, split_dir), monkeypatch)
    calls.clear()
    coarse_predict.run(params.replace(coarse_predict={"refine_passes": 2}), out, model, split_dir)
    assert sum(calls) == 8 + 2 + 3                 # other settings: nothing resumed
    interrupt_after(ResumableRows, "write", 2, lambda: coarse_predict.run(params, out, model, split_dir), monkeypatch)
    model.write_bytes(model.read_bytes() + b" ")   # another detector file
    calls.clear()
    coarse_predict.run(params, out, model, split_dir)
    assert sum(calls) == 8 + 2 + 3
    interrupt_after(ResumableRows, "write", 2, lambda: coarse_predict.run(params, out, model, split_dir), monkeypatch)
    first = image_path(params.data.root, read_list(split_dir / "train.csv").iloc[0])
    time.sleep(0.01)
    first.write_bytes(first.read_bytes())          # an image replaced during the interruption
    calls.clear()
    coarse_predict.run(params, out, model, split_dir)
    assert sum(calls) == 8 + 2 + 3                 # train's finished batches are not resumed
    interrupt_after(ResumableRows, "write", 2, lambda: coarse_predict.run(params, out, model, split_dir), monkeypatch)
    digest = coarse_predict.code_digest
    monkeypatch.setattr(coarse_predict, "code_digest", lambda module: digest(module) + "+fix")   # a code fix
    calls.clear()
    coarse_predict.run(params, out, model, split_dir)
    assert sum(calls) == 8 + 2 + 3                 # the old code's batches are not resumed


def test_a_predictions_identity_holds_its_precision_and_not_its_batch_size(tiny):
    """coarse_predict's resumable rows: the batch size (a speed key: each image's landmarks are
    its own) keeps them; the detector's autocast type (a CPU with native bfloat16 or without)
    does not."""
    params, tmp, split_dir = tiny
    model = tmp / "model.pt"
    model.write_bytes(b"a detector")
    table, cpu = read_list(split_dir / "train.csv"), torch.device("cpu")

    def key(amp=None, **changes) -> str:
        cfg = params.replace(coarse_predict=changes).coarse_predict
        return coarse_predict.job_key(model, params.data.root, table, (800, 800), cfg, cpu, amp)

    assert key(batch_size=2) == key(batch_size=64) != key(batch_size=2, refine_passes=1)
    assert key(torch.bfloat16) != key(None)


def test_targets_are_read_in_chunks_on_processes_in_row_order(tiny, monkeypatch):
    """load_targets on 2 processes in chunks of 3 rows gives the landmarks of each row's info
    file (project_landmarks of its mesh and pose), stops at the first bad info file in row order
    naming it, and with data.skip_bad leaves the bad rows out and lists them in row order."""
    from stages.coarse import targets
    from stages.wcpa import layout
    from stages.wcpa.layout import info_path, read_info
    params, _, split_dir = tiny
    root, table = params.data.root, read_list(split_dir / "train.csv")
    resources = load_resources(root)
    monkeypatch.setattr(layout, "LABEL_CHUNK", 3)
    rows = list(table.itertuples(index=False))
    labels = [read_info(info_path(root, row), resources.n_verts) for row in rows]
    expected = targets.project_landmarks(resources, np.stack([v for v, _ in labels]), np.stack([p for _, p in labels]))
    landmarks, kept = targets.load_targets(root, table, resources, BadInputs(False, 0.0), workers=2)
    np.testing.assert_array_equal(kept, np.arange(len(rows)))
    np.testing.assert_array_equal(landmarks, expected)
    broken = [info_path(root, rows[k]) for k in (5, 1)]
    broken[0].write_bytes(b"not an npz")
    broken[1].unlink()
    with pytest.raises(DataError, match=re.escape(broken[1].name)):
        targets.load_targets(root, table, resources, BadInputs(False, 0.0), workers=2)
    bad = BadInputs(True, 0.5)
    landmarks, kept = targets.load_targets(root, table, resources, bad, workers=2)
    np.testing.assert_array_equal(kept, [0, 2, 3, 4, 6, 7])
    np.testing.assert_array_equal(landmarks, expected[kept])
    assert [r["file"] for r in bad.records] == [str(broken[1]), str(broken[0])]


def test_label_workers_read_relative_paths_from_the_callers_directory(tmp_path, monkeypatch):
    """Pooled worker processes keep the directory they started in: iter_labels on a relative
    root reads the files under the caller's current directory, not a reused worker's."""
    from stages.wcpa import layout
    from stages.wcpa.layout import info_path, iter_labels
    monkeypatch.setattr(layout, "LABEL_CHUNK", 2)
    tables = {name: write_tiny_root(tmp_path / name / "data", n_train=4, n_test=1, seed=seed)["train"]
              for seed, name in enumerate(("a", "b"))}
    n_verts = load_resources(tmp_path / "a" / "data").n_verts
    first = {}
    for name in ("a", "b"):              # the pool starts in a and is reused from b
        monkeypatch.chdir(tmp_path / name)
        first[name] = np.concatenate([poses for _, _, poses in iter_labels("data", tables[name], n_verts, workers=2)])
    expected = [read_info(info_path(tmp_path / "b" / "data", row), n_verts)[1]
                for row in tables["b"].itertuples(index=False)]
    np.testing.assert_array_equal(first["b"], np.stack(expected))
    assert not np.array_equal(first["a"], first["b"])
