"""Stage crop on a tiny data root: the store, bad input (stop / skip / fraction) and resuming;
the torch path (crop.decode) against the OpenCV path."""
import io
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import cv2

import numpy as np
import pandas as pd
import pytest
import torch

from stages import crop, crop_sheet
from stages.face import cropping, frontal
from stages.wcpa import decode
from stages.coarse.targets import project_landmarks
from stages.common.badinput import TooManyBadInputs
from stages.common.cropstore import CropStoreWriter
from stages.common.params import load_params
from stages.face.warp import apply_warp, eye_line_angle
from stages.nets.dataset import CropStore
from stages.wcpa.layout import (DataError, image_path, info_path, landmarks_path, load_labels, load_resources,
                                list_path, read_image, read_list, write_landmarks, write_list)
from tests.stages.tiny_data import write_tiny_root
from tests.tiny_project import interrupt_after

SIZE = 64
ROOT = Path(__file__).resolve().parents[2]


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


def test_the_landmark_offset_tells_the_given_files_pixel_convention(tiny):
    """The given68 files round continuous coordinates (as the synthetic writer does): the mean
    offset of the landmarks that placed the crops from the labels' projection is about 0; files
    holding OpenCV's pixel indices (half a pixel less, rounded) show about -0.5."""
    params, tmp, split_dir, coarse_dir = tiny
    params = params.replace(crop={"source": "given68", "detector": []})
    offset = run(params, tmp, split_dir, coarse_dir)["train"]["landmark_offset_mean_px"]
    assert np.abs(offset).max() < 0.1
    root = tmp / "data"
    resources = load_resources(root)
    train = read_list(split_dir / "train.csv")
    verts, poses = load_labels(root, train, resources.n_verts)
    for row, points in zip(train.itertuples(index=False), project_landmarks(resources, verts, poses)):
        write_landmarks(landmarks_path(root, row), points - 0.5)
    shutil.rmtree(tmp / "crop")
    offset = run(params, tmp, split_dir, coarse_dir)["train"]["landmark_offset_mean_px"]
    assert np.abs(np.asarray(offset) + 0.5).max() < 0.1


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


def _collapsed(landmarks: np.ndarray) -> np.ndarray:
    """A collapsed detection (L, 2) at the landmarks' centre: the points within a few px, under
    1 % of the image's side."""
    return landmarks.mean(0) + np.random.default_rng(4).normal(0, 0.1, landmarks.shape)


@pytest.mark.parametrize("spoil,reason", [(lambda row: 5000.0, "outside"), (lambda row: row[0], "degenerate"),
                                          (_collapsed, "degenerate landmarks: they span")])
def test_bad_landmarks_stop_with_the_file_and_row(tiny, spoil, reason):
    params, tmp, split_dir, coarse_dir = tiny
    landmarks = np.load(coarse_dir / "val.npy")
    landmarks[1] = spoil(landmarks[1])
    np.save(coarse_dir / "val.npy", landmarks)
    with pytest.raises(DataError, match=rf"val\.npy row 1: .*{reason}"):
        run(params, tmp, split_dir, coarse_dir)
    assert not (tmp / "crop").exists()


