"""split -> baseline -> submit / evaluate on a tiny hand-made data root, in a temporary project."""
import json
import shutil
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest
from scipy.spatial.transform import Rotation

from stages import baseline, evaluate, split, submit
from stages.common import predictor
from stages.common.rowfile import RowReader
from stages.split import split_table
from stages.wcpa import layout
from stages.wcpa.layout import (DataError, image_path, info_path, list_path, load_labels, load_resources,
                                read_list)
from stages.wcpa.predictions import load_predictions, save_predictions
from stages.wcpa.report import error_table
from stages.wcpa.submission import read_submission
from tests.stages.tiny_wcpa import grid_mesh, make_tiny_root, write_params

PROJECT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def tiny_root(tmp_path_factory):
    base = tmp_path_factory.mktemp("tiny")
    make_tiny_root(base / "root", base / "test_gt")
    return base


@pytest.fixture
def project(tiny_root, tmp_path, monkeypatch):
    """A working directory with params.yaml pointing at the tiny root."""
    shutil.copy(PROJECT / "params.yaml", tmp_path / "params.yaml")
    monkeypatch.chdir(tmp_path)
    write_params(tmp_path / "params.yaml", tiny_root / "root", tiny_root / "test_gt")
    return tmp_path


def test_split_is_subject_disjoint_ordered_and_deterministic():
    table = pd.DataFrame({"subject_id": [f"{k % 10:03d}" for k in range(100)], "facial_action": "1",
                          "img_id": [str(k) for k in range(100)]})
    train, val = split_table(table, 0.2, seed=7)
    assert set(train["subject_id"]).isdisjoint(val["subject_id"])
    assert val["subject_id"].nunique() == 2 and len(train) + len(val) == 100
    assert train["img_id"].astype(int).is_monotonic_increasing and val["img_id"].astype(int).is_monotonic_increasing
    again_train, again_val = split_table(table, 0.2, seed=7)
    pd.testing.assert_frame_equal(val, again_val)
    assert not split_table(table, 0.2, seed=8)[1].equals(val)


def test_split_needs_two_subjects():
    table = pd.DataFrame({"subject_id": ["1", "1"], "facial_action": "1", "img_id": ["1", "2"]})
    with pytest.raises(DataError, match="at least 2 subjects"):
        split_table(table, 0.2, seed=0)


def test_baseline_predicts_the_mean_shape_and_pose(project, tiny_root):
    split.main([])
    summary = json.loads(Path("artifacts/split/summary.json").read_text())
    assert summary["val"] == {"samples": 4, "subjects": 1} and summary["train"]["subjects"] == 4
    baseline.main([])
    root = tiny_root / "root"
    train = read_list("artifacts/split/train.csv")
    verts, poses = load_labels(root, train, len(grid_mesh()[0]))
    val = read_list("artifacts/split/val.csv")
    predicted = load_predictions("artifacts/baseline/predictions_val.npz", val)
    assert np.allclose(predicted["verts"], verts.mean(axis=0), atol=1e-6)
    scipy_mean = Rotation.from_matrix(poses[:, :3, :3]).mean().as_matrix()
    assert np.allclose(predicted["R_t"][:, :3, :3], scipy_mean, atol=1e-9)
    assert np.allclose(predicted["R_t"][:, 3, :3], poses[:, 3, :3].mean(axis=0))
    test = load_predictions("artifacts/baseline/predictions_test.npz", read_list(list_path(root, "test")))
    assert len(test["verts"]) == 4
    assert pd.read_csv("artifacts/baseline/skipped.csv").empty


def test_submit_and_evaluate_the_baseline(project, tiny_root, caplog):
    split.main([])
    baseline.main([])
    submit.main(["--predictor", "baseline"])
    test = read_list(list_path(tiny_root / "root", "test"))
    array = read_submission("submissions/baseline.zip", len(test), len(grid_mesh()[0]))
    assert np.array_equal(array, np.load("submissions/baseline.npy"))
    caplog.set_level("INFO")
    evaluate.main(["--predictor", "baseline"])
    out = Path("artifacts/evaluate/baseline")
    metrics = json.loads((out / "metrics.json").read_text())
    assert set(metrics) == {"val", "test"} and metrics["test"]["n"] == 4
    errors = pd.read_csv(out / "errors_test.csv", dtype={"subject_id": str, "img_id": str, "facial_action": str})
    assert errors["subject_id"].tolist() == test["subject_id"].tolist()
    assert metrics["test"]["score"] == pytest.approx(errors["score"].mean())
    assert {"yaw_deg", "distance_m"} <= set(errors.columns)
    for split_name in ("val", "test"):
        sheet = cv2.imread(str(out / f"sheet_{split_name}.png"))
        assert sheet.shape == (4 * 256, 3 * 256, 3)
        histogram = pd.read_csv(out / "plots" / f"{split_name}_hist_score.csv")
        assert histogram["samples"].sum() == 4
        assert pd.read_csv(out / "plots" / f"{split_name}_vs_yaw.csv")["samples"].sum() == 4
    assert "score_shape10" in caplog.text


