"""The import direction of docs/ARCHITECTURE.md, read from the source with `ast`, and dvc.yaml's
code deps against it: every stage lists the code it runs, and only synth lists the synthetic
generator."""
from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from stages.common.code import NOT_DEPS, code_closure, imported_modules, module_file

ROOT = Path(__file__).resolve().parents[2]
STAGES = ROOT / "stages"
BOTTOM = {"common", "wcpa"}
# package -> the packages its modules may import (besides itself).
ALLOWED = {
    "common": BOTTOM,
    "wcpa": BOTTOM,
    "face": BOTTOM,
    "pnp": BOTTOM,
    "viz": BOTTOM,
    "synthetic": BOTTOM,
    "coarse": BOTTOM | {"face"},
    "nets": BOTTOM | {"face", "pnp"},
    "finetuning": BOTTOM | {"face", "pnp", "nets"},
}
SYNTHETIC_USERS = {"synth", "synth_sheet"}          # the stage modules that may import stages.synthetic


def place(module: str) -> str:
    """'stages.nets.trainer' -> 'nets'; a stage module 'stages.crop' -> 'stage'."""
    parts = module.split(".")
    return parts[1] if len(parts) > 2 or (STAGES / parts[1]).is_dir() else "stage"


def stage_modules() -> list[str]:
    return sorted(p.stem for p in STAGES.glob("*.py") if p.stem != "__init__")


def package_files() -> list[Path]:
    return sorted(p for p in STAGES.glob("*/*.py"))


@pytest.mark.parametrize("path", package_files(), ids=lambda p: str(p.relative_to(STAGES)))
def test_a_package_imports_only_the_packages_below_it(path):
    package = path.parent.name
    assert package in ALLOWED, f"{path}: package {package} has no place in ALLOWED (docs/ARCHITECTURE.md)"
    wrong = sorted(m for m in imported_modules(path)
                   if place(m) != package and place(m) not in ALLOWED[package])
    assert not wrong, f"{path}: {package} may import only {sorted(ALLOWED[package])}, imports {wrong}"


@pytest.mark.parametrize("name", stage_modules())
def test_a_stage_module_imports_no_other_stage_module_and_only_synth_the_generator(name):
    modules = imported_modules(STAGES / f"{name}.py")
    assert not [m for m in modules if place(m) == "stage"], f"stages/{name}.py imports a stage module"
    if name not in SYNTHETIC_USERS:
        assert not [m for m in modules if place(m) == "synthetic"], f"stages/{name}.py imports stages.synthetic"


def test_the_rules_catch_a_violation(tmp_path):
    """The parser sees the imports the rules are about, including `from stages.face import x`."""
    assert imported_modules(STAGES / "wcpa" / "layout.py") >= {"stages.wcpa.obj", "stages.wcpa.camera"}
    assert "stages.common.badinput" not in imported_modules(STAGES / "wcpa" / "layout.py")  # TYPE_CHECKING
    probe = tmp_path / "probe.py"
    probe.write_text("from stages.face import ibug68\nimport stages.nets.model\nfrom stages import crop\n")
    assert imported_modules(probe) == {"stages.face.ibug68", "stages.nets.model", "stages.crop"}
    assert [place(m) for m in sorted(imported_modules(probe))] == ["stage", "face", "nets"]


def dvc_stages() -> dict[str, dict]:
    """name -> the stage body (a foreach stage's `do`)."""
    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    return {name: body.get("do", body) for name, body in stages.items()}


def stage_module(cmd: str) -> str:
    """The module a dvc.yaml cmd runs: `python -m stages.launch <stage> ...` runs stages.<stage>
    (stages/launch.py starts it, in process or under torchrun, and changes no output)."""
    words = cmd.split()
    return f"stages.{words[3]}" if words[2] == "stages.launch" else words[2]


def covered(path: str, deps: list[str]) -> bool:
    return any(path == dep or path.startswith(dep.rstrip("/") + "/") for dep in deps)


@pytest.mark.parametrize("name", sorted(dvc_stages()))
def test_dvc_deps_list_the_code_a_stage_runs_and_no_other_stage_module(name):
    body = dvc_stages()[name]
    module = stage_module(body["cmd"])
    deps = [d for d in body["deps"] if d.startswith("stages")]
    missing = sorted(f for f in code_closure(module) - NOT_DEPS if not covered(f, deps))
    assert not missing, f"dvc.yaml stage {name}: imports {missing} but does not list them as deps"
    own = module_file(module).relative_to(ROOT).as_posix()
    others = [d for d in deps if d != own and Path(d).parent == Path("stages") and d.endswith(".py")]
    assert not others, f"dvc.yaml stage {name} lists other stage modules {others}"


