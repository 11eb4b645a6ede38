"""The stage entry (stages.common.stage): command line to run(params, **options), the wall time in
the log, a bad params file or a listed error type stopping with its message."""
import logging
import shutil
import sys
from pathlib import Path

import pytest

from stages.common.params import Params, ParamsError
from stages.common.stage import stage_main

PARAMS = Path(__file__).resolve().parents[2] / "params.yaml"
calls = []


def run(params: Params, split: str) -> None:
    calls.append((params.seed, split))
    if split == "test":
        raise KeyError("no test split here")


def options(parser) -> None:
    parser.add_argument("--split", required=True)


def test_options_reach_run_and_the_time_is_logged(tmp_path, caplog):
    shutil.copy(PARAMS, tmp_path / "params.yaml")
    calls.clear()
    with caplog.at_level(logging.INFO):
        stage_main("Stage probe: a test.", run, options, ["--params", str(tmp_path / "params.yaml"), "--split", "val"])
    assert calls[0][1] == "val" and isinstance(calls[0][0], int)
    assert "test_stage done in" in caplog.text


def test_listed_errors_stop_with_the_stage_and_message_others_propagate(tmp_path):
    args = ["--params", str(PARAMS), "--split", "test"]
    with pytest.raises(SystemExit, match=r"^test_stage: 'no test split here'$"):
        stage_main("Stage probe.", run, options, args, errors=(KeyError,))
    with pytest.raises(KeyError):
        stage_main("Stage probe.", run, options, args)
    (tmp_path / "params.yaml").write_text("seed: 1\n")
    with pytest.raises(ParamsError):
        stage_main("Stage probe.", run, options, ["--params", str(tmp_path / "params.yaml"), "--split", "val"])


def scored(params: Params) -> dict:
    return {"score": 67.5, "epochs": [{"loss": 1.0}]}


def test_the_returned_metrics_are_logged_without_their_history(caplog):
    with caplog.at_level(logging.INFO):
        stage_main("Stage probe.", scored, argv=["--params", str(PARAMS)])
    assert "test_stage metrics: {'score': 67.5}" in caplog.text


def test_a_stage_run_as_a_module_logs_its_own_name(monkeypatch):
    """`python -m stages.<name>` runs the module as __main__ (its functions' __module__ is
    '__main__'): the name comes from the module's spec."""
    import importlib.util
    import types

    from stages.common.stage import stage_name
    main = types.ModuleType("__main__")
    main.__spec__ = importlib.util.find_spec("stages.split")
    monkeypatch.setitem(sys.modules, "__main__", main)

    def run(params):
        return None
    run.__module__ = "__main__"
    assert stage_name(run) == "split" and stage_name(scored) == "test_stage"