def test_landmarks_no_warp_fits_are_skipped_in_their_row_alone(tiny, monkeypatch):
    """Under data.skip_bad a row whose head-pose PnP fails (the crop's rotation) is listed with
    its file and reason, its crop and warp are left out (NaN), and every other row gets the crop
    of a run without it."""
    params, tmp, split_dir, coarse_dir = tiny
    params = params.replace(data={"skip_bad": True})
    run(params, tmp / "clean", split_dir, coarse_dir)
    landmarks = np.load(coarse_dir / "val.npy")
    fails = landmarks[1].copy()
    pnp_roll = frontal.pnp_roll

    def failing(camera, model_points, batch):
        if any(np.array_equal(row, fails) for row in batch):
            raise frontal.DegenerateLandmarks("degenerate landmarks: the head pose's PnP failed on them")
        return pnp_roll(camera, model_points, batch)

    monkeypatch.setattr(frontal, "pnp_roll", failing)
    metrics = run(params, tmp, split_dir, coarse_dir)
    skipped = pd.read_csv(tmp / "crop/skipped.csv")
    assert len(skipped) == 1 and skipped.file[0].endswith("val.npy row 1")
    assert "degenerate landmarks" in skipped.reason[0] and metrics["val"]["skipped"] == 1
    assert pd.read_csv(tmp / "crop/val/index.csv").skipped.tolist() == [0, 1]
    warps, clean = np.load(tmp / "crop/val/warps.npy"), np.load(tmp / "clean/crop/val/warps.npy")
    assert np.isnan(warps[1]).all() and np.array_equal(warps[0], clean[0])
    assert np.array_equal(CropStore.open(tmp / "crop/val").images[0], CropStore.open(tmp / "clean/crop/val").images[0])


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


def test_gt_source_crops_train_on_the_info_files_read_by_the_workers(tiny, monkeypatch):
    """crop.source gt: the train split's landmarks are its info files' projected landmarks, read
    on 2 processes in chunks of 3 rows (layout.iter_labels), the same crops as those landmarks
    given as coarse output; a bad info file is skipped (data.skip_bad) in its row alone."""
    from stages.wcpa import layout
    from stages.wcpa.layout import info_path
    params, tmp, split_dir, coarse_dir = tiny
    monkeypatch.setattr(layout, "LABEL_CHUNK", 3)
    train = read_list(split_dir / "train.csv")
    resources = load_resources(tmp / "data")
    np.save(coarse_dir / "train.npy", project_landmarks(resources, *load_labels(tmp / "data", train, resources.n_verts)))
    run(params, tmp, split_dir, coarse_dir)
    given = np.load(tmp / "crop/train/warps.npy")
    params = params.replace(crop={"source": "gt"}, data={"workers": 2, "skip_bad": True, "max_bad_fraction": 0.5})
    info_path(tmp / "data", train.iloc[4]).write_bytes(b"not an npz")
    crop.run(params, tmp / "crop_gt", coarse_dir, split_dir)
    warps = np.load(tmp / "crop_gt/train/warps.npy")
    np.testing.assert_array_equal(np.isnan(warps).all((1, 2)), np.arange(len(train)) == 4)
    np.testing.assert_array_equal(np.delete(warps, 4, axis=0), np.delete(given, 4, axis=0))
    assert pd.read_csv(tmp / "crop_gt/skipped.csv").file.tolist() == [str(info_path(tmp / "data", train.iloc[4]))]


def test_interrupted_crop_resumes_without_redoing_finished_chunks(tiny, monkeypatch):
    params, tmp, split_dir, coarse_dir = tiny
    interrupt_after(CropStoreWriter, "write", 2, lambda: run(params, tmp, split_dir, coarse_dir), monkeypatch)
    cropped = []
    crop_one = cropping._crop_one
    monkeypatch.setattr(cropping, "_crop_one", lambda path, *a: cropped.append(path) or crop_one(path, *a))
    run(params, tmp, split_dir, coarse_dir)
    assert len(cropped) == 8 + 2 + 3 - 6
    metrics = json.loads((tmp / "crop/metrics.json").read_text())
    assert [metrics[split]["resumed"] for split in ("train", "val", "test")] == [6, 0, 0]
    assert [metrics[split]["images_per_second"] * metrics[split]["seconds"] for split in ("train", "val", "test")] \
        == pytest.approx([8 - 6, 2, 3])
    resumed = np.load(tmp / "crop/train/images.npy")
    (tmp / "crop").rename(tmp / "crop_resumed")
    run(params, tmp, split_dir, coarse_dir)
    assert np.array_equal(np.load(tmp / "crop/train/images.npy"), resumed)


