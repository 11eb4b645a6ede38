"""The direct 6DoF head through the stages on a tiny project: train (rot and trans terms instead
of the landmark term), infer (the head's pose mapped from its crop's frame, no PnP; landmarks are the
mesh projected with it) and finetune (refused: EPro-PnP needs the PnP head)."""
from dataclasses import replace

import numpy as np
import pytest
import torch

from stages import finetune, infer, pca, train
from stages.nets.checkpoint import CheckpointError, Expected, load_network, used_inputs
from stages.nets.pose_frame import frame_to_camera
from stages.nets.dataset import CropStore
from stages.nets.validate import predict
from stages.wcpa.layout import load_resources
from stages.wcpa.predictions import load_predictions
from tests.tiny_project import make_tiny_project


@pytest.mark.parametrize("frame, maps", [("crop", "crop"), ("camera", "image")])
def test_direct_head_trains_infers_without_pnp_and_finetune_refuses_it(tmp_path, monkeypatch, frame, maps):
    """In the crop's frame with the crop's CoordConv maps, and as the paper's baseline: in the
    camera's frame with maps of the crop pixels' full-image positions."""
    params = make_tiny_project(tmp_path, subjects=4, crop_size=32)
    params = params.replace(train={"epochs": 1, "batch_size": 6, "pose_head": "direct6dof", "pose_frame": frame,
                                   "coordconv": True, "coord_maps": maps},
                            infer={"checkpoint": "train", "batch_size": 5, "device": "cpu", "workers": 2,
                                   "flip_merge": "none", "amp": False})
    monkeypatch.chdir(tmp_path)
    pca.run(params)
    final = train.run(params)["final"]
    assert {"train_rot", "train_trans", "train_vdc"} <= set(final) and "train_landmarks" not in final
    assert np.isfinite(final["val_MAE_r"]) and final["val_pnp_failed"] == 0

    pred = load_predictions(infer.run(params, "val"))
    camera = load_resources(tmp_path / "data" / "synth").camera
    assert np.isfinite(pred["R_t"]).all() and np.isnan(pred["sigma"]).all()
    np.testing.assert_allclose(pred["landmarks"], camera.project(pred["verts"], pred["R_t"]), atol=1e-3)
    store = CropStore.open(tmp_path / "artifacts" / "crop" / "val")
    basis = tmp_path / "artifacts" / "pca" / "basis.npz"
    expected = Expected(depth=params.train.depth, coordconv=params.train.coordconv, shape_head="pca",
                        crop_size=32, n_verts=28, n_components=20, input_size=params.train.input_size,
                        pose_head="direct6dof", pose_frame=frame, coord_maps=maps)
    model = load_network(tmp_path / "artifacts" / "train" / "model.pt", expected, used_inputs(store.run, basis))
    out = predict(model, store.images, store.inv_warps, 8, torch.device("cpu"))
    poses = frame_to_camera(out["R_frame"], out["t_code"], store.warps, camera, 32, frame)
    np.testing.assert_allclose(pred["R_t"], poses, atol=1e-5)
    merged = load_predictions(infer.run(params.replace(infer={"flip_merge": "both"}), "val"))
    np.testing.assert_allclose(merged["R_t"], pred["R_t"], atol=1e-5)    # the pose from the unmirrored crop
    other = {"crop": "camera", "camera": "crop"}[frame]
    with pytest.raises(CheckpointError, match=f"pose_frame '{frame}' in the checkpoint, '{other}' from train.pose_frame"):
        load_network(tmp_path / "artifacts" / "train" / "model.pt", replace(expected, pose_frame=other),
                     used_inputs(store.run, basis))

    with pytest.raises(ValueError, match="trained with train.pose_head=direct6dof, which finetune"):
        finetune.run(params)
