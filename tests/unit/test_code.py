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