def test_a_run_stopped_after_its_stores_are_finished_resumes_with_every_crop_done(tiny, monkeypatch):
    """Stopped between the splits' finish (their crops in the output's temporary folder) and the
    output's rename, as a Ctrl-C in the run's digest of the stores would: the work folder still
    holds every crop, so the rerun crops nothing and writes the same stores."""
    params, tmp, split_dir, coarse_dir = tiny
    run(params, tmp, split_dir, coarse_dir)
    whole = {split: np.load(tmp / f"crop/{split}/images.npy") for split in ("train", "val", "test")}
    (tmp / "crop").rename(tmp / "crop_whole")
    interrupt_after(crop, "stamp_run", 1, lambda: run(params, tmp, split_dir, coarse_dir), monkeypatch)
    assert not (tmp / "crop").exists()
    cropped = []
    crop_one = cropping._crop_one
    monkeypatch.setattr(cropping, "_crop_one", lambda path, *a: cropped.append(path) or crop_one(path, *a))
    run(params, tmp, split_dir, coarse_dir)
    assert cropped == []
    for split, images in whole.items():
        assert np.array_equal(np.load(tmp / f"crop/{split}/images.npy"), images)
    assert not (tmp / "crop.partial").exists()


def test_a_partial_run_of_one_decode_path_is_not_resumed_by_the_other(tiny, monkeypatch):
    params, tmp, split_dir, coarse_dir = tiny
    interrupt_after(CropStoreWriter, "write", 1,
                    lambda: _crop_with(params, tmp, split_dir, coarse_dir, monkeypatch, None, "unused"), monkeypatch)
    cropped = []
    load = decode.load_for_device
    monkeypatch.setattr(cropping, "load_for_device", lambda path, *a: cropped.append(path) or load(path, *a))
    _crop_with(params, tmp, split_dir, coarse_dir, monkeypatch, "cpu", "torch")
    assert len(cropped) == 8 + 2 + 3            # every image again, the interrupted chunk too

def test_crop_sheet_draws_sixteen_or_fewer_tiles(tiny):
    params, tmp, split_dir, coarse_dir = tiny
    run(params, tmp, split_dir, coarse_dir)
    path = crop_sheet.run(params, tmp / "crop_sheet", tmp / "crop/val", split_dir)
    sheet = cv2.cvtColor(cv2.imread(str(path)), cv2.COLOR_BGR2RGB)
    assert sheet.shape == (crop_sheet.TILE_SIZE, 4 * crop_sheet.TILE_SIZE, 3)   # 2 val crops: one row
    green = (sheet[..., 1] > 200) & (sheet[..., 0] < 80)
    assert green[:, :2 * crop_sheet.TILE_SIZE].any() and not green[:, 2 * crop_sheet.TILE_SIZE:].any()


def test_crop_sheet_leaves_out_a_tile_whose_info_file_is_bad_with_skip_bad(tiny):
    """crop (landmarks from the detector) skips no row for a bad val info file; the sheet then
    stops naming it, or with data.skip_bad draws the other tile."""
    params, tmp, split_dir, coarse_dir = tiny
    run(params, tmp, split_dir, coarse_dir)
    info = info_path(tmp / "data", read_list(split_dir / "val.csv").iloc[1])
    info.write_bytes(b"not an npz")
    with pytest.raises(DataError, match=info.name):
        crop_sheet.run(params, tmp / "crop_sheet", tmp / "crop/val", split_dir)
    path = crop_sheet.run(params.replace(data={"skip_bad": True}), tmp / "crop_sheet", tmp / "crop/val", split_dir)
    green = (cv2.imread(str(path))[..., 1] > 200) & (cv2.imread(str(path))[..., 2] < 80)
    assert green[:, :crop_sheet.TILE_SIZE].any() and not green[:, crop_sheet.TILE_SIZE:].any()


