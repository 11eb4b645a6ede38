"""The detector's streamed views (stages/coarse/sources.py, stages/coarse/train.py): augmentation
geometry, determinism across loader workers, no pixels held, reduced decoding, bad images; the
torch path (stages/coarse/device_views.py) against the OpenCV path on the CPU, and the OpenCV
path's views augmented on the device (coarse_train.augment) against the torch path's."""
import pickle

import cv2
import numpy as np
import pandas as pd
import pytest
import torch

from stages.coarse.augment import Jitter
from stages.coarse import augment_torch
from stages.coarse.device_views import DeviceStream, PlanSet, WarpedSet
from stages.coarse.sources import Samples, Stream, ViewSet, list_samples, reduction
from stages.coarse.train import epoch_batches, make_stream, take
from stages.common.badinput import BadInputs
from stages.wcpa.layout import DataError, read_image

SIZES = {"locate": 48, "refine": 64}
JITTERS = {"locate": Jitter(0.05, 1.2, 20.0), "refine": Jitter(0.08, 1.2, 20.0)}


def _dots(points: np.ndarray, size: int) -> np.ndarray:
    """An image with a 4x4 white block centred on each point (integer continuous coordinates)."""
    image = np.zeros((size, size, 3), dtype=np.uint8)
    for x, y in points.astype(int):
        image[y - 2:y + 2, x - 2:x + 2] = 255
    return image


def _samples(tmp_path, images: list[np.ndarray], landmarks: np.ndarray, ext: str = "png") -> Samples:
    paths = []
    for k, image in enumerate(images):
        path = tmp_path / f"{k}.{ext}"
        cv2.imwrite(str(path), image)
        paths.append(str(path).encode())
    keys = [f"s/a/{k}".encode() for k in range(len(images))]
    size = (images[0].shape[1], images[0].shape[0])
    return Samples(np.array(paths), np.array(keys), np.asarray(landmarks, dtype=np.float64), size)


def _mirror_points() -> tuple[np.ndarray, np.ndarray]:
    """Three points on a 160 px image: a mirror pair (0, 1) and a self-mirrored point 2."""
    return np.array([[60.0, 70.0], [100.0, 70.0], [80.0, 100.0]]), np.array([1, 0, 2])


def test_augmented_views_keep_landmarks_on_their_pixels_and_reorder_on_flip(tmp_path):
    points, order = _mirror_points()
    samples = _samples(tmp_path, [_dots(points, 160)], points[None])
    views = ViewSet(samples, SIZES, 2.4, seed=0, jitters=JITTERS, flip_order=order, flip_prob=0.5, max_reduce=1)
    views.photometric = lambda image, seed: image
    flips = 0
    for epoch in range(8):
        item = views[(epoch, 0)]
        for name, size in SIZES.items():
            weight = item[name]["image"][..., 0].astype(np.float64)
            moved = item[name]["points"]
            for x, y in moved:
                rows, cols = np.mgrid[int(y) - 5:int(y) + 6, int(x) - 5:int(x) + 6]
                w = weight[rows, cols]
                centre = np.array([((cols + 0.5) * w).sum(), ((rows + 0.5) * w).sum()]) / w.sum()
                assert np.allclose(centre, [x, y], atol=0.3), (name, epoch)
            assert moved[0, 0] < moved[1, 0]      # mirror pair re-ordered: point 0 stays the left one
        flips += item["refine"]["points"][2, 0] > SIZES["refine"] / 2 + 2   # point 2 went right
    assert 0 < flips < 8


def _face_images(tmp_path, count: int) -> Samples:
    rng = np.random.default_rng(0)
    images, landmarks = [], []
    for _ in range(count):
        image = cv2.GaussianBlur(rng.integers(0, 255, (480, 480, 3), dtype=np.uint8), (0, 0), 3.0)
        images.append(image)
        landmarks.append(rng.uniform(120, 360, (5, 2)))
    return _samples(tmp_path, images, np.array(landmarks), ext="jpg")


def _batches(views: ViewSet, workers: int) -> list[dict]:
    batches = epoch_batches(len(views), 3, seed=0, epoch=1)
    return list(Stream(views, workers).read(batches))


def test_batches_do_not_depend_on_the_number_of_workers(tmp_path):
    views = ViewSet(_face_images(tmp_path, 7), SIZES, 1.2, seed=5, jitters=JITTERS,
                    flip_order=np.array([1, 0, 2, 4, 3]), flip_prob=0.5)
    alone, shared = _batches(views, 0), _batches(views, 2)
    assert len(alone) == len(shared) == 2
    for a, b in zip(alone, shared):
        assert torch.equal(a["index"], b["index"])
        for name in SIZES:
            for key in ("image", "points", "scale"):
                assert torch.equal(a[name][key], b[name][key]), (name, key)
    other = ViewSet(views.samples, SIZES, 1.2, seed=6, jitters=JITTERS, flip_order=views.flip_order, flip_prob=0.5)
    assert not torch.equal(_batches(other, 0)[0]["refine"]["image"], alone[0]["refine"]["image"])


