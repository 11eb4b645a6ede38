"""export: the ONNX graph against PyTorch (onnxruntime), on random and real crops."""

import numpy as np
import pytest
import torch

from stages import export
from stages.face.pca import PCABasis
from stages.face.frontal import crop_warps, reference_shape
from stages.face.warp import warp_image
from stages.nets.checkpoint import load_network_for_images, read_checkpoint
from stages.wcpa.layout import image_path, landmarks_path, load_resources, read_image, read_landmarks
from tests.stages.test_predict import CROP, project, save_network  # noqa: F401  (the tiny project fixture)

ort = pytest.importorskip("onnxruntime")


def real_crops(root, table, params) -> np.ndarray:
    """The tiny data's images cropped as the crop stage does, from their given landmarks -> (N, 3, S, S) float32."""
    resources = load_resources(root / "data")
    landmarks = np.stack([read_landmarks(landmarks_path(root / "data", r), 68) for r in table.itertuples()])
    reference = reference_shape(resources.template, resources.kpt_ind, CROP, params.crop.margin)
    warps = crop_warps(landmarks, reference, "eye_line")
    crops = [warp_image(read_image(image_path(root / "data", r)), w, CROP) for r, w in zip(table.itertuples(), warps)]
    return np.stack(crops).transpose(0, 3, 1, 2).astype(np.float32)


@pytest.mark.parametrize("input_size", [0, 16])
def test_onnx_matches_pytorch_on_random_and_real_crops(project, tmp_path, input_size):
    root, params, tables = project
    artifacts = tmp_path / "artifacts"
    artifacts.mkdir()
    (artifacts / "pca").symlink_to(root / "artifacts" / "pca")
    save_network(tmp_path, PCABasis.load(artifacts / "pca" / "basis.npz"), params.crop.margin,
                 input_size=input_size)
    params = params.replace(train={"input_size": input_size})
    path = export.run(params, "train", tmp_path / "model.onnx", artifacts)
    model = load_network_for_images(artifacts / "train" / "model.pt", artifacts / "pca" / "basis.npz",
                                    params.train, CROP, load_resources(root / "data").n_verts)
    session = ort.InferenceSession(str(path))
    assert [i.name for i in session.get_inputs()] == ["crops"]
    assert [o.name for o in session.get_outputs()] == ["mu", "sigma", "verts"]
    random = np.random.default_rng(0).uniform(0, 255, (5, 3, CROP, CROP)).astype(np.float32)
    for crops in (random, real_crops(root, tables["test"], params)):
        got = session.run(None, {"crops": crops})
        with torch.no_grad():
            want = model(torch.from_numpy(crops))
        for name, value in zip(("mu", "sigma", "verts"), got):
            np.testing.assert_allclose(value, want[name].numpy(), atol=1e-3, rtol=1e-3)
    assert read_checkpoint(artifacts / "train" / "model.pt")["config"]["input_size"] == input_size


def test_a_missing_checkpoint_stops_the_command_naming_it(project, tmp_path, monkeypatch):
    import yaml
    _, params, _ = project
    monkeypatch.chdir(tmp_path)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params.as_dict()))
    with pytest.raises(SystemExit, match=r"^export: artifacts/pca/basis.npz: PCA basis not found"):
        export.main(["--params", "params.yaml", "--checkpoint", "train"])