def test_every_split_carries_the_identity_of_its_crop_run(tiny):
    params, tmp, split_dir, coarse_dir = tiny
    run(params, tmp, split_dir, coarse_dir)
    runs = {split: CropStore.open(tmp / "crop" / split).run for split in ("train", "val", "test")}
    assert len(set(runs.values())) == 1 and len(runs["train"]) == 16
    params = params.replace(crop={"margin": 1.6})
    run(params, tmp, split_dir, coarse_dir)
    assert CropStore.open(tmp / "crop" / "test").run != runs["test"]


TORCH_DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA"))]
# Crops of the torch path against the OpenCV path's, per device: (max, mean) absolute difference.
# CPU: torchvision's libjpeg-turbo decodes the same pixels as OpenCV's (measured: identical on
# these and on 800x800 synthetic JPEGs), so the warp alone differs: at most 1 grey level
# (tests/unit/test_warp_torch.py). CUDA: nvJPEG is another decoder (its chroma upsampling is not
# libjpeg's), so colour edges differ by up to about 60 grey levels. Measured on an H200: these
# 200x200 images cut to 32 px crops (every edge dense), mean 3.6 and 2.2 in the two tests; 800x800
# synthetic faces cut to 256 px (benchmarks/bench_crop.py), mean 0.33, max 61. A wrong warp or
# channel order gives means of tens of grey levels.
CROP_TOLERANCE = {"cpu": (1, 0.01), "cuda": (255, 4.0)}


def _crop_with(params, tmp, split_dir, coarse_dir, monkeypatch, device, name):
    """Run the stage with crop.decode opencv (device None) or the torch path on `device` -> its folder."""
    params = params.replace(crop={"decode": "opencv" if device is None else "torch"})
    monkeypatch.setattr(crop, "decode_device", lambda choice: None if device is None else torch.device(device))
    run(params, tmp, split_dir, coarse_dir)
    return (tmp / "crop").rename(tmp / name)


def _assert_same_crops(opencv, torch_path, device):
    for split in ("train", "val", "test"):
        for name in ("warps.npy", "inv_warps.npy"):
            assert np.array_equal(np.load(opencv / split / name), np.load(torch_path / split / name), equal_nan=True)
        assert (opencv / split / "index.csv").read_text() == (torch_path / split / "index.csv").read_text()
        diff = np.abs(np.load(opencv / split / "images.npy").astype(int) - np.load(torch_path / split / "images.npy"))
        assert diff.max() <= CROP_TOLERANCE[device][0] and diff.mean() <= CROP_TOLERANCE[device][1], \
            (split, diff.max(), diff.mean())


@pytest.mark.parametrize("device", TORCH_DEVICES)
def test_the_torch_path_makes_the_opencv_crops(tiny, monkeypatch, device):
    params, tmp, split_dir, coarse_dir = tiny
    opencv = _crop_with(params, tmp, split_dir, coarse_dir, monkeypatch, None, "crop_opencv")
    batched = _crop_with(params, tmp, split_dir, coarse_dir, monkeypatch, device, "crop_torch")
    _assert_same_crops(opencv, batched, device)


def _spoil_train_images(tmp, split_dir):
    """Row 1: not a JPEG; row 2: a JPEG of the wrong size; row 4: a PNG (OpenCV reads it: not bad)."""
    train = read_list(split_dir / "train.csv")
    corrupt = _corrupt_second_train_image(tmp, split_dir)
    small = image_path(tmp / "data", train.iloc[2])
    small.write_bytes(cv2.imencode(".jpg", np.full((50, 70, 3), 90, np.uint8))[1].tobytes())
    png = image_path(tmp / "data", train.iloc[4])
    png.write_bytes(cv2.imencode(".png", cv2.imread(str(png)))[1].tobytes())
    return corrupt, small