def test_the_view_set_holds_no_pixels(tmp_path):
    views = ViewSet(_face_images(tmp_path, 6), SIZES, 1.2, seed=0, jitters=JITTERS,
                    flip_order=np.arange(5), flip_prob=0.5)

    def state() -> bytes:       # all but the (pixel-free) colour transforms, whose random state moves
        return pickle.dumps({k: v for k, v in vars(views).items() if k != "photometric"})

    before = state()
    for i in range(len(views)):
        views[(0, i)]
    assert state() == before          # nothing cached by reading
    arrays = [v for v in (*vars(views).values(), *vars(views.samples).values()) if isinstance(v, np.ndarray)]
    assert all(a.ndim == 1 or a.shape[1:] == (5, 2) for a in arrays)     # paths, keys, flip order, landmarks
    assert len(before) < 3_000 and len(pickle.dumps(views.photometric)) < 50_000


def test_reduced_decoding_stays_close_to_the_full_decode(tmp_path):
    samples = _face_images(tmp_path, 3)
    full = ViewSet(samples, SIZES, 1.2, seed=0, max_reduce=1)
    reduced = ViewSet(samples, SIZES, 1.2, seed=0)
    assert reduction(0.2, 8) == 4 and reduction(0.2, 2) == 2 and reduction(0.6, 8) == 1
    for i in range(3):
        a, b = full[(0, i)], reduced[(0, i)]
        for name in SIZES:
            assert np.array_equal(a[name]["points"], b[name]["points"])
            diff = np.abs(a[name]["image"].astype(float) - b[name]["image"].astype(float))
            assert diff.mean() < 3.0, (name, diff.mean())
    assert read_image(samples.paths[0].decode(), samples.size, reduce=2).shape == (240, 240, 3)


def test_the_decode_reduction_keeps_each_view_as_dense_as_it_samples():
    """The locate view spans the image's longer side (480 px here): its density is locate / 480,
    not locate over the landmarks' box, which asked for a full decode where the refine view
    allows half the size."""
    box = np.array([[100.0, 100.0], [200.0, 100.0], [150.0, 200.0]])          # a 100 px box
    samples = Samples(np.array([b"x.png"]), np.array([b"s/a/0"]), box[None], (480, 480))
    views = ViewSet(samples, {"locate": 96, "refine": 32}, 1.2, seed=0)
    assert views.reduction(0) == 2            # refine 32 / (1.2 x 100) = 0.27, locate 96 / 480 = 0.2
    assert ViewSet(samples, {"locate": 320, "refine": 32}, 1.2, seed=0).reduction(0) == 1     # 320 / 480


def test_missing_or_empty_files_are_found_up_front_and_corrupt_ones_while_streaming(tmp_path):
    samples = _face_images(tmp_path, 4)
    table = pd.DataFrame({"subject_id": ["s"] * 4, "facial_action": ["a"] * 4, "img_id": ["0", "1", "2", "3"]})
    image_dir = tmp_path / "root/image/s/a"
    image_dir.mkdir(parents=True)
    for k in range(4):
        (image_dir / f"{k}_ar.jpg").write_bytes(open(samples.paths[k], "rb").read())
    (image_dir / "1_ar.jpg").write_bytes(b"")
    (image_dir / "3_ar.jpg").unlink()
    with pytest.raises(DataError, match="1_ar.jpg: not a decodable image"):
        list_samples(tmp_path / "root", table, samples.landmarks, samples.size, BadInputs(skip=False, max_fraction=1.0))
    bad = BadInputs(skip=True, max_fraction=1.0)
    kept = list_samples(tmp_path / "root", table, samples.landmarks, samples.size, bad)
    assert [kept.key(i) for i in range(len(kept))] == ["s/a/0", "s/a/2"] and bad.keys == {"s/a/1", "s/a/3"}
    assert [record["reason"] for record in bad.records] == ["not a decodable image (corrupt or empty)",
                                                            "image not found"]
    assert np.array_equal(kept.landmarks, samples.landmarks[[0, 2]])

    (image_dir / "2_ar.jpg").write_bytes(b"not a jpeg")       # corrupt: found when decoded
    views = ViewSet(kept, SIZES, 1.2, seed=0)
    batch = next(Stream(views, 0).read([[(0, 0), (0, 1)]]))
    with pytest.raises(DataError, match="2_ar.jpg"):
        take(batch, kept, BadInputs(skip=False, max_fraction=1.0))
    for _ in range(2):                                         # every epoch finds it again: recorded once
        clean = take(batch, kept, bad)
        assert clean["index"].tolist() == [0] and clean["refine"]["image"].shape[0] == 1
    assert len(bad) == 3 and "s/a/2" in bad.keys


DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA"))]
TOLERANCE = {"cpu": (1, 0.05), "cuda": (255, 4.0)}     # max, mean grey levels (nvJPEG is not libjpeg: tests/stages/test_crop.py)


def _device_batches(views: ViewSet, workers: int, batches, device: str = "cpu", decode: bool = True) -> list[dict]:
    return list(DeviceStream(views, workers, torch.device(device), decode).read(batches))


@pytest.mark.parametrize("device", DEVICES)
def test_the_torch_path_makes_the_opencv_paths_plain_views(tmp_path, device):
    views = ViewSet(_face_images(tmp_path, 5), SIZES, 1.2, seed=0, max_reduce=1)
    batches = [[(0, 0), (0, 1), (0, 2)], [(0, 3), (0, 4)]]
    worst, mean = TOLERANCE[device]
    for a, b in zip(list(Stream(views, 0).read(batches)), _device_batches(views, 0, batches, device)):
        assert torch.equal(a["index"], b["index"]) and list(b["error"]) == ["", "", ""][:len(a["index"])]
        for name, size in SIZES.items():
            assert torch.equal(a[name]["points"], b[name]["points"]) and torch.equal(a[name]["scale"], b[name]["scale"])
            image = b[name]["image"]
            assert image.shape == a[name]["image"].shape and image.dtype == torch.uint8 and image.device.type == device
            diff = (a[name]["image"].int() - image.cpu().int()).abs()
            assert diff.max() <= worst and diff.float().mean() <= mean, (name, diff.max(), diff.float().mean())


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA")
@pytest.mark.parametrize("decode", [True, False], ids=["torch_path", "augmented_on_the_device"])
def test_the_device_paths_augment_on_cuda_as_on_the_cpu(tmp_path, decode):
    views = ViewSet(_face_images(tmp_path, 6), SIZES, 1.2, seed=5, jitters=JITTERS,
                    flip_order=np.array([1, 0, 2, 4, 3]), flip_prob=0.5, max_reduce=1)
    batches = epoch_batches(len(views), 3, seed=0, epoch=1)
    for a, b in zip(_device_batches(views, 0, batches, decode=decode),
                    _device_batches(views, 2, batches, "cuda", decode)):
        for name in SIZES:
            assert torch.equal(a[name]["points"], b[name]["points"])
            assert (a[name]["image"].float() - b[name]["image"].cpu().float()).abs().mean() < 6.0


def test_the_torch_path_augments_with_the_same_geometry_whatever_the_workers(tmp_path):
    views = ViewSet(_face_images(tmp_path, 7), SIZES, 1.2, seed=5, jitters=JITTERS,
                    flip_order=np.array([1, 0, 2, 4, 3]), flip_prob=0.5, max_reduce=1)
    batches = epoch_batches(len(views), 3, seed=0, epoch=1)
    opencv, alone, shared = _batches(views, 0), _device_batches(views, 0, batches), _device_batches(views, 2, batches)
    for a, b, c in zip(opencv, alone, shared):
        for name in SIZES:
            assert torch.equal(a[name]["points"], b[name]["points"])        # same warps, flips, targets
            assert torch.equal(b[name]["image"], c[name]["image"]) and torch.equal(b[name]["points"], c[name]["points"])
            assert (a[name]["image"].float() - b[name]["image"].float()).abs().mean() > 1   # augmented
    again = _device_batches(ViewSet(views.samples, SIZES, 1.2, seed=5, jitters=JITTERS, flip_order=views.flip_order,
                                    flip_prob=0.5, max_reduce=1), 0, batches)
    assert torch.equal(again[0]["refine"]["image"], alone[0]["refine"]["image"])      # seeded


