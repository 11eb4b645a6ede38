"""Stage infer on a tiny project: a random depth-18 network at 32 px on a tiny crop store."""
import dataclasses
import logging
import shutil
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml

from stages import infer, pca, submit
from stages.common.cropstore import stamp_run
from stages.face.pca import PCABasis
from stages.nets.checkpoint import CheckpointError, Expected, used_inputs
from stages.nets import inference
from stages.nets.inference import (Fallback, InferenceError, InferSettings, check_network, network_outputs,
                                   network_pass, repair_poses)
from stages.nets.poses import solve_poses
from stages.nets.flipmerge import unmirror_outputs
from stages.nets.dataset import CropStore, crop_targets
from stages.nets.model import FaceNet, NetConfig
from stages.wcpa.layout import ID_COLUMNS, finite_rows, load_resources, read_list
from stages.wcpa.predictions import load_predictions
from stages.wcpa.submission import check_rows, to_submission
from tests.tiny_project import make_tiny_project, write_params

CROP = 32


def net_config(params, **changes) -> NetConfig:
    train = params.train
    config = dict(depth=18, coordconv=train.coordconv, shape_head=train.shape_head, crop_size=CROP,
                  n_verts=28, n_components=20, input_size=train.input_size)
    return NetConfig(**{**config, **changes})


def save_model(root, params, **changes) -> FaceNet:
    """A random network saved as artifacts/train/model.pt, with the PCA basis loaded and its
    landmarks near the mean val target (small random head weights), so that PnP finds a face pose."""
    torch.manual_seed(0)
    model = FaceNet(net_config(params, **changes))
    basis = PCABasis.load(root / "artifacts" / "pca" / "basis.npz")
    if model.config.n_verts == basis.n_verts:
        model.shape.set_basis(basis.mean, basis.components, basis.std)
        store = CropStore.open(root / "artifacts" / "crop" / "val")
        camera = load_resources(root / "data" / "synth").camera
        uv = crop_targets(camera, np.load(root / "artifacts" / "pca" / "verts_val.npy"),
                          np.load(root / "artifacts" / "pca" / "poses_val.npy"), store.warps)
        model.landmarks.init_mean(torch.as_tensor(uv.mean(0)))
        with torch.no_grad():            # the heads start at zero: give them small random weights
            torch.nn.init.normal_(model.landmarks.mu.weight, std=1e-3)
            torch.nn.init.normal_(model.landmarks.sigma.weight, std=1e-3)
            torch.nn.init.normal_(model.shape.fc.weight, std=1e-3)
    path = root / "artifacts" / "train" / "model.pt"
    path.parent.mkdir(parents=True, exist_ok=True)
    write_checkpoint(root, {"config": model.config.to_dict(), "model": model.state_dict(),
                            "params": params.train.as_dict(), "basis_shape": [20, 28, 3]})
    return model


def current_inputs(root) -> dict:
    """The identities infer checks: the val crop run and the PCA basis of the tiny project."""
    return used_inputs(CropStore.open(root / "artifacts" / "crop" / "val").run, root / "artifacts" / "pca" / "basis.npz")


def write_checkpoint(root, state: dict) -> None:
    """artifacts/train/model.pt with `state` and the current inputs' identity."""
    path = root / "artifacts" / "train" / "model.pt"
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({**state, "inputs": current_inputs(root)}, path)


@pytest.fixture
def project(tmp_path, monkeypatch):
    params = make_tiny_project(tmp_path, subjects=4, crop_size=CROP)
    monkeypatch.chdir(tmp_path)
    pca.run(params)
    params = params.replace(infer={"checkpoint": "train", "batch_size": 5, "device": "cpu", "workers": 2},
                            train={"depth": 18, "input_size": 0})
    return tmp_path, params


def make_test_split(root):
    """The test list and crop store: a copy of val (the tiny project has no test images)."""
    shutil.copytree(root / "artifacts" / "crop" / "val", root / "artifacts" / "crop" / "test")
    shutil.copy(root / "artifacts" / "split" / "val.csv", root / "data" / "synth" / "list" / "WCPA_track2_test.csv")


def skip_row(root, split, row):
    """Mark a crop as skipped, as the crop stage does: NaN warps, index skipped = 1."""
    folder = root / "artifacts" / "crop" / split
    index = pd.read_csv(folder / "index.csv", dtype=str)
    index["skipped"] = "0"
    index.loc[row, "skipped"] = "1"
    index.to_csv(folder / "index.csv", index=False)
    for name in ("warps.npy", "inv_warps.npy"):
        warps = np.load(folder / name)
        warps[row] = np.nan
        np.save(folder / name, warps)