@pytest.mark.parametrize("device", TORCH_DEVICES)
def test_the_torch_path_skips_the_same_bad_images_with_the_same_reasons(tiny, monkeypatch, device):
    params, tmp, split_dir, coarse_dir = tiny
    params = params.replace(data={"skip_bad": True})
    corrupt, small = _spoil_train_images(tmp, split_dir)
    opencv = _crop_with(params, tmp, split_dir, coarse_dir, monkeypatch, None, "crop_opencv")
    batched = _crop_with(params, tmp, split_dir, coarse_dir, monkeypatch, device, "crop_torch")
    skipped = pd.read_csv(batched / "skipped.csv")
    assert skipped.equals(pd.read_csv(opencv / "skipped.csv"))
    assert set(skipped.file) == {str(corrupt), str(small)} and "70x50" in " ".join(skipped.reason)
    _assert_same_crops(opencv, batched, device)


@pytest.mark.parametrize("spoil,reason", [("corrupt", "not a decodable image"), ("missing", "image not found"),
                                          ("size", "image is 70x50")])
def test_the_torch_path_stops_with_the_bad_images_name(tiny, monkeypatch, spoil, reason):
    params, tmp, split_dir, coarse_dir = tiny
    corrupt, small = _spoil_train_images(tmp, split_dir)
    if spoil == "size":
        corrupt.write_bytes(image_path(tmp / "data", read_list(split_dir / "train.csv").iloc[0]).read_bytes())
    if spoil == "missing":
        corrupt.unlink()
    params = params.replace(crop={"decode": "torch"})
    monkeypatch.setattr(crop, "decode_device", lambda choice: torch.device("cpu"))
    with pytest.raises(DataError, match=f"{corrupt if spoil != 'size' else small}: {reason}"):
        run(params, tmp, split_dir, coarse_dir)


