"""predict on a tiny project: a random detector (its landmark nets replaced by a fixed frontal
layout where a face must be found), a random network at 32 px, against the stages crop -> infer
on the same images and coarse landmarks."""
import json
from pathlib import Path
from types import SimpleNamespace

import cv2
import numpy as np
import pandas as pd
import pytest
import torch

from stages import crop, infer, predict
from stages.coarse.confidence import confidence, no_face_reason
from stages.coarse.detector import save_detector
from stages.coarse.model import LandmarkNet
from stages.common.identity import path_digest
from stages.face import frontal
from stages.face.frontal import reference_shape
from stages.face.mesh import flip_permutation
from stages.face.pca import PCABasis, fit_pca
from stages.nets.checkpoint import CheckpointError
from stages.nets.dataset import CropStore
from stages.nets.model import FaceNet, NetConfig
from stages.wcpa.camera import Camera, focal_from_fov
from stages.wcpa.layout import image_path, landmarks_path, load_labels, load_resources, read_landmarks, write_list
from stages.wcpa.obj import read_obj
from stages.wcpa.predictions import load_predictions
from tests.stages.tiny_data import write_tiny_root
from tests.tiny_project import tiny_params

CROP, COMPONENTS = 32, 5
DETECTOR = {"locate_backbone": "mobilenet_v3_small", "refine_backbone": "mobilenet_v3_small",
            "locate_size": 64, "refine_size": 64, "refine_margin": 1.2, "head_width": 16, "n_points": 68}


def save_random_detector(path) -> None:
    torch.manual_seed(0)
    nets = {name: LandmarkNet(DETECTOR[f"{name}_backbone"], 68, False, DETECTOR["head_width"])
            for name in ("locate", "refine")}
    save_detector(path, nets, DETECTOR, np.arange(68), {})


@pytest.fixture
def face_detector(project, monkeypatch):
    """Every landmark net answers the template's frontal landmarks, centred, their box side the
    input's over refine_margin: a refine pass reproduces its input (a converged detection)."""
    root = project[0]
    resources = load_resources(root / "data")
    layout = reference_shape(resources.template, resources.kpt_ind, 1, 1)
    low, high = layout.min(0), layout.max(0)
    layout = (layout - (low + high) / 2) / (high - low).max() / DETECTOR["refine_margin"] + 0.5
    unit = torch.as_tensor(layout, dtype=torch.float32)
    monkeypatch.setattr(LandmarkNet, "forward", lambda self, image: unit.expand(len(image), -1, -1) * image.shape[-1])


def write_basis(root, tables):
    """artifacts/pca: a basis of noisy copies of the training meshes, its flip permutation, poses."""
    verts, poses = load_labels(root / "data", tables["train"], load_resources(root / "data").n_verts)
    rng = np.random.default_rng(0)
    meshes = verts[rng.integers(0, len(verts), 40)] + rng.normal(0, 1e-3, (40,) + verts.shape[1:])
    basis = fit_pca(meshes.astype(np.float64), COMPONENTS)
    (root / "artifacts" / "pca").mkdir(parents=True)
    basis.save(root / "artifacts" / "pca" / "basis.npz", flip_perm=flip_permutation(verts))
    np.save(root / "artifacts" / "pca" / "poses_train.npy", poses)
    return basis


def save_network(root, basis, margin, crop_run="", input_size=0) -> None:
    """artifacts/train/model.pt: a random network whose landmarks sit near the frontal template."""
    torch.manual_seed(0)
    model = FaceNet(NetConfig(depth=18, coordconv=True, shape_head="pca", crop_size=CROP,
                              n_verts=basis.n_verts, n_components=COMPONENTS, input_size=input_size))
    model.shape.set_basis(basis.mean, basis.components, basis.std)
    frontal = reference_shape(basis.mean, np.arange(basis.n_verts), CROP, margin)
    model.landmarks.init_mean(torch.as_tensor(frontal, dtype=torch.float32))
    with torch.no_grad():
        for weight in (model.landmarks.mu.weight, model.landmarks.sigma.weight, model.shape.fc.weight):
            torch.nn.init.normal_(weight, std=1e-4)
    inputs = {"crop_run": crop_run, "pca/basis.npz": path_digest(root / "artifacts" / "pca" / "basis.npz")}
    (root / "artifacts" / "train").mkdir(parents=True, exist_ok=True)
    torch.save({"config": model.config.to_dict(), "model": model.state_dict(), "inputs": inputs},
               root / "artifacts" / "train" / "model.pt")


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    root = tmp_path_factory.mktemp("predict")
    tables = write_tiny_root(root / "data", n_train=6, n_test=3)
    write_list(root / "artifacts" / "split" / "train.csv", tables["train"].iloc[:4])
    write_list(root / "artifacts" / "split" / "val.csv", tables["train"].iloc[4:])
    params = tiny_params().replace(data={"root": str(root / "data"), "workers": 2}, coarse_predict={"refine_passes": 2},
                                   crop={"size": CROP, "source": "coarse", "rotation": "pose"},
                                   infer={"checkpoint": "train", "batch_size": 2, "device": "cpu", "workers": 2},
                                   train={"input_size": 0})
    save_random_detector(root / "artifacts" / "coarse_train" / "model.pt")
    basis = write_basis(root, tables)
    save_network(root, basis, params.crop.margin)
    return root, params, tables