def test_infer_writes_aligned_finite_predictions_with_fallback_for_skipped(project, monkeypatch):
    root, params = project
    save_model(root, params)
    make_test_split(root)
    skip_row(root, "test", 2)
    infer.run(params, "val")
    monkeypatch.setattr(sys, "argv", ["infer", "--split", "test"])
    write_params(root / "params.yaml", params)
    infer.main()
    for split in ("val", "test"):
        table = read_list(root / "artifacts" / "split" / "val.csv")
        pred = load_predictions(root / "artifacts" / "infer" / f"predictions_{split}.npz", table)
        n = len(table)
        assert pred["verts"].shape == (n, 28, 3) and pred["R_t"].shape == (n, 4, 4)
        assert pred["landmarks"].shape == (n, 28, 2) and pred["sigma"].shape == (n, 28)
        assert np.isfinite(pred["verts"]).all() and np.isfinite(pred["R_t"]).all()
        assert np.isfinite(pred["landmarks"]).all()
    basis = PCABasis.load(root / "artifacts" / "pca" / "basis.npz")
    assert pred["skipped"].tolist() == [i == 2 for i in range(n)]
    np.testing.assert_allclose(pred["verts"][2], basis.mean, atol=1e-6)
    assert np.isnan(pred["sigma"][2]).all() and np.isfinite(pred["sigma"][[0, 1, 3]]).all()
    np.testing.assert_allclose(pred["R_t"][:, 3, 3], 1.0)
    submit.main(["--params", str(root / "params.yaml"), "--predictor", "infer"])
    assert (root / "submissions" / "infer.zip").is_file()


def test_infer_twice_writes_the_same_bytes(project, monkeypatch):
    root, params = project
    save_model(root, params)
    path = root / "artifacts" / "infer" / "predictions_val.npz"
    infer.run(params, "val")
    first = path.read_bytes()
    clock = time.time()
    monkeypatch.setattr(time, "time", lambda: clock + 86400)      # a day later: no date in the file
    infer.run(params, "val")
    assert path.read_bytes() == first

def test_mirror_pass_is_the_network_on_flipped_crops(project):
    root, params = project
    model = save_model(root, params).eval()
    images = np.load(root / "artifacts" / "crop" / "val" / "images.npy", mmap_mode="r")[:3]
    perm = np.load(root / "artifacts" / "pca" / "basis.npz")["flip_perm"]
    warps = np.load(root / "artifacts" / "crop" / "val" / "inv_warps.npy")[:3]
    [(rows, plain, back)] = list(network_outputs(model, images, warps, 8, torch.device("cpu"), False, perm))
    with torch.no_grad():
        flipped = model(torch.from_numpy(np.ascontiguousarray(images[:, :, ::-1])).permute(0, 3, 1, 2))
    expected = {k: v.numpy() for k, v in unmirror_outputs(flipped, perm, CROP).items()}
    assert rows == slice(0, 3)
    for key in ("mu", "sigma", "verts"):
        np.testing.assert_allclose(back[key], expected[key], rtol=1e-4, atol=1e-5)
        assert not np.allclose(plain[key], back[key])


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(
    not torch.cuda.is_available(), reason="no CUDA"))])
def test_batches_handed_on_one_behind_are_the_rows_of_one_big_batch(project, device):
    """network_outputs queues batch k + 1 before it hands on batch k (on CUDA, with asynchronous
    copies): every row must still come out, in order, with its own outputs."""
    root, params = project
    model = save_model(root, params).eval()
    images = np.load(root / "artifacts" / "crop" / "val" / "images.npy", mmap_mode="r")[:7]
    perm = np.load(root / "artifacts" / "pca" / "basis.npz")["flip_perm"]
    warps = np.load(root / "artifacts" / "crop" / "val" / "inv_warps.npy")[:7]
    [(_, whole, whole_back)] = list(network_outputs(model, images, warps, 8, torch.device(device), False, perm))
    parts = list(network_outputs(model, images, warps, 3, torch.device(device), False, perm))
    assert [rows for rows, _, _ in parts] == [slice(0, 3), slice(3, 6), slice(6, 7)]
    for key in ("mu", "sigma", "verts"):
        for got, expected in ((np.concatenate([p[key] for _, p, _ in parts]), whole[key]),
                              (np.concatenate([b[key] for _, _, b in parts]), whole_back[key])):
            np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4)