@pytest.mark.filterwarnings("ignore:The image decoding and encoding capabilities of TorchVision")
@pytest.mark.parametrize("device", TORCH_DEVICES)
def test_a_batch_that_fails_to_decode_is_decoded_one_by_one(tmp_path, device):
    """decode_images: one bad file in a batch costs only its own row; a PNG goes through OpenCV; a
    JPEG cut short (its last tenth missing) is no image on either device, as on the OpenCV path."""
    image = np.random.default_rng(0).integers(0, 255, (40, 30, 3), dtype=np.uint8)
    jpeg = cv2.imencode(".jpg", image)[1].ravel()
    files = {"good.jpg": jpeg, "bad.jpg": np.frombuffer(b"not a jpeg", np.uint8),
             "png.jpg": cv2.imencode(".png", image)[1], "small.jpg": cv2.imencode(".jpg", image[:20])[1],
             "cut.jpg": jpeg[:len(jpeg) * 9 // 10]}
    paths = []
    for name, data in files.items():
        paths.append(str(tmp_path / name))
        (tmp_path / name).write_bytes(data.tobytes())
    datas = [torch.from_numpy(np.asarray(data).ravel().copy()) for data in files.values()]
    good, bad, png, small, cut = decode.decode_images(datas, paths, torch.device(device), (30, 40))
    assert good.device.type == png.device.type == device and good.shape == png.shape == (3, 40, 30)
    assert torch.equal(png.cpu(), torch.from_numpy(image[..., ::-1].copy()).permute(2, 0, 1))   # encoded as BGR
    assert isinstance(bad, DataError) and str(bad) == f"{paths[1]}: not a decodable image (corrupt or empty)"
    assert isinstance(small, DataError) and "image is 30x20, the data set's images are 30x40" in str(small)
    assert isinstance(cut, DataError) and str(cut) == f"{paths[4]}: not a decodable image (corrupt or empty)"


@pytest.mark.parametrize("driver", [False, True])
def test_decode_auto_is_torch_on_cuda_only(monkeypatch, driver):
    monkeypatch.setattr(crop, "gpu_driver_present", lambda: driver)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert crop.decode_device("auto") is None and crop.decode_device("opencv") is None
    assert crop.decode_device("torch") == torch.device("cpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: driver)   # (no CUDA without a driver)
    assert crop.decode_device("opencv") is None
    assert crop.decode_device("auto") == (torch.device("cuda") if driver else None)
    assert crop.decode_device("torch").type == ("cuda" if driver else "cpu")


def test_the_opencv_path_never_imports_torch(tiny):
    """Without a GPU driver, crop.decode auto: the stage in a fresh process leaves torch unloaded."""
    params, tmp, split_dir, coarse_dir = tiny
    code = ("import json, sys; from pathlib import Path; from stages import crop; "
            "from stages.common.params import check_params; crop.gpu_driver_present = lambda: False; "
            "crop.run(check_params(json.loads(sys.argv[1]), 'argv'), *map(Path, sys.argv[2:])); "
            "print('torch' in sys.modules)")
    result = subprocess.run([sys.executable, "-c", code, json.dumps(params.as_dict()), str(tmp / "crop"),
                             str(coarse_dir), str(split_dir)], capture_output=True, text=True, cwd=ROOT, check=True)
    assert result.stdout.strip().splitlines()[-1] == "False"


def _exif_jpeg(path, orientation: int, comments: bytes = b"") -> np.ndarray:
    """A 40 x 30 JPEG at path with that EXIF orientation (comment segments before it) -> its pixels."""
    from PIL import Image
    image = np.random.default_rng(0).integers(0, 255, (30, 40, 3), dtype=np.uint8)
    exif = Image.Exif()
    exif[0x0112] = orientation
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, "JPEG", quality=95, exif=exif.tobytes())
    data = buffer.getvalue()
    path.write_bytes(data[:2] + comments + data[2:])
    return image


@pytest.mark.parametrize("orientation, comments", [(6, b""), (3, (b"\xff\xfe" + (65002).to_bytes(2, "big") + b"x" * 65000) * 2)])
def test_an_exif_oriented_jpeg_is_read_in_its_stored_grid_on_both_paths(tmp_path, orientation, comments):
    """The labels refer to the stored pixels: an EXIF orientation (6: a quarter turn; 3: a half
    turn, its block after 130 kB of comments) is not applied by the OpenCV reader nor by the torch
    path's decode_jpeg, which read the same pixels; predict's reader applies it (a photo shown
    upright)."""
    path = tmp_path / "oriented.jpg"
    _exif_jpeg(path, orientation, comments)
    stored = read_image(path, (40, 30))
    assert stored.shape == (30, 40, 3)
    loaded = decode.load_for_device(str(path), torch.device("cpu"), (40, 30))
    assert np.abs(loaded.permute(1, 2, 0).numpy().astype(int) - stored).max() <= 1
    upright = read_image(path, orient=True)
    expected = np.rot90(stored, -1) if orientation == 6 else stored[::-1, ::-1]
    assert upright.shape == expected.shape and np.array_equal(upright, expected)


@pytest.mark.parametrize("change", ["image", "code"])
def test_an_image_replaced_or_a_code_fix_during_an_interruption_crops_again(tiny, monkeypatch, change):
    """The job's identity holds its images' sizes and times and the stage's code digest: a
    replaced image (the same landmarks, so the same warps), or a fix to the code (dvc repro
    reruns the stage), makes the resumed run crop its split again."""
    params, tmp, split_dir, coarse_dir = tiny
    interrupt_after(CropStoreWriter, "write", 2, lambda: run(params, tmp, split_dir, coarse_dir), monkeypatch)
    if change == "image":
        first = image_path(tmp / "data", read_list(split_dir / "train.csv").iloc[0])
        time.sleep(0.01)
        first.write_bytes(first.read_bytes())
    else:
        digest = crop.code_digest
        monkeypatch.setattr(crop, "code_digest", lambda module: digest(module) + "+fix")
    cropped = []
    crop_one = cropping._crop_one
    monkeypatch.setattr(cropping, "_crop_one", lambda path, *a: cropped.append(path) or crop_one(path, *a))
    run(params, tmp, split_dir, coarse_dir)
    assert len(cropped) == 8 + 2 + 3


def test_a_finished_work_folder_whose_crops_were_made_read_only_is_resumed(tiny, monkeypatch):
    """A run stopped after the output's rename, before its work folder went: the crops' file is
    also the output's, which `dvc commit` (cache.type hardlink) makes read-only; the rerun reads
    it and crops nothing."""
    params, tmp, split_dir, coarse_dir = tiny
    interrupt_after(crop, "stamp_run", 1, lambda: run(params, tmp, split_dir, coarse_dir), monkeypatch)
    load = np.load

    def read_only_values(path, *args, **kwargs):      # as for a user without root's rights over 0444
        if Path(path).name == "values.npy" and kwargs.get("mmap_mode") == "r+":
            raise PermissionError(f"[Errno 13] Permission denied: '{path}'")
        return load(path, *args, **kwargs)

    monkeypatch.setattr(np, "load", read_only_values)
    cropped = []
    crop_one = cropping._crop_one
    monkeypatch.setattr(cropping, "_crop_one", lambda path, *a: cropped.append(path) or crop_one(path, *a))
    run(params, tmp, split_dir, coarse_dir)
    assert cropped == [] and np.load(tmp / "crop/train/images.npy").any()


def _pil_jpeg(path, mode: str, **options) -> None:
    """A 40 x 30 JPEG of PIL's `mode` ('L', 'RGB', 'CMYK') at path."""
    from PIL import Image
    image = np.random.default_rng(1).integers(0, 255, (30, 40, 3), dtype=np.uint8)
    Image.fromarray(image).convert(mode).save(path, "JPEG", quality=95, **options)


@pytest.mark.filterwarnings("ignore:The image decoding and encoding capabilities of TorchVision")
@pytest.mark.parametrize("mode, options, components", [("L", {}, 1), ("RGB", {}, 3), ("RGB", {"progressive": True}, 3),
                                                        ("CMYK", {}, 4)])
def test_a_cmyk_jpeg_is_decoded_on_the_cpu_and_every_other_goes_to_the_device_as_bytes(tmp_path, mode, options,
                                                                                        components):
    """jpeg_components reads the frame header (the number PIL wrote), also past stray bytes before
    it; the torch path on the CPU decodes each to 3-channel RGB within a grey level of the OpenCV
    reader; load_for_device hands a device other than the CPU (meta stands in for CUDA) the bytes
    of a grey, colour or progressive JPEG, and a CMYK one decoded on the CPU (nvJPEG does not
    convert it)."""
    path = tmp_path / "image.jpg"
    _pil_jpeg(path, mode, **options)
    data = np.fromfile(path, np.uint8)
    assert decode.jpeg_components(data) == components
    frame = max(data.tobytes().find(bytes([0xFF, marker])) for marker in (0xC0, 0xC2))
    assert decode.jpeg_components(np.insert(data, frame, [0, 1])) == components
    opencv = read_image(path, (40, 30))
    on_cpu = decode.load_for_device(str(path), torch.device("cpu"), (40, 30))
    assert on_cpu.shape == (3, 30, 40) and np.abs(on_cpu.permute(1, 2, 0).numpy().astype(int) - opencv).max() <= 1
    loaded = decode.load_for_device(str(path), torch.device("meta"), (40, 30))
    if components != 4:
        assert loaded.dim() == 1 and np.array_equal(loaded.numpy(), data)
        return
    assert loaded.device.type == "cpu" and torch.equal(loaded, on_cpu)


@pytest.mark.parametrize("data", [b"", b"\xff\xd8", b"not a jpeg at all", b"\xff\xd8\xff\xda\x00\x02",
                                  b"\xff\xd8\xff\xe0\x00\x10JFIF", b"\xff\xd8\xff\xc0\x00\x11\x08\x00"])
def test_bytes_without_a_whole_frame_header_have_no_component_count(data):
    assert decode.jpeg_components(np.frombuffer(data, np.uint8)) is None
