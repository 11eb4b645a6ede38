"""Stage crop on a tiny data root: the store, bad input (stop / skip / fraction) and resuming."""
import json

import cv2

import numpy as np
import pandas as pd
import pytest

from stages import crop, crop_sheet
from stages.coarse.targets import project_landmarks
from stages.common.badinput import TooManyBadInputs
from stages.common.cropstore import CropStoreWriter
from stages.common.params import load_params
from stages.face.warp import apply_warp, eye_line_angle
from stages.nets.dataset import CropStore
from stages.wcpa.layout import DataError, image_path, load_labels, load_resources, list_path, read_list, write_list
from tests.stages.tiny_data import write_tiny_root

SIZE = 64


@pytest.fixture
def tiny(tmp_path):
    """Params, tmp dir, split dir and coarse landmarks (GT + 0.1 px noise) for a tiny root."""
    root = tmp_path / "data"
    tables = write_tiny_root(root, n_train=10, n_test=3)
    split_dir = tmp_path / "split"
    write_list(split_dir / "train.csv", tables["train"].iloc[:8])
    write_list(split_dir / "val.csv", tables["train"].iloc[8:])
    resources = load_resources(root)
    coarse_dir = tmp_path / "coarse_predict"
    coarse_dir.mkdir()
    rng = np.random.default_rng(0)
    for split, table in (("train", tables["train"].iloc[:8]), ("val", tables["train"].iloc[8:]),
                         ("test", tables["test"])):
        source = root if split != "test" else None
        if source is None:   # the tiny root's test split has info files too: use them as "coarse" output
            table = read_list(list_path(root, "test"))
        verts, poses = load_labels(root, table, resources.n_verts)
        landmarks = project_landmarks(resources, verts, poses) + rng.normal(0, 0.1, (len(table), 68, 2))
        np.save(coarse_dir / f"{split}.npy", landmarks)
    params = load_params("params.yaml").replace(
        data={"root": str(root), "workers": 1, "skip_bad": False, "max_bad_fraction": 0.2},
        crop={"size": SIZE, "chunk": 3, "margin": 1.3})
    return params, tmp_path, split_dir, coarse_dir


def run(params, tmp, split_dir, coarse_dir):
    return crop.run(params, tmp / "crop", coarse_dir, split_dir)


def test_store_is_aligned_with_the_lists_and_levels_the_eyes(tiny):
    params, tmp, split_dir, coarse_dir = tiny
    metrics = run(params, tmp, split_dir, coarse_dir)
    root = tmp / "data"
    resources = load_resources(root)
    for split, count in (("train", 8), ("val", 2), ("test", 3)):
        folder = tmp / "crop" / split
        images = np.load(folder / "images.npy", mmap_mode="r")
        warps, inv = np.load(folder / "warps.npy"), np.load(folder / "inv_warps.npy")
        index = pd.read_csv(folder / "index.csv", dtype=str)
        assert images.shape == (count, SIZE, SIZE, 3) and images.dtype == np.uint8
        assert warps.shape == inv.shape == (count, 2, 3) and len(index) == count
        assert (index.skipped == "0").all() and images.reshape(count, -1).max(1).min() > 0
        points = np.random.default_rng(1).uniform(0, SIZE, (count, 5, 2))
        assert np.abs(apply_warp(warps, apply_warp(inv, points)) - points).max() < 1e-3
    train = read_list(split_dir / "train.csv")
    stored = pd.read_csv(tmp / "crop/train/index.csv", dtype=str)
    assert (stored[["subject_id", "facial_action", "img_id"]].to_numpy() == train.to_numpy()).all()
    verts, poses = load_labels(root, train, resources.n_verts)
    in_crop = apply_warp(np.load(tmp / "crop/train/warps.npy"), project_landmarks(resources, verts, poses))
    assert np.degrees(np.abs(eye_line_angle(in_crop))).max() < 2.0
    assert metrics["val"]["inside_fraction"] == 1.0
    assert json.loads((tmp / "crop/metrics.json").read_text())["train"]["images"] == 8
    assert not (tmp / "crop.partial").exists()


def _corrupt_second_train_image(tmp, split_dir):
    """(The first image of the data's train list gives the image size: load_resources reads it.)"""
    path = image_path(tmp / "data", read_list(split_dir / "train.csv").iloc[1])
    path.write_bytes(b"not a jpeg")
    return path