def test_a_graphed_pass_is_kept_for_the_same_model_weights_and_mirror_only(project):
    """infer.cuda_graph: network_pass keeps the last graphed pass (its captures) for the next call
    with the same model, weights in the same memory, dtype, mirror and size; weights moved to new
    memory, another mirror or another model get a new one; without graphs every call builds its own."""
    root, params = project
    model = save_model(root, params).eval()
    perm = np.load(root / "artifacts" / "pca" / "basis.npz")["flip_perm"]
    kept = network_pass(model, None, perm, CROP, True)
    assert network_pass(model, None, perm.copy(), CROP, True) is kept
    assert network_pass(model, None, perm, CROP, False)[1] is not network_pass(model, None, perm, CROP, False)[1]
    assert network_pass(model, None, None, CROP, True) is not kept
    kept = network_pass(model, None, perm, CROP, True)
    model.double().float()                     # every parameter and buffer in new memory
    assert network_pass(model, None, perm, CROP, True) is not kept
    assert network_pass(save_model(root, params).eval(), None, perm, CROP, True) is not kept


def test_a_pass_that_cannot_be_captured_runs_directly_with_the_same_outputs(project, caplog):
    """network_outputs with cuda_graph where no capture is possible (the CPU): one warning, and
    the outputs of the direct pass, batch by batch."""
    root, params = project
    model = save_model(root, params).eval()
    images = np.load(root / "artifacts" / "crop" / "val" / "images.npy", mmap_mode="r")[:7]
    perm = np.load(root / "artifacts" / "pca" / "basis.npz")["flip_perm"]
    warps = np.load(root / "artifacts" / "crop" / "val" / "inv_warps.npy")[:7]
    with caplog.at_level(logging.WARNING):
        runs = [list(network_outputs(model, images, warps, 3, torch.device("cpu"), False, perm, cuda_graph))
                for cuda_graph in (False, True)]
    assert caplog.text.count("CUDA graph capture failed") == 1 and "the network's pass runs eagerly" in caplog.text
    for (rows, plain, back), (rows_g, plain_g, back_g) in zip(*runs):
        assert rows == rows_g
        for key in ("mu", "sigma", "verts"):
            np.testing.assert_array_equal(plain_g[key], plain[key])
            np.testing.assert_array_equal(back_g[key], back[key])


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA")
def test_cuda_graph_replays_of_the_network_pass_give_every_batch_its_own_outputs(project, caplog):
    """infer.cuda_graph: batches of 3 (two captures: the full batches' shape and the last one's),
    with the mirror and autocast, give the outputs of the same passes run directly; no capture
    fails (a failed one would run the pass directly)."""
    root, params = project
    model = save_model(root, params).eval()
    images = np.load(root / "artifacts" / "crop" / "val" / "images.npy", mmap_mode="r")[:7]
    perm = np.load(root / "artifacts" / "pca" / "basis.npz")["flip_perm"]
    warps = np.load(root / "artifacts" / "crop" / "val" / "inv_warps.npy")[:7]
    runs = [list(network_outputs(model, images, warps, 3, torch.device("cuda"), True, perm, cuda_graph))
            for cuda_graph in (False, True)]
    assert [rows for rows, _, _ in runs[1]] == [slice(0, 3), slice(3, 6), slice(6, 7)]
    for (_, plain, back), (_, plain_g, back_g) in zip(*runs):
        for key in ("mu", "sigma", "verts"):
            np.testing.assert_allclose(plain_g[key], plain[key], rtol=1e-3, atol=1e-3)
            np.testing.assert_allclose(back_g[key], back[key], rtol=1e-3, atol=1e-3)
    assert "capture failed" not in caplog.text