def test_faces_give_meshes_poses_landmarks_and_overlays(project, face_detector, tmp_path):
    root, params, tables = project
    images = [image_path(root / "data", row) for row in tables["test"].itertuples()]
    result = predict.run(params, images[:2] + [images[2].parent], tmp_path, artifacts=root / "artifacts")
    assert result["images"] == 3
    n_verts = load_resources(root / "data").n_verts
    for path in images:
        stem = tmp_path / path.stem
        verts, faces = read_obj(f"{stem}_canonical.obj")
        placed, _ = read_obj(f"{stem}_camera.obj")
        saved = np.load(f"{stem}.npz")
        pose = json.loads(open(f"{stem}_pose.json").read())
        R_t = np.asarray(pose["R_t"])
        assert verts.shape == (n_verts, 3) and faces.tolist() == [[0, 1, 2]]
        np.testing.assert_allclose(verts, saved["verts"], atol=1e-6)
        np.testing.assert_allclose(placed, verts @ R_t[:3, :3] + R_t[3, :3], atol=1e-6)
        np.testing.assert_allclose(R_t[:3, :3] @ R_t[:3, :3].T, np.eye(3), atol=1e-9)
        assert np.linalg.det(R_t[:3, :3]) == pytest.approx(1.0) and R_t[3, 2] < 0
        np.testing.assert_array_equal(R_t, saved["R_t"])
        assert saved["landmarks68"].shape == (68, 2) and saved["coarse68"].shape == (68, 2)
        assert np.asarray(pose["landmarks68"]).shape == (68, 2)
        assert (stem.parent / f"{path.stem}_overlay.png").stat().st_size > 0


def test_predict_reproduces_infer_on_the_same_crops(project, face_detector, tmp_path):
    """coarse_predict's landmarks := predict's, then the crop and infer stages: the same predictions."""
    root, params, tables = project
    images = [image_path(root / "data", row) for row in tables["test"].itertuples()]
    predict.run(params, images, tmp_path / "out", artifacts=root / "artifacts")
    outputs = [np.load(tmp_path / "out" / f"{path.stem}.npz") for path in images]
    coarse = tmp_path / "coarse_predict"
    coarse.mkdir()
    for split, rows in (("train", tables["train"].iloc[:4]), ("val", tables["train"].iloc[4:])):
        np.save(coarse / f"{split}.npy", np.stack([read_landmarks(landmarks_path(root / "data", r), 68)
                                                   for r in rows.itertuples()]))
    np.save(coarse / "test.npy", np.stack([out["coarse68"] for out in outputs]))
    artifacts = tmp_path / "artifacts"
    crop.run(params, artifacts / "crop", coarse, root / "artifacts" / "split")
    (artifacts / "pca").symlink_to(root / "artifacts" / "pca")
    basis_run = CropStore.open(artifacts / "crop" / "test").run
    save_network(tmp_path, PCABasis.load(artifacts / "pca" / "basis.npz"), params.crop.margin, basis_run)
    pred = load_predictions(infer.run(params, "test", artifacts), tables["test"])
    assert not pred["skipped"].any() and not pred["pnp_failed"].any()
    for row, out in enumerate(outputs):
        assert np.abs(out["verts"] - pred["verts"][row]).max() * 1000 < 1e-4       # mm
        assert np.abs(out["landmarks"] - pred["landmarks"][row]).max() < 1e-4       # px
        np.testing.assert_allclose(out["R_t"], pred["R_t"][row], atol=1e-7)


def test_unreadable_image_stops_naming_it(project, tmp_path):
    root, params, _ = project
    bad = tmp_path / "broken.jpg"
    bad.write_bytes(b"not a jpeg")
    with pytest.raises(predict.PredictError, match=r"broken.jpg: not a decodable image"):
        predict.run(params, [bad], tmp_path / "out", artifacts=root / "artifacts")