def test_evaluate_without_test_ground_truth_skips_test(project, tiny_root, caplog):
    write_params(project / "params.yaml", tiny_root / "root", PROJECT / evaluate.NO_TEST_GT)
    split.main([])
    baseline.main([])
    caplog.set_level("INFO")
    evaluate.main(["--predictor", "baseline"])
    metrics = json.loads(Path("artifacts/evaluate/baseline/metrics.json").read_text())
    assert set(metrics) == {"val"}
    assert set(json.loads(Path("artifacts/evaluate/baseline/headline.json").read_text())) == {"val"}
    assert "test metrics skipped" in caplog.text
    assert pd.read_csv("artifacts/evaluate/baseline/errors_test.csv").empty


@pytest.mark.parametrize("test_gt, problem", [("", "data.test_gt is empty.*data/no_test_gt"),
                                               ("nowhere", "nowhere: data.test_gt names no folder")])
def test_evaluate_stops_where_data_test_gt_names_no_folder_for_dvc_to_check(project, tiny_root, test_gt, problem):
    write_params(project / "params.yaml", tiny_root / "root", test_gt)
    split.main([])
    baseline.main([])
    with pytest.raises(DataError, match=problem):
        evaluate.main(["--predictor", "baseline"])


def test_evaluate_reports_the_landmark_error(project, tiny_root):
    split.main([])
    baseline.main([])
    root = tiny_root / "root"
    val = read_list("artifacts/split/val.csv")
    verts, poses = load_labels(root, val, len(grid_mesh()[0]))
    uv = load_resources(root).camera.project(verts, poses) + np.array([3.0, 4.0])
    save_predictions("artifacts/baseline/predictions_val.npz", val, verts, poses, landmarks=uv.astype(np.float32))
    evaluate.main(["--predictor", "baseline"])
    metrics = json.loads(Path("artifacts/evaluate/baseline/metrics.json").read_text())
    assert metrics["val"]["landmark_px"] == pytest.approx(5.0, abs=1e-3)
    assert metrics["val"]["score"] == pytest.approx(0.0, abs=1e-3)


HEADLINE = ["score", "score_cam", "score_add", "score_shape10", "ADD", "MAE_r", "MAE_t",
            "mesh_median", "mesh_mean", "landmark_px"]


def test_evaluate_writes_the_headline_keys_only(project, tiny_root):
    """headline.json (dvc.yaml's metrics) holds exactly the headline keys of each scored split,
    with the values of metrics.json; the landmark error only for predictions with landmarks."""
    split.main([])
    baseline.main([])
    evaluate.main(["--predictor", "baseline"])
    out = Path("artifacts/evaluate/baseline")
    metrics, head = (json.loads((out / name).read_text()) for name in ("metrics.json", "headline.json"))
    assert list(head) == ["val", "test"]
    for split_name, values in head.items():
        assert list(values) == HEADLINE[:-1]              # the baseline predicts no landmarks
        assert values == {key: metrics[split_name][key] for key in HEADLINE[:-1]}
    root = tiny_root / "root"
    val = read_list("artifacts/split/val.csv")
    verts, poses = load_labels(root, val, len(grid_mesh()[0]))
    uv = load_resources(root).camera.project(verts, poses)
    save_predictions("artifacts/baseline/predictions_val.npz", val, verts, poses, landmarks=uv.astype(np.float32))
    evaluate.main(["--predictor", "baseline"])
    head = json.loads((out / "headline.json").read_text())
    assert list(head["val"]) == HEADLINE and list(head["test"]) == HEADLINE[:-1]


def test_submit_refuses_nan_predictions(project, tiny_root):
    root = tiny_root / "root"
    test = read_list(list_path(root, "test"))
    verts, poses = load_labels(tiny_root / "test_gt", test, len(grid_mesh()[0]))
    verts[2, 0, 1] = np.nan
    save_predictions("artifacts/nanny/predictions_test.npz", test, verts, poses)
    with pytest.raises(DataError, match="predictions_test.npz: 'verts' has NaN or inf in 1 row.*first row 2"):
        submit.main(["--predictor", "nanny"])
    assert not Path("submissions/nanny.npy").exists()