def test_post_processing_runs_beside_the_network_and_keeps_every_batch_in_order(project, monkeypatch):
    """predicted_batches hands each batch's flip-merge, unwarp and PnP to a thread of its own, so the
    main thread only feeds the network: every batch must come out, in order, with the predictions
    that the same network outputs give when post-processed in the main thread."""
    root, params = project
    model = save_model(root, params).eval()
    images = np.load(root / "artifacts" / "crop" / "val" / "images.npy", mmap_mode="r")[:7]
    perm = np.load(root / "artifacts" / "pca" / "basis.npz")["flip_perm"]
    warps = np.load(root / "artifacts" / "crop" / "val" / "inv_warps.npy")[:7]
    camera = load_resources(root / "data" / "synth").camera
    settings = dataclasses.replace(InferSettings.of(params.infer), batch_size=3)
    threads, overlapped, second_batch = [], [], threading.Event()
    merge, outputs = inference.batch_predictions, inference.network_outputs

    def network(*args):
        for i, item in enumerate(outputs(*args)):
            if i == 1:
                second_batch.set()
            yield item

    def post_processing(*args):
        """The first batch's waits until the network has given the second (in vain if in series)."""
        threads.append(threading.current_thread())
        overlapped.append(second_batch.wait(timeout=10) if len(threads) == 1 else True)
        return merge(*args)

    monkeypatch.setattr(inference, "network_outputs", network)
    monkeypatch.setattr(inference, "batch_predictions", post_processing)
    parts = list(inference.predicted_batches(model, images, warps, perm, camera, settings))
    assert [rows for rows, _ in parts] == [slice(0, 3), slice(3, 6), slice(6, 7)]
    assert len(threads) == 3 and threading.main_thread() not in threads and all(overlapped)
    for (rows, out), (_, plain, back) in zip(parts, outputs(model, images, warps, 3, settings.device,
                                                             settings.amp, perm)):
        verts, uv, sigma = merge(plain, back, warps[rows], settings.flip_merge)
        expected = {"verts": verts, "landmarks": uv, "sigma": sigma,
                    "R_t": solve_poses(settings.pnp, verts, uv, sigma, camera, settings.pnp_flags)}
        assert out.keys() == expected.keys()
        for key, value in expected.items():
            assert out[key].dtype == (np.float64 if key == "R_t" else np.float32)
            np.testing.assert_array_equal(out[key], value.astype(out[key].dtype))


def test_a_bad_pnp_setting_stops_before_the_network_runs(project, monkeypatch):
    root, params = project
    model = save_model(root, params).eval()
    images = np.load(root / "artifacts" / "crop" / "val" / "images.npy", mmap_mode="r")
    warps = np.load(root / "artifacts" / "crop" / "val" / "inv_warps.npy")
    camera = load_resources(root / "data" / "synth").camera
    monkeypatch.setattr(inference, "network_outputs", lambda *args: pytest.fail("the network ran"))
    for changes, message in (({"pnp": "nope"}, "infer.pnp='nope'"), ({"pnp_flags": "EPNP+SQPNP"}, "only ITERATIVE")):
        settings = dataclasses.replace(InferSettings.of(params.infer), **changes)
        with pytest.raises(ValueError, match=message):
            next(inference.predicted_batches(model, images, warps, None, camera, settings))


@pytest.mark.parametrize("changes, message", [
    ({"depth": 34}, "depth 34 in the checkpoint, 18 from train.depth"),
    ({"n_verts": 30}, "n_verts 30 in the checkpoint, 28 from data vertex count"),
    ({"crop_size": 64}, "crop_size 64 in the checkpoint, 32 from crop store image size"),
    ({"coordconv": False}, "coordconv False in the checkpoint, True from train.coordconv"),
])
def test_mismatching_checkpoint_stops_naming_the_file_and_the_mismatch(project, changes, message):
    root, params = project
    config = net_config(params, **changes)
    write_checkpoint(root, {"config": config.to_dict(), "model": {}})
    with pytest.raises(CheckpointError, match=message) as err:
        infer.run(params, "val")
    assert str(err.value).startswith("artifacts/train/model.pt: checkpoint does not match the params/data")


def test_weights_that_do_not_fit_the_config_stop(project):
    root, params = project
    model = save_model(root, params, coordconv=False)
    write_checkpoint(root, {"config": {**model.config.to_dict(), "coordconv": True}, "model": model.state_dict()})
    with pytest.raises(CheckpointError, match="weights do not fit"):
        infer.run(params, "val")


def test_a_model_trained_on_other_crops_or_another_basis_stops(project):
    root, params = project
    save_model(root, params)
    basis_file = root / "artifacts" / "pca" / "basis.npz"
    basis = dict(np.load(basis_file))
    basis["mean"] = basis["mean"] + 1e-4
    np.savez(basis_file, **basis)
    with pytest.raises(CheckpointError, match=r"model.pt: trained on other inputs than these \(pca/basis.npz differ\)"):
        infer.run(params, "val")
    save_model(root, params)
    stamp_run([root / "artifacts" / "crop" / "val"])        # val as another crop run (of val alone) stamps it
    with pytest.raises(CheckpointError, match=r"trained on other inputs than these \(crop_run differ\)"):
        infer.run(params, "val")


