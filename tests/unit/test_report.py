"""Plot tables of the evaluation: histogram counts and per-bin mean errors on hand-made errors."""
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
