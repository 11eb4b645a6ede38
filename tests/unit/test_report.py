"""Evaluation tables: histogram counts and per-bin mean errors on hand-made errors, and the
per-sample error table over batches."""
import numpy as np
import pandas as pd

from stages.wcpa.report import binned_means, histogram


def test_histogram_counts_every_sample_once():
    table = histogram(np.array([0.0, 1.0, 1.0, 4.0]), bins=4)
    assert table["error_mm"].tolist() == [0.5, 1.5, 2.5, 3.5]
    assert table["samples"].tolist() == [1, 2, 0, 1]


def test_binned_means_average_each_bin_and_drop_empty_ones():
    errors = pd.DataFrame({"score": [10.0, 20.0, 40.0], "cam": 1.0, "add": 2.0, "shape": 3.0})
    by = pd.Series([0.0, 1.0, 9.0])
    table = binned_means(errors, by, "abs_yaw_deg", bins=3)
    assert table["samples"].tolist() == [2, 1]
    assert table["score_mm"].tolist() == [15.0, 40.0]
    assert np.allclose(table["abs_yaw_deg"], [1.5, 7.5])


def test_binned_means_of_no_samples_is_an_empty_table():
    empty = pd.DataFrame({"score": [], "cam": [], "add": [], "shape": []})
    assert binned_means(empty, pd.Series([], dtype=float), "distance_m", bins=3).empty


def test_error_table_gives_the_landmark_error_over_batches(monkeypatch):
    """error_table in batches of 4 samples (score.CHUNK, report.CHUNK) gives the table of one
    batch bit for bit; its landmark_px is the mean distance to the projected ground truth (1 px
    off in u)."""
    from stages.wcpa import report, score
    from stages.wcpa.report import error_table
    from tests.unit.pnp_cases import challenge_camera, make_problems
    case, camera = make_problems(np.random.default_rng(4), 10, 50), challenge_camera()
    verts = case["x3d"].astype(np.float32)
    uv = camera.project(verts, case["R_t"]) + np.array([1.0, 0.0])
    table = pd.DataFrame({"subject_id": "s", "facial_action": "a", "img_id": [str(k) for k in range(10)]})
    predictions = {"verts": verts, "R_t": case["R_t"], "landmarks": uv}
    whole = error_table(table, verts, case["R_t"], predictions, camera)
    monkeypatch.setattr(report, "CHUNK", 4)
    monkeypatch.setattr(score, "CHUNK", 4)
    pd.testing.assert_frame_equal(whole, error_table(table, verts, case["R_t"], predictions, camera))
    np.testing.assert_allclose(whole["landmark_px"], 1.0, atol=1e-9)
    assert (whole["score"] == 0).all()