def test_missing_checkpoint_names_the_stage(project):
    _, params = project
    params = params.replace(infer={"checkpoint": "finetune"})
    with pytest.raises(CheckpointError, match=r"artifacts/finetune/model.pt: checkpoint not found"):
        infer.run(params, "val")


def test_nan_outputs_stop_naming_the_rows_unless_skipped(project):
    root, params = project
    model = save_model(root, params)
    with torch.no_grad():
        model.shape.fc.bias[0] = float("nan")
    write_checkpoint(root, {"config": model.config.to_dict(), "model": model.state_dict()})
    table = read_list(root / "artifacts" / "split" / "val.csv")
    first = "/".join(table.iloc[0][ID_COLUMNS])
    expected = f"non-finite outputs for {len(table)} sample.*{first} \\(row 0\\)"
    with pytest.raises(InferenceError, match=expected):
        infer.run(params, "val")
    assert not (root / "artifacts" / "infer" / "predictions_val.npz").exists()


def _three_rows():
    table = pd.DataFrame({"subject_id": ["a", "b", "c"], "facial_action": "x", "img_id": ["1", "2", "3"]})
    pred = {"verts": np.zeros((3, 4, 3)), "landmarks": np.zeros((3, 4, 2)), "R_t": np.tile(np.eye(4), (3, 1, 1))}
    pred["R_t"][:, 3, 2] = -0.5
    return table, pred


def test_skipped_rows_may_be_nan_but_network_nan_stops():
    table, pred = _three_rows()
    pred["verts"][2] = np.nan
    finite = finite_rows(pred["verts"]) & finite_rows(pred["landmarks"])
    check_network(finite, np.array([False, False, True]), table, "here")
    with pytest.raises(InferenceError, match=r"here: the network gave non-finite outputs for 1 sample.*c/x/3 \(row 2\)"):
        check_network(finite, np.zeros(3, bool), table, "here")


def test_failed_pnp_gets_the_fallback_pose_up_to_the_allowed_fraction():
    table, pred = _three_rows()
    fallback = Fallback(verts=np.zeros((4, 3)), R_t=np.diag([1.0, 1.0, 1.0, 1.0]))
    fallback.R_t[3, 2] = -0.6
    pred["R_t"][1, 3, 2] = 0.2                       # behind the camera
    pred["R_t"][2] = np.nan                          # skipped: not counted, not repaired here
    skipped = np.array([False, False, True])
    with pytest.raises(InferenceError, match=r"here: PnP failed .* for 1 of 2 sample.*b/x/2 \(row 1\)"):
        repair_poses(pred["R_t"].copy(), skipped, fallback, table, 0.25, "here")
    failed = repair_poses(pred["R_t"], skipped, fallback, table, 0.5, "here")
    assert failed.tolist() == [False, True, False]
    assert pred["R_t"][1, 3, 2] == -0.6 and pred["R_t"][0, 3, 2] == -0.5


def test_infer_lists_every_train_key_its_checkpoint_check_reads():
    """infer checks model.pt against these train.* params (stages.nets.checkpoint.Expected.of), so
    dvc.yaml must list them for infer: a change reruns it."""
    from_data = {"crop_size", "n_verts", "n_components"}
    keys = {f"train.{f.name}" for f in dataclasses.fields(Expected)} - {f"train.{k}" for k in from_data}
    listed = set(yaml.safe_load((Path(__file__).resolve().parents[2] / "dvc.yaml").read_text())
                 ["stages"]["infer"]["do"]["params"])
    assert keys <= listed, sorted(keys - listed)


def test_a_pose_the_submission_would_refuse_gets_the_fallback_pose():
    """A PnP pose 12 m away passed inference and stopped submit (|t| >= 10 m): every pose the
    validator refuses is a failed PnP here, one rule for both (stages.wcpa.submission.pose_accepted)."""
    table, pred = _three_rows()
    fallback = Fallback(verts=np.zeros((4, 3)), R_t=np.diag([1.0, 1.0, 1.0, 1.0]))
    fallback.R_t[3, 2] = -0.6
    pred["R_t"][1, 3, 2] = -12.0
    failed = repair_poses(pred["R_t"], np.zeros(3, bool), fallback, table, 0.5, "here")
    assert failed.tolist() == [False, True, False] and pred["R_t"][1, 3, 2] == -0.6
    block = to_submission(np.zeros((3, 4, 3)), pred["R_t"])
    check_rows(block, 0, "here")
