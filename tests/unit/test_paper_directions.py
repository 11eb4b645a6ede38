"""benchmarks.paper_tables --directions: the paper's claims as paired per-sample gaps between two
grid experiments, with a subject-bootstrap standard error."""
import math

import numpy as np
import pandas as pd

from benchmarks import paper_grid, paper_tables


def errors(values: dict[str, list[float]], column: str = "add") -> pd.DataFrame:
    """Per-sample errors: {subject: its samples' values} -> the evaluate stage's CSV columns."""
    rows = [{"subject_id": subject, "facial_action": "a", "img_id": str(i), column: value}
            for subject, samples in values.items() for i, value in enumerate(samples)]
    return pd.DataFrame(rows)


def test_the_gap_is_the_mean_difference_over_the_samples_both_scored():
    worse = errors({"s1": [3.0, 5.0], "s2": [4.0], "s3": [9.0]})
    better = errors({"s1": [2.0, 4.0], "s2": [1.0]})     # s3 not scored: left out of both
    gap, error = paper_tables.paired_gap(worse, better, "add", draws=2000)
    assert math.isclose(gap, (1 + 1 + 3) / 3)
    assert 0 < error < 2


def test_a_constant_gap_has_no_spread_and_a_subject_level_gap_has_the_bootstraps():
    rng = np.random.default_rng(0)
    base = {f"s{i}": list(rng.uniform(5, 10, size=3)) for i in range(40)}
    shifted = {s: [v - 0.5 for v in values] for s, values in base.items()}
    gap, error = paper_tables.paired_gap(errors(base), errors(shifted), "add")
    assert math.isclose(gap, 0.5) and error < 1e-12
    noisy = {s: [v - (1.0 if int(s[1:]) % 2 else 0.0) for v in values] for s, values in base.items()}
    gap, error = paper_tables.paired_gap(errors(base), errors(noisy), "add", draws=4000)
    # half the subjects gain 1 mm: the gap's s.e. is that of a mean of 40 Bernoulli(1/2) subjects
    assert math.isclose(gap, 0.5) and abs(error - 0.5 / math.sqrt(40)) < 0.02


def test_experiments_without_a_shared_scored_sample_have_no_gap():
    gap, error = paper_tables.paired_gap(errors({"s1": [1.0]}), errors({"s2": [2.0]}), "add")
    assert math.isnan(gap) and math.isnan(error)
    gap, _ = paper_tables.paired_gap(errors({"s1": [1.0, float("nan")]}), errors({"s1": [0.5, 0.0]}), "add")
    assert gap == 0.5


def test_the_verdict_says_which_way_and_whether_beyond_two_standard_errors():
    assert paper_tables.verdict(1.0, 0.2) == "holds"
    assert paper_tables.verdict(0.3, 0.2) == "holds, within 2 s.e."
    assert paper_tables.verdict(-0.3, 0.2) == "reversed, within 2 s.e."
    assert paper_tables.verdict(-1.0, 0.2) == "reversed"


def test_directions_read_each_experiment_and_leave_unrun_pairs_blank():
    tables = {"a": errors({"s1": [1.0], "s2": [2.0]}), "b": errors({"s1": [2.0], "s2": [4.0]})}
    claims = [{"claim": "a beats b", "better": "a", "worse": "b", "column": "add"},
              {"claim": "b beats a", "better": "b", "worse": "a", "column": "add"},
              {"claim": "a beats c", "better": "a", "worse": "c", "column": "add"}]
    read = lambda name, split: tables.get(name)                                   # noqa: E731
    frame = paper_tables.assemble_directions(claims, "val", read=read).set_index("claim")
    assert frame.loc["a beats b", "gap"] == 1.5 and frame.loc["a beats b", "verdict"].startswith("holds")
    assert frame.loc["b beats a", "gap"] == -1.5 and frame.loc["b beats a", "verdict"].startswith("reversed")
    assert math.isnan(frame.loc["a beats c", "gap"]) and frame.loc["a beats c", "verdict"] == "-"
    assert "| a beats c | a | c | add | - | - | - |" in paper_tables.render("D", frame.reset_index())


def test_every_direction_compares_two_grid_experiments_in_an_evaluate_column():
    directions = paper_tables.load_directions()
    assert len(directions) == 8
    for claim in directions:
        assert {claim["better"], claim["worse"]} <= set(paper_grid.GRID)
        assert claim["column"] in {"add", "shape", "score", "cam", "rot_deg"}
