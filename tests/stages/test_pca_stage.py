"""Stage pca on a tiny project: basis, coefficients, label cache and metrics."""
import json
import sys

import numpy as np

from stages import pca
from stages.face.pca import PCABasis
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
