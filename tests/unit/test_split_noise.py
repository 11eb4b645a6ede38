"""Subject bootstrap of a split's score ratio (benchmarks.split_noise)."""
import numpy as np
import pandas as pd

from benchmarks.split_noise import paired_scores, subject_bootstrap


def table_of(scores: dict[str, list[tuple[float, float]]]) -> pd.DataFrame:
    rows = [{"subject_id": subject, "score": s, "reference": r} for subject, pairs in scores.items() for s, r in pairs]
    return pd.DataFrame(rows)


def test_subjects_with_one_ratio_give_no_spread_and_mixed_ones_span_them():
    same = table_of({"a": [(1.0, 3.0), (2.0, 6.0)], "b": [(4.0, 12.0)], "c": [(0.5, 1.5)]})
    np.testing.assert_allclose(subject_bootstrap(same, 500), 1 / 3)
    mixed = table_of({"a": [(1.0, 4.0), (1.0, 4.0)], "b": [(3.0, 6.0)], "c": [(2.0, 8.0)]})
    boot = subject_bootstrap(mixed, 4000)
    assert boot.min() >= 0.25 - 1e-12 and boot.max() <= 0.5 + 1e-12
    assert abs(np.median(boot) - 7 / 22) < 0.05 and boot.std() > 0.01


def test_paired_scores_join_the_two_predictors_by_sample(tmp_path):
    keys = {"subject_id": ["001", "001", "002"], "facial_action": ["a", "b", "a"], "img_id": ["0001"] * 3}
    for name, scores in (("infer", [1.0, 2.0, 3.0]), ("baseline", [3.0, 6.0, 9.0])):
        (tmp_path / name).mkdir()
        frame = pd.DataFrame({**keys, "score": scores, "add": 0.0})
        frame.iloc[::-1].to_csv(tmp_path / name / "errors_val.csv", index=False)
    table = paired_scores(tmp_path, "infer", "baseline", "val")
    np.testing.assert_allclose(table["reference"] / table["score"], 3.0)
    assert table["subject_id"].tolist().count("001") == 2
