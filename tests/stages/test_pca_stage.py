"""Stage pca on a tiny project: basis, coefficients, label cache and metrics; a bad info file
stops it, or with data.skip_bad leaves a NaN row that train does not use."""
import json
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from stages import pca
from stages.face.pca import PCABasis
from stages.nets.inference import mean_pose
from stages.nets.trainer import TrainPaths, load_split
from stages.common.params import load_params
from stages.wcpa.layout import DataError
from tests.tiny_project import make_tiny_project


def test_pca_stage_writes_basis_coefficients_and_metrics(tmp_path, monkeypatch):
    make_tiny_project(tmp_path)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", ["pca"])
    pca.main()
    out = tmp_path / "artifacts" / "pca"
    basis = PCABasis.load(out / "basis.npz")
    assert basis.n_components == 20
    coeffs = np.load(out / "coeffs_train.npy")
    verts = np.load(out / "verts_train.npy")
    assert coeffs.shape == (len(verts), 20)
    perm = np.load(out / "basis.npz")["flip_perm"]
    assert (perm[perm] == np.arange(len(perm))).all()
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["n_meshes"] == 4 + 51
    assert metrics["neutral"]["neutral_accuracy"] == 1.0
    assert metrics["reconstruction_train"]["mean_mm"] < metrics["reconstruction_train"]["max_mm"]
    assert (out / "neutral.csv").read_text().count("neutral") == 4
    assert 0 <= metrics["flip"]["asymmetry_mean_mm"] <= metrics["flip"]["asymmetry_max_mm"]


def test_pca_fits_the_neutral_meshes_of_a_seeded_draw_of_subjects(tmp_path, monkeypatch):
    make_tiny_project(tmp_path)
    monkeypatch.chdir(tmp_path)
    params = load_params("params.yaml")
    metrics = pca.run(params.replace(pca={"neutral_subjects": 3}))
    chosen = pd.read_csv(tmp_path / "artifacts" / "pca" / "neutral.csv", dtype=str)
    assert metrics["n_meshes"] == 3 + 51 and len(chosen) == 3 and chosen.subject_id.is_unique
    assert (chosen.facial_action == "neutral").all()
    again = pca.run(params.replace(pca={"neutral_subjects": 3}), out=tmp_path / "again")
    assert again["n_meshes"] == 3 + 51
    assert (tmp_path / "again" / "neutral.csv").read_text() == (tmp_path / "artifacts" / "pca" / "neutral.csv").read_text()


def _corrupt_one_train_info(root) -> tuple[int, str]:
    """Overwrite the info file of a training row (not a neutral frame) -> (row, key)."""
    table = pd.read_csv(root / "artifacts" / "split" / "train.csv", dtype=str)
    row = int(np.flatnonzero(table.facial_action != "neutral")[0])
    ids = table.iloc[row]
    info = root / "data" / "synth" / "info" / ids.subject_id / ids.facial_action / f"{ids.img_id}_info.npz"
    info.write_bytes(b"not an npz")
    return row, f"{ids.subject_id}/{ids.facial_action}/{ids.img_id}"


def test_pca_stops_on_a_bad_info_file_without_skip_bad(tmp_path, monkeypatch):
    make_tiny_project(tmp_path)
    _corrupt_one_train_info(tmp_path)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(DataError, match=r"_info\.npz: not a readable npz"):
        pca.run(load_params(tmp_path / "params.yaml"))