def test_missing_models_stop_naming_the_file(project, tmp_path):
    root, params, tables = project
    image = image_path(root / "data", tables["test"].iloc[0])
    (tmp_path / "pca").symlink_to(root / "artifacts" / "pca")
    with pytest.raises(predict.PredictError, match=r"coarse_train/model.pt: coarse detector not found"):
        predict.run(params, [image], tmp_path / "out", artifacts=tmp_path)
    (tmp_path / "coarse_train").symlink_to(root / "artifacts" / "coarse_train")
    with pytest.raises(CheckpointError, match=r"train/model.pt: checkpoint not found"):
        predict.run(params, [image], tmp_path / "out", artifacts=tmp_path)


def test_a_detector_without_a_face_stops_naming_the_image(project, tmp_path):
    """A detector whose heatmaps are flat puts every landmark at the centre of its input."""
    root, params, tables = project
    state = torch.load(root / "artifacts" / "coarse_train" / "model.pt")
    for name in ("locate", "refine"):
        state["nets"][name]["heatmaps.weight"].zero_()
        state["nets"][name]["heatmaps.bias"].zero_()
    (tmp_path / "coarse_train").mkdir()
    torch.save(state, tmp_path / "coarse_train" / "model.pt")
    for name in ("pca", "train"):
        (tmp_path / name).symlink_to(root / "artifacts" / name)
    image = image_path(root / "data", tables["test"].iloc[0])
    with pytest.raises(predict.PredictError, match=r"00000_ar.jpg: no face found \(degenerate landmarks"):
        predict.run(params, [image], tmp_path / "out", artifacts=tmp_path)


def test_confidence_gate():
    face = np.random.default_rng(0).uniform(40, 160, (68, 2))
    sizes = np.array([[200, 200]] * 3)
    trace = np.stack([np.stack([face, face + 300, face]), np.stack([face + 1, face + 300, face + 30])])
    conf = confidence(trace, sizes)
    assert no_face_reason(conf, 0) == ""
    assert "0% of the landmarks inside" in no_face_reason(conf, 1)
    assert "does not converge" in no_face_reason(conf, 2)
    assert conf.shift[0] == pytest.approx(np.sqrt(2) / np.ptp(face, 0).max())


def test_pinhole_camera_has_the_focal_length_and_a_centred_principal_point():
    camera = Camera.pinhole(focal_from_fov(90.0, 640), 640, 480)
    assert camera.fx == pytest.approx(320) and camera.fy == pytest.approx(320)
    assert (camera.cx, camera.cy) == pytest.approx((320, 240))
    np.testing.assert_allclose(camera.project_camera_points(np.array([0.1, 0.0, -1.0])), [352, 240])


NO_CHALLENGE = SimpleNamespace(camera=None)      # resources whose challenge camera the pinhole replaces


def test_a_calibrated_principal_point_projects_as_opencv_does_half_a_pixel_on():
    """--principal is in OpenCV's pixels (a calibration's); cv2.projectPoints is the reference."""
    camera = predict.camera_choice(NO_CHALLENGE, 500.0, None, (250.0, 130.0))(Path("img.png"), 640, 480)
    points = np.array([[0.1, -0.05, -0.8], [-0.2, 0.1, -1.5], [0.0, 0.0, -1.0]])        # OpenGL camera frame
    K = np.array([[500.0, 0, 250.0], [0, 500.0, 130.0], [0, 0, 1]])
    cv_pixels, _ = cv2.projectPoints(points * [1, -1, -1], np.zeros(3), np.zeros(3), K, None)
    np.testing.assert_allclose(camera.project_camera_points(points), cv_pixels[:, 0] + 0.5, atol=1e-9)
    assert (camera.cx, camera.cy) == pytest.approx((250.5, 130.5))


@pytest.mark.parametrize("focal, principal, problem", [(None, (10.0, 10.0), "--principal needs --focal or --fov"),
                                                       (500.0, (700.0, 10.0), "img.png: principal point .* outside")])
def test_a_principal_point_without_a_focal_length_or_outside_the_image_stops(focal, principal, problem):
    with pytest.raises(predict.PredictError, match=problem):
        predict.camera_choice(NO_CHALLENGE, focal, None, principal)(Path("img.png"), 640, 480)




def test_a_detection_no_crop_fits_stops_naming_the_image(project, face_detector, monkeypatch, tmp_path):
    """A detection whose head-pose PnP fails (the crop's rotation: no warp fits it) stops predict
    with the image's name and the reason."""
    root, params, tables = project

    def failing(camera, model_points, landmarks):
        raise frontal.DegenerateLandmarks("degenerate landmarks: the head pose's PnP failed on them")

    monkeypatch.setattr(frontal, "pnp_roll", failing)
    image = image_path(root / "data", tables["test"].iloc[0])
    with pytest.raises(predict.PredictError, match=r"00000_ar.jpg: no crop fits the detected face \(degenerate"):
        predict.run(params, [image], tmp_path / "out", artifacts=root / "artifacts")


