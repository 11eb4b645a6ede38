"""The training launcher (stages.launch): params `gpus` 1 runs the stage in process, N > 1 execs
torchrun with N processes after checking N CUDA devices; dvc.yaml runs exactly the stages that
read `gpus` through it."""
import os
import sys
from pathlib import Path

import pytest
import torch
import yaml

from stages import launch, train
from stages.common.params import load_params
from tests.tiny_project import write_params

ROOT = Path(__file__).resolve().parents[2]


def params_with_gpus(tmp_path, gpus: int) -> str:
    path = tmp_path / "params.yaml"
    write_params(path, load_params(ROOT / "params.yaml").replace(gpus=gpus))
    return str(path)


def test_one_gpu_runs_the_stage_in_this_process(tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr(train, "main", calls.append)
    monkeypatch.setattr(os, "execv", lambda *args: pytest.fail("exec with gpus 1"))
    launch.main(["train", "--params", params_with_gpus(tmp_path, 1)])
    assert calls == [["--params", str(tmp_path / "params.yaml")]]


def test_several_gpus_exec_torchrun_with_one_process_each(tmp_path, monkeypatch):
    execs = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 4)
    monkeypatch.setattr(os, "execv", lambda path, argv: execs.append((path, argv)))
    params = params_with_gpus(tmp_path, 4)
    launch.main(["coarse_train", "--params", params])
    assert execs == [(sys.executable, [sys.executable, "-m", "torch.distributed.run", "--standalone",
                                       "--nproc_per_node", "4", "-m", "stages.coarse_train", "--params", params])]


def test_more_gpus_than_visible_or_another_stage_stop(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(os, "execv", lambda *args: pytest.fail("exec without the GPUs"))
    with pytest.raises(SystemExit, match=r"params gpus=2, but 1 CUDA device\(s\) are visible"):
        launch.main(["finetune", "--params", params_with_gpus(tmp_path, 2)])
    with pytest.raises(SystemExit):
        launch.main(["infer", "--params", params_with_gpus(tmp_path, 1)])
    assert "invalid choice: 'infer'" in capsys.readouterr().err


def test_dvc_runs_the_stages_that_read_gpus_through_the_launcher():
    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    bodies = {name: body.get("do", body) for name, body in stages.items()}
    launched = {name for name, body in bodies.items() if body["cmd"].startswith("python -m stages.launch ")}
    reading = {name for name, body in bodies.items() if "gpus" in body.get("params", [])}
    assert launched == reading == set(launch.STAGES)
    for name in launched:
        assert bodies[name]["cmd"].split()[3] == name
