"""The challenge score and the paper's metrics on hand-computed cases."""
import numpy as np
import pandas as pd
import pytest

from stages.wcpa import score
from stages.wcpa.camera import make_rt, rt_from_euler
from stages.wcpa.score import landmark_errors, sample_errors, summarize
from tests.conftest import face_points, random_poses


def _batch(n: int = 5, v: int = 300, seed: int = 0):
    rng = np.random.default_rng(seed)
    verts = np.stack([face_points(rng, v) for _ in range(n)]).astype(np.float32)
    return rng, verts, random_poses(rng, n)


def test_perfect_prediction_scores_zero():
    _, verts, poses = _batch()
    errors = sample_errors(verts, poses, verts, poses)
    assert np.abs(errors.drop(columns="rot_deg").to_numpy()).max() < 1e-9
    assert errors["rot_deg"].max() < 1e-5       # arccos near 1 resolves ~1e-8 rad


def test_every_vertex_moved_by_1mm_scores_11():
    rng, verts, poses = _batch()
    direction = rng.normal(size=verts.shape)
    direction /= np.linalg.norm(direction, axis=-1, keepdims=True)
    moved = verts.astype(np.float64) + 0.001 * direction
    errors = sample_errors(verts, poses, moved, poses)
    assert np.allclose(errors["cam"], 1.0, atol=1e-4)
    assert np.allclose(errors["add"], 0.0, atol=1e-9)
    assert np.allclose(errors["shape"], 1.0, atol=1e-4)
    assert np.allclose(errors["score"], 11.0, atol=1e-3)


def test_translation_error_of_2mm_scores_4():
    rng, verts, poses = _batch()
    shifted = poses.copy()
    offset = rng.normal(size=(len(poses), 3))
    shifted[:, 3, :3] += 0.002 * offset / np.linalg.norm(offset, axis=1, keepdims=True)
    errors = sample_errors(verts, poses, verts, shifted)
    assert np.allclose(errors[["cam", "add", "shape", "score"]], [2.0, 2.0, 0.0, 4.0], atol=1e-4)
    assert np.allclose(errors["rot_deg"], 0.0, atol=1e-5)
    t_err = errors[["tx_err", "ty_err", "tz_err"]].to_numpy()
    assert np.allclose(np.linalg.norm(t_err, axis=1), 2.0)


def test_rotation_by_60_degrees_about_z_moves_points_by_the_chord():
    # One point 0.1 m from the z axis moves along a chord 2 * 0.1 * sin(30 deg) = 100 mm, one on
    # the axis does not move: mean 50 mm for cam and ADD, 0 shape, score 100 mm.
    verts = np.array([[[0.1, 0.0, 0.0], [0.0, 0.0, 0.1]]])
    gt = make_rt(np.eye(3), [0.0, 0.0, -0.5])[None]
    theta = np.radians(60)
    R_col = np.array([[np.cos(theta), -np.sin(theta), 0], [np.sin(theta), np.cos(theta), 0], [0, 0, 1]])
    pred = make_rt(R_col.T, [0.0, 0.0, -0.5])[None]
    row = sample_errors(verts, gt, verts, pred).iloc[0]
    assert row["cam"] == pytest.approx(50.0)
    assert row["add"] == pytest.approx(50.0)
    assert row["shape"] == pytest.approx(0.0)
    assert row["score"] == pytest.approx(100.0)
    assert row["rot_deg"] == pytest.approx(60.0)
    assert row[["yaw_err", "pitch_err", "roll_err"]].tolist() == pytest.approx([0.0, 0.0, 60.0], abs=1e-9)
    assert summarize(sample_errors(verts, gt, verts, pred))["MAE_r"] == pytest.approx(20.0)


def test_euler_errors_of_a_known_rotation():
    ypr = np.radians([[10.0, -20.0, 5.0]])
    t = np.array([[0.0, 0.0, -0.5]])
    errors = sample_errors(np.zeros((1, 3, 3)), rt_from_euler(np.zeros((1, 3)), t),
                           np.zeros((1, 3, 3)), rt_from_euler(ypr, t))
    assert errors[["yaw_err", "pitch_err", "roll_err"]].iloc[0].tolist() == pytest.approx([10.0, 20.0, 5.0])
    assert summarize(errors)["MAE_r"] == pytest.approx(35.0 / 3)


def test_euler_error_wraps_across_pi():
    t = np.array([[0.0, 0.0, -0.5]])
    gt = rt_from_euler(np.radians([[179.0, 0.0, 0.0]]), t)
    pred = rt_from_euler(np.radians([[-179.0, 0.0, 0.0]]), t)
    errors = sample_errors(np.zeros((1, 3, 3)), gt, np.zeros((1, 3, 3)), pred)
    assert errors["yaw_err"].iloc[0] == pytest.approx(2.0)
    assert errors["rot_deg"].iloc[0] == pytest.approx(2.0)


def test_batches_give_the_same_errors_as_one_pass(monkeypatch):
    rng, verts, poses = _batch(n=7)
    pred_poses = random_poses(rng, 7)
    whole = sample_errors(verts, poses, verts * 1.01, pred_poses)
    monkeypatch.setattr(score, "CHUNK", 3)
    chunked = sample_errors(verts, poses, verts * 1.01, pred_poses)
    pd.testing.assert_frame_equal(whole, chunked)
    for workers in (2, 3, 16):        # the batches of 3 on threads
        pd.testing.assert_frame_equal(whole, sample_errors(verts, poses, verts * 1.01, pred_poses, workers))


def test_summary_terms_add_up_to_the_score():
    rng, verts, poses = _batch(n=9)
    errors = sample_errors(verts, poses, verts * 0.98, random_poses(rng, 9))
    summary = summarize(errors)
    assert summary["score"] == pytest.approx(summary["score_cam"] + summary["score_add"] + summary["score_shape10"])
    assert summary["ADD"] == summary["score_add"]
    assert summary["mesh_median"] == pytest.approx(np.median(errors["shape"]))
    assert summary["n"] == 9
    assert "landmark_px" not in summary


def test_landmark_error_is_the_mean_point_distance():
    uv = np.zeros((2, 4, 2))
    shifted = uv + np.array([3.0, 4.0])
    assert landmark_errors(uv, shifted).tolist() == [5.0, 5.0]


def test_mismatched_shapes_are_rejected():
    _, verts, poses = _batch(n=3)
    with pytest.raises(ValueError, match="poses"):
        sample_errors(verts, poses, verts, poses[:2])