def test_skip_bad_lists_the_images_without_a_prediction_and_writes_the_others(project, face_detector, monkeypatch,
                                                                              tmp_path):
    root, params, tables = project
    good = [image_path(root / "data", row) for row in tables["test"].iloc[:2].itertuples()]
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"not a jpeg")
    result = predict.run(params, [good[0], broken, good[1]], tmp_path / "out", artifacts=root / "artifacts",
                         skip_bad=True)
    assert (result["images"], result["skipped"]) == (3, 1)
    skipped = pd.read_csv(tmp_path / "out" / "skipped.csv")
    assert skipped["file"].tolist() == [str(broken)] and "not a decodable image" in skipped["reason"][0]
    assert all((tmp_path / "out" / f"{path.stem}_pose.json").is_file() for path in good)

    def failing(camera, model_points, landmarks):
        raise frontal.DegenerateLandmarks("degenerate landmarks: the head pose's PnP failed on them")

    monkeypatch.setattr(frontal, "pnp_roll", failing)
    result = predict.run(params, good, tmp_path / "none", artifacts=root / "artifacts", skip_bad=True)
    skipped = pd.read_csv(tmp_path / "none" / "skipped.csv")
    assert result["skipped"] == 2 and skipped["file"].tolist() == [str(path) for path in good]
    assert all(reason.startswith("no crop fits") for reason in skipped["reason"])
    assert not list((tmp_path / "none").glob("*.obj"))


def test_skip_bad_lists_every_image_of_a_size_the_camera_refuses_and_writes_the_others(project, face_detector,
                                                                                      tmp_path):
    """Two images of a size the challenge camera does not have: each listed with the reason, where
    the first one's error stopped the run, skip_bad or not."""
    root, params, tables = project
    good = image_path(root / "data", tables["test"].iloc[0])
    small = []
    for k in range(2):
        path = tmp_path / f"small{k}.png"
        cv2.imwrite(str(path), cv2.resize(cv2.imread(str(good)), (300, 200)))
        small.append(path)
    result = predict.run(params, [small[0], good, small[1]], tmp_path / "out", artifacts=root / "artifacts",
                         skip_bad=True)
    skipped = pd.read_csv(tmp_path / "out" / "skipped.csv")
    assert (result["images"], result["skipped"]) == (3, 2)
    assert skipped["file"].tolist() == [str(path) for path in small]
    assert all(reason.startswith("image is 300x200, the challenge camera's is") for reason in skipped["reason"])
    assert (tmp_path / "out" / f"{good.stem}_pose.json").is_file()


def test_a_network_tied_to_the_training_camera_takes_no_pinhole_camera():
    def net(**keys):
        return FaceNet(NetConfig(depth=18, coordconv=True, shape_head="pca", crop_size=CROP, n_verts=10,
                                 n_components=COMPONENTS, **keys))
    assert predict.camera_bound(net()) is None
    assert "train.pose_head=direct6dof" in predict.camera_bound(net(pose_head="direct6dof"))
    assert "train.coord_maps=image" in predict.camera_bound(net(coord_maps="image", image_size=(800, 800)))


def test_a_pose_infer_would_not_accept_is_a_failed_pnp():
    pred = {"verts": np.zeros((3, 4, 3)), "landmarks": np.zeros((3, 4, 2)), "R_t": np.repeat(np.eye(4)[None], 3, 0)}
    pred["R_t"][:, 3, 2] = [-0.5, 0.5, -20.0]             # in front; behind the camera; 20 m away
    settings = SimpleNamespace(pnp="opencv", pnp_flags="SQPNP")
    assert predict.prediction_problem(pred, 0, settings) is None
    assert all("PnP (opencv, SQPNP) failed" in predict.prediction_problem(pred, row, settings) for row in (1, 2))


def test_a_detector_without_a_flip_order_predicts_without_the_flip_test(project, face_detector, tmp_path, caplog):
    root, params, tables = project
    state = torch.load(root / "artifacts" / "coarse_train" / "model.pt")
    state["flip_order"] = None
    (tmp_path / "coarse_train").mkdir()
    torch.save(state, tmp_path / "coarse_train" / "model.pt")
    for name in ("pca", "train"):
        (tmp_path / name).symlink_to(root / "artifacts" / name)
    image = image_path(root / "data", tables["test"].iloc[0])
    result = predict.run(params.replace(coarse_predict={"flip_test": True}), [image], tmp_path / "out",
                         artifacts=tmp_path)
    assert result["images"] == 1 and (tmp_path / "out" / f"{image.stem}_pose.json").is_file()
    assert "coarse_predict.flip_test ignored" in caplog.text