def test_corrupt_image_stops_with_its_name(tiny):
    params, tmp, split_dir, coarse_dir = tiny
    path = _corrupt_second_train_image(tmp, split_dir)
    with pytest.raises(DataError, match=str(path)):
        run(params, tmp, split_dir, coarse_dir)
    assert not (tmp / "crop").exists()


@pytest.mark.parametrize("bad_value,reason", [(5000.0, "outside"), (None, "degenerate")])
def test_bad_landmarks_stop_with_the_file_and_row(tiny, bad_value, reason):
    params, tmp, split_dir, coarse_dir = tiny
    landmarks = np.load(coarse_dir / "val.npy")
    landmarks[1] = bad_value if bad_value is not None else landmarks[1, 0]
    np.save(coarse_dir / "val.npy", landmarks)
    with pytest.raises(DataError, match=rf"val\.npy row 1: .*{reason}"):
        run(params, tmp, split_dir, coarse_dir)


def test_skip_bad_lists_the_samples_and_fails_past_the_fraction(tiny):
    params, tmp, split_dir, coarse_dir = tiny
    params = params.replace(data={"skip_bad": True})
    path = _corrupt_second_train_image(tmp, split_dir)
    landmarks = np.load(coarse_dir / "val.npy")
    landmarks[0] = landmarks[0, 0]
    np.save(coarse_dir / "val.npy", landmarks)
    metrics = run(params, tmp, split_dir, coarse_dir)
    skipped = pd.read_csv(tmp / "crop/skipped.csv")
    assert len(skipped) == 2 and str(path) in set(skipped.file)
    assert metrics["train"]["skipped"] == 1 and metrics["val"]["skipped"] == 1
    index = pd.read_csv(tmp / "crop/train/index.csv")
    assert index.skipped.tolist() == [0, 1] + [0] * 6
    assert np.isnan(np.load(tmp / "crop/train/warps.npy")[1]).all()
    params = params.replace(data={"max_bad_fraction": 0.1})
    with pytest.raises(TooManyBadInputs, match="2 of 13"):
        run(params, tmp, split_dir, coarse_dir)


def test_interrupted_crop_resumes_without_redoing_finished_chunks(tiny, monkeypatch):
    params, tmp, split_dir, coarse_dir = tiny
    write = CropStoreWriter.write
    calls = []

    def write_then_interrupt(self, rows):
        write(self, rows)
        calls.append(len(rows))
        if len(calls) == 2:
            raise KeyboardInterrupt

    monkeypatch.setattr(CropStoreWriter, "write", write_then_interrupt)
    with pytest.raises(KeyboardInterrupt):
        run(params, tmp, split_dir, coarse_dir)
    monkeypatch.setattr(CropStoreWriter, "write", write)
    cropped = []
    crop_one = crop._crop_one
    monkeypatch.setattr(crop, "_crop_one", lambda path, *a: cropped.append(path) or crop_one(path, *a))
    run(params, tmp, split_dir, coarse_dir)
    assert len(cropped) == 8 + 2 + 3 - 6
    resumed = np.load(tmp / "crop/train/images.npy")
    (tmp / "crop").rename(tmp / "crop_resumed")
    run(params, tmp, split_dir, coarse_dir)
    assert np.array_equal(np.load(tmp / "crop/train/images.npy"), resumed)


def test_crop_sheet_draws_sixteen_or_fewer_tiles(tiny):
    params, tmp, split_dir, coarse_dir = tiny
    run(params, tmp, split_dir, coarse_dir)
    path = crop_sheet.run(params, tmp / "crop_sheet", tmp / "crop/val", split_dir)
    sheet = cv2.cvtColor(cv2.imread(str(path)), cv2.COLOR_BGR2RGB)
    assert sheet.shape == (crop_sheet.TILE_SIZE, 4 * crop_sheet.TILE_SIZE, 3)   # 2 val crops: one row
    green = (sheet[..., 1] > 200) & (sheet[..., 0] < 80)
    assert green[:, :2 * crop_sheet.TILE_SIZE].any() and not green[:, 2 * crop_sheet.TILE_SIZE:].any()


def test_every_split_carries_the_identity_of_its_crop_run(tiny):
    params, tmp, split_dir, coarse_dir = tiny
    run(params, tmp, split_dir, coarse_dir)
    runs = {split: CropStore.open(tmp / "crop" / split).run for split in ("train", "val", "test")}
    assert len(set(runs.values())) == 1 and len(runs["train"]) == 16
    params = params.replace(crop={"margin": 1.6})
    run(params, tmp, split_dir, coarse_dir)
    assert CropStore.open(tmp / "crop" / "test").run != runs["test"]