@pytest.mark.parametrize("name", sorted(dvc_stages()))
def test_no_stage_lists_the_code_that_changes_no_output(name):
    """The params loader, the schema and the stage entry (NOT_DEPS) are no stage's deps, not even
    through their folder: a key added to the schema for one stage would rerun every stage listing
    stages/common (train and finetune: hours on the real data)."""
    deps = [d for d in dvc_stages()[name]["deps"] if d.startswith("stages")]
    listed = sorted(f for f in NOT_DEPS if covered(f, deps))
    assert not listed, f"dvc.yaml stage {name} lists {listed} (or their folder)"


@pytest.mark.parametrize("name", sorted(set(dvc_stages()) - SYNTHETIC_USERS))
def test_only_synth_lists_the_synthetic_generator(name):
    deps = [d for d in dvc_stages()[name]["deps"] if d.startswith("stages")]
    listed = [d for d in deps if covered(d, ["stages/synthetic"]) or covered("stages/synthetic/x.py", [d])]
    assert not listed, f"dvc.yaml stage {name} lists synthetic-generator code {listed}"


def test_the_synthetic_generator_reaches_only_synth():
    """No stage but synth runs synthetic-generator code (so editing the renderer reruns synth alone)."""
    runs = {name: code_closure(stage_module(body["cmd"])) for name, body in dvc_stages().items()}
    assert any(f.startswith("stages/synthetic/") for f in runs["synth"])
    assert [n for n, files in runs.items() if n not in SYNTHETIC_USERS
            and any(f.startswith("stages/synthetic/") for f in files)] == []


@pytest.mark.parametrize("name", ["train", "finetune"])
def test_dvc_deps_list_every_input_a_training_run_reads(name):
    """Every file of trainer.training_inputs (what its resume key and model record hash) is a dep:
    one that is not would change without rerunning the stage."""
    from stages.nets.trainer import TrainPaths, training_inputs
    paths = TrainPaths(crop=Path("artifacts/crop"), pca=Path("artifacts/pca"), split=Path("artifacts/split"),
                       out=Path("artifacts/train"))
    deps = dvc_stages()[name]["deps"]
    missing = sorted(p.as_posix() for p in training_inputs(paths, "${data.root}").values()
                     if not covered(p.as_posix(), deps))
    assert not missing, f"dvc.yaml stage {name}: reads {missing} but does not list them as deps"


def test_evaluate_depends_on_the_test_labels_folder():
    assert "${data.test_gt}" in dvc_stages()["evaluate"]["deps"]


OWN_SECTION = ("synth", "split", "coarse_train", "coarse_predict", "crop", "pca", "train", "finetune", "infer",
               "evaluate")                    # the stages of the same name as a params section
READ_ELSEWHERE = {"synth.sheet_samples"}      # synth_sheet's, in synth's section


def listed_params(body: dict) -> set[str]:
    """A stage's params leaves, a whole section's entry as every leaf of it in params.yaml."""
    values = yaml.safe_load((ROOT / "params.yaml").read_text())
    listed = set()
    for entry in body.get("params", []):
        section = values.get(entry)
        listed |= {f"{entry}.{key}" for key in section} if isinstance(section, dict) else {entry}
    return listed


@pytest.mark.parametrize("name", OWN_SECTION)
def test_a_stage_lists_every_key_of_its_section_but_the_speed_keys(name):
    """A key of a stage's own section that changes what it makes reruns it (a new key cannot be
    forgotten in dvc.yaml); one of SPEED_KEYS (workers, compiled or graphed code, the resume and
    eval-mode batches) reruns nothing: a full recrop or a detector's retraining made the same
    outputs again."""
    from stages.common.schema import SCHEMA, SPEED_KEYS
    section = {f"{name}.{key}" for key in SCHEMA[name]}
    listed = listed_params(dvc_stages()[name]) & section
    assert listed == section - SPEED_KEYS - READ_ELSEWHERE


@pytest.mark.parametrize("name", sorted(dvc_stages()))
def test_no_stage_lists_a_speed_key(name):
    from stages.common.schema import SPEED_KEYS
    assert not listed_params(dvc_stages()[name]) & SPEED_KEYS


def test_no_project_file_points_outside_the_clone():
    """The project stands alone: no code, test, doc or config names a planning file or folder that
    lives beside the repository and not in a user's clone."""
    names = ["PAPER", "WCPA", "DESIGN", "GPU"]
    outside = [name + ".md" for name in names] + ["../" + "shared"]
    files = [path for folder in ("stages", "benchmarks", "tests", "docs", ".ci") for path in (ROOT / folder).rglob("*")
             if path.is_file() and path.suffix in {".py", ".md", ".sh", ".yaml", ".yml", ""}]
    files += [ROOT / name for name in ("README.md", "params.yaml", "dvc.yaml", "requirements.txt")]
    found = [f"{path.relative_to(ROOT)}: {word}" for path in files for word in outside
             if word in path.read_text(errors="replace")]
    assert found == []
