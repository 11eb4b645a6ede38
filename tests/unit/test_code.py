"""stages.common.code: the files a stage module runs and their digest, which binds a training
checkpoint to its stage's code."""
import shutil

from stages.common import code
from stages.common.code import code_closure, code_digest


def test_the_closure_holds_the_stage_and_what_it_imports_and_no_other_stage():
    closure = code_closure("stages.train")
    assert {"stages/train.py", "stages/nets/trainer.py", "stages/nets/losses.py", "stages/common/code.py"} <= closure
    assert not {"stages/finetune.py", "stages/evaluate.py", "stages/synthetic/render.py"} & closure
    assert "stages/finetuning/pnp_loss.py" in code_closure("stages.finetune")


def test_the_digest_follows_the_closure_files_and_nothing_else(tmp_path, monkeypatch):
    shutil.copytree(code.ROOT / "stages", tmp_path / "stages")
    monkeypatch.setattr(code, "ROOT", tmp_path)
    before = code_digest("stages.train")
    assert before == code_digest("stages.train") != code_digest("stages.finetune")
    with open(tmp_path / "stages" / "evaluate.py", "a") as handle:
        handle.write("\n# another stage's change\n")
    assert code_digest("stages.train") == before
    with open(tmp_path / "stages" / "nets" / "losses.py", "a") as handle:
        handle.write("\n# a fix of a loss\n")
    assert code_digest("stages.train") != before


def test_the_digest_leaves_out_the_params_loader_schema_and_entry(tmp_path, monkeypatch):
    """A key added to the schema for one stage (a NOT_DEPS file, which every stage imports) keeps
    every other stage's resumable work: dvc reruns no stage for it, and no digest changes."""
    shutil.copytree(code.ROOT / "stages", tmp_path / "stages")
    monkeypatch.setattr(code, "ROOT", tmp_path)
    assert code.NOT_DEPS <= code_closure("stages.crop")
    before = {stage: code_digest(stage) for stage in ("stages.crop", "stages.train", "stages.coarse_train")}
    for rel in code.NOT_DEPS:
        with open(tmp_path / rel, "a") as handle:
            handle.write("\n# a key for another stage\n")
    assert {stage: code_digest(stage) for stage in before} == before