def test_pca_skips_a_bad_info_file_and_train_never_sees_its_row(tmp_path, monkeypatch):
    params = make_tiny_project(tmp_path)
    row, key = _corrupt_one_train_info(tmp_path)
    params = params.replace(data={"skip_bad": True, "max_bad_fraction": 0.2})
    monkeypatch.chdir(tmp_path)
    metrics = pca.run(params)
    out = tmp_path / "artifacts" / "pca"
    assert pd.read_csv(out / "skipped.csv").key.tolist() == [key]
    assert metrics["skipped_train"] == 1 and metrics["skipped_val"] == 0
    for name in ("verts_train", "poses_train", "coeffs_train"):
        cache = np.load(out / f"{name}.npy")
        assert len(cache) == len(pd.read_csv(tmp_path / "artifacts" / "split" / "train.csv"))   # row-aligned
        assert np.isnan(cache[row]).all() and np.isfinite(np.delete(cache, row, axis=0)).all()
    assert np.isfinite(np.load(out / "basis.npz")["components"]).all()
    paths = TrainPaths(crop=Path("artifacts/crop"), pca=Path("artifacts/pca"), split=Path("artifacts/split"),
                       out=Path("artifacts/train"))
    data = load_split(paths, "train")
    assert not data.store.usable[row] and data.store.usable.sum() == len(data.store) - 1
    assert np.isfinite(mean_pose(np.load(out / "poses_train.npy"))).all()


def test_pca_in_blocks_of_three_rows_matches_one_block(tmp_path, monkeypatch):
    """The label caches are read (in chunks, on worker processes), projected and written block by
    block (flat memory): blocks and chunks of 3 rows read on 2 processes give the same caches,
    basis and neutral frames as one block read in this process, and the coefficients within
    float32 rounding (BLAS sums a block's rows in another order)."""
    from stages.wcpa import layout
    params = make_tiny_project(tmp_path)
    monkeypatch.chdir(tmp_path)
    outs = {}
    for block, workers in ((10 ** 6, 1), (3, 2)):
        monkeypatch.setattr(pca, "BLOCK", block)
        monkeypatch.setattr(layout, "LABEL_CHUNK", block)
        params = params.replace(data={"workers": workers})
        outs[block] = tmp_path / f"pca_{block}"
        pca.run(params, out=outs[block])
    whole, blocks = outs[10 ** 6], outs[3]
    for name in ("verts_train.npy", "verts_val.npy", "poses_train.npy", "poses_val.npy", "neutral.csv"):
        assert (whole / name).read_bytes() == (blocks / name).read_bytes(), name
    for split in ("train", "val"):
        np.testing.assert_allclose(np.load(blocks / f"coeffs_{split}.npy"), np.load(whole / f"coeffs_{split}.npy"),
                                   rtol=1e-6, atol=1e-6)
    with np.load(whole / "basis.npz") as a, np.load(blocks / "basis.npz") as b:
        assert set(a.files) == set(b.files)
        for key in a.files:
            np.testing.assert_array_equal(a[key], b[key])


def test_the_neutral_list_is_a_dependency_and_the_committed_one_without_rows_chooses_automatically(tmp_path,
                                                                                                    monkeypatch):
    """pca.neutral_list's content reruns pca (dvc.yaml lists the file); the default,
    data/automatic_neutrals.csv, holds no rows and picks what '' picks; a list with rows is used."""
    root = Path(__file__).resolve().parents[2]
    body = yaml.safe_load((root / "dvc.yaml").read_text())["stages"]["pca"]
    assert "${pca.neutral_list}" in body["deps"]
    assert load_params(root / "params.yaml").pca.neutral_list == "data/automatic_neutrals.csv"
    params = make_tiny_project(tmp_path)
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "artifacts" / "pca" / "neutral.csv"
    pca.run(params)
    automatic = out.read_text()
    pca.run(params.replace(pca={"neutral_list": str(root / "data" / "automatic_neutrals.csv")}))
    assert out.read_text() == automatic
    chosen = pd.read_csv(tmp_path / "artifacts" / "split" / "train.csv", dtype=str).iloc[[0, 9]]
    chosen.to_csv(tmp_path / "mine.csv", index=False)
    pca.run(params.replace(pca={"neutral_list": str(tmp_path / "mine.csv")}))
    picked = pd.read_csv(out, dtype=str)
    assert picked[["subject_id", "facial_action", "img_id"]].values.tolist() == \
        chosen[["subject_id", "facial_action", "img_id"]].values.tolist()