def test_submit_refuses_predictions_in_another_order(project, tiny_root):
    test = read_list(list_path(tiny_root / "root", "test"))
    verts, poses = load_labels(tiny_root / "test_gt", test, len(grid_mesh()[0]))
    shuffled = test.iloc[::-1].reset_index(drop=True)
    save_predictions("artifacts/shuffled/predictions_test.npz", shuffled, verts[::-1], poses[::-1])
    with pytest.raises(DataError, match="rows do not match the list"):
        submit.main(["--predictor", "shuffled"])


def test_baseline_skips_a_bad_label_only_when_told(project, tiny_root, tmp_path):
    root = tmp_path / "copy"
    shutil.copytree(tiny_root / "root", root)
    write_params(project / "params.yaml", root, tiny_root / "test_gt")
    split.main([])
    bad_row = next(read_list("artifacts/split/train.csv").itertuples(index=False))
    info_path(root, bad_row).write_bytes(b"garbage")
    with pytest.raises(DataError, match=str(info_path(root, bad_row))):
        baseline.main([])
    write_params(project / "params.yaml", root, tiny_root / "test_gt", data={"skip_bad": True, "max_bad_fraction": 0.1})
    baseline.main([])
    skipped = pd.read_csv("artifacts/baseline/skipped.csv")
    assert skipped["file"].tolist() == [str(info_path(root, bad_row))]


def test_evaluate_scores_a_skipped_crop_without_drawing_it_and_skips_a_bad_label(project, tiny_root, tmp_path):
    root, test_gt = tmp_path / "copy", tmp_path / "copy_gt"
    shutil.copytree(tiny_root / "root", root)
    shutil.copytree(tiny_root / "test_gt", test_gt)
    write_params(project / "params.yaml", root, test_gt)
    split.main([])
    baseline.main([])
    test = read_list(list_path(root, "test"))
    rows = list(test.itertuples(index=False))
    image_path(root, rows[1]).unlink()                      # crop skipped it: unreadable
    predictions = load_predictions("artifacts/baseline/predictions_test.npz")
    save_predictions("artifacts/baseline/predictions_test.npz", test, predictions["verts"], predictions["R_t"],
                     skipped=np.array([False, True, False, False]))
    info_path(test_gt, rows[2]).write_bytes(b"garbage")     # a bad ground-truth label
    with pytest.raises(DataError, match=str(info_path(test_gt, rows[2]))):
        evaluate.main(["--predictor", "baseline"])
    write_params(project / "params.yaml", root, test_gt, data={"skip_bad": True, "max_bad_fraction": 0.2})
    evaluate.main(["--predictor", "baseline"])
    out = Path("artifacts/evaluate/baseline")
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["test"]["n"] == 3 and metrics["val"]["n"] == 4
    errors = pd.read_csv(out / "errors_test.csv", dtype=str)
    assert errors["img_id"].tolist() == [rows[i].img_id for i in (0, 1, 3)]     # the fallback row is scored
    assert pd.read_csv(out / "skipped.csv")["file"].tolist() == [str(info_path(test_gt, rows[2]))]
    assert cv2.imread(str(out / "sheet_test.png")) is not None


def test_evaluate_reads_a_chunk_of_rows_at_a_time_and_scores_as_on_the_whole_arrays(project, tiny_root,
                                                                                    monkeypatch):
    split.main([])
    baseline.main([])
    test = read_list(list_path(tiny_root / "root", "test"))
    verts, poses = load_labels(tiny_root / "test_gt", test, len(grid_mesh()[0]))
    rng = np.random.default_rng(4)
    predicted = (verts + rng.normal(0, 0.002, verts.shape)).astype(np.float32)
    moved = poses.copy()
    moved[:, 3, :3] += rng.normal(0, 0.01, (len(poses), 3))
    camera = load_resources(tiny_root / "root").camera
    uv = (camera.project(verts, poses) + rng.normal(0, 2.0, verts.shape[:2] + (2,))).astype(np.float32)
    save_predictions("artifacts/baseline/predictions_test.npz", test, predicted, moved, landmarks=uv)
    reads = []
    read = RowReader.__getitem__

    def spy(reader, rows):
        block = read(reader, rows)
        if block.shape[1:] == verts.shape[1:]:       # blocks of the predicted meshes
            reads.append(len(block))
        return block

    monkeypatch.setattr(RowReader, "__getitem__", spy)
    monkeypatch.setattr(layout, "LABEL_CHUNK", 2)
    monkeypatch.setattr(predictor, "BLOCK_ROWS", 2)
    evaluate.main(["--predictor", "baseline"])
    assert reads and max(reads) == 2                 # 4 test rows: never the whole split at once
    expected = error_table(test, verts, poses, {"verts": predicted, "R_t": moved, "landmarks": uv}, camera)
    written = Path("artifacts/evaluate/baseline/errors_test.csv").read_text()
    assert written == expected.to_csv(index=False, float_format="%.6g")
