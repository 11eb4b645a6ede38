"""End to end: `dvc repro` of the tiny profile in a temporary clone, then
`dvc exp run -S lambda.pnp=2.5` must rerun only finetune and the stages after it."""
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[2]
AFTER_FINETUNE = {"finetune", "infer@val", "infer@test", "submit@infer", "evaluate@infer"}
INFO_READERS = {"synth_sheet", "crop", "crop_sheet", "baseline", "pca", "evaluate@baseline", "evaluate@infer"}


def _run(args, cwd, env):
    result = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True)
    assert result.returncode == 0, f"{' '.join(args)} failed:\n{result.stdout[-4000:]}\n{result.stderr[-4000:]}"
    return result.stdout + result.stderr


def _stages_run(log: str) -> set[str]:
    return set(re.findall(r"Running stage '([^']+)'", log))


@pytest.fixture(scope="module")
def clone(tmp_path_factory):
    """A clone of the committed project with the tiny profile applied and committed."""
    work = tmp_path_factory.mktemp("pipeline") / "project"
    env = dict(os.environ, DVC_NO_ANALYTICS="1", PYTHONPATH="",
               PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
               GIT_AUTHOR_NAME="t", GIT_AUTHOR_EMAIL="t@t", GIT_COMMITTER_NAME="t", GIT_COMMITTER_EMAIL="t@t")
    _run(["git", "clone", "-q", str(ROOT), str(work)], ROOT, env)
    _run([sys.executable, "-m", "stages.profile", "tiny"], work, env)
    _run(["git", "commit", "-qam", "tiny profile"], work, env)
    return work, env


@pytest.mark.slow
def test_repro_then_lambda_pnp_experiment(clone):
    work, env = clone
    log = _run(["dvc", "repro"], work, env)
    assert {"synth", "split", "train", "finetune", "submit@infer", "evaluate@infer"} <= _stages_run(log)
    assert not {s for s in _stages_run(log) if s.startswith("coarse_")}   # tiny: crop.source given68
    for name in ("baseline", "infer"):
        submission = np.load(work / "submissions" / f"{name}.npy")
        assert submission.dtype == np.float32 and np.isfinite(submission).all()
        metrics = json.loads((work / "artifacts" / "evaluate" / name / "metrics.json").read_text())
        assert metrics["val"]["score"] > 0
    _run(["git", "add", "dvc.lock"], work, env)
    _run(["git", "commit", "-qm", "lock"], work, env)
    log = _run(["dvc", "exp", "run", "-S", "lambda.pnp=2.5"], work, env)
    assert _stages_run(log) == AFTER_FINETUNE


def _changed_deps(cwd, env) -> dict[str, set[str]]:
    """`dvc status`: stage -> the paths of its changed dependencies."""
    status = json.loads(_run(["dvc", "status", "--json"], cwd, env).strip().splitlines()[-1])
    return {stage: {path for entry in entries if isinstance(entry, dict)
                    for path in entry.get("changed deps", {})} for stage, entries in status.items()}


def _replace(path: Path, data: bytes) -> None:
    """Write a new file over `path` (the old one may be a hard link into DVC's cache, .dvc/config)."""
    new = path.with_name(path.name + ".new")
    new.write_bytes(data)
    os.replace(new, path)


@pytest.mark.slow
def test_a_changed_data_file_reruns_exactly_the_stages_that_read_its_folder(clone):
    """Stages depend on the manifest of a data folder (stages/manifest.py), not on the folder: a
    label file changed in place (same size) changes info.tsv alone, and with it the status of
    exactly the stages that read labels; its old bytes back, nothing is left to rerun."""
    work, env = clone
    _run(["dvc", "repro"], work, env)
    label = sorted((work / "data" / "synth" / "info").rglob("*.npz"))[0]
    original = label.read_bytes()
    changed = bytearray(original)
    changed[-100] ^= 1
    try:
        _replace(label, bytes(changed))
        _run(["dvc", "repro", "--single-item", "manifest"], work, env)
        after = {stage: paths for stage, paths in _changed_deps(work, env).items() if paths}
        assert after == {stage: {"artifacts/manifest/info.tsv"} for stage in INFO_READERS}
    finally:
        _replace(label, original)
    _run(["dvc", "repro", "--single-item", "manifest"], work, env)
    assert not any(_changed_deps(work, env).values())


def _stage_names(cwd, env) -> set[str]:
    return {line.split()[0] for line in _run(["dvc", "stage", "list"], cwd, env).splitlines() if line.strip()}


@pytest.mark.slow
def test_coarse_stages_follow_crop_source(clone):
    """The default params build coarse_train/coarse_predict; crop.source given68 (tiny) builds none."""
    work, env = clone
    assert {"coarse_train@coarse", "coarse_predict@coarse", "crop"} <= _stage_names(ROOT, env)
    names = _stage_names(work, env)
    assert "crop" in names and not {n for n in names if n.startswith("coarse_")}


@pytest.mark.slow
def test_data_without_blendshapes_fits_the_pca_on_neutral_meshes_and_data_expressions(clone):
    work, env = clone
    _run(["dvc", "repro", "split"], work, env)
    log = _run(["dvc", "exp", "run", "-S", "data.blendshapes=data/no_blendshapes", "pca"], work, env)
    assert "pca" in _stages_run(log)
    metrics = json.loads((work / "artifacts" / "pca" / "metrics.json").read_text())
    assert metrics["n_blendshapes"] == 0 and metrics["n_data_expressions"] > 0
    assert metrics["n_meshes"] == metrics["n_neutral"] + metrics["n_data_expressions"]
