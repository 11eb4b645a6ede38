"""Skipping bad samples: recorded with file and reason, listed in skipped.csv, capped by a fraction."""
import logging

import pandas as pd
import pytest

from stages.common.badinput import BadInputs, TooManyBadInputs
from stages.common.io import atomic_dir
from stages.wcpa.layout import DataError


def _run(bad: BadInputs, keys: list[str], broken: set[str]) -> list[str]:
    done = []
    for key in keys:
        with bad.guard(key):
            if key in broken:
                raise DataError(f"/data/{key}.jpg: not a decodable image (corrupt or empty)")
            done.append(key)
    return done


def test_without_skipping_the_first_bad_sample_stops():
    with pytest.raises(DataError, match="/data/b.jpg: not a decodable image"):
        _run(BadInputs(skip=False, max_fraction=0.5), ["a", "b", "c"], {"b"})


def test_skipped_samples_are_listed_with_file_and_reason(tmp_path):
    bad = BadInputs(skip=True, max_fraction=0.5)
    assert _run(bad, ["a", "b", "c"], {"b"}) == ["a", "c"]
    assert bad.keys == {"b"}
    path = bad.finish(tmp_path, total=3)
    assert path == tmp_path / "skipped.csv"
    table = pd.read_csv(path)
    assert table.to_dict("records") == [{"key": "b", "file": "/data/b.jpg",
                                         "reason": "not a decodable image (corrupt or empty)"}]


def test_no_bad_sample_writes_an_empty_list(tmp_path):
    bad = BadInputs(skip=True, max_fraction=0.0)
    _run(bad, ["a"], set())
    assert pd.read_csv(bad.finish(tmp_path, total=1)).empty


def test_more_bad_samples_than_the_fraction_fail_after_listing_them(tmp_path):
    bad = BadInputs(skip=True, max_fraction=0.25)
    _run(bad, list("abcd"), {"a", "b"})
    with pytest.raises(TooManyBadInputs, match="2 of 4 samples are bad, more than data.max_bad_fraction = 0.25"):
        bad.finish(tmp_path, total=4)
    assert len(pd.read_csv(tmp_path / "skipped.csv")) == 2


def test_other_errors_are_never_swallowed():
    bad = BadInputs(skip=True, max_fraction=1.0)
    with pytest.raises(ZeroDivisionError):
        with bad.guard("a"):
            raise ZeroDivisionError


def test_a_sample_failing_twice_counts_once(tmp_path):
    bad = BadInputs(skip=True, max_fraction=0.5)
    _run(bad, ["a", "b"], {"a"})
    bad.add("a", "/data/info/a_info.npz", "info file not found")      # its info file fails too
    assert len(bad) == 1
    assert pd.read_csv(bad.finish(tmp_path, total=2)).file.tolist() == ["/data/a.jpg"]


def test_a_failed_stage_keeps_its_list_beside_the_output_folder(tmp_path):
    bad = BadInputs(skip=True, max_fraction=0.25)
    _run(bad, list("abcd"), {"a", "b"})
    out = tmp_path / "artifacts" / "crop"
    with pytest.raises(TooManyBadInputs) as failure:
        with atomic_dir(out) as tmp:
            bad.finish(tmp, total=4)
    kept = tmp_path / "artifacts" / "crop.skipped.csv"
    assert str(failure.value).startswith(f"{kept}: 2 of 4 samples are bad")
    assert pd.read_csv(kept).key.tolist() == ["a", "b"] and not out.exists()
    with atomic_dir(out) as tmp:                                       # a later run that passes
        BadInputs(skip=True, max_fraction=0.25).finish(tmp, total=4)
    assert (out / "skipped.csv").is_file() and not kept.exists()


def test_the_log_names_the_list_where_it_ends_up(tmp_path, caplog):
    """Written inside an atomic_dir temporary, the list's path in the log is the output folder's."""
    bad = BadInputs(skip=True, max_fraction=0.5)
    _run(bad, list("abcd"), {"a"})
    out = tmp_path / "artifacts" / "crop"
    with caplog.at_level(logging.WARNING), atomic_dir(out) as tmp:
        bad.finish(tmp, total=4)
    assert f"1 of 4 samples skipped as bad input, listed in {out / 'skipped.csv'}" in caplog.text
    assert (out / "skipped.csv").is_file()


def test_merged_records_are_added_once_in_order_with_one_line_of_log(caplog):
    """Records another process (or an earlier run's checkpoint) found and logged: the new ones
    join in their order, known keys stay as they were, and no warning repeats each of them."""
    bad = BadInputs(skip=True, max_fraction=0.5)
    _run(bad, ["a", "b"], {"b"})
    others = [{"key": "c", "file": "/data/c.jpg", "reason": "truncated"},
              {"key": "b", "file": "/data/b.json", "reason": "another reason"},
              {"key": "d", "file": "/data/d.jpg", "reason": "empty"},
              {"key": "c", "file": "/data/c.json", "reason": "its label too"}]
    caplog.clear()
    with caplog.at_level(logging.DEBUG, logger="stages.common.badinput"):
        assert bad.merge(others, "the other processes") == 2
        assert bad.merge(others, "the other processes") == 0
    assert [r["key"] for r in bad.records] == ["b", "c", "d"]
    assert bad.records[0]["file"] == "/data/b.jpg"
    assert bad.keys == {"b", "c", "d"}
    assert [r.getMessage() for r in caplog.records] == ["2 skipped samples taken from the other processes"]