@pytest.mark.parametrize("decode", [True, False], ids=["torch_path", "augmented_on_the_device"])
def test_the_device_paths_report_a_corrupt_image_by_name(tmp_path, decode):
    samples = _face_images(tmp_path, 3)
    open(samples.paths[1], "wb").write(b"not a jpeg")
    views = ViewSet(samples, SIZES, 1.2, seed=0, jitters=JITTERS, flip_order=np.array([1, 0, 2, 4, 3]), flip_prob=0.5)
    batch = _device_batches(views, 0, [[(0, 0), (0, 1), (0, 2)]], decode=decode)[0]
    assert batch["error"][0] == batch["error"][2] == "" and "1.jpg" in batch["error"][1]
    with pytest.raises(DataError, match="1.jpg"):
        take(batch, samples, BadInputs(skip=False, max_fraction=1.0))
    assert take(batch, samples, BadInputs(skip=True, max_fraction=1.0))["index"].tolist() == [0, 2]


def test_views_augmented_on_the_device_are_the_opencv_warps_with_the_torch_paths_augmentation(tmp_path, monkeypatch):
    views = ViewSet(_face_images(tmp_path, 7), SIZES, 1.2, seed=5, jitters=JITTERS,
                    flip_order=np.array([1, 0, 2, 4, 3]), flip_prob=0.5)
    batches = epoch_batches(len(views), 3, seed=0, epoch=1)
    alone, shared = _device_batches(views, 0, batches, decode=False), _device_batches(views, 2, batches, decode=False)
    plans = PlanSet(views.samples, SIZES, 1.2, 5, JITTERS, views.flip_order, 0.5, device=torch.device("cpu"))
    warped = WarpedSet(views.samples, SIZES, 1.2, 5, JITTERS, views.flip_order, 0.5)
    opencv = _batches(views, 0)
    monkeypatch.setattr(ViewSet, "augmented", lambda self, pixels, seed: {"image": pixels})
    unaugmented, changes = _batches(views, 0), []
    for k, (b, c) in enumerate(zip(alone, shared)):
        assert list(b["error"]) == [""] * len(b["index"])
        items = [(warped[item], plans[item]) for item in batches[k]]
        for name in SIZES:
            assert torch.equal(b[name]["image"], c[name]["image"])             # whatever the workers
            assert torch.equal(b[name]["points"], opencv[k][name]["points"])
            colors = np.stack([w[name]["color"] for w, _ in items])
            assert np.array_equal(colors, np.stack([p[name]["color"] for _, p in items]))    # the torch path's draws
            raw = torch.from_numpy(np.stack([w[name]["image"] for w, _ in items]))
            assert torch.equal(raw, unaugmented[k][name]["image"])             # the OpenCV path's warps
            expected = augment_torch.apply(raw.permute(0, 3, 1, 2), torch.from_numpy(colors),
                                           int(colors[0, augment_torch.NOISE_SEED])).permute(0, 2, 3, 1)
            assert torch.equal(b[name]["image"], expected)
            changes.append((raw.float() - b[name]["image"].float()).abs().mean())
    assert np.mean(changes) > 1                                                 # augmented


def test_the_stream_puts_the_augmentation_where_the_params_say(tmp_path):
    samples = _face_images(tmp_path, 2)
    training = ViewSet(samples, SIZES, 1.2, seed=0, jitters=JITTERS, flip_order=np.arange(5), flip_prob=0.5)
    plain = ViewSet(samples, SIZES, 1.2, seed=0)
    cpu = torch.device("cpu")
    assert type(make_stream(training, 0, "opencv", "opencv", cpu)) is Stream
    assert type(make_stream(training, 0, "opencv", "auto", cpu)) is Stream            # auto: on CUDA only
    assert type(make_stream(plain, 0, "opencv", "torch", cpu)) is Stream              # validation: no augmentation
    on_device = make_stream(training, 0, "opencv", "torch", cpu)
    assert isinstance(on_device, DeviceStream) and on_device.make.__name__ == "augment_views"
    assert make_stream(training, 0, "torch", "opencv", cpu).make.__name__ == "make_views"


def test_the_opencv_paths_batches_come_pinned_for_a_gpu_only(tmp_path):
    """On CUDA a batch copied from pageable memory waits for the previous step: the loader pins."""
    views = ViewSet(_face_images(tmp_path, 2), SIZES, 1.2, seed=0, jitters=JITTERS)
    assert not make_stream(views, 0, "opencv", "opencv", torch.device("cpu")).data.pin_memory
    assert make_stream(views, 0, "opencv", "opencv", torch.device("cuda")).data.pin_memory


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_the_opencv_paths_batches_are_pinned_on_cuda(tmp_path):
    views = ViewSet(_face_images(tmp_path, 2), SIZES, 1.2, seed=0, jitters=JITTERS)
    batch = next(make_stream(views, 0, "opencv", "opencv", torch.device("cuda")).read([[(0, 0), (0, 1)]]))
    assert all(batch[name]["image"].is_pinned() for name in SIZES)
